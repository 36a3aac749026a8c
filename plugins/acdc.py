"""ACDC (`run acdc`, Conmy et al. 2023): prune edges one by one while the metric barely moves.

1. Start from the full graph (every edge kept) and visit receivers in reverse topological
   order: logits, then per layer from the last: the MLP, then the heads' q, k, v inputs.
2. For a receiver whose component no longer feeds anything kept, drop all its incoming edges
   untested (they cannot change the output: exact).
3. Otherwise test its kept incoming edges in turn: remove an edge if removing it changes the
   metric by at most `tau` (|change|, so an edge whose removal *helps* a lot is kept too; with
   `abs_value=false`, the paper's one-sided rule: the metric getting worse, in its declared
   direction, by less than `tau`: KL or l2 rising, logit difference falling). Changes within
   float noise (1e-6 relative) count as none, so `tau=0` removes exactly the edges that do not
   change the metric.
Speed, without changing the result of the sequential algorithm:
- edges into layers below the receiver are all still kept when it is visited, so the residual
  and source outputs below its layer are the cached clean run: each test restarts at the
  receiver's layer (about half a forward on average);
- candidates are tested in prefix batches: replica j of one batched forward removes candidates
  1..j on top of the current circuit. While every test says "remove", replica j is exactly the
  sequential state; at the first "keep", later replicas are discarded and the next batch starts
  after it. The batch doubles while tests say "remove" and shrinks after a "keep" (capped by
  `replicas` or a memory budget); deltas below the restart layer are shared between replicas.

The metric is the session's unless `metric=NAME` (any registered metric: `l2` is the paper's
choice for its tracr tasks, `kl` for the others); called directly, `acdc()` defaults to kl.

Cost: about (n_layers - layer) / n_layers forward passes per tested edge (measured in bench/).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import torch
from torch import Tensor

from workbench.engine.api import AblationEngine, EdgeRunner, EngineAPI, Metric, Mode
from workbench.errors import WorkbenchError
from workbench.graph import Circuit
from workbench.plugins import CircuitResult, Context, Technique
from workbench.ranges import Range

NOISE = 1e-6  # relative float noise between batched forwards of different widths


@dataclass(frozen=True)
class Params:
    tau: Annotated[float, Range(0, 1e6)] = 0.01  # metric change below which an edge is removed
    metric: str | None = None  # default: the session's
    mode: Mode | None = None  # ablation of removed edges (default: the session's)
    abs_value: bool = True  # compare |change| with tau (else the one-sided rule)
    # candidates per batched forward; 0 = choose from a memory budget
    replicas: Annotated[int, Range(0, 65536)] = 0
    memory_mb: Annotated[int, Range(1, 1 << 20)] = 1024  # one batched forward, replicas=0


@dataclass(frozen=True)
class AcdcStats:
    tested: int
    forwards: int
    layers_run: float  # sum over forwards of the fraction of layers recomputed x replicas


def acdc(engine: AblationEngine | EngineAPI, params: Params, mode: Mode,
         ctx: Context | None = None) -> tuple[Tensor, dict[int, float], AcdcStats]:
    """The kept-edge mask (n_edges,), each kept edge's tested metric change, and the cost.
    The metric: `params.metric`, else the session's (`ctx`), else kl."""
    api = engine if isinstance(engine, EngineAPI) else EngineAPI.of(engine)
    fn = ctx.metric_fn(params.metric) if ctx is not None else api.metric(params.metric or "kl")
    graph = api.graph
    runner = api.edge_runner(mode)  # holds the deltas every restarted forward reads
    keep = torch.ones(graph.n_edges, **api.kw)  # type: ignore[arg-type]
    current = _metric(api, runner, fn, keep[None], graph.n_layers)[0]
    outgoing = {node: graph.outgoing(node) for node in graph.sources}
    scores: dict[int, float] = {}
    tested = forwards = 0
    layers_run = 0.0
    receivers = list(reversed(graph.receivers))
    n_layers = graph.n_layers
    for i, receiver in enumerate(receivers):
        if ctx is not None:
            ctx.check()
            ctx.progress(i / len(receivers), f"ACDC: {receiver} ({tested} edges tested)")
        incoming = list(graph.incoming(receiver))
        if receiver.kind != "logits" and not keep[outgoing[receiver.base()]].any():
            keep[incoming] = 0.0  # its output is read by nothing kept: exact, untested
            continue
        start = n_layers if receiver.kind == "logits" else int(receiver.layer or 0)
        candidates = [e for e in reversed(incoming) if keep[e] > 0]
        at, width = 0, 2  # adaptive batch: grows while tests say "remove"
        while at < len(candidates):
            if ctx is not None:
                ctx.check()  # Esc answers within one batched forward
            k = min(len(candidates) - at, width, _replicas(api, params, start))
            rows = keep.repeat(k, 1)
            for j in range(k):  # replica j removes candidates at..at+j
                rows[j:, candidates[at + j]] = 0.0
            values = _metric(api, runner, fn, rows, start)
            forwards += 1
            layers_run += k * (n_layers - start + 0.5) / (n_layers + 0.5)
            prev = current
            for j in range(k):
                tested += 1
                change = fn.worse_by(prev, values[j])
                if params.abs_value:
                    change = abs(change)
                edge = candidates[at + j]
                if change <= params.tau + NOISE * max(1.0, abs(prev)):
                    keep[edge] = 0.0
                    prev = current = values[j]
                else:
                    scores[edge] = change
                    at += j + 1
                    width = max(2, j + 1)
                    break
            else:
                at += k
                width *= 2
    return keep, scores, AcdcStats(tested, forwards, layers_run)


def _replicas(api: EngineAPI, params: Params, start: int) -> int:
    if params.replicas > 0:
        return params.replicas
    g = api.graph
    per_row = api.n_pos * api.weights.W_E.shape[1] * 4  # one residual row, bytes
    downstream = g.n_sources - (1 + start * (g.n_heads + 1)) + 6 * g.n_heads
    per_replica = api.n_prompts * per_row * max(downstream, 1)
    return max(1, min(64, params.memory_mb * 2**20 // max(per_replica, 1)))


@torch.no_grad()
def _metric(api: EngineAPI, runner: EdgeRunner, fn: Metric, rows: Tensor, start: int
            ) -> list[float]:
    """Mean metric of each keep vector in `rows` (k, n_edges), restarting at layer `start`."""
    logits = runner.logits(rows, start_layer=min(start, api.graph.n_layers))
    return api.metric_values(logits, fn).mean(1).tolist()


def run(ctx: Context, params: Params) -> CircuitResult:
    if params.tau < 0:
        raise WorkbenchError("tau must be >= 0")
    mode = params.mode or ctx.mode
    fn = ctx.metric_fn(params.metric)
    keep, scores, stats = acdc(ctx.api, replace(params, metric=fn.name), mode, ctx)
    edges = [ctx.graph.edges[i] for i in keep.nonzero().flatten().tolist()]
    circuit = Circuit.from_edges(
        edges, scores={str(ctx.graph.edges[i]): v for i, v in scores.items() if keep[i] > 0})
    title = (f"ACDC tau={params.tau} {fn.name} ({mode}): {len(edges)} edges, "
             f"{stats.tested} tested in {stats.forwards} batched forwards")
    return CircuitResult(title, circuit, metric=fn.name)


TECHNIQUE = Technique(
    name="acdc", title="Automatic circuit discovery (ACDC)", Params=Params, run=run,
    cost="~0.5 FE per tested edge (restart at the receiver's layer, batched candidates)",
    estimate=lambda ctx, p: 2 + 0.5 * ctx.graph.n_edges,
)
