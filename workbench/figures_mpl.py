"""Draw a `figures.Figure` to PNG, SVG or PDF bytes with matplotlib (Agg, headless).

Where it sits: `export r<n> FILE.png|svg|pdf` and `workbench plot-train` call `save`; what to
draw comes from `workbench.figures` (results) or `workbench.training` (runs). No pyplot: one
`matplotlib.figure.Figure` per call, so nothing global leaks between calls or threads.

Deterministic: the same figure gives byte-identical files -- PNG without the Software tag, SVG
without its date and with a fixed `svg.hashsalt` (element ids), PDF without creation/modification
dates or producer; fonts are matplotlib's bundled DejaVu; sizes and dpi are fixed.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError
from workbench.figures import Bars, CircuitFig, Figure, Heat, Lines, Panels
from workbench.graph import write_atomic

FORMATS = ("png", "svg", "pdf")
DPI = 100
PANEL = (6.4, 4.4)  # inches per panel
RC = {"svg.hashsalt": "circuit-workbench", "svg.fonttype": "path", "pdf.fonttype": 3,
      "font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10,
      "figure.dpi": DPI, "savefig.dpi": DPI, "path.simplify": True}
METADATA: dict[str, dict[str, Any]] = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Creator": None, "Producer": None},
}
KIND_COLOURS = {"input": "#d9d9d9", "attn": "#9ecae1", "mlp": "#fdae6b", "neuron": "#fdd0a2",
                "feature": "#a1d99b", "logits": "#bcbddc"}  # as in the Graphviz export
PORT_COLOURS = {"": "#525252", "q": "#e6550d", "k": "#31a354", "v": "#756bb1"}
MAX_CIRCUIT_EDGES = 400
SERIES = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as `fmt` ('png', 'svg' or 'pdf') bytes."""
    if fmt not in FORMATS:
        raise WorkbenchError(f"cannot draw a figure as .{fmt}: use .png, .svg or .pdf")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    parts = fig.parts if isinstance(fig, Panels) else (fig,)
    ncols = 1 if len(parts) == 1 else 2
    size = PANEL
    if isinstance(fig, Panels):
        ncols = min(fig.ncols, len(parts)) if fig.ncols else ncols
        size = fig.panel if fig.panel[0] > 0 else PANEL
    nrows = math.ceil(len(parts) / ncols)
    with matplotlib.rc_context(RC):
        out = MplFigure(figsize=(size[0] * ncols, size[1] * nrows), dpi=DPI,
                        layout="constrained")
        FigureCanvasAgg(out)
        if isinstance(fig, Panels):
            out.suptitle(fig.title, fontsize=11)
        for i, part in enumerate(parts):
            _draw(out, out.add_subplot(nrows, ncols, i + 1), part)
        buf = io.BytesIO()
        out.savefig(buf, format=fmt, metadata=METADATA[fmt])
    return buf.getvalue()


def save(fig: Figure, path: str | Path) -> Path:
    """Write the figure to `path`, the format from its suffix; atomically."""
    path = Path(path)
    return write_atomic(path, render(fig, path.suffix.lower().lstrip(".")))


def _draw(out: Any, ax: Any, part: Figure) -> None:
    if isinstance(part, Lines):
        _lines(ax, part)
    elif isinstance(part, Heat):
        _heat(out, ax, part)
    elif isinstance(part, Bars):
        _bars(ax, part)
    elif isinstance(part, CircuitFig):
        _circuit(ax, part)
    elif isinstance(part, Panels):  # nested composite: draw its first part, name the rest
        _draw(out, ax, part.parts[0]) if part.parts else ax.set_axis_off()


def _lines(ax: Any, fig: Lines) -> None:
    colour = {name: SERIES[i % len(SERIES)] for i, (name, _) in enumerate(fig.series)}
    for x in fig.marks:
        ax.axvline(x, color="#bdbdbd", linewidth=0.8, linestyle=":", zorder=0)
    for name, ys in fig.series:
        xs = fig.x[:len(ys)]
        ax.plot(xs, ys, label=name, color=colour[name], linewidth=1.4,
                marker="o" if len(xs) <= 40 else None, markersize=3)
    for name, x0, x1, level in fig.shelves:
        ax.axvspan(x0, x1, color=colour.get(name, "#999999"), alpha=0.08, linewidth=0)
        ax.hlines(level, x0, x1, colors=colour.get(name, "#999999"), linestyles="--",
                  linewidth=1.0)
    for x, y, text in fig.notes:
        ax.annotate(text, (x, y), xytext=(2, 4), textcoords="offset points", fontsize=8,
                    color="#252525")
    if fig.log_y:
        ax.set_yscale("log")
    ax.set_title(fig.title)
    ax.set_xlabel(fig.x_label)
    ax.set_ylabel(fig.y_label)
    ax.grid(True, alpha=0.3)
    if len(fig.series) > 1:
        ax.legend(fontsize=8, loc="best")


def _heat(out: Any, ax: Any, fig: Heat) -> None:
    import numpy as np

    values = np.array(fig.values, dtype=float) if fig.values else np.zeros((0, 0))
    masked = np.ma.masked_invalid(values)
    scale = fig.scale or 1.0
    if fig.signed:
        image = ax.imshow(masked, cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto",
                          interpolation="nearest")
    else:
        image = ax.imshow(masked, cmap="viridis", vmin=0.0, vmax=scale, aspect="auto",
                          interpolation="nearest")
    _ticks(ax.set_xticks, ax.set_xticklabels, fig.cols, rotate=any(len(c) > 3 for c in fig.cols))
    _ticks(ax.set_yticks, ax.set_yticklabels, fig.rows)
    if fig.annotate and values.size and values.size <= 120:
        for (r, c), v in np.ndenumerate(values):
            if math.isfinite(v):
                dark = abs(v) / scale > 0.6 if fig.signed else v / scale < 0.5
                ax.text(c, r, f"{v:.2g}", ha="center", va="center", fontsize=7,
                        color="white" if dark else "black")
    ax.set_title(fig.title)
    ax.set_xlabel(fig.x_label)
    ax.set_ylabel(fig.y_label)
    out.colorbar(image, ax=ax, label=fig.unit, shrink=0.9)


def _ticks(set_ticks: Any, set_labels: Any, labels: tuple[str, ...], rotate: bool = False) -> None:
    step = max(1, math.ceil(len(labels) / 40))
    at = list(range(0, len(labels), step))
    set_ticks(at)
    set_labels([labels[i] for i in at], rotation=90 if rotate else 0, fontsize=7)


def _bars(ax: Any, fig: Bars) -> None:
    ys = list(range(len(fig.labels)))
    colours = ["#31a354" if v >= 0 else "#de2d26" for v in fig.values]
    ax.barh(ys, fig.values, color=colours)
    ax.set_yticks(ys)
    ax.set_yticklabels(fig.labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="#525252", linewidth=0.8)
    shown = f"top {len(fig.labels)} of {fig.total} by |score|" if fig.total > len(fig.labels) \
        else ""
    ax.set_title(fig.title + (f"\n{shown}" if shown else ""))
    ax.set_xlabel(fig.unit)
    ax.grid(True, axis="x", alpha=0.3)


def _circuit(ax: Any, fig: CircuitFig) -> None:
    from workbench.layered import layout, rank_label

    circuit = fig.circuit
    scores = circuit.scores
    edges = circuit.edges
    if len(edges) > MAX_CIRCUIT_EDGES:  # the largest |score| first, then drawn in order
        edges = tuple(sorted(sorted(edges, key=lambda e: -abs(scores.get(str(e), 0.0)))[
            :MAX_CIRCUIT_EDGES], key=lambda e: e.sort_key()))
    nodes = list(circuit.nodes)
    if len(circuit.edges) > len(edges):  # keep the picture readable: nodes of the edges drawn
        keep = {str(e.src) for e in edges} | {str(e.dst.with_port(None)) for e in edges}
        nodes = [n for n in nodes if str(n) in keep]
    ends = [e.ends() for e in edges]
    lay = layout(nodes, [(s, d) for s, d, _ in ends])
    ranks = sorted({p.rank for p in lay.nodes.values()})
    y_of = {r: i for i, r in enumerate(ranks)}
    xs = [p.x for p in lay.nodes.values()] + [x for b in lay.bends for _, x in b]
    lo, hi = min(xs, default=0.0), max(xs, default=1.0)

    def fx(x: float) -> float:
        return (x - lo) / (hi - lo) if hi > lo else 0.5

    top = max((abs(scores[str(e)]) for e in edges if str(e) in scores), default=0.0)
    for edge, (src, dst, port), bends in zip(edges, ends, lay.bends, strict=True):
        pts = [(fx(lay.nodes[src].x), y_of[lay.nodes[src].rank])]
        pts += [(fx(x), y_of[r]) for r, x in bends if r in y_of]
        shift = {"q": -0.015, "k": 0.0, "v": 0.015}.get(port, 0.0)  # q/k/v end apart
        pts.append((fx(lay.nodes[dst].x) + shift, y_of[lay.nodes[dst].rank] - 0.12 * bool(port)))
        score = scores.get(str(edge))
        width = 0.6 + 2.4 * abs(score) / top if score is not None and top > 0 else 0.9
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=PORT_COLOURS.get(port, "#525252"),
                linewidth=width, alpha=0.75, zorder=1)
    for node in nodes:
        p = lay.nodes[str(node)]
        ax.text(fx(p.x), y_of[p.rank], str(node), ha="center", va="center", fontsize=8, zorder=2,
                bbox={"boxstyle": "round,pad=0.3", "facecolor": KIND_COLOURS.get(node.kind,
                                                                                 "white"),
                      "edgecolor": "#525252", "linewidth": 0.8})
    n_layers = (lay.n_ranks - 2) // 2
    ax.set_yticks(list(range(len(ranks))))
    ax.set_yticklabels([rank_label(r, n_layers) for r in ranks], fontsize=7)
    ax.set_xticks([])
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.6, len(ranks) - 0.4)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    hidden = len(circuit.edges) - len(edges)
    ax.set_title(fig.title + (f"\n{len(edges)} of {len(circuit.edges)} edges drawn"
                              if hidden else ""))
    for port, colour in PORT_COLOURS.items():
        ax.plot([], [], color=colour, label=port or "resid")
    ax.legend(fontsize=7, loc="upper left", ncols=4, frameon=False)
