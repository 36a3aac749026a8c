"""Attention patterns (`run attn`): where each head looks, summarised into role scores.

1. Each layer's pattern (batch, head, query, key; TransformerLens's `hook_pattern`) is
   recomputed from the engine's cached clean residual before that layer (`api.attention_pattern`:
   q and k only, in chunks of prompts), checked against the bridge's hooks in the tests.
2. A score is the attention mass a head puts on chosen key positions, averaged over chosen query
   positions of each prompt, then over the prompts that have such positions:
   - `prev`: query q reads key q - 1 (every q >= 1): previous-token heads;
   - `back`: query q reads key q - k (every q >= k): heads that look k tokens back;
   - `operand`: the answer positions read the digits of operand k (1 or 2; k=0: both), found in
     the prompt text (digits before the operator are operand 1, between it and `=` operand 2);
   - `place`: answer position i reads the two operand digits of answer unit i's place value
     (the digits that sum into it in addition); units with no such digit are left out.
3. With `head=a1.2`, return that head's mean pattern instead: a Table query x key over the
   positions (rows beyond a prompt's length are not counted).

Returns NodeScores (one per head, mass in [0, 1]) or a Table. Cost: well under 1 FE (q and k
of each layer from the cached clean residuals; no model forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.graph import parse_node
from workbench.plugins import Context, NodeScores, Table, Technique
from workbench.positions import arithmetic_roles, position_labels
from workbench.tasks.encode import EncodedPrompts

CHUNK = 64  # prompts per pattern


@dataclass(frozen=True)
class Params:
    head: str | None = None  # e.g. a1.2: return this head's mean pattern (query x key)
    score: Literal["prev", "operand", "place", "back"] = "prev"
    k: int = 1  # back: how many tokens back; operand: which operand (1, 2; 0 = both)


def run(ctx: Context, params: Params) -> NodeScores | Table:
    enc = ctx.api.enc
    n_layers, n_heads = ctx.graph.n_layers, ctx.graph.n_heads
    if params.head is not None:
        node = ctx.graph.check(parse_node(params.head))
        if node.kind != "attn" or node.port is not None or node.pos is not None:
            raise WorkbenchError(f"head={params.head}: name an attention head, like a1.2")
        assert node.layer is not None
        rows = _valid_rows(enc).float()  # (batch, query)
        total = _reduce(ctx, [node.layer], lambda p, r: torch.einsum(
            "bqk,bq->qk", p[:, node.index], rows[r]))[node.layer]
        labels = position_labels(ctx.model.tokenizer, enc)
        return Table(title=f"attention pattern of {node} (query x key)", rows=labels,
                     cols=labels, values=(total / rows.sum(0).clamp(min=1)[:, None]).cpu(),
                     unit="attention")
    weight, what = _score_weights(ctx, params)  # (batch, query, key)
    counted = (weight.sum((1, 2)) > 0).sum()
    if int(counted) == 0:
        raise WorkbenchError(f"score={params.score}: no prompt has the positions it needs "
                             f"({what})")
    sums = _reduce(ctx, list(range(n_layers)),
                   lambda p, r: torch.einsum("bhqk,bqk->h", p, weight[r]))
    scores = {f"a{layer}.{h}": float(sums[layer][h] / counted)
              for layer in range(n_layers) for h in range(n_heads)}
    return NodeScores(title=f"attention score {params.score}: {what}", scores=scores,
                      unit="attention")


def _reduce(ctx: Context, layers: list[int], fn: Any) -> dict[int, Tensor]:
    """Sum `fn(pattern, rows)` over prompt chunks for each layer; pattern (chunk, head, q, k),
    recomputed from the cached clean residuals (`api.attention_pattern`), so no pattern
    outlives its chunk and no second copy of the model is made."""
    api = ctx.api
    out: dict[int, Tensor] = {}
    for i, layer in enumerate(layers):
        for start in range(0, api.n_prompts, CHUNK):
            ctx.check()
            ctx.progress(i / len(layers), "attention patterns")
            rows = slice(start, start + CHUNK)
            part = fn(api.attention_pattern(layer, rows=rows), rows)
            out[layer] = part if layer not in out else out[layer] + part
    ctx.progress(1.0, "attention patterns")
    return out


def _valid_rows(enc: EncodedPrompts) -> Tensor:
    """(batch, pos) True where the position exists in the prompt (not padding)."""
    n_pos = enc.clean.shape[1]
    return torch.arange(n_pos, device=enc.clean.device)[None, :] < enc.lengths[:, None]


def _score_weights(ctx: Context, params: Params) -> tuple[Tensor, str]:
    """(batch, query, key) weights: each prompt's chosen (query, key) pairs, each query row
    weighted 1 / (its number of chosen queries), so a prompt's weights sum to 1 (or 0)."""
    enc = ctx.api.enc
    batch, n_pos = enc.clean.shape
    dev = enc.clean.device
    if params.score in ("prev", "back"):
        k = 1 if params.score == "prev" else params.k
        if not 1 <= k < n_pos:
            raise WorkbenchError(f"k={k}: look back 1..{n_pos - 1} tokens")
        q = torch.arange(n_pos, device=dev)
        pairs = (q[:, None] - k == q[None, :]).expand(batch, -1, -1)  # key = query - k
        use = (_valid_rows(enc) & (q >= k)[None, :])[:, :, None] & pairs
        what = "previous token" if k == 1 else f"{k} tokens back"
    else:
        roles = arithmetic_roles(ctx.model.tokenizer, enc)
        query = torch.zeros(batch, n_pos, enc.n_answer, dtype=torch.bool, device=dev)
        query.scatter_(1, enc.answer_pos[:, None, :], True)  # query[b, pos, i]: answer unit i
        if params.score == "operand":
            if params.k not in (0, 1, 2):
                raise WorkbenchError(f"k={params.k}: score=operand takes k=1, k=2 or k=0 (both)")
            keys = {1: roles.operand1, 2: roles.operand2,
                    0: roles.operand1 | roles.operand2}[params.k]  # (batch, key)
            use = query.any(-1)[:, :, None] & keys[:, None, :]
            use = use & roles.found[:, None, None]
            what = "answer positions -> " + ("both operands" if params.k == 0 else
                                             f"operand {params.k}") + " digits"
        else:
            # query position of unit i reads the operand digits of unit i's place value
            use = torch.einsum("bpi,bik->bpk", query.float(), roles.place.float()) > 0
            what = "answer digit -> operand digits of the same place value"
    n_queries = use.any(-1).sum(-1, keepdim=True).clamp(min=1)  # (batch, 1)
    return use.float() / n_queries[:, :, None], what


TECHNIQUE = Technique(
    name="attn", title="Attention patterns and head-role scores", Params=Params, run=run,
    cost="< 1 FE (each layer's q, k from the cached clean residuals; no model forward)",
)
