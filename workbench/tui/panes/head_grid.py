"""Head grid: layers x heads (plus an MLP column), each cell a toggle.

Where it sits: the left of the main screen. The app feeds it a `GridView` (which cells are
ablated, the selected result's node scores); the grid only draws it and reports a toggle
with the `Toggled` message -- the app turns that into `ablate aL.H` / `restore aL.H` through
`Session.execute`, so it lands in the log. Arrow keys (or hjkl) move the cursor, Enter/Space
toggle, a mouse click toggles the clicked cell.

Cells: `x` marks an ablated component, `~` one ablated only in part (some positions, a q/k/v
input, some neurons). With a node-score result selected each cell shows its score, and its
colour encodes sign (green up, red down) and size relative to the largest |score| -- named ANSI
colours only, so 16-colour terminals show the same picture.

Invariant: the grid never calls the session; it has no state besides its cursor.
"""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.geometry import Region, Size
from textual.message import Message
from textual.widget import Widget

from workbench.tui.keys import bindings
from workbench.tui.views import GridView

LABEL = 5  # "L11  "
CELL = 7  # " x+0.16": a gap, the ablation mark, a 5-character score


def _fmt(score: float) -> str:
    """A score in 5 characters."""
    if abs(score) >= 99.5:
        return f"{score:+.0e}".replace("e+0", "e")[:5]
    if abs(score) >= 9.95:
        return f"{score:+5.0f}"
    return f"{score:+5.2f}" if abs(score) < 0.995 else f"{score:+5.1f}"


def _score_style(score: float, scale: float) -> str:
    if scale <= 0:
        return ""
    rel = abs(score) / scale
    colour = "green" if score >= 0 else "red"
    if rel >= 0.66:
        return f"black on bright_{colour}"
    if rel >= 0.33:
        return f"black on {colour}"
    return colour if rel >= 0.1 else "dim"


class HeadGrid(Widget, can_focus=True):
    """The toggle grid. `cursor` is (column, layer); column `n_heads` is the MLP."""

    BINDINGS = bindings("grid")
    DEFAULT_CSS = """
    HeadGrid { width: auto; height: auto; padding: 0 1 0 0; }
    HeadGrid:focus { background: $boost; }
    """

    class Toggled(Message):
        """The user asked to flip `node` (`aL.H` or `mL`); `ablated` is its state now."""

        def __init__(self, node: str, ablated: bool) -> None:
            super().__init__()
            self.node = node
            self.ablated = ablated

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view: GridView | None = None
        self.cursor: tuple[int, int] = (0, 0)
        self.placeholder = "loading the model..."

    def show(self, view: GridView | None, placeholder: str = "") -> None:
        self.view = view
        self.placeholder = placeholder or self.placeholder
        if view is not None:
            col, row = self.cursor
            self.cursor = (min(col, view.n_heads), min(row, max(view.n_layers - 1, 0)))
        self.refresh(layout=True)

    @property
    def cursor_node(self) -> str | None:
        if self.view is None or self.view.n_layers == 0:
            return None
        col, row = self.cursor
        return GridView.cell(row, col, self.view.n_heads)

    # -- drawing ----------------------------------------------------------------------------

    def get_content_width(self, container: Size, viewport: Size) -> int:
        v = self.view
        return LABEL + CELL * ((v.n_heads if v else 4) + 1)

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return 2 + (self.view.n_layers if self.view else 1)

    def render(self) -> Text:
        v = self.view
        if v is None:
            return Text(self.placeholder, style="dim")
        out = Text(no_wrap=True)
        out.append(" " * LABEL)
        for h in range(v.n_heads):
            out.append(f"{'h' + str(h):>{CELL}}", style="bold")
        out.append(f"{'mlp':>{CELL}}\n", style="bold")
        for layer in range(v.n_layers):
            out.append(f"L{layer:<{LABEL - 1}}", style="bold")
            for col in range(v.n_heads + 1):
                out.append_text(self._cell(v, layer, col))
            out.append("\n")
        caption = v.title or "no node scores selected"
        out.append(caption[: LABEL + CELL * (v.n_heads + 1)], style="dim italic")
        return out

    def _cell(self, v: GridView, layer: int, col: int) -> Text:
        name = GridView.cell(layer, col, v.n_heads)
        mark = "x" if name in v.ablated else ("~" if name in v.partial else " ")
        score = v.scores.get(name)
        body = _fmt(score) if score is not None else ("  off" if mark == "x" else "   on")
        style = _score_style(score, v.scale) if score is not None else (
            "bold red" if mark == "x" else ("yellow" if mark == "~" else "green"))
        if mark == "x" and score is not None:
            style += " strike"
        if (col, layer) == self.cursor and self.has_focus:
            style += " reverse"
        elif (col, layer) == self.cursor:
            style += " underline"
        return Text(" ") + Text(mark + body, style=style.strip())

    # -- input -------------------------------------------------------------------------------

    def action_move(self, dx: int, dy: int) -> None:
        if self.view is None:
            return
        col, row = self.cursor
        col = (col + dx) % (self.view.n_heads + 1)
        row = min(max(row + dy, 0), max(self.view.n_layers - 1, 0))
        self.cursor = (col, row)
        self._scroll_to_cursor()
        self.refresh()

    def action_flip(self) -> None:
        node = self.cursor_node
        if node is None or self.view is None:
            return
        self.post_message(self.Toggled(node, node in self.view.ablated))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or self.view is None:
            return
        col, row = (offset.x - LABEL) // CELL, offset.y - 1
        if offset.x >= LABEL and 0 <= col <= self.view.n_heads and \
                0 <= row < self.view.n_layers:
            self.cursor = (col, row)
            self.focus()
            self.action_flip()
            self.refresh()

    def _scroll_to_cursor(self) -> None:
        col, row = self.cursor
        parent = self.parent
        if isinstance(parent, Widget) and parent.is_scrollable:
            parent.scroll_to_region(Region(LABEL + CELL * col, 1 + row, CELL, 1),
                                    animate=False, immediate=True)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
