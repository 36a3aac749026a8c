"""Ablate each component alone (`run ablate_each`): performance % without it.

1. Components are the heads and MLPs named by `nodes` (command patterns, comma-separated;
   default every head and MLP).
2. For each component alone (the session's current ablations are not applied), ablate it with
   `mode` (default: the session's mode) through the ablation engine and take performance % of
   the session's metric (`api.perf`: 100 = full model, 0 = everything ablated).
   `per_position=true` ablates it at one position at a time instead (a Table components x
   positions); `mode=all` runs zero, mean and resample (a Table components x modes);
   `score=drop` reports 100 - performance % (so `select r<n> top=K` keeps the components
   whose removal hurts most, where percent would rank the harmless ones first).
3. Components run from the last layer to the first, so each call recomputes only from its own
   layer (the engine restarts at the earliest layer that changed since its previous call).

Returns NodeScores of performance %, or a Table. Cost: about #components x (mean fraction of
layers from a component's layer to the end) FE; x #positions with `per_position`, x3 with
`mode=all`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from workbench.engine.api import MODES, Ablation, Mode
from workbench.errors import WorkbenchError
from workbench.graph import Node, expand
from workbench.plugins import Context, NodeScores, Table, Technique
from workbench.positions import position_labels


@dataclass(frozen=True)
class Params:
    mode: Literal["zero", "mean", "resample", "all"] | None = None  # None: the session's mode
    per_position: bool = False  # ablate at one position at a time: components x positions
    nodes: str = "a*.*,m*"  # which components, as comma-separated command patterns
    score: Literal["percent", "drop"] = "percent"  # drop = 100 - percent (for select top=K)
    metric: str | None = None  # performance % of this metric (default: the session's)


def run(ctx: Context, params: Params) -> NodeScores | Table:
    eng, fn = ctx.api, ctx.metric_fn(params.metric)
    chosen = params.mode or ctx.mode
    modes: tuple[Mode, ...] = tuple(m for m in MODES if chosen in ("all", m))
    if params.per_position and len(modes) > 1:
        raise WorkbenchError("per_position=true takes one mode: give mode=zero|mean|resample")
    nodes = _components(ctx, params.nodes)
    positions: list[int | None] = list(range(eng.n_pos)) if params.per_position else [None]
    order = sorted(nodes, key=lambda n: n.sort_key(), reverse=True)  # last layer first
    jobs = [(node, pos, mode) for mode in modes for node in order for pos in positions]
    perf: dict[tuple[Node, int | None, Mode], float] = {}
    for i, (node, pos, mode) in enumerate(jobs):
        ctx.check()
        ctx.progress(i / len(jobs), f"ablating {node.at(pos)} ({mode})")
        logits = eng.logits([Ablation(node.at(pos), mode)])
        percent = eng.perf(logits, fn, mode).percent
        perf[node, pos, mode] = 100.0 - percent if params.score == "drop" else percent
    ctx.progress(1.0, "done")
    rows = sorted(nodes)
    unit = "points of performance %" if params.score == "drop" else "performance %"
    names = tuple(str(n) for n in rows)
    what = ("performance drop" if params.score == "drop" else "performance %") + \
        f" with each component ablated alone ({fn.name}"
    if params.per_position:
        values = torch.tensor([[perf[n, p, modes[0]] for p in positions] for n in rows])
        return Table(title=f"{what}, {modes[0]}, one position at a time)", rows=names,
                     cols=position_labels(ctx.model.tokenizer, eng.enc), values=values,
                     unit=unit, metric=fn.name)
    if len(modes) > 1:
        values = torch.tensor([[perf[n, None, m] for m in modes] for n in rows])
        return Table(title=f"{what}, each mode)", rows=names, cols=tuple(modes), values=values,
                     unit=unit, metric=fn.name)
    return NodeScores(title=f"{what}, {modes[0]})",
                      scores={str(n): perf[n, None, modes[0]] for n in rows},
                      unit=unit, metric=fn.name)


def _components(ctx: Context, patterns: str) -> list[Node]:
    found: dict[Node, None] = {}
    for word in (p.strip() for p in patterns.split(",")):
        if not word:
            continue
        for node in expand(word, ctx.graph):
            if node.kind not in ("attn", "mlp") or node.port is not None or node.pos is not None:
                raise WorkbenchError(f"nodes={patterns}: {node} is not a head or an MLP")
            found[node] = None
    if not found:
        raise WorkbenchError("nodes= names no component: try nodes=a*.*,m*")
    return list(found)


TECHNIQUE = Technique(
    name="ablate_each", title="Ablate each component alone", Params=Params, run=run,
    cost="~#components x (mean fraction of layers recomputed) FE; x #positions with "
         "per_position, x3 with mode=all",
)
