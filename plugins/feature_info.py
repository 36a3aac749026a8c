"""One feature (`run feature_info feature=m0.f123`): where it fires in the prompt set, what
its decoder writes straight into the logits, and how often it is active.

1. Top activations: the `top` largest activations over every prompt and position of the
   current prompt set (clean run of the replacement model, error terms kept, so features
   see exactly the model's activations), with the prompt text up to that position.
2. Direct logit effect: the decoder row through the unembedding (W_dec[f] @ W_U, the final
   LayerNorm's scale left out, centred over the vocabulary): the tokens it pushes up most
   and down most.
3. Density: the fraction of (prompt, position) pairs where it is active, and its mean
   activation when active.
Cost: one replacement forward (~1 FE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.features.replacement import run as replacement_run
from workbench.graph import parse_node
from workbench.plugins import Composite, Context, Table, Technique


@dataclass(frozen=True)
class Params:
    feature: str = ""  # e.g. m0.f123 or a1.f45; empty: the densest feature of the first site
    top: int = 10  # how many activations and tokens to show

    def __post_init__(self) -> None:
        if self.top < 1:
            raise ValueError("top must be >= 1")


def run(ctx: Context, params: Params) -> Composite:
    if not ctx.dictionaries:
        raise WorkbenchError("feature_info needs dictionaries: sae load add3 (or a folder)")
    w, enc = ctx.api.weights, ctx.api.enc
    with torch.no_grad():
        tr = replacement_run(w, enc.clean, ctx.dictionaries, "keep")
    name = params.feature or _densest(tr.feats, ctx.dictionaries.keys()[0])
    node = parse_node(name)
    if node.kind != "feature":
        raise WorkbenchError(f"feature={name}: expected a feature like m0.f12")
    key = f"{node.site}{node.layer}"
    d = ctx.dictionaries.get(key)
    if d is None:
        raise WorkbenchError(f"feature={name}: no dictionary on {key}: sae load one")
    if not 0 <= node.index < d.d_sae:
        raise WorkbenchError(f"feature={name}: {key} has features 0..{d.d_sae - 1}")
    acts = tr.feats[key][..., node.index]  # (batch, pos)
    valid = torch.arange(acts.shape[1], device=acts.device)[None, :] < enc.lengths[:, None]
    acts = acts.masked_fill(~valid, float("-inf"))
    flat = acts.flatten()
    n_top = min(params.top, int(valid.sum()))
    order = flat.argsort(descending=True, stable=True)[:n_top].tolist()
    tok = ctx.model.tokenizer
    rows, values = [], []
    for i in order:
        b, p = divmod(i, acts.shape[1])
        text = tok.decode(enc.clean[b, 1: p + 1].tolist())
        rows.append(f"#{b}@{p} {text}")
        values.append(float(flat[i]))
    active = (acts > 0) & valid
    density = float(active.sum()) / max(1, int(valid.sum()))
    mean_active = float(acts[active].mean()) if bool(active.any()) else 0.0
    effect = w.unembed(d.W_dec[node.index].to(w.dtype)) - w.b_U  # centred; W_U is never made
    k = min(params.top, effect.numel())
    up, down = effect.topk(k), (-effect).topk(k)

    def tokens(idx: torch.Tensor) -> tuple[str, ...]:
        return tuple(repr(tok.decode([int(i)])) for i in idx.tolist())

    return Composite(title=f"feature {name}", parts=(
        ("top_activations", Table(f"{name}: top activations", tuple(rows),
                                  ("activation",), torch.tensor(values)[:, None])),
        ("logits_up", Table(f"{name}: direct logit effect, up", tokens(up.indices),
                            ("logit",), up.values[:, None].detach().cpu())),
        ("logits_down", Table(f"{name}: direct logit effect, down",
                              tokens(down.indices), ("logit",),
                              -down.values[:, None].detach().cpu())),
        ("density", Table(f"{name}: activation density",
                          ("fraction active", "mean when active"), ("value",),
                          torch.tensor([[density], [mean_active]]))),
    ))


def _densest(feats: dict[str, torch.Tensor], key: str) -> str:
    active = (feats[key] > 0).flatten(0, 1).sum(0)
    return f"{key}.f{int(active.argmax())}"


TECHNIQUE = Technique(name="feature_info", title="One feature: top activations, logit effect, "
                      "density", Params=Params, run=run, cost="~1 FE (replacement forward)")
