"""Logit lens (`run logit_lens`): what the residual stream already says about the answer.

1. Take the clean run's residual stream before every layer (`resid_pre0..`) and after the last
   (`final`), at every position (cached by the engine).
2. Read each through the final LayerNorm (folded: plain `ln`) and the unembedding:
   `ln(resid) @ W_U + b_U`. At `final` this is exactly the model's own logits.
3. At each position, score the answer token of answer unit `digit` (default 0, the most
   significant): its probability, its rank (0 = top), or its logit minus the contrast token's.
   With `positions=answer` the columns are the answer positions instead, each reading its own
   answer unit (only unit `digit` when it is given).
4. Average over prompts, counting only rows long enough to have the position; `logit_diff`
   also leaves out prompts whose answer and contrast are the same token (as the metric does).

Returns a Table: rows `resid_pre0..resid_pre{L-1}, final`, columns labelled by position and
token (`3:'+'`). Cost: no forward pass; (n_layers + 1) unembeddings of every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workbench.engine.api import ln
from workbench.errors import WorkbenchError
from workbench.plugins import Context, Table, Technique
from workbench.positions import position_labels
from workbench.weights import Weights

MAX_LOGITS = 1 << 25  # logits held at once (128 MB of float32): sets the prompts per chunk


@dataclass(frozen=True)
class Params:
    stat: Literal["prob", "rank", "logit_diff"] = "logit_diff"
    digit: int | None = None  # which answer unit to read (0 = most significant)
    positions: Literal["answer", "all"] = "all"  # every prompt position, or the answer ones


def run(ctx: Context, params: Params) -> Table:
    api = ctx.api
    w, enc = api.weights, api.enc
    n_ans, n_pos = enc.n_answer, enc.clean.shape[1]
    if params.digit is not None and not 0 <= params.digit < n_ans:
        raise WorkbenchError(f"digit={params.digit}: answers have digits 0..{n_ans - 1}")
    resid = api.residuals()  # (n_layers + 1, batch, pos, d_model)
    if params.positions == "all":
        d = params.digit or 0
        # Every position reads answer unit d: (batch, pos) targets.
        answer = enc.answer[:, d: d + 1].expand(-1, n_pos)
        contrast = enc.contrast[:, d: d + 1].expand(-1, n_pos)
        at = torch.arange(n_pos, device=resid.device).expand(enc.n, -1)  # (batch, cols)
        valid = at < enc.lengths[:, None]
        cols = position_labels(ctx.model.tokenizer, enc)
    else:
        index = list(range(n_ans)) if params.digit is None else [params.digit]
        answer, contrast = enc.answer[:, index], enc.contrast[:, index]
        at = enc.answer_pos[:, index]  # (batch, cols)
        valid = torch.ones_like(at, dtype=torch.bool)
        cols = tuple(f"a{i}" for i in index)
    if params.stat == "logit_diff":
        valid = valid & (answer != contrast)
    weight = valid.float()  # sums in float32 also for half precision residuals
    total = torch.zeros(resid.shape[0], at.shape[1], dtype=torch.float32, device=resid.device)
    chunk = max(1, MAX_LOGITS // (at.shape[1] * w.W_E.shape[0]))
    for layer in range(resid.shape[0]):
        for start in range(0, enc.n, chunk):
            ctx.check()
            rows = slice(start, start + chunk)
            x = resid[layer, rows].gather(1, at[rows, :, None].expand(
                -1, -1, resid.shape[-1]))  # (chunk, cols, d_model)
            stat = _stat(ln(x, w.eps), w, answer[rows], contrast[rows], params.stat)
            total[layer] += (stat.float() * weight[rows]).sum(0)
    values = total / weight.sum(0).clamp(min=1)  # (layers + 1, cols)
    layers = tuple(f"resid_pre{i}" for i in range(w.n_layers)) + ("final",)
    title = f"logit lens: {params.stat} of answer unit " + (
        str(params.digit or 0) if params.positions == "all" else
        ("at each answer position" if params.digit is None else str(params.digit)))
    unit = {"prob": "probability", "rank": "rank", "logit_diff": "logit diff"}[params.stat]
    return Table(title=title, rows=layers, cols=cols, values=values.cpu(), unit=unit)


def _stat(h: Tensor, w: Weights, answer: Tensor, contrast: Tensor, stat: str) -> Tensor:
    """h: normalised residual (chunk, cols, d); answer/contrast: (chunk, cols) ids. Never
    makes W_U (vocabulary x d_model: 0.3 GB at GPT-2 XL): two of its columns, or `unembed`."""
    if stat == "logit_diff":  # two columns of W_U suffice
        a = (h * w.unembed_dirs(answer)).sum(-1) + w.b_U[answer]
        c = (h * w.unembed_dirs(contrast)).sum(-1) + w.b_U[contrast]
        return a - c
    logits = w.unembed(h)  # (chunk, cols, vocab), float32 in every dtype
    own = logits.gather(-1, answer[..., None])
    if stat == "prob":
        return (own - logits.logsumexp(-1, keepdim=True)).exp().squeeze(-1)
    return (logits > own).sum(-1).float()  # rank: tokens strictly above the answer


TECHNIQUE = Technique(
    name="logit_lens", title="Logit lens", Params=Params, run=run,
    cost="0 FE (reads the cached clean residuals; n_layers + 1 unembeddings per position)",
)
