"""Iterative mean-ablation pruning (`run prune`) of heads and MLPs to a target performance.

As in the sequence-continuation study (shared/seeds/001): remove components one at a time and
keep a removal only while performance stays at or above the threshold.
1. Score every component by the performance % with it alone ablated (one toggle each).
2. Greedy order: least important first. Random orders: `orders` seeded shuffles. For each
   order and each threshold (70/80/90 by default), walk the order, ablate the component, and
   restore it if performance falls below the threshold; what is left is that order's circuit.
3. Report: the greedy circuit at `target`; how often each component survives across orders
   (at `target`); the components kept per threshold (greedy); and the performance-vs-number-
   of-components curve along the greedy order (ablating cumulatively, never restoring).
The result at `target` is judged exactly as `check` judges it (node-level ablation, same mode),
so `check` of the selected circuit meets the target.

Cost: n + (orders + 1) x thresholds x n toggles + n for the curve; each toggle recomputes from
the toggled layer (about half a forward on average).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from workbench.engine.api import Ablation, Mode
from workbench.errors import WorkbenchError
from workbench.graph import Circuit, Node
from workbench.plugins import CircuitResult, Composite, Context, Curve, NodeScores, Table, Technique


@dataclass(frozen=True)
class Params:
    target: float = 80.0  # performance % the main circuit must keep
    thresholds: str = "70,80,90"  # also prune to each of these
    orders: int = 5  # random removal orders besides the greedy one
    mlps: bool = True  # prune MLPs too (else they always stay)
    mode: Mode | None = None
    seed: int = 0
    metric: str | None = None  # performance % of this metric (default: the session's)


def run(ctx: Context, params: Params) -> Composite:
    try:
        thresholds = sorted({float(t) for t in params.thresholds.split(",") if t.strip()}
                            | {params.target})
    except ValueError:
        raise WorkbenchError("thresholds must be numbers like 70,80,90") from None
    mode = params.mode or ctx.mode
    api, fn = ctx.api, ctx.metric_fn(params.metric)
    comps = [n for n in ctx.graph.sources if n.kind == "attn" or (params.mlps and n.kind == "mlp")]
    base = list(ctx.ablations)
    steps = len(comps) * (2 + (params.orders + 1) * len(thresholds))
    counter = _Counter(ctx, steps)

    def perf(ablated: list[Node]) -> float:
        counter.tick()
        logits = api.logits(base + [Ablation(n, mode) for n in ablated])
        return api.perf(logits, fn, mode).percent

    alone = {n: perf([n]) for n in comps}
    greedy = sorted(comps, key=lambda n: (-alone[n], n.sort_key()))
    rng = random.Random(params.seed)
    orders = [greedy] + [rng.sample(comps, len(comps)) for _ in range(params.orders)]
    kept: dict[float, list[list[Node]]] = {}
    for t in thresholds:
        kept[t] = [_prune(order, t, perf) for order in orders]
    curve_x, curve_y, ablated = [float(len(comps))], [perf([])], []
    for n in greedy:
        ablated.append(n)
        curve_x.append(float(len(comps) - len(ablated)))
        curve_y.append(perf(ablated))
    main = kept[params.target][0]
    survival = {str(n): sum(n in k for k in kept[params.target]) / len(orders) for n in comps}
    table = torch.tensor([[float(n in kept[t][0]) for n in comps] for t in thresholds])
    circuit = Circuit.from_nodes(main, ctx.graph)
    title = (f"mean-ablation pruning to {params.target:g}% of {fn.name} ({mode}): {len(main)} "
             f"of {len(comps)}")
    return Composite(title, (
        ("circuit", CircuitResult(title, circuit, metric=fn.name)),
        ("survival", NodeScores(f"survival across {len(orders)} orders at {params.target:g}%",
                                survival, unit="fraction of orders")),
        ("alone", NodeScores("performance % with each component alone ablated",
                             {str(n): v for n, v in alone.items()}, unit="%")),
        ("per_threshold", Table("kept per threshold (greedy order)",
                                tuple(f"{t:g}%" for t in thresholds),
                                tuple(str(n) for n in comps), table)),
        ("curve", Curve("performance vs components left (greedy order)", "components left",
                        tuple(curve_x), {"performance %": tuple(curve_y)}, "%")),
    ), metric=fn.name)


def _prune(order: list[Node], threshold: float, perf: object) -> list[Node]:
    """Walk `order`, keeping each removal while performance stays >= threshold."""
    ablated: list[Node] = []
    for n in order:
        if perf(ablated + [n]) >= threshold:  # type: ignore[operator]
            ablated.append(n)
    return [n for n in order if n not in ablated]


class _Counter:
    def __init__(self, ctx: Context, total: int) -> None:
        self.ctx, self.total, self.done = ctx, total, 0

    def tick(self) -> None:
        self.ctx.check()
        self.done += 1
        if self.done % 8 == 0:
            self.ctx.progress(min(1.0, self.done / self.total), f"pruning: {self.done} runs")


TECHNIQUE = Technique(
    name="prune", title="Iterative mean-ablation pruning", Params=Params, run=run,
    cost="~(orders + 1) x thresholds x components toggles of ~0.5 FE",
)
