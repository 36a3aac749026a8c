"""The plugin interface: one `Technique` per method, a `Context` to run in, typed `Result`s.

A technique declares a frozen `Params` dataclass (the command parser coerces `key=value` from
its annotations, the TUI builds its form from it) and `run(ctx, params) -> Result`. It reports
progress through `ctx.progress(fraction, message)` and returns early when `ctx.cancelled()`.

Built-ins are listed explicitly in `BUILTINS`; third-party techniques register through the
entry-point group `workbench.plugins` (each entry point loads a `Technique`). Names must be
unique: a duplicate is refused with the two origins named.

Invariant: a technique leaves the model as it found it (no hooks, no grad flags, no masks);
the contract test runs every registered technique and checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, overload

import torch
from torch import Tensor

from workbench.ablation import Ablation, AblationEngine
from workbench.engine.api import EngineAPI
from workbench.errors import WorkbenchError
from workbench.features.replacement import DictionarySet
from workbench.forward import Mode
from workbench.graph import Circuit, Edge, Graph, connected, parse_node
from workbench.metrics import BUILTIN_METRICS, Metric, MetricName, get_metric
from workbench.model import LoadedModel
from workbench.tasks import PromptSet, coerce
from workbench.tasks.encode import EncodedPrompts

BUILTINS = (
    "plugins.dla", "plugins.eap", "plugins.eap_ig", "plugins.acdc", "plugins.logit_lens",
    "plugins.attn", "plugins.ov_copy", "plugins.ablate_each", "plugins.patch",
    "plugins.path_patch", "plugins.prune", "plugins.mask", "plugins.year_probs",
    "plugins.feature_attr", "plugins.feature_info",
)
ENTRY_POINT_GROUP = "workbench.plugins"


class Cancelled(Exception):
    """Raised by `Context.check()` when the user cancelled; the session keeps its state."""


@dataclass(frozen=True)
class Context:
    """What a technique may use. It must not keep references after `run` returns."""

    model: LoadedModel
    prompts: PromptSet
    enc: EncodedPrompts
    metric: MetricName
    mode: Mode
    graph: Graph
    engine: AblationEngine
    ablations: tuple[Ablation, ...] = ()
    dictionaries: DictionarySet = DictionarySet()  # attached SAEs/transcoders (`sae load`)
    progress: Callable[[float, str], None] = lambda fraction, message: None
    cancelled: Callable[[], bool] = lambda: False
    metrics: Mapping[str, Metric] = field(default_factory=lambda: dict(BUILTIN_METRICS))

    @property
    def api(self) -> EngineAPI:
        """The engine API (`workbench.engine.api`): the one surface techniques use."""
        return EngineAPI.of(self.engine, self.metrics)

    def metric_fn(self, name: str | None = None) -> Metric:
        """The metric called `name` (built in or given to the session); None: the session's.
        Every technique that scores runs takes its metric from here."""
        return get_metric(name or self.metric, self.metrics)

    def check(self) -> None:
        """Stop here if the user pressed Esc."""
        if self.cancelled():
            raise Cancelled("cancelled")


# -- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeScores:
    """A score per component (heads, MLPs, neurons...), keyed by canonical node name."""

    title: str
    scores: dict[str, float]
    unit: str = ""
    extra: dict[str, float] = field(default_factory=dict)  # e.g. DLA's constant term
    kind: str = "node_scores"
    metric: str | None = None  # the metric the scores are in (None: none used)

    def summary(self) -> dict[str, Any]:
        top = sorted(self.scores.items(), key=lambda kv: -abs(kv[1]))[:10]
        return {"kind": self.kind, "title": self.title, "unit": self.unit,
                "n": len(self.scores), "top": [[k, round(v, 6)] for k, v in top],
                **({"extra": self.extra} if self.extra else {})}

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda kv: (-abs(kv[1]), kv[0]))


@dataclass(frozen=True)
class EdgeScores:
    """A score per graph edge: a dense tensor indexed by `graph.edges` order."""

    title: str
    graph: Graph
    values: Tensor  # (n_edges,)
    unit: str = ""
    kind: str = "edge_scores"
    metric: str | None = None  # the metric the scores are in (None: none used)

    def summary(self) -> dict[str, Any]:
        top = self.top(10)
        return {"kind": self.kind, "title": self.title, "unit": self.unit,
                "n": int(self.values.numel()), "top": [[str(e), round(v, 6)] for e, v in top]}

    def ranked(self) -> RankedEdges:
        """Every edge, largest |score| first (ties in index order), as a lazy sequence:
        `ranked()[:k]` is `top(k)` and an `Edge` is made only for the rows read, so it is
        cheap at GPT-2 XL size (2.2M edges) unless the whole of it is iterated."""
        return RankedEdges(self)

    def top(self, k: int) -> list[tuple[Edge, float]]:
        """The `k` edges with the largest |score|, largest first, ties in index order: the same
        as `ranked()[:k]`, found with one `torch.topk` instead of sorting every edge."""
        return self.rows(top_indices(self.values, k))

    def above(self, threshold: float) -> list[tuple[Edge, float]]:
        """Every edge with |score| >= `threshold`, ranked like `ranked()`."""
        mag = magnitude(self.values)
        chosen = (mag >= threshold).nonzero().flatten()
        order = torch.argsort(mag[chosen], descending=True, stable=True)
        return self.rows(chosen[order])

    def rows(self, indices: Tensor) -> list[tuple[Edge, float]]:
        """(edge, score) at each index in `indices`, in that order."""
        values = self.values.detach().flatten()
        picked = values[indices].tolist()
        return [(self.graph.edges[i], float(v)) for i, v in zip(indices.tolist(), picked,
                                                                 strict=True)]


class RankedEdges(Sequence[tuple[Edge, float]]):
    """`EdgeScores.ranked()`: (edge, score) pairs by |score|, made on demand. A prefix slice
    (`[:k]`) runs one `topk`; any other index or slice sorts the scores once (cached); iterating
    walks that order in chunks. Compares equal to a list of the same pairs."""

    __slots__ = ("_scores", "_order")
    CHUNK = 4096

    def __init__(self, scores: EdgeScores) -> None:
        self._scores = scores
        self._order: Tensor | None = None

    def __len__(self) -> int:
        return int(self._scores.values.numel())

    def _sorted(self) -> Tensor:
        if self._order is None:
            self._order = top_indices(self._scores.values, len(self))
        return self._order

    @overload
    def __getitem__(self, i: int) -> tuple[Edge, float]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[Edge, float]]: ...
    def __getitem__(self, i: int | slice) -> tuple[Edge, float] | list[tuple[Edge, float]]:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if start == 0 and step == 1 and self._order is None:
                return self._scores.top(stop)
            return self._scores.rows(self._sorted()[start:stop:step])
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"rank {i} out of range for {n} edges")
        return self._scores.rows(self._sorted()[i % n: i % n + 1])[0]

    def __iter__(self) -> Iterator[tuple[Edge, float]]:
        order = self._sorted()
        for at in range(0, len(order), self.CHUNK):
            yield from self._scores.rows(order[at: at + self.CHUNK])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RankedEdges | list | tuple):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RankedEdges({len(self)} edges)"


def magnitude(values: Tensor) -> Tensor:
    """|values| as a flat float32 tensor, NaN counted as the largest (how scores are ranked)."""
    return values.detach().flatten().float().abs().nan_to_num(nan=math.inf)


def top_indices(values: Tensor, k: int) -> Tensor:
    """Indices of the `k` largest |values|, largest first, ties broken by index (exactly a
    stable descending argsort cut at `k`) without sorting the rest: one `topk` finds the
    k-th magnitude, then only the entries at least that large are sorted."""
    mag = magnitude(values)
    k = max(0, min(int(k), mag.numel()))
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    if k == mag.numel():
        return torch.argsort(mag, descending=True, stable=True)
    kth = torch.topk(mag, k, sorted=False).values.min()
    above = (mag > kth).nonzero().flatten()
    ties = (mag == kth).nonzero().flatten()[: k - above.numel()]
    chosen = torch.cat([above, ties]).sort().values  # index order, so the sort below is stable
    return chosen[torch.argsort(mag[chosen], descending=True, stable=True)]


@dataclass(frozen=True)
class Table:
    """A labelled 2-D table (heatmaps: patching by layer x position, logit lens, attention)."""

    title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: Tensor  # (len(rows), len(cols))
    unit: str = ""
    kind: str = "table"
    metric: str | None = None  # the metric the scores are in (None: none used)

    def summary(self) -> dict[str, Any]:
        flat = self.values.flatten().abs().argsort(descending=True)[:5].tolist()
        n = len(self.cols)
        return {"kind": self.kind, "title": self.title, "shape": list(self.values.shape),
                "max": [[self.rows[i // n], self.cols[i % n],
                         round(float(self.values.flatten()[i]), 6)] for i in flat]}


@dataclass(frozen=True)
class Curve:
    """Lines over a shared x axis (performance vs number of heads, per-digit curves)."""

    title: str
    x_label: str
    x: tuple[float, ...]
    ys: dict[str, tuple[float, ...]]
    y_label: str = ""
    kind: str = "curve"
    metric: str | None = None  # the metric the scores are in (None: none used)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "n": len(self.x),
                "last": {k: round(v[-1], 6) for k, v in self.ys.items() if v}}


@dataclass(frozen=True)
class CircuitResult:
    """A circuit found by a method (ACDC, pruning, masks)."""

    title: str
    circuit: Circuit
    kind: str = "circuit"
    metric: str | None = None  # the metric the scores are in (None: none used)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "nodes": len(self.circuit.nodes),
                "edges": len(self.circuit.edges)}


@dataclass(frozen=True)
class Composite:
    """Several views of one run (pruning: the circuit, survival frequencies, the curve)."""

    title: str
    parts: tuple[tuple[str, Any], ...]  # (name, result); the first with scores feeds `select`
    kind: str = "composite"
    metric: str | None = None  # the metric the scores are in (None: none used)

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title,
                "parts": {name: part.summary() for name, part in self.parts}}


Result = NodeScores | EdgeScores | Table | Curve | CircuitResult | Composite


# -- techniques and the registry ---------------------------------------------------------------


@dataclass(frozen=True)
class Technique:
    """One method: `name` is its command word and registry key (`dla`, `patch`, `eap`...)."""

    name: str
    title: str
    Params: type
    run: Callable[[Context, Any], Result]
    cost: str = ""  # in forward-pass equivalents, for `help run NAME`
    # Forward-pass equivalents per prompt for these params, known before running: the session
    # refuses a run past `settings.max_work` prompt-forwards (None: cheap, not checked).
    estimate: Callable[[Context, Any], float] | None = None

    def params(self, options: dict[str, str]) -> Any:
        """Coerce `key=value` strings into this technique's `Params`."""
        fields = {f.name: f for f in dataclasses.fields(self.Params)}
        hints = typing.get_type_hints(self.Params, include_extras=True)
        typed = {}
        for key, value in options.items():
            if key not in fields:
                near = difflib.get_close_matches(key, fields, n=1)
                hint = f"did you mean {near[0]}?" if near else \
                    f"options: {', '.join(fields) or 'none'}"
                raise WorkbenchError(f"{self.name} has no option {key!r}: {hint}")
            typed[key] = coerce(value, hints[key], f"{self.name} option {key}")
        try:
            return self.Params(**typed)
        except (TypeError, ValueError) as exc:
            raise WorkbenchError(f"{self.name}: {exc}") from None


def load_registry(builtins: tuple[str, ...] = BUILTINS) -> dict[str, Technique]:
    """Built-in techniques plus those registered under the `workbench.plugins` entry point."""
    registry: dict[str, Technique] = {}
    origin: dict[str, str] = {}

    def add(tech: Any, where: str) -> None:
        if not isinstance(tech, Technique):
            raise WorkbenchError(f"plugin {where} does not provide a Technique")
        if tech.name in registry:
            raise WorkbenchError(f"technique name {tech.name!r} is registered twice "
                                 f"({origin[tech.name]} and {where}); rename one")
        registry[tech.name], origin[tech.name] = tech, where

    for module in builtins:
        add(importlib.import_module(module).TECHNIQUE, module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        add(ep.load(), f"entry point {ep.name} ({ep.value})")
    return registry


@dataclass(frozen=True)
class Selection:
    """What `select` made: the circuit, and how many chosen edges were dropped because they
    no longer connect `input` to `logits`."""

    circuit: Circuit
    dropped: int = 0
    note: str = ""


def select(result: Result, graph: Graph, top: int | None = None,
           threshold: float | None = None, name: str = "") -> Selection:
    """A circuit from a result. A circuit result (ACDC, mask, prune) is its own circuit (top=
    and threshold= are not needed; given, they are not used and the note says so). Node
    scores: the `top` largest |scores|, or all with |score| >= threshold, with every graph
    edge between them. Edge scores: the same cut, then only the edges on a path from input
    to logits (`graph.connected`). A result with its own `select` (feature_attr's feature
    graph) makes its circuit itself."""
    if callable(getattr(result, "select", None)):
        return Selection(result.select(top, threshold, name))  # type: ignore[union-attr]
    if isinstance(result, Composite):
        first = next((p for _, p in result.parts if not isinstance(p, Table | Curve)), None)
        if first is None:
            raise WorkbenchError("this result has no scores or circuit to select from")
        return select(first, graph, top, threshold, name)
    if isinstance(result, CircuitResult):
        given = top is not None or threshold is not None  # old session files say top=1
        return Selection(result.circuit, note="a circuit result selects itself; top= and "
                         "threshold= are not used" if given else "")
    if isinstance(result, NodeScores):
        ranked = [(k, v) for k, v in result.ranked() if k not in ("input", "logits")]
        keep = _cut(ranked, top, threshold, result.kind)
        nodes = [parse_node(k).base() for k, _ in keep]
        circuit = Circuit.from_nodes(nodes, graph, name=name)
        return Selection(Circuit(nodes=circuit.nodes, edges=circuit.edges,
                                 scores={k: v for k, v in keep}, name=name))
    if isinstance(result, EdgeScores):
        if top is None and threshold is None:
            _cut([], top, threshold, result.kind)  # raises: scores are not a circuit
        cut = result.top(top) if top is not None else result.above(threshold)  # type: ignore[arg-type]
        score = dict(cut)
        kept, dropped = connected(e for e, _ in cut)
        return Selection(Circuit.from_edges(kept, scores={str(e): score[e] for e in kept},
                                            name=name), len(dropped))
    raise WorkbenchError(f"a {result.kind} result has no scores to select from; "
                         "use select NODE... instead")


def select_circuit(result: Result, graph: Graph, top: int | None = None,
                   threshold: float | None = None, name: str = "") -> Circuit:
    """`select(...).circuit`."""
    return select(result, graph, top, threshold, name).circuit


def _cut(ranked: list[Any], top: int | None, threshold: float | None, kind: str
         ) -> list[Any]:
    if top is not None:
        return ranked[:top]
    if threshold is not None:
        return [(k, v) for k, v in ranked if abs(v) >= threshold]
    raise WorkbenchError(f"select: this result holds {kind.replace('_', ' ')}, not a circuit; "
                         "give top=K or threshold=T")
