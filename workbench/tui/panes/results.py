"""Result views: the selected result `r<n>` as a ranked list, a heatmap or a plot.

Where it sits: the second tab on the right. `NodeScores` and `EdgeScores` show as ranked lists
with signed bars; a `Table` (patching by layer x position, logit lens, attention) as a heatmap
of coloured blocks; a `Curve` as block-character plots, one per series; a `CircuitResult` as a
summary (its picture is in the graph tab). `[` and `]` switch between results; the selected
result also colours the head grid.

Colours are named ANSI colours (red for negative, green for positive, three strengths) so the
views read the same on 16-colour terminals. Invariant: rendering only; the numbers come
ready-made from `result_views`.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from workbench.plugins import CircuitResult, Curve, EdgeScores, NodeScores, Result, Table
from workbench.tui.result_views import (
    Heatmap,
    Plot,
    Ranked,
    describe,
    heatmap,
    parts_of,
    plot,
    ranked,
)

BLOCKS = " ▁▂▃▄▅▆▇█"
BAR = 14
NAME = 18  # longest name shown in ranked lists
PLOT_HEIGHT = 6


def _shade(value: float, scale: float) -> str:
    if not math.isfinite(value) or scale <= 0:
        return "dim"
    rel = abs(value) / scale
    colour = "green" if value >= 0 else "red"
    if rel >= 0.66:
        return f"on bright_{colour}"
    if rel >= 0.33:
        return f"on {colour}"
    return f"{colour}" if rel >= 0.1 else "dim"


def render_ranked(view: Ranked) -> Text:
    out = Text()
    out.append(f"top {len(view.rows)} of {view.total} by |score|"
               + (f" ({view.unit})" if view.unit else "") + "\n", style="dim")
    width = min(NAME, max((len(name) for name, _ in view.rows), default=4))
    for name, value in view.rows:
        n = round(abs(value) / view.scale * BAR) if view.scale > 0 else 0
        shown = name if len(name) <= width else name[: width - 1] + "…"
        out.append(f"{shown:<{width}} {value:+9.4f} ")
        out.append("█" * n, style="green" if value >= 0 else "red")
        out.append("\n")
    return out


def render_heatmap(view: Heatmap) -> Text:
    out = Text()
    out.append(f"{view.title}" + (f" ({view.unit})" if view.unit else "")
               + f"; |max| {view.scale:.4g}\n", style="dim")
    label = max((len(r) for r in view.rows), default=1)
    short = all(len(c) <= 2 for c in view.cols)
    heads = view.cols if short else tuple(str(i) for i in range(len(view.cols)))
    out.append(" " * (label + 1) + "".join(f"{c[-2:]:>3}" for c in heads) + "\n")
    for name, row in zip(view.rows, view.values, strict=True):
        out.append(f"{name:>{label}} ", style="bold")
        for value in row:
            out.append("   " if math.isfinite(value) else " ? ", style=_shade(value,
                                                                               view.scale))
        out.append("\n")
    out.append("scale: ", style="dim")
    for value in (-1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0):
        out.append("   ", style=_shade(value, 1.0))
    out.append(" -max .. +max", style="dim")
    if not short:
        legend = "  ".join(f"{i}={c}" for i, c in enumerate(view.cols))
        out.append(f"\ncolumns: {legend}", style="dim")
    return out


def render_plot(view: Plot) -> Text:
    out = Text()
    for name, ys, lo, hi in view.series:
        out.append(f"{name}: {lo:.4g} .. {hi:.4g}\n", style="bold")
        span = hi - lo
        levels = [0 if not math.isfinite(y) else (
            PLOT_HEIGHT * 8 if span == 0 else round((y - lo) / span * PLOT_HEIGHT * 8))
            for y in ys]
        for row in range(PLOT_HEIGHT - 1, -1, -1):
            line = "".join(BLOCKS[max(0, min(8, lv - row * 8))] for lv in levels)
            out.append("│" + line + "\n", style="cyan")
        out.append("└" + "─" * len(ys) + "\n", style="dim")
        out.append(f" {view.x_label}: {view.x_range[0]:g} .. {view.x_range[1]:g}\n",
                   style="dim")
    return out


def render_result(result: Result) -> Text:
    parts = parts_of(result)
    if len(parts) == 1:
        return render_part(parts[0][1])
    out = Text()
    for name, part in parts:
        out.append(f"\n{name}: {getattr(part, 'title', '')}\n", style="bold underline")
        out.append_text(render_part(part))
    return out


def render_part(result: object) -> Text:
    if isinstance(result, NodeScores | EdgeScores) or getattr(result, "kind", "") == \
            "feature_graph":
        return render_ranked(ranked(result))  # type: ignore[arg-type]
    if isinstance(result, Table):
        return render_heatmap(heatmap(result))
    if isinstance(result, Curve):
        return render_plot(plot(result))
    if isinstance(result, CircuitResult):
        c = result.circuit
        return Text(f"{len(c.nodes)} nodes, {len(c.edges)} edges: see the graph tab (3)")
    return Text(f"no view for a {type(result).__name__}")


class ResultsPane(VerticalScroll):
    DEFAULT_CSS = """
    ResultsPane { padding: 0 1; }
    ResultsPane > #result-title { color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rid: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("no results yet: try  run dla", id="result-title")
        yield Static("", id="result-body")

    def show(self, rid: str | None, result: Result | None, index: int, count: int) -> None:
        self.rid = rid
        title = self.query_one("#result-title", Static)
        body = self.query_one("#result-body", Static)
        if rid is None or result is None:
            title.update("no results yet: try  run dla")
            body.update("")
            return
        title.update(f"{describe(rid, result)}   ({index + 1} of {count}; [ ] to switch)")
        body.update(render_result(result))
