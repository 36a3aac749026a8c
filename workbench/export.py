"""Export a circuit: deterministic Graphviz DOT, JSON, and SVG/PNG rendered by Graphviz's `dot`.

Rendering stage only: it reads a finished `Circuit` (names, edges, scores) and never computes.
The picture is layered bottom-up like the residual stream: `input` at the bottom, then one row
per sublayer (layer L's heads, then layer L's MLP), `logits` at the top. Colours are fixed per
node kind; edge width grows with |score|; q/k/v ports are edge labels; nodes shared with another
circuit (when comparing) get a double border.

Invariant: the same circuit always gives byte-identical DOT (sorted nodes and edges, fixed
colours, no timestamps), so exports diff cleanly. Files are written atomically.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import graphviz

from workbench.errors import WorkbenchError
from workbench.graph import Circuit, Kind, Node, write_atomic

SUFFIXES: tuple[str, ...] = (".dot", ".json", ".svg", ".png")
COLOURS: dict[Kind, str] = {
    "input": "#d9d9d9",  # grey
    "attn": "#9ecae1",  # blue
    "mlp": "#fdae6b",  # orange
    "neuron": "#fdd0a2",  # light orange: part of an MLP
    "feature": "#a1d99b",  # green
    "logits": "#bcbddc",  # purple
}
POSITIVE, NEGATIVE = "#404040", "#cb181d"  # edge colours by sign of score
MIN_WIDTH, MAX_WIDTH = 1.0, 5.0


def _rank(node: Node) -> tuple[int, int, int]:
    """Row in the picture: input, then per layer the attention row and the MLP row, logits."""
    if node.kind == "input":
        return (0, 0, 0)
    if node.kind == "logits":
        return (2, 0, 0)
    on_attn = node.kind == "attn" or (node.kind == "feature" and node.site == "a")
    return (1, node.layer or 0, 0 if on_attn else 1)


def _rank_name(rank: tuple[int, int, int]) -> str:
    group, layer, sub = rank
    return {0: "input", 2: "logits"}.get(group, f"{'am'[sub]}{layer}")


def _width(score: float, top: float) -> str:
    """Pen width in [MIN_WIDTH, MAX_WIDTH], linear in |score| / the largest |score|."""
    width = MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * abs(score) / top if top > 0 else MIN_WIDTH
    return f"{min(max(width, MIN_WIDTH), MAX_WIDTH):.2f}"


def to_dot(circuit: Circuit, shared: set[str] | None = None) -> str:
    """DOT source for `circuit`; names in `shared` (nodes or edges) are drawn as shared."""
    shared = shared or set()
    scores = circuit.scores
    edge_scores = [abs(scores[str(e)]) for e in circuit.edges if str(e) in scores]
    top = max(edge_scores, default=0.0)
    dot = graphviz.Digraph(
        name=circuit.name or "circuit",
        graph_attr={"rankdir": "BT", "ranksep": "0.5", "nodesep": "0.25"},
        node_attr={"shape": "box", "style": "filled,rounded", "fontname": "Helvetica"},
        edge_attr={"arrowsize": "0.6", "fontname": "Helvetica", "fontsize": "10"},
    )
    rows: dict[tuple[int, int, int], list[Node]] = {}
    for node in circuit.nodes:  # topological order, so rows come out sorted too
        rows.setdefault(_rank(node), []).append(node)
    for rank, members in rows.items():
        with dot.subgraph(name=f"rank_{_rank_name(rank)}") as row:
            row.attr(rank={0: "min", 2: "max"}.get(rank[0], "same"))
            for node in members:
                name = str(node)
                attrs = {"fillcolor": COLOURS[node.kind]}
                if name in scores:
                    attrs["label"] = f"{name}\\n{scores[name]:+.3g}"
                if name in shared:
                    attrs |= {"peripheries": "2", "penwidth": "2"}
                row.node(name, **attrs)
    for edge in circuit.edges:
        src, dst, port = edge.ends()
        attrs = {"label": port} if port else {}
        score = scores.get(str(edge))
        if score is not None:
            attrs |= {"penwidth": _width(score, top), "color": NEGATIVE if score < 0 else POSITIVE}
        if str(edge) in shared:
            attrs["style"] = "bold"
        dot.edge(src, dst, **attrs)
    return dot.source


def render(source: str, fmt: str) -> bytes:
    """Run Graphviz's `dot` on `source`, producing `fmt` ('svg' or 'png') bytes."""
    if shutil.which("dot") is None:
        raise WorkbenchError(
            f"exporting .{fmt} needs Graphviz's dot: install Debian's graphviz package "
            "(apt-get install graphviz)"
        )
    try:
        return graphviz.Source(source).pipe(format=fmt)
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError) as exc:
        detail = (str(exc).strip().splitlines() or ["no output"])[0]
        raise WorkbenchError(f"Graphviz's dot could not render .{fmt}: {detail}") from exc


def export(circuit: Circuit, path: str | Path, shared: set[str] | None = None) -> Path:
    """Write `circuit` to `path` as .dot, .json, .svg or .png (by suffix); return the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return circuit.save(path)
    if suffix == ".dot":
        return write_atomic(path, to_dot(circuit, shared).encode())
    if suffix in (".svg", ".png"):
        return write_atomic(path, render(to_dot(circuit, shared), suffix[1:]))
    raise WorkbenchError(
        f"cannot export to '{path}': unknown suffix {suffix or '(none)'!r}; "
        f"use one of {', '.join(SUFFIXES)}"
    )
