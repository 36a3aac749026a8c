"""Circuit graph: the selected circuit (or two compared) drawn as a layered DAG in the terminal.

Where it sits: the third tab on the right. Nodes are boxes filled by kind (input white,
attention cyan, MLP magenta, logits green, neurons blue, features yellow), one row per sublayer
(`input` at the bottom, `logits` at the top); edges are braille lines running up from a source
to its receiver, q/k/v edges ending at the left/middle/right of a head's box in their own
colours, strong edges bold and weak ones dim (|score| relative to the largest). After
`compare c1 c2` the union is drawn and each node is marked `*` (in both), `¹` or `²` (only in
one). Positions come from Graphviz `dot` when installed, else grandalf (`workbench.layered`).

Keys (when the pane has focus): arrows select a node (its edges are drawn bold on top and
listed under the picture), `f` dims every other edge, `h j k l` pan, `+ -` zoom, `0` resets,
`e`/`E` draw more / fewer edges. Large circuits draw the top `MAX_EDGES` edges by |score| and
say how many are hidden; nothing here is a widget per node or edge.

Invariant: drawing only; which nodes and edges come from `graph_layout`, positions from
`layered` (cached per circuit), pixels from `graph_canvas`.
"""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widget import Widget

from workbench.graph import Node, parse_node
from workbench.layered import Layered, layout, rank_label
from workbench.tui.graph_canvas import FILL, PORT_STYLE, DrawEdge, DrawNode, Picture, draw
from workbench.tui.graph_layout import GraphLayout
from workbench.tui.keys import bindings

MARK = {"": "", "both": "*", "a": "¹", "b": "²"}  # after the name
MAX_EDGES = 200  # edges drawn by default (the largest |score| first)
MAX_LIST = 8  # edges listed per direction under the picture
LABEL_W = 7  # row labels at the left
ZOOMS = (0.6, 1.0, 1.5, 2.2, 3.2)


class GraphView(Widget, can_focus=True):
    BINDINGS = bindings("graph")
    DEFAULT_CSS = """
    GraphView { height: 1fr; padding: 0 1; }
    GraphView:focus { background: $boost; }
    """

    class NextCircuit(Message):
        """The user asked to show the next circuit."""

    class OpenNode(Message):
        """The user asked to open the selected node (the app runs feature_info on features)."""

        def __init__(self, node: str) -> None:
            super().__init__()
            self.node = node

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.picture: GraphLayout | None = None
        self.selected: int = 0
        self.zoom = 1  # index into ZOOMS
        self.pan = (0, 0)  # (columns, rows) scrolled
        self.dim_rest = False
        self.max_edges = MAX_EDGES
        self._placed: tuple[int, int, Layered, list[DrawNode], list[DrawEdge]] | None = None
        self.last: Picture | None = None  # the picture last rendered (tests look at it)

    def show(self, layout: GraphLayout | None) -> None:
        keep = self.selected_name
        if layout is not self.picture:
            self._placed = None
        self.picture = layout
        order = layout.order if layout else ()
        self.selected = order.index(keep) if keep in order else 0
        self.refresh(layout=True)

    @property
    def selected_name(self) -> str | None:
        if self.picture is None or not self.picture.n_nodes:
            return None
        return self.picture.order[self.selected % self.picture.n_nodes]

    # -- actions ------------------------------------------------------------------------------

    def action_step(self, delta: int) -> None:
        if self.picture is not None and self.picture.n_nodes:
            self.selected = (self.selected + delta) % self.picture.n_nodes
            self.refresh()

    def action_next_circuit(self) -> None:
        self.post_message(self.NextCircuit())

    def action_open_node(self) -> None:
        if self.selected_name is not None:
            self.post_message(self.OpenNode(self.selected_name))

    def action_pan(self, dx: int, dy: int) -> None:
        self.pan = (max(0, self.pan[0] + dx), max(0, self.pan[1] + dy))
        self.refresh()

    def action_zoom(self, step: int) -> None:
        self.zoom = 1 if step == 0 else max(0, min(len(ZOOMS) - 1, self.zoom + step))
        if step == 0:
            self.pan = (0, 0)
        self.refresh()

    def action_focus_mode(self) -> None:
        self.dim_rest = not self.dim_rest
        self.refresh()

    def action_more_edges(self, factor: float) -> None:
        self.max_edges = max(10, min(5000, round(self.max_edges * factor)))
        self._placed = None
        self.refresh()

    # -- drawing ------------------------------------------------------------------------------

    def placed(self) -> tuple[Layered, list[DrawNode], list[DrawEdge], int]:
        """Positions for the current circuit's drawn nodes and edges (cached); and the total
        number of edges."""
        lay = self.picture
        assert lay is not None
        if self._placed is None or self._placed[0] != id(lay) or \
                self._placed[1] != self.max_edges:
            top = lay.top_edges(self.max_edges)
            biggest = max((abs(s) for *_, s in top if s is not None), default=0.0)
            edges = [DrawEdge(src, dst, port, 1.0 if s is None or biggest == 0
                              else abs(s) / biggest) for src, dst, port, s in top]
            names = set(lay.order) if lay.n_nodes <= 4 * MAX_EDGES else \
                {e.src for e in edges} | {e.dst for e in edges}
            laid = [n for n in lay.nodes.values() if n.name in names]
            nodes = [DrawNode(n.name, n.kind, n.name + MARK[n.where],
                              "italic" if n.where == "b" else "") for n in laid]
            parsed: list[Node] = [parse_node(n.name) for n in laid]
            widths = {n.name: len(n.label) + 2.0 for n in nodes}
            positions = layout(parsed, [(e.src, e.dst) for e in edges], widths=widths)
            self._placed = (id(lay), self.max_edges, positions, nodes, edges)
        _, _, positions, nodes, edges = self._placed
        return positions, nodes, edges, lay.n_edges

    def render(self) -> Text:
        lay = self.picture
        if lay is None:
            return Text("no circuit yet: try  select r1 top=5  or  compare c1 c2", style="dim")
        positions, nodes, edges, total = self.placed()
        chosen = self.selected_name
        width = max(20, self.size.width - LABEL_W - 2)
        height = max(6, self.size.height - 6)
        n_rows = len({positions.nodes[n.name].rank for n in nodes})
        fit_gap = max(1, min(6, (height - n_rows) // max(1, n_rows - 1)))
        scale = ZOOMS[self.zoom]
        gap = max(1, round(fit_gap * scale)) if scale < 1 else \
            max(1, round(fit_gap + (scale - 1) * 3))
        n_layers = (positions.n_ranks - 2) // 2
        labels = {r: rank_label(r, n_layers) for r in range(positions.n_ranks)}
        pic = draw(nodes, edges, positions, labels, width=round(width * scale), gap=gap,
                   focus=chosen, dim_rest=self.dim_rest)
        self.last = pic
        out = Text()
        out.append(lay.title + "\n", style="bold")
        hidden = total - pic.n_edges
        out.append(f"{pic.n_edges} of {total} edges drawn", style="bold" if hidden else "dim")
        if hidden:
            out.append(f" (top {pic.n_edges} by |score|; {hidden} hidden, e: more)",
                       style="yellow")
        out.append(f"   layout {positions.engine}, zoom {scale:g}x", style="dim")
        out.append("\n")
        x0 = min(self.pan[0], max(0, pic.width - width))
        y0 = min(self.pan[1], max(0, pic.height - height))
        row_names = dict(pic.rows)
        for y in range(y0, min(pic.height, y0 + height)):
            out.append(f"{row_names.get(y, ''):>{LABEL_W - 1}} ", style="dim")
            out.append_text(pic.lines[y][x0:x0 + width])
            out.append("\n")
        out.append_text(self._legend(lay))
        if chosen:
            out.append_text(self._edges(lay, chosen))
        return out

    def _legend(self, lay: GraphLayout) -> Text:
        out = Text()
        kinds = sorted({n.kind for n in lay.nodes.values()},
                       key=lambda k: list(FILL).index(k) if k in FILL else 99)
        for kind in kinds:
            out.append(f" {kind} ", style=FILL.get(kind, "reverse"))
            out.append(" ")
        for port in ("q", "k", "v"):
            out.append("⣿", style=PORT_STYLE[port])
            out.append(f"{port} ")
        out.append("⣿", style=PORT_STYLE[""])
        out.append("resid  ")
        if lay.legend:
            out.append(lay.legend, style="dim")
        return out

    def _edges(self, lay: GraphLayout, chosen: str) -> Text:
        incoming, outgoing = lay.edges_of(chosen)
        out = Text()
        out.append(f"\n{chosen}", style="bold reverse")
        for label, edges in (("in", incoming), ("out", outgoing)):
            out.append(f"  {label} ({len(edges)}): ", style="bold")
            shown = [str(e) for e in edges[:MAX_LIST]]
            out.append(", ".join(shown), style="bold yellow")
            if len(edges) > MAX_LIST:
                out.append(f", ... {len(edges) - MAX_LIST} more", style="dim")
        return out
