"""Path patching (`run path_patch`): senders' effect on receivers through the direct path only.

1. Expand `senders` (comma-separated patterns of sources: `input`, `a0.*`, `m0`, `a*.*`) and
   `receivers` (`a1.0<q>`; a head without a port means its q, k and v inputs; `m1`; `logits`)
   into nodes of the head-level graph.
2. The path s -> r is the graph edge from s's output to r's input. Set keep = 0 on the edges
   from the senders to the receivers, 1 elsewhere, and run the engine's edge forward in
   `resample` mode. Receiver r then reads `resid - sum_s (out_s - out'_s)`: the base run's
   residual with each sender's own output swapped for the other run's (out'). That is exactly
   path patching (Wang et al. 2022, with every component off the path frozen):
   - only the receivers' inputs change. Every other component, the senders and everything
     between them and the receivers included, reads the unpatched residual, so a sender's
     effect through intermediate heads or MLPs is not counted (the path is the direct one);
   - everything after the receivers recomputes from their new outputs;
   - with every upstream source as sender, r reads the other run's residual, so path patching
     equals patching r's input (`Ablation(aL.H<q>, "resample")`; tested: 1e-5 in float32,
     1e-9 in float64).
3. Runs restart at the earliest receiver's layer from one cached keep = 1 run (receivers =
   logits: no layer reruns at all).
4. `each_sender=true`: one run per sender (into all receivers) -> `NodeScores` per sender;
   senders that feed no receiver are left out. `each_sender=false`: one run per receiver (from
   all senders) -> `NodeScores` per receiver, with the run into all receivers together in
   `extra["all_receivers"]` when there are several.
5. Normalise as `run patch` does: `(M_patched - M_base) / (M_other - M_base)`. The run uses
   the full model: the session's current ablations are not applied.

`direction` is `run patch`'s; `clean_to_corrupt` is TransformerLens's
`get_act_patch_direct_path` (tested against it). Cost in forward-pass equivalents (FE): the
edge forward reads per-head q/k/v inputs, about 1.5-2 FE for a whole pass; one cached pass,
then per run (n_layers - L) / n_layers of one for receivers in layer L, plus one unembedding
of the answer positions (receivers = logits: only that, ~0.1 FE on GPT-2 small at 12 tokens,
so the default 144 senders measured ~25 FE there); `clean_to_corrupt` adds 2 FE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from plugins.patch import Baseline, Direction, baseline, score
from workbench.engine.api import AblationEngine, EngineAPI
from workbench.errors import WorkbenchError
from workbench.graph import PORTS, Edge, Graph, Node, expand
from workbench.plugins import Context, NodeScores, Technique


@dataclass(frozen=True)
class Params:
    senders: str = "a*.*"  # comma-separated patterns of sources: input, a0.*, m0, ...
    receivers: str = "logits"  # aL.H<q|k|v> (no port: all three), mL, logits; comma-separated
    each_sender: bool = True  # one run per sender, else one per receiver
    direction: Direction = "corrupt_to_clean"
    metric: str | None = None  # default: the session's


def senders_of(text: str, graph: Graph) -> list[Node]:
    """Source nodes named by comma-separated patterns, in graph order, without duplicates."""
    found = set()
    for pattern in _words(text, "senders"):
        for node in expand(pattern, graph):
            if node.pos is not None or node.port is not None or node not in graph.source_index:
                raise WorkbenchError(f"sender {node}: senders are whole sources (input, aL.H, "
                                     "mL) without <port> or @P")
            found.add(node)
    return sorted(found, key=graph.source_index.__getitem__)


def receivers_of(text: str, graph: Graph) -> list[Node]:
    """Receiver nodes (q/k/v inputs, MLPs, logits), in graph order, without duplicates."""
    found = set()
    for pattern in _words(text, "receivers"):
        for node in expand(pattern, graph):
            ports = [node.with_port(p) for p in PORTS] if node.kind == "attn" and \
                node.port is None else [node]
            for r in ports:
                if r.pos is not None or r not in graph.receiver_index:
                    raise WorkbenchError(f"receiver {r}: receivers are aL.H<q|k|v>, aL.H, mL "
                                         "or logits, without @P")
                found.add(r)
    return sorted(found, key=graph.receiver_index.__getitem__)


def _words(text: str, what: str) -> list[str]:
    words = [w for w in text.replace(" ", ",").split(",") if w]
    if not words:
        raise WorkbenchError(f"{what} is empty: give patterns like a0.*,m0 or a1.0<q>")
    return words


def keep_mask(graph: Graph, senders: list[Node], receivers: list[Node]) -> Tensor:
    """(n_edges,) keep: 0 on every edge sender -> receiver that exists, 1 elsewhere."""
    keep = torch.ones(graph.n_edges)
    for r in receivers:
        for s in senders:
            index = graph.edge_index.get(Edge(s, r))
            if index is not None:
                keep[index] = 0.0
    return keep


class PathRunner:
    """Edge forwards in `resample` mode that restart at the earliest receiver's layer."""

    def __init__(self, engine: AblationEngine | EngineAPI) -> None:
        self.api = engine if isinstance(engine, EngineAPI) else EngineAPI.of(engine)
        self.runner = self.api.edge_runner("resample")

    def logits(self, senders: list[Node], receivers: list[Node]) -> Tensor:
        """Answer logits with the senders' outputs swapped on their paths into the receivers."""
        g = self.api.graph
        start = min(g.n_layers if r.kind == "logits" else int(r.layer or 0) for r in receivers)
        keep = keep_mask(g, senders, receivers).to(**self.api.kw)  # type: ignore[arg-type]
        with torch.no_grad():
            return self.runner.logits(keep, start_layer=start)


def feeds(graph: Graph, sender: Node, receivers: list[Node]) -> bool:
    return any(Edge(sender, r) in graph.edge_index for r in receivers)


@dataclass(frozen=True)
class PathSweep:
    """Raw metric per run, keyed by sender (each_sender) or receiver name."""

    scores: dict[str, float]
    joint: float | None  # all senders into all receivers, when each_sender=false and several
    baseline: Baseline


def sweep(ctx: Context, params: Params) -> PathSweep:
    graph = ctx.graph
    senders = senders_of(params.senders, graph)
    receivers = receivers_of(params.receivers, graph)
    if params.each_sender:
        jobs = [(str(s), [s], receivers) for s in senders if feeds(graph, s, receivers)]
    else:
        jobs = [(str(r), senders, [r]) for r in receivers
                if any(feeds(graph, s, [r]) for s in senders)]
        if len(jobs) > 1:
            jobs.append(("*", senders, receivers))
    if not jobs:
        raise WorkbenchError(f"no sender in {params.senders!r} feeds a receiver in "
                             f"{params.receivers!r}: senders must be upstream of receivers")
    base = baseline(ctx, params.direction, ctx.metric_fn(params.metric))
    runner = PathRunner(base.api)
    scores: dict[str, float] = {}
    for i, (name, s, r) in enumerate(jobs):
        ctx.check()
        ctx.progress(i / len(jobs), f"path patch: {name}")
        scores[name] = score(ctx, runner.logits(s, r), base.metric)
    ctx.progress(1.0, "path patch: done")
    joint = scores.pop("*", None)
    return PathSweep(scores, joint, base)


def run(ctx: Context, params: Params) -> NodeScores:
    result = sweep(ctx, params)
    names = list(result.scores)
    effect = result.baseline.normalise(torch.tensor([result.scores[n] for n in names]))
    extra = {"metric_base": result.baseline.base, "metric_other": result.baseline.other}
    if result.joint is not None:
        extra["all_receivers"] = float(result.baseline.normalise(torch.tensor(result.joint)))
    per = "sender" if params.each_sender else "receiver"
    title = (f"path patching {params.senders} -> {params.receivers} per {per}, "
             f"{params.direction.replace('_', ' ')}")
    return NodeScores(title=title, scores=dict(zip(names, effect.tolist(), strict=True)),
                      unit="normalised effect", extra=extra, metric=result.baseline.metric.name)


TECHNIQUE = Technique(
    name="path_patch", title="Path patching", Params=Params, run=run,
    cost="~2 FE once, then (n_layers - L) / n_layers edge FE per run into layer L plus one "
         "unembedding (logits: only that, ~0.1 FE on GPT-2 small); +2 FE for clean_to_corrupt",
)
