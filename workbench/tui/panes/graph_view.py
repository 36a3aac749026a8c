"""Circuit graph: a circuit (or two compared) drawn layer by layer in the terminal.

Where it sits: the third tab on the right. Rows are `logits` at the top, then layers from the
last down, then `input`; node names are coloured by kind (input yellow, attention cyan, MLP
magenta, logits green, neurons/features blue). One node is selected (arrow keys when the pane
has focus): it is shown reversed, its neighbours underlined, and its incoming and outgoing
edges are listed under the picture. After `compare c1 c2` the union is drawn and each node is
marked `*` (in both), `¹` or `²` (only in one).

Invariant: drawing only; the layout comes from `graph_layout`, the circuits from the session.
"""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widget import Widget

from workbench.tui.graph_layout import GraphLayout, LaidNode
from workbench.tui.keys import bindings

KIND_STYLE = {"input": "yellow", "attn": "cyan", "mlp": "magenta", "logits": "green",
              "neuron": "blue", "feature": "blue"}
MARK = {"": "", "both": "*", "a": "¹", "b": "²"}  # after the name
MAX_EDGES = 12


class GraphView(Widget, can_focus=True):
    BINDINGS = bindings("graph")
    DEFAULT_CSS = """
    GraphView { height: auto; padding: 0 1; }
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

    def show(self, layout: GraphLayout | None) -> None:
        keep = self.selected_name
        self.picture = layout
        order = layout.order if layout else ()
        self.selected = order.index(keep) if keep in order else 0
        self.refresh(layout=True)

    @property
    def selected_name(self) -> str | None:
        if self.picture is None or not self.picture.n_nodes:
            return None
        return self.picture.order[self.selected % self.picture.n_nodes]

    def action_step(self, delta: int) -> None:
        if self.picture is not None and self.picture.n_nodes:
            self.selected = (self.selected + delta) % self.picture.n_nodes
            self.refresh(layout=True)

    def action_next_circuit(self) -> None:
        self.post_message(self.NextCircuit())

    def action_open_node(self) -> None:
        if self.selected_name is not None:
            self.post_message(self.OpenNode(self.selected_name))

    def render(self) -> Text:
        lay = self.picture
        if lay is None:
            return Text("no circuit yet: try  select r1 top=5  or  compare c1 c2", style="dim")
        chosen = self.selected_name
        near = lay.neighbours(chosen) if chosen else frozenset()
        out = Text()
        out.append(lay.title + "\n", style="bold")
        for label, nodes in lay.rows:
            out.append(f"{label:>6}  ", style="dim")
            for node in nodes:
                out.append_text(self._node(node, chosen, near))
                out.append(" ")
            out.append("\n")
        if lay.legend:
            out.append(lay.legend + "\n", style="dim")
        if chosen:
            out.append_text(self._edges(lay, chosen))
        return out

    def _node(self, node: LaidNode, chosen: str | None, near: frozenset[str]) -> Text:
        style = KIND_STYLE.get(node.kind, "")
        if node.name == chosen:
            style += " reverse bold"
        elif node.name in near:
            style += " underline"
        if node.where == "b":
            style += " italic"
        return Text(node.name + MARK[node.where], style=style.strip())

    def _edges(self, lay: GraphLayout, chosen: str) -> Text:
        incoming, outgoing = lay.edges_of(chosen)
        out = Text()
        for label, edges in (("in", incoming), ("out", outgoing)):
            out.append(f"\n{label} ({len(edges)}): ", style="bold")
            shown = [str(e) for e in edges[:MAX_EDGES]]
            out.append(", ".join(shown), style="bold yellow")
            if len(edges) > MAX_EDGES:
                out.append(f", ... {len(edges) - MAX_EDGES} more", style="dim")
        return out
