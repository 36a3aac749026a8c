"""Plots in the terminal: the selected result's figure (plot tab) and a training run (train tab).

Where it sits: the fourth and fifth tabs on the right. What to draw comes from
`workbench.figures` (the same figure `export r<n> FILE.png` writes) and `workbench.training`;
this module only puts it on screen:
- `Lines` (prune's performance vs components, logits over YY, training curves) -> a plotext plot
  (textual-plotext), log scale where the figure asks, loss shelves listed under it;
- `Heat` (layer x head scores, attention patterns, logit lens, confusion) -> coloured cells with a
  signed red/blue scale (0 .. max for unsigned), row and column labels;
- `Bars` -> signed bars; `CircuitFig` -> a pointer to the graph tab; `Panels` -> one per part.

Invariant: rendering only; a figure is rebuilt only when the selected result (or the loaded
model's run) changes, never per frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static
from textual_plotext import PlotextPlot

from workbench.errors import WorkbenchError
from workbench.figures import Bars, CircuitFig, Figure, Heat, Lines, Panels, figure_of

PLOT_HEIGHT = 16
COLOURS = ("blue", "orange", "green", "red", "magenta", "cyan", "yellow", "gray")
NAME_W = 16


def heat_text(fig: Heat, cell: int | None = None) -> Text:
    """A heatmap as Rich text: one coloured block per value (truecolour, signed or not); small
    tables carry their values in the cells."""
    cell = cell or (6 if len(fig.cols) <= 10 else 3)
    numbers = cell >= 6 and fig.annotate
    out = Text()
    out.append(fig.title + (f" ({fig.unit})" if fig.unit else "") +
               f"; |max| {fig.scale:.4g}\n", style="bold")
    label = min(NAME_W, max((len(r) for r in fig.rows), default=1))
    long = any(len(c) > cell - 1 for c in fig.cols)
    cols = [str(i) for i in range(len(fig.cols))] if long else list(fig.cols)
    out.append(" " * (label + 1) + "".join(f"{c:>{cell}}" for c in cols) + "\n", style="dim")
    for name, row in zip(fig.rows, fig.values, strict=True):
        shown = name if len(name) <= label else name[:label - 1] + "…"
        out.append(f"{shown:>{label}} ", style="bold")
        for v in row:
            text = (f"{v:+.2g}".center(cell) if numbers else " " * cell) if math.isfinite(v) \
                else "?".center(cell)
            out.append(text, style=_colour(v, fig.scale, fig.signed))
        out.append("\n")
    out.append(" " * (label + 1))
    ticks = (-1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0) if fig.signed else (0.0, 0.25, 0.5, 0.75, 1.0)
    for t in ticks:
        out.append(" " * cell, style=_colour(t, 1.0, fig.signed))
    out.append("  -max .. +max" if fig.signed else "  0 .. max", style="dim")
    if long and len(fig.cols) <= 40:
        out.append("\ncolumns: " + "  ".join(f"{i}={c}" for i, c in enumerate(fig.cols)),
                   style="dim")
    if fig.x_label or fig.y_label:
        out.append(f"\nrows: {fig.y_label or '-'}   columns: {fig.x_label or '-'}", style="dim")
    return out


def _colour(value: float, scale: float, signed: bool) -> str:
    if not math.isfinite(value) or scale <= 0:
        return "dim"
    rel = max(-1.0, min(1.0, value / scale))
    if signed:  # white at 0, red positive, blue negative
        fade = round(255 * (1 - abs(rel)))
        rgb = (255, fade, fade) if rel >= 0 else (fade, fade, 255)
        ink = "white" if abs(rel) > 0.6 else "black"
    else:  # dark blue .. yellow
        rgb = (round(30 + 225 * rel), round(30 + 200 * rel), round(90 * (1 - rel)))
        ink = "black" if rel > 0.5 else "white"
    return f"{ink} on rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def bars_text(fig: Bars, width: int = 30) -> Text:
    out = Text()
    shown = f"top {len(fig.labels)} of {fig.total} by |score|" if fig.total > len(fig.labels) \
        else f"{len(fig.labels)} values"
    out.append(f"{fig.title}: {shown}" + (f" ({fig.unit})" if fig.unit else "") + "\n",
               style="bold")
    top = max((abs(v) for v in fig.values), default=0.0)
    label = min(NAME_W, max((len(n) for n in fig.labels), default=4))
    for name, v in zip(fig.labels, fig.values, strict=True):
        n = round(abs(v) / top * width) if top > 0 else 0
        out.append(f"{name[:label]:<{label}} {v:+9.4g} ")
        out.append("█" * n, style="green" if v >= 0 else "red")
        out.append("\n")
    return out


class LinesPlot(PlotextPlot):
    """One `Lines` figure on a plotext canvas."""

    DEFAULT_CSS = f"LinesPlot {{ height: {PLOT_HEIGHT}; }}"

    def __init__(self, fig: Lines) -> None:
        super().__init__()
        self.fig = fig

    def on_mount(self) -> None:
        super().on_mount()
        plt, fig = self.plt, self.fig
        plt.clear_figure()
        plt.title(fig.title)
        plt.xlabel(fig.x_label)
        # Log scale by hand (plotext's own re-applies the log on every redraw).
        tf = (lambda y: math.log10(y)) if fig.log_y else (lambda y: y)
        lows: list[float] = []
        for i, (name, ys) in enumerate(fig.series):
            pts = [(x, tf(y)) for x, y in zip(fig.x, ys, strict=False)
                   if math.isfinite(y) and (y > 0 or not fig.log_y)]
            if pts:
                plt.plot([p[0] for p in pts], [p[1] for p in pts], label=name,
                         color=COLOURS[i % len(COLOURS)], marker="braille")
                lows += [p[1] for p in pts]
        for name, x0, x1, level in fig.shelves:  # each shelf: a white bar at its level
            plt.plot([x0, x1], [tf(level), tf(level)], color="white", marker="hd",
                     label=f"shelf {name}")
        if fig.log_y and lows:
            ticks = list(range(math.floor(min(lows)), math.ceil(max(lows)) + 1))
            plt.yticks(ticks, [f"1e{t}" for t in ticks])
        for x in fig.marks:
            plt.vline(x, "gray")


def widgets_for(fig: Figure) -> list[Widget]:
    """The widgets that show `fig` (panels: each part in turn)."""
    if isinstance(fig, Panels):
        out: list[Widget] = [Static(Text(fig.title, style="bold underline"))]
        for part in fig.parts:
            out += widgets_for(part)
        return out
    if isinstance(fig, Lines):
        return [LinesPlot(fig)]
    if isinstance(fig, Heat):
        return [Static(heat_text(fig))]
    if isinstance(fig, Bars):
        return [Static(bars_text(fig))]
    if isinstance(fig, CircuitFig):
        c = fig.circuit
        return [Static(Text(f"{fig.title}: {len(c.nodes)} nodes, {len(c.edges)} edges -- "
                            "drawn in the graph tab (3)", style="dim"))]
    return [Static(f"no view for {type(fig).__name__}")]


class FigurePane(VerticalScroll):
    """Shows one figure; `show` replaces it (only when given something new)."""

    DEFAULT_CSS = "FigurePane { padding: 0 1; }"

    def __init__(self, empty: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.empty = empty
        self.key: Any = object()
        self.figure: Figure | None = None

    def on_mount(self) -> None:
        self.mount(Static(Text(self.empty, style="dim")))

    def show(self, key: Any, build: Callable[[], tuple[Figure | None, str | None]]) -> None:
        """Show what `build()` returns -- called only when `key` differs from the last one."""
        if key == self.key:
            return
        figure, note = build()
        self.key, self.figure = key, figure
        self.remove_children()
        if figure is None:
            self.mount(Static(Text(note or self.empty, style="dim")))
            return
        if note:
            self.mount(Static(Text(note, style="dim")))
        self.mount_all(widgets_for(figure))


def result_key(rid: str | None, result: Any) -> Any:
    return None if rid is None or result is None else (rid, id(result))


def result_figure(rid: str | None, result: Any) -> tuple[Figure | None, str | None]:
    """(figure, note) for the plot tab."""
    if rid is None or result is None:
        return (None, None)
    try:
        return (figure_of(result), f"{rid}: {getattr(result, 'title', '')}"
                f"   (export {rid} FILE.png writes this figure)")
    except WorkbenchError as exc:
        return (None, str(exc))


def run_of(directory: Path | None) -> tuple[Path | None, int | None]:
    """The training run a model directory belongs to, and the step when it is a checkpoint
    saved by `--save-every` (`load RUN step=N`)."""
    if directory is not None and directory.parent.name == "checkpoints":
        digits = directory.name.rsplit("-", 1)[-1]
        return directory.parent.parent, int(digits) if digits.isdigit() else None
    return directory, None


def train_figure(directory: Path | None) -> tuple[Figure | None, str | None]:
    """(figure, note) for the train tab: the loaded model's training run, if it has one."""
    from workbench.training import curves_figure, read_log, shelf_lines

    directory, step = run_of(directory)
    if directory is None or not (directory / "train_log.jsonl").is_file():
        return (None, "the loaded model has no training log (train_log.jsonl): load a model "
                "trained by  workbench train  (e.g. load add3)")
    try:
        log = read_log(directory)
    except WorkbenchError as exc:
        return (None, str(exc))
    shelves = shelf_lines(log)
    note = f"training run {directory.name}: {len(log.steps)} logged steps, {log.n_digits} " \
        "answer digits" + ("".join(f"\nshelf {s}" for s in shelves) if shelves else "")
    if step is not None:
        note += f"\nloaded: the checkpoint at step {step} (grey line)"
    return (curves_figure(log, marks=(step,) if step else ()), note)
