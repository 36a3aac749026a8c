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
from textual import events, on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static

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
TOP = 40  # rows in a ranked list (the largest |scores|, or the largest matching the search)


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
    unit = f" ({view.unit})" if view.unit else ""
    if view.query and not view.matched:
        out.append(f"nothing matches {view.query!r} (of {view.total:,}): names are like a9.1, "
                   "m3, a3.0->a9.1<q>; patterns a3?.*, m*, a*.*->m9\n", style="dim")
    elif view.query:
        out.append(f"top {len(view.rows)} of {view.matched:,} matching {view.query!r} "
                   f"(of {view.total:,}) by |score|{unit}\n", style="dim")
    else:
        out.append(f"top {len(view.rows)} of {view.total:,} by |score|{unit}\n", style="dim")
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


def render_result(result: Result, query: str = "", top: int = TOP) -> Text:
    """The result's views; `query` (see `score_search`) narrows its ranked lists."""
    parts = parts_of(result)
    if len(parts) == 1:
        return render_part(parts[0][1], query, top)
    out = Text()
    for name, part in parts:
        out.append(f"\n{name}: {getattr(part, 'title', '')}\n", style="bold underline")
        out.append_text(render_part(part, query, top))
    return out


def render_part(result: object, query: str = "", top: int = TOP) -> Text:
    if getattr(result, "kind", "") == "feature_graph":  # feature_attr: its kept nodes, ranked
        result = NodeScores(result.title, dict(result.ranked()),  # type: ignore[attr-defined]
                            result.unit)  # type: ignore[attr-defined]
    if isinstance(result, NodeScores | EdgeScores):
        return render_ranked(ranked(result, top, query))
    if isinstance(result, Table):
        return render_heatmap(heatmap(result))
    if isinstance(result, Curve):
        return render_plot(plot(result))
    if isinstance(result, CircuitResult):
        c = result.circuit
        return Text(f"{len(c.nodes)} nodes, {len(c.edges)} edges: see the graph tab (3)")
    return Text(f"no view for a {type(result).__name__}")


class ResultsPane(VerticalScroll):
    """Header, a search box (Ctrl+F; Enter searches and returns to the grid, empty shows the
    top of everything, Esc leaves it) and the body: one `Static` holding the whole rendered
    text, however many scores the result has."""

    DEFAULT_CSS = """
    ResultsPane { padding: 0 1; }
    ResultsPane > #result-title { color: $text-muted; }
    ResultsPane > #result-search { border: none; height: 1; padding: 0; margin: 0 0 1 0; }
    """

    class Left(Message):
        """The user is done with the search box (Enter or Esc): the app focuses the grid."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rid: str | None = None
        self.query = ""
        self.renders = 0  # bodies rendered (tests: switching panes must not re-render)
        self._shown: tuple[object, ...] | None = None
        self._result: Result | None = None

    def compose(self) -> ComposeResult:
        yield Static("no results yet: try  run dla", id="result-title")
        yield Input(placeholder="search: a3?.*  m1*  a*.*->a9.1<q>  (Enter; empty = top "
                    f"{TOP})", id="result-search")
        yield Static("", id="result-body")

    def show(self, rid: str | None, result: Result | None, index: int, count: int,
             made_by: str = "") -> None:
        """Show result `rid`; `made_by` names the model and dtype that produced it."""
        self.rid = rid
        title = self.query_one("#result-title", Static)
        body = self.query_one("#result-body", Static)
        if rid is None or result is None:
            title.update("no results yet: try  run dla")
            body.update("")
            self._shown = self._result = None
            return
        origin = f"{made_by}; " if made_by else ""
        title.update(f"{describe(rid, result)}   ({origin}{index + 1} of {count}; [ ] to switch)")
        key = (rid, id(result), self.query)
        if key != self._shown:  # a toggle re-shows the same result: nothing to redo
            self._shown = key
            self.renders += 1
            body.update(render_result(result, self.query))
        self._result = result

    def search(self, query: str) -> None:
        """Narrow the ranked lists to names matching `query` ("" shows the top again)."""
        self.query = query.strip()
        self.query_one("#result-search", Input).value = self.query
        result = self._result
        if self._shown is not None and result is not None:
            self._shown = (self._shown[0], id(result), self.query)
            self.renders += 1
            self.query_one("#result-body", Static).update(render_result(result, self.query))

    @on(Input.Submitted, "#result-search")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.search(event.value)
        self.post_message(self.Left())  # keys (`:`, toggles) work again; Ctrl+F refines

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.query_one("#result-search", Input).has_focus:
            event.stop()
            self.post_message(self.Left())
