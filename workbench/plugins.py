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
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import torch
from torch import Tensor

from workbench.ablation import Ablation, AblationEngine
from workbench.errors import WorkbenchError
from workbench.features.replacement import DictionarySet
from workbench.forward import Mode
from workbench.graph import Circuit, Edge, Graph, parse_node
from workbench.metrics import MetricName
from workbench.model import LoadedModel
from workbench.tasks import PromptSet, coerce
from workbench.tasks.encode import EncodedPrompts

BUILTINS = (
    "plugins.dla", "plugins.eap", "plugins.eap_ig", "plugins.acdc", "plugins.logit_lens",
    "plugins.attn", "plugins.ov_copy", "plugins.ablate_each", "plugins.patch",
    "plugins.path_patch", "plugins.prune", "plugins.mask", "plugins.feature_attr",
    "plugins.feature_info",
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

    def summary(self) -> dict[str, Any]:
        top = self.ranked()[:10]
        return {"kind": self.kind, "title": self.title, "unit": self.unit,
                "n": int(self.values.numel()), "top": [[str(e), round(v, 6)] for e, v in top]}

    def ranked(self) -> list[tuple[Edge, float]]:
        values = self.values.detach()
        order = torch.argsort(values.abs(), descending=True, stable=True)
        return [(self.graph.edges[i], float(values[i])) for i in order.tolist()]


@dataclass(frozen=True)
class Table:
    """A labelled 2-D table (heatmaps: patching by layer x position, logit lens, attention)."""

    title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: Tensor  # (len(rows), len(cols))
    unit: str = ""
    kind: str = "table"

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

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "n": len(self.x),
                "last": {k: round(v[-1], 6) for k, v in self.ys.items() if v}}


@dataclass(frozen=True)
class CircuitResult:
    """A circuit found by a method (ACDC, pruning, masks)."""

    title: str
    circuit: Circuit
    kind: str = "circuit"

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "nodes": len(self.circuit.nodes),
                "edges": len(self.circuit.edges)}


@dataclass(frozen=True)
class Composite:
    """Several views of one run (pruning: the circuit, survival frequencies, the curve)."""

    title: str
    parts: tuple[tuple[str, Any], ...]  # (name, result); the first with scores feeds `select`
    kind: str = "composite"

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

    def params(self, options: dict[str, str]) -> Any:
        """Coerce `key=value` strings into this technique's `Params`."""
        fields = {f.name: f for f in dataclasses.fields(self.Params)}
        hints = typing.get_type_hints(self.Params)
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


def select_circuit(result: Result, graph: Graph, top: int | None = None,
                   threshold: float | None = None, name: str = "") -> Circuit:
    """Turn scores into a circuit: the `top` largest |scores|, or all with |score| >= threshold."""
    if callable(getattr(result, "select", None)):  # results that make their own circuits
        return result.select(top, threshold, name)  # type: ignore[union-attr, no-any-return]
    if isinstance(result, Composite):
        first = next((p for _, p in result.parts if not isinstance(p, Table | Curve)), None)
        if first is None:
            raise WorkbenchError("this result has no scores or circuit to select from")
        return select_circuit(first, graph, top, threshold, name)
    if isinstance(result, CircuitResult):
        return result.circuit
    if isinstance(result, NodeScores):
        ranked = [(k, v) for k, v in result.ranked() if k not in ("input", "logits")]
        keep = _cut(ranked, top, threshold)
        nodes = [parse_node(k).base() for k, _ in keep]
        circuit = Circuit.from_nodes(nodes, graph, name=name)
        return Circuit(nodes=circuit.nodes, edges=circuit.edges,
                       scores={k: v for k, v in keep}, name=name)
    if isinstance(result, EdgeScores):
        keep = _cut(result.ranked(), top, threshold)
        return Circuit.from_edges([e for e, _ in keep],
                                  scores={str(e): v for e, v in keep}, name=name)
    raise WorkbenchError(f"a {result.kind} result has no scores to select from; "
                         "use select NODE... instead")


def _cut(ranked: list[Any], top: int | None, threshold: float | None) -> list[Any]:
    if top is not None:
        return ranked[:top]
    if threshold is not None:
        return [(k, v) for k, v in ranked if abs(v) >= threshold]
    raise WorkbenchError("select needs top=K or threshold=T")
