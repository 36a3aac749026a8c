"""Every result's natural figure, as plain data: line plots, heatmaps, bar charts, circuits.

Where it sits: between results and the two things that draw them -- `figures_mpl` (matplotlib
files for `export r<n> FILE.png|svg|pdf`) and the TUI's plot and train tabs (`tui/plots`).
This module decides *what* to draw; it imports neither matplotlib nor Textual.

1. `Curve` -> `Lines` (prune's performance vs components left, mask training curves).
2. `NodeScores` over heads and MLPs -> a layer x head `Heat` (signed colour scale when any score
   is negative; the MLP is the last column); other node scores -> `Bars` of the largest |score|.
3. `EdgeScores` -> `Bars` of the top edges by |score|.
4. `Table` -> `Heat` (attention patterns query x key, logit lens layer x position, patching);
   a table over a numeric axis (years 00..99, steps) -> `Lines`, one per row.
5. `CircuitResult` -> `CircuitFig`; `Composite` -> `Panels` of its parts.

Invariant: pure and deterministic: the same result gives an equal figure (no dict-order or
float-formatting surprises: scores are sorted by |value| then name).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError
from workbench.graph import Circuit, parse_node
from workbench.plugins import CircuitResult, Composite, Curve, EdgeScores, NodeScores, Table

TOP_BARS = 30  # bars shown for rankings
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")


@dataclass(frozen=True)
class Lines:
    title: str
    x_label: str
    y_label: str
    x: tuple[float, ...]
    series: tuple[tuple[str, tuple[float, ...]], ...]
    log_y: bool = False
    shelves: tuple[tuple[str, float, float, float], ...] = ()  # (series, x0, x1, level)
    marks: tuple[float, ...] = ()  # vertical lines (e.g. saved checkpoints)
    notes: tuple[tuple[float, float, str], ...] = ()  # (x, y, text) written on the plot


@dataclass(frozen=True)
class Heat:
    title: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]  # NaN where there is no value
    unit: str = ""
    signed: bool = True  # colours symmetric around 0 (else 0 .. max)
    x_label: str = ""
    y_label: str = ""
    annotate: bool = True  # write the values in the cells (small tables only)
    limit: float = 0.0  # fixed colour-scale end (probabilities: 1.0); 0: the largest |value|

    @property
    def scale(self) -> float:
        if self.limit > 0:
            return self.limit
        finite = [abs(v) for row in self.values for v in row if math.isfinite(v)]
        return max(finite, default=0.0)


@dataclass(frozen=True)
class Bars:
    title: str
    labels: tuple[str, ...]
    values: tuple[float, ...]
    unit: str = ""
    total: int = 0  # how many there were before the top ones were picked


@dataclass(frozen=True)
class CircuitFig:
    title: str
    circuit: Circuit


@dataclass(frozen=True)
class Panels:
    title: str
    parts: tuple[Figure, ...]
    ncols: int = 0  # 0: one column for one part, else two
    panel: tuple[float, float] = (0.0, 0.0)  # inches per panel; 0: the renderer's default


Figure = Lines | Heat | Bars | CircuitFig | Panels


def figure_of(result: Any) -> Figure:
    """The natural figure of a result (or of one part of a composite)."""
    if isinstance(result, Composite):
        parts = tuple(figure_of(part) for _, part in result.parts)
        return Panels(result.title, parts)
    if isinstance(result, Curve):
        return Lines(result.title, result.x_label, result.y_label, tuple(result.x),
                     tuple((name, tuple(float(v) for v in ys)) for name, ys in result.ys.items()))
    if isinstance(result, NodeScores):
        return head_heat(result) or _bars(result.title, result.ranked(), result.unit)
    if isinstance(result, EdgeScores):
        top = result.top(TOP_BARS)  # one topk, not a sort of every edge (2.2M at XL)
        return Bars(result.title, tuple(str(e) for e, _ in top), tuple(v for _, v in top),
                    result.unit, int(result.values.numel()))
    if isinstance(result, Table):
        return table_figure(result)
    if isinstance(result, CircuitResult):
        return CircuitFig(result.title, result.circuit)
    raise WorkbenchError(f"no figure for a {type(result).__name__}")


def _bars(title: str, ranked: list[tuple[str, float]], unit: str) -> Bars:
    top = ranked[:TOP_BARS]
    return Bars(title, tuple(k for k, _ in top), tuple(float(v) for _, v in top), unit,
                len(ranked))


def head_heat(scores: NodeScores) -> Heat | None:
    """Layer x head heatmap (MLP last column) when every score is on a head or an MLP."""
    cells: dict[tuple[int, int | None], float] = {}
    for name, value in scores.scores.items():
        if name in ("input", "logits"):
            continue
        try:
            node = parse_node(name)
        except WorkbenchError:
            return None
        if node != node.base() or node.kind not in ("attn", "mlp") or node.layer is None:
            return None
        cells[(node.layer, node.index if node.kind == "attn" else None)] = float(value)
    if not cells:
        return None
    n_layers = max(layer for layer, _ in cells) + 1
    n_heads = max((h for _, h in cells if h is not None), default=-1) + 1
    has_mlp = any(h is None for _, h in cells)
    cols = tuple(f"h{h}" for h in range(n_heads)) + (("mlp",) if has_mlp else ())
    values = tuple(
        tuple(cells.get((layer, h), math.nan) for h in [*range(n_heads), *([None] if has_mlp
                                                                             else [])])
        for layer in range(n_layers))
    signed = any(v < 0 for v in cells.values())
    return Heat(scores.title, tuple(f"L{layer}" for layer in range(n_layers)), cols, values,
                scores.unit, signed, "head", "layer")


def table_figure(table: Table) -> Lines | Heat:
    values = tuple(tuple(float(v) for v in row) for row in table.values.tolist())
    if len(table.cols) >= 8 and all(_NUMBER.fullmatch(c.strip()) for c in table.cols):
        x = tuple(float(c) for c in table.cols)
        return Lines(table.title, "", table.unit, x, tuple(zip(table.rows, values, strict=True)))
    attention = table.title.startswith("attention pattern")
    signed = any(v < 0 for row in values for v in row if math.isfinite(v))
    return Heat(table.title, tuple(table.rows), tuple(table.cols), values, table.unit, signed,
                "key" if attention else "", "query" if attention else "")
