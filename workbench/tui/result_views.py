"""Results as plain display data: ranked rows, heatmap cells, resampled curves (no Textual).

Where it sits: the results pane renders what these functions return for the selected result
(`r<n>`); they only reshape a result's numbers (tensors to lists, top-k, resampling to the
pane's width) so the widget never handles tensors.

Invariant: every function is pure and cheap: at most a sort of one result's node scores;
edge scores (2.2M at GPT-2 XL) only through `topk` and masks, never one object per edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from workbench.plugins import (
    CircuitResult,
    Curve,
    EdgeScores,
    NodeScores,
    Result,
    Table,
    top_indices,
)
from workbench.tui.score_search import edge_mask, node_matches


@dataclass(frozen=True)
class Ranked:
    title: str
    unit: str
    rows: tuple[tuple[str, float], ...]  # (name, score), largest |score| first
    total: int  # how many scores the result has
    scale: float  # largest |score| shown
    query: str = ""  # the search the rows answer ("" = none: the top of everything)
    matched: int = 0  # how many scores the query matched


@dataclass(frozen=True)
class Heatmap:
    title: str
    unit: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    scale: float  # largest |value| (colours are symmetric around 0)


@dataclass(frozen=True)
class Plot:
    title: str
    x_label: str
    x_range: tuple[float, float]
    series: tuple[tuple[str, tuple[float, ...], float, float], ...]  # (name, ys, lo, hi)


def ranked(result: NodeScores | EdgeScores, k: int = 40, query: str = "") -> Ranked:
    """The `k` largest |scores|, or the `k` largest among those `query` matches (see
    `score_search`). Edge scores go through `EdgeScores.top` / a mask: never a sort of, or an
    object per, every edge."""
    if isinstance(result, NodeScores):
        items = list(result.scores.items())
        if query.strip():
            hits = node_matches(query, [name for name, _ in items])
            items = [kv for kv, hit in zip(items, hits, strict=True) if hit]
        matched = len(items)
        rows = sorted(items, key=lambda kv: (-abs(kv[1]), kv[0]))[:k]
        total = len(result.scores)
    else:
        total = int(result.values.numel())
        if query.strip():
            chosen = edge_mask(result.graph, query).nonzero().flatten()
            matched = int(chosen.numel())
            picked = chosen[top_indices(result.values.flatten()[chosen], k)]
            rows = list(result.rows(picked))
        else:
            matched, rows = total, list(result.top(k))
    shown = tuple((str(name), float(v)) for name, v in rows)
    scale = max((abs(v) for _, v in shown), default=0.0)
    return Ranked(result.title, result.unit, shown, total, scale, query.strip(), matched)


def heatmap(table: Table) -> Heatmap:
    values = tuple(tuple(float(x) for x in row) for row in table.values.tolist())
    finite = [abs(x) for row in values for x in row if math.isfinite(x)]
    return Heatmap(table.title, table.unit, tuple(table.rows), tuple(table.cols), values,
                   max(finite, default=0.0))


def plot(curve: Curve, width: int = 60) -> Plot:
    """Each series resampled to at most `width` points (by nearest index)."""
    n = len(curve.x)
    picks = list(range(n)) if n <= width else [round(i * (n - 1) / (width - 1))
                                                  for i in range(width)]
    series = []
    for name, ys in curve.ys.items():
        pts = tuple(float(ys[i]) for i in picks if i < len(ys))
        finite = [y for y in pts if math.isfinite(y)]
        series.append((name, pts, min(finite, default=0.0), max(finite, default=0.0)))
    x_range = (float(curve.x[0]), float(curve.x[-1])) if n else (0.0, 0.0)
    return Plot(curve.title, curve.x_label, x_range, tuple(series))


def parts_of(result: Any) -> list[tuple[str, Any]]:
    """A result's views: its `parts` for a composite result (pruning: circuit, frequencies,
    curve), else the result itself under its kind."""
    parts = getattr(result, "parts", None)
    if isinstance(parts, tuple):
        return [(str(name), part) for name, part in parts]
    return [(str(getattr(result, "kind", "result")), result)]


def node_scores_of(result: Any) -> NodeScores | None:
    """The node scores that colour the head grid: the result's own, or its first part's."""
    return next((p for _, p in parts_of(result) if isinstance(p, NodeScores)), None)


def circuit_of(result: Any) -> CircuitResult | None:
    """The circuit a result found (itself or one of its parts), for the graph pane."""
    return next((p for _, p in parts_of(result) if isinstance(p, CircuitResult)), None)


def describe(rid: str, result: Result) -> str:
    """One line naming a result, for the results pane header."""
    return f"{rid} {result.kind.replace('_', ' ')}: {result.title}"


