"""Direct logit attribution (`run dla`): what each component writes along the answer direction.

1. Take the clean run's final residual at each answer position and freeze its LayerNorm scale.
2. The direction is `W_U[:, answer] - W_U[:, contrast]` (per prompt and answer position).
3. A component's score is its centred output there, divided by the frozen scale, dotted with
   the direction; averaged like the `logit_diff` metric (answer positions where answer and
   contrast differ, then prompts).
4. Components: `input` (embeddings), every head, every MLP; with `layer=L`, the neurons of MLP L
   instead. Constant terms (attention biases, MLP L's output bias, the unembedding bias) go to
   `extra["bias"]`, so the scores plus the bias sum to the logit difference (tested).

`digit=i` restricts to answer position i (e.g. the hundreds digit). Cost: no forward pass
(it reads the engine's cached clean activations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.plugins import Context, NodeScores, Technique


@dataclass(frozen=True)
class Params:
    layer: int | None = None  # attribute to the neurons of this MLP instead of components
    digit: int | None = None  # only this answer position (0 = most significant)
    top_neurons: int = 50  # with layer=L: keep the largest this many neurons


def run(ctx: Context, params: Params) -> NodeScores:
    api = ctx.api
    w, enc = api.weights, api.enc
    final_resid = api.residual(w.n_layers)  # (batch, pos, d): before the last LayerNorm
    n_ans = enc.n_answer
    if params.digit is not None and not 0 <= params.digit < n_ans:
        raise WorkbenchError(f"digit={params.digit}: answers have digits 0..{n_ans - 1}")
    if params.layer is not None and not 0 <= params.layer < w.n_layers:
        raise WorkbenchError(f"layer={params.layer}: the model has layers 0..{w.n_layers - 1}")
    pos = enc.answer_pos  # (batch, n_ans)

    def at_answer(x: Tensor) -> Tensor:
        """(batch, pos, ..., d) -> (batch, n_ans, ..., d)."""
        index = pos.view(*pos.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
        return x.gather(1, index)

    final = at_answer(final_resid)  # (batch, n_ans, d)
    centred = final - final.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + w.eps).sqrt()  # frozen
    direction = w.unembed_dirs(enc.answer) - w.unembed_dirs(enc.contrast)  # (batch, n_ans, d)
    weight = (enc.answer != enc.contrast).float()
    if params.digit is not None:
        keep = torch.zeros(n_ans, device=weight.device)
        keep[params.digit] = 1.0
        weight = weight * keep
    weight = weight / weight.sum(-1, keepdim=True).clamp(min=1) / enc.n  # metric averaging

    def score(out: Tensor) -> Tensor:
        """(batch, n_ans, ..., d) output -> (...) attribution, averaged like logit_diff."""
        ones = [1] * (out.dim() - 3)
        centred_out = out - out.mean(-1, keepdim=True)
        unit = direction.view(*direction.shape[:2], *ones, -1) / scale.view(
            *scale.shape[:2], *ones, 1)
        dot = (centred_out * unit).sum(-1)
        return (dot * weight.view(*weight.shape, *ones)).sum((0, 1))

    scores: dict[str, float] = {}
    bias = w.b_O.sum(0)  # every layer's attention bias reaches the final residual
    if params.layer is None:
        scores["input"] = float(score(at_answer(api.activation("input"))))
        for layer in range(w.n_layers):
            heads = score(at_answer(api.head_outputs(layer)))  # (n_heads,)
            for h, value in enumerate(heads.tolist()):
                scores[f"a{layer}.{h}"] = value
            scores[f"m{layer}"] = float(score(at_answer(api.activation(f"m{layer}"))))
        title = "direct logit attribution"
    else:
        L = params.layer
        post = at_answer(api.post(L))  # (batch, n_ans, d_mlp)
        per_neuron = score(post.unsqueeze(-1) * w.W_out[L])  # (d_mlp,)
        rest = float(score(at_answer(final_resid - api.activation(f"m{L}")) - bias))
        order = per_neuron.abs().argsort(descending=True)[: params.top_neurons].tolist()
        scores = {f"m{L}.n{i}": float(per_neuron[i]) for i in order}
        omitted = float(per_neuron.sum()) - sum(scores.values())
        bias = bias + w.b_out[L]
        scores_extra = {"rest_of_model": rest, "other_neurons": omitted}
        title = f"direct logit attribution of MLP {L}'s neurons"
    const = float(score(bias.expand_as(final))) + float(
        ((w.b_U[enc.answer] - w.b_U[enc.contrast]) * weight).sum())
    extra = {"bias": const}
    if params.layer is not None:
        extra.update(scores_extra)
    return NodeScores(title=title, scores=scores, unit="logit diff", extra=extra)


TECHNIQUE = Technique(
    name="dla", title="Direct logit attribution", Params=Params, run=run,
    cost="0 FE (reads the cached clean run)",
)
