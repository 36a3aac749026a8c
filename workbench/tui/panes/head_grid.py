"""Head grid: layers x heads (plus an MLP column), each cell a toggle; scrolls at GPT-2 XL size.

Where it sits: the left of the main screen, in a `GridPane` with its find box. The app feeds it
a `GridView` (which cells are ablated, the selected result's node scores); the grid only draws
it and reports what the user asked for with messages -- `Toggled` (one cell) and `AblateShown`
(every cell the filter shows) -- which the app turns into `ablate ...` / `restore ...` command
lines through `Session.execute`, so they land in the log. Moving, jumping and filtering change
only what is shown, never the session.

Keys (ids in `keys.py`, remappable): arrows / hjkl move, PageUp/PageDown move a screen of
layers, Home/End go to the first/last layer, Enter/Space toggle, `/` filters by a name pattern
(fnmatch over canonical names: `a3?.*`, `m*`, `a*.3`; several words = any), `#` jumps to a
layer, Esc clears the filter, `A` ablates every cell the filter shows. A click toggles a cell.

Drawing (Textual's line API): the header row (`h0 h1 ... mlp`) and the caption stay put while
the layers scroll; the layer labels stay put while the heads scroll sideways. Each cell's
segments and each row's strip are cached; a new `GridView` invalidates only the cells whose
mark or score changed (a toggle: one cell) and repaints only their lines.

Cells: `x` marks an ablated component, `~` one ablated only in part (some positions, a q/k/v
input, some neurons), a yellow `…` one just toggled whose command has not finished (at XL size
the forward behind a toggle can take a while on a CPU; the mark shows at once). With a
node-score result selected each cell shows its score, and its colour encodes sign (green up,
red down) and size relative to the largest |score| -- named ANSI colours only, so 16-colour
terminals show the same picture. Cells the filter does not match, in rows and columns it
shows, are drawn as a dim `·`.

Invariant: the grid never calls the session; its own state is the cursor, the filter and the
scroll position.
"""

from __future__ import annotations

from functools import lru_cache

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input

from workbench.tui.keys import bindings
from workbench.tui.score_search import node_matches, words
from workbench.tui.views import GridView

LABEL = 5  # "L11  "
CELL = 7  # " x+0.16": a gap, the ablation mark, a 5-character score

Cell = tuple[int, int]  # (layer, column); column n_heads is the MLP


def _fmt(score: float) -> str:
    """A score in 5 characters (small ones as `+3e-4`, so a reduced-width model's tiny
    scores still read)."""
    if 0 < abs(score) < 0.005:
        text = f"{score:+.0e}".replace("e-0", "e-")
        return text if len(text) <= 5 else f"{score:+5.2f}"
    if abs(score) >= 99.5:
        return f"{score:+.0e}".replace("e+0", "e")[:5].rjust(5)
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


@lru_cache(maxsize=256)
def _style(text: str) -> Style:
    return Style.parse(text) if text else Style()


@lru_cache(maxsize=16)
def _names(n_layers: int, n_heads: int) -> tuple[tuple[str, ...], dict[str, Cell]]:
    """Every cell's name in row-major order, and name -> cell."""
    cells = [(layer, col) for layer in range(n_layers) for col in range(n_heads + 1)]
    names = tuple(GridView.cell(layer, col, n_heads) for layer, col in cells)
    return names, dict(zip(names, cells, strict=True))


class HeadGrid(ScrollView, can_focus=True):
    """The toggle grid. `cursor` is (column, layer); column `n_heads` is the MLP."""

    BINDINGS = bindings("grid")
    DEFAULT_CSS = """
    HeadGrid { width: 1fr; height: auto; max-height: 100%; }
    HeadGrid:focus { background: $boost; }
    """

    class Toggled(Message):
        """The user asked to flip `node` (`aL.H` or `mL`); `ablated` is its state now."""

        def __init__(self, node: str, ablated: bool) -> None:
            super().__init__()
            self.node = node
            self.ablated = ablated

    class AblateShown(Message):
        """The user asked to ablate every cell the filter shows (`nodes`, none ablated yet)."""

        def __init__(self, nodes: tuple[str, ...]) -> None:
            super().__init__()
            self.nodes = nodes

    class Find(Message):
        """The user asked for the find box: `mode` is `filter` or `jump`."""

        def __init__(self, mode: str) -> None:
            super().__init__()
            self.mode = mode

    class Said(Message):
        """Something to tell the user in one line (a filter matched nothing...)."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view: GridView | None = None
        self.cursor: tuple[int, int] = (0, 0)
        self.placeholder = "loading the model..."
        self.pattern = ""  # the filter ("" = every cell)
        self.rows_shown: tuple[int, ...] = ()  # layers shown, in order
        self.cols_shown: tuple[int, ...] = ()  # columns shown, in order
        self.matched: frozenset[Cell] | None = None  # None: no filter, every cell matches
        self.cells_built = 0  # cell renders since start (tests: a toggle redraws one cell)
        self.pending: dict[str, bool] = {}  # toggled, command not shown yet: name -> ablated?
        self._cells: dict[Cell, list[Segment]] = {}
        self._rows: dict[int, Strip] = {}
        self._header: Strip | None = None
        self.virtual_size = Size(len(self.placeholder) + 1, 1)

    # -- data in ----------------------------------------------------------------------------

    def show(self, view: GridView | None, placeholder: str = "") -> None:
        """Show `view`; only cells whose mark or score changed are redrawn."""
        old, self.view = self.view, view
        self.placeholder = placeholder or self.placeholder
        if view is None:
            self._reset()
            return
        if old is None or (old.n_layers, old.n_heads) != (view.n_layers, view.n_heads):
            self._reset(keep_filter=old is not None and self.pattern != "")
            return
        changed = set(old.ablated ^ view.ablated) | set(old.partial ^ view.partial)
        if old.scale != view.scale:
            changed |= set(old.scores) | set(view.scores)
        elif old.scores is not view.scores:
            changed |= {n for n in set(old.scores) | set(view.scores)
                        if old.scores.get(n) != view.scores.get(n)}
        done = {n for n, want in self.pending.items() if (n in view.ablated) == want}
        for name in done:
            del self.pending[name]
        _, where = _names(view.n_layers, view.n_heads)
        self._invalidate([where[n] for n in changed | done if n in where])
        if old.title != view.title:
            self.refresh()  # the caption

    def settle(self) -> None:
        """Nothing is queued any more: drop marks of toggles that did not happen (failed)."""
        if self.pending and self.view is not None:
            _, where = _names(self.view.n_layers, self.view.n_heads)
            stale, self.pending = list(self.pending), {}
            self._invalidate([where[n] for n in stale if n in where])

    def _reset(self, keep_filter: bool = False) -> None:
        v = self.view
        self.pending = {}
        self._cells.clear()
        self._rows.clear()
        self._header = None
        if v is not None:
            col, row = self.cursor
            self.cursor = (min(col, v.n_heads), min(row, max(v.n_layers - 1, 0)))
            if not (keep_filter and self.apply_filter(self.pattern)):
                self._set_filter("", None)
        else:
            self.rows_shown, self.cols_shown = (), ()
            self.virtual_size = Size(len(self.placeholder) + 1, 1)
        self.refresh(layout=True)

    def wanted_width(self) -> int:
        """Columns the whole grid needs (labels, every shown column, a scrollbar)."""
        return LABEL + CELL * len(self.cols_shown) + 2 if self.cols_shown else 0

    def drawn(self, name: str) -> str:
        """The text the cell `name` was last drawn with ("" if not drawn since it changed)."""
        if self.view is None:
            return ""
        cell = _names(self.view.n_layers, self.view.n_heads)[1].get(name)
        return "".join(seg.text for seg in self._cells.get(cell, [])) if cell else ""

    @property
    def cursor_node(self) -> str | None:
        if self.view is None or self.view.n_layers == 0:
            return None
        col, row = self.cursor
        return GridView.cell(row, col, self.view.n_heads)

    # -- filter and jump ---------------------------------------------------------------------

    def apply_filter(self, pattern: str) -> bool:
        """Show only the cells `pattern` matches (and their layers and columns); "" shows all.
        Returns False (and keeps the current filter) when nothing matches."""
        v = self.view
        if v is None:
            return False
        if not words(pattern):
            self._set_filter("", None)
            return True
        names, where = _names(v.n_layers, v.n_heads)
        hits = frozenset(where[n] for n, hit in zip(names, node_matches(pattern, list(names)),
                                                    strict=True) if hit)
        if not hits:
            self.post_message(self.Said(f"no cell matches {pattern.strip()!r} (cells are "
                                        "named like a3.1 and m3; try a3?.* or m*)"))
            return False
        self._set_filter(" ".join(words(pattern)), hits)
        self.post_message(self.Said(f"filter {self.pattern!r}: {len(hits)} cells in "
                                    f"{len(self.rows_shown)} layers (Esc clears)"))
        return True

    def _set_filter(self, pattern: str, hits: frozenset[Cell] | None) -> None:
        v = self.view
        assert v is not None
        self.pattern, self.matched = pattern, hits
        if hits is None:
            self.rows_shown = tuple(range(v.n_layers))
            self.cols_shown = tuple(range(v.n_heads + 1))
        else:
            self.rows_shown = tuple(sorted({layer for layer, _ in hits}))
            self.cols_shown = tuple(sorted({col for _, col in hits}))
        self._cells.clear()
        self._rows.clear()
        self._header = None
        self.virtual_size = Size(LABEL + CELL * len(self.cols_shown) + 1,
                                 len(self.rows_shown) + 2)
        col, row = self.cursor
        if (row, col) not in (hits if hits is not None else {(row, col)}):
            first = min(hits) if hits else (0, 0)
            self.cursor = (first[1], first[0])
        self.refresh(layout=True)
        self.call_after_refresh(self._follow)

    def jump(self, layer: int) -> bool:
        """Put the cursor on `layer` (same column), clearing a filter that hides it."""
        v = self.view
        if v is None or not 0 <= layer < v.n_layers:
            self.post_message(self.Said(f"no layer {layer}: this model has layers 0-"
                                        f"{(v.n_layers if v else 1) - 1}"))
            return False
        if layer not in self.rows_shown:
            self._set_filter("", None)
        col = self.cursor[0] if self.cursor[0] in self.cols_shown else self.cols_shown[0]
        self._move_cursor((col, layer))
        return True

    # -- drawing ----------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.scrollable_content_region.width
        v = self.view
        if v is None or not self.rows_shown:
            text = self.placeholder if y == 0 and v is None else ""
            return Strip([Segment(text, _style("dim"))]).apply_style(base) \
                .extend_cell_length(width, base).crop(0, width)
        height = self.scrollable_content_region.height
        total = len(self.rows_shown) + 2
        sx, sy = self.scroll_offset
        if y == 0:
            label, cells = Strip([Segment(" " * LABEL)]), self._header_strip()
        elif height < total and y == height - 1 or y - 1 + sy == len(self.rows_shown):
            return self._caption(width).apply_style(base)
        elif y - 1 + sy < len(self.rows_shown):
            layer = self.rows_shown[y - 1 + sy]
            label = Strip([Segment(f"L{layer:<{LABEL - 1}}", _style("bold"))])
            cells = self._row_strip(layer)
        else:
            return Strip.blank(width, base)
        cells = cells.crop_extend(sx, sx + max(0, width - LABEL), None)
        return Strip.join([label, cells]).apply_style(base).crop(0, width)

    def _header_strip(self) -> Strip:
        if self._header is None:
            v = self.view
            assert v is not None
            bold = _style("bold")
            self._header = Strip([Segment(f"{'h' + str(c) if c < v.n_heads else 'mlp':>{CELL}}",
                                          bold) for c in self.cols_shown])
        return self._header

    def _row_strip(self, layer: int) -> Strip:
        strip = self._rows.get(layer)
        if strip is None:
            segments: list[Segment] = []
            for col in self.cols_shown:
                cached = self._cells.get((layer, col))
                if cached is None:
                    cached = self._cells[(layer, col)] = self._cell_segments(layer, col)
                segments += cached
            strip = self._rows[layer] = Strip(segments)
        return strip

    def _caption(self, width: int) -> Strip:
        v = self.view
        assert v is not None
        caption = v.title or "no node scores selected"
        if self.pattern:
            caption = f"filter {self.pattern} (Esc clears) · {caption}"
        return Strip([Segment(caption[:width], _style("dim italic"))]).extend_cell_length(width)

    def _cell_segments(self, layer: int, col: int) -> list[Segment]:
        self.cells_built += 1
        v = self.view
        assert v is not None
        if self.matched is not None and (layer, col) not in self.matched:
            return [Segment(f"{'·':>{CELL - 1}} ", _style("dim"))]
        text = self._cell(v, layer, col)
        return [Segment(" "), *(Segment(t, _style(s)) for t, s in _spans(text))]

    def _cell(self, v: GridView, layer: int, col: int) -> Text:
        name = GridView.cell(layer, col, v.n_heads)
        mark = "x" if name in v.ablated else ("~" if name in v.partial else " ")
        score = v.scores.get(name)
        body = _fmt(score) if score is not None else ("  off" if mark == "x" else "   on")
        style = _score_style(score, v.scale) if score is not None else (
            "bold red" if mark == "x" else ("yellow" if mark == "~" else "green"))
        if name in self.pending:  # toggled; the command is queued or running
            mark, style = "…", "bold yellow"
        if mark == "x" and score is not None:
            style += " strike"
        if (col, layer) == self.cursor and self.has_focus:
            style += " reverse"
        elif (col, layer) == self.cursor:
            style += " underline"
        return Text(mark + body, style=style.strip())

    def render_text(self) -> Text:
        """The whole grid as one `Text` (every shown cell; for tests and exports, not drawing)."""
        v = self.view
        if v is None:
            return Text(self.placeholder, style="dim")
        out = Text(no_wrap=True)
        out.append(" " * LABEL)
        for col in self.cols_shown:
            out.append(f"{'h' + str(col) if col < v.n_heads else 'mlp':>{CELL}}", style="bold")
        out.append("\n")
        for layer in self.rows_shown:
            out.append(f"L{layer:<{LABEL - 1}}", style="bold")
            for col in self.cols_shown:
                out.append(" ")
                out.append_text(self._cell(v, layer, col))
            out.append("\n")
        out.append(v.title or "no node scores selected", style="dim italic")
        return out

    def _invalidate(self, cells: list[Cell]) -> None:
        """Forget the drawing of `cells` and repaint the lines they are on."""
        for cell in cells:
            self._cells.pop(cell, None)
            self._rows.pop(cell[0], None)
        height = self.scrollable_content_region.height
        total = len(self.rows_shown) + 2
        sy = self.scroll_offset.y
        for layer in {c[0] for c in cells}:
            if layer not in self.rows_shown:
                continue
            y = 1 + self.rows_shown.index(layer) - sy
            if 1 <= y < (height - 1 if height < total else total - 1):
                self.refresh(Region(0, y, self.size.width, 1))

    # -- input -------------------------------------------------------------------------------

    def _move_cursor(self, cursor: tuple[int, int]) -> None:
        old = self.cursor
        self.cursor = cursor
        self._invalidate([(old[1], old[0]), (cursor[1], cursor[0])])
        self._follow()

    def action_move(self, dx: int, dy: int) -> None:
        if self.view is None or not self.rows_shown:
            return
        col, row = self.cursor
        ci = self.cols_shown.index(col) if col in self.cols_shown else 0
        ri = self.rows_shown.index(row) if row in self.rows_shown else 0
        ci = (ci + dx) % len(self.cols_shown)
        ri = min(max(ri + dy, 0), len(self.rows_shown) - 1)
        self._move_cursor((self.cols_shown[ci], self.rows_shown[ri]))

    def action_page(self, direction: int) -> None:
        self.action_move(0, direction * max(1, self._rows_visible() - 1))

    def action_edge(self, last: bool) -> None:
        """To the first or last layer shown."""
        if self.rows_shown:
            self.action_move(0, len(self.rows_shown) * (1 if last else -1))

    def action_flip(self) -> None:
        node = self.cursor_node
        if node is None or self.view is None:
            return
        if self.matched is not None and (self.cursor[1], self.cursor[0]) not in self.matched:
            return  # a dim cell the filter hides
        ablated = node in self.view.ablated
        self.pending[node] = not ablated
        self._invalidate([(self.cursor[1], self.cursor[0])])
        self.post_message(self.Toggled(node, ablated))

    def action_ablate_shown(self) -> None:
        v = self.view
        if v is None:
            return
        if self.matched is None:
            self.post_message(self.Said("filter first (/): A ablates every cell it shows"))
            return
        nodes = tuple(GridView.cell(layer, col, v.n_heads) for layer, col in sorted(self.matched))
        fresh = tuple(n for n in nodes if n not in v.ablated)
        if fresh:
            self.post_message(self.AblateShown(fresh))

    def action_find(self, mode: str) -> None:
        self.post_message(self.Find(mode))

    def action_clear_filter(self) -> None:
        if self.pattern and self.view is not None:
            self._set_filter("", None)
            self.post_message(self.Said("filter cleared"))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or self.view is None or offset.x < LABEL:
            return
        height = self.scrollable_content_region.height
        total = len(self.rows_shown) + 2
        if offset.y < 1 or (height < total and offset.y >= height - 1):
            return
        ri = offset.y - 1 + self.scroll_offset.y
        ci = (offset.x - LABEL + self.scroll_offset.x) // CELL
        if 0 <= ri < len(self.rows_shown) and 0 <= ci < len(self.cols_shown):
            self.focus()
            self._move_cursor((self.cols_shown[ci], self.rows_shown[ri]))
            self.action_flip()

    def _rows_visible(self) -> int:
        height = self.scrollable_content_region.height
        total = len(self.rows_shown) + 2
        return len(self.rows_shown) if height >= total else max(1, height - 2)

    def _follow(self) -> None:
        """Scroll so the cursor's cell is on screen."""
        col, row = self.cursor
        if row not in self.rows_shown or col not in self.cols_shown:
            return
        ri, ci = self.rows_shown.index(row), self.cols_shown.index(col)
        y, x = self.scroll_offset.y, self.scroll_offset.x
        shown = self._rows_visible()
        if ri < y:
            y = ri
        elif ri >= y + shown:
            y = ri - shown + 1
        room = max(CELL, self.scrollable_content_region.width - LABEL)
        lo, hi = CELL * ci, CELL * (ci + 1)
        if lo < x:
            x = lo
        elif hi > x + room:
            x = -(-(hi - room) // CELL) * CELL  # whole cells at the left edge
        if (x, y) != tuple(self.scroll_offset):
            self.scroll_to(x, y, animate=False, immediate=True)

    def on_focus(self) -> None:
        self._invalidate([(self.cursor[1], self.cursor[0])])

    def on_blur(self) -> None:
        self._invalidate([(self.cursor[1], self.cursor[0])])

    def on_resize(self) -> None:
        self.call_after_refresh(self._follow)


def _spans(text: Text) -> list[tuple[str, str]]:
    """(text, style) runs of a one-style `Text`."""
    return [(text.plain, str(text.style))]


class GridPane(Vertical):
    """The grid and its find box (`/` filter, `#` jump), which opens above it on demand."""

    DEFAULT_CSS = """
    GridPane { height: auto; max-height: 60%; }
    GridPane > #grid-find { display: none; height: 1; border: none; padding: 0 1; }
    GridPane > #grid-find.open { display: block; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.mode = "filter"

    def compose(self) -> ComposeResult:
        yield Input(id="grid-find")
        yield HeadGrid(id="grid")

    @on(HeadGrid.Find)
    def _open(self, message: HeadGrid.Find) -> None:
        message.stop()
        self.open(message.mode)

    def open(self, mode: str) -> None:
        grid = self.query_one(HeadGrid)
        box = self.query_one("#grid-find", Input)
        self.mode = mode
        box.placeholder = "layer number, Enter" if mode == "jump" else \
            "filter: a3?.*  m*  a*.3  (Enter; empty clears)"
        box.value = grid.pattern if mode == "filter" else ""
        box.add_class("open")
        box.focus()

    def close(self) -> None:
        self.query_one("#grid-find", Input).remove_class("open")
        self.query_one(HeadGrid).focus()

    @on(Input.Submitted, "#grid-find")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        grid = self.query_one(HeadGrid)
        text = event.value.strip()
        if self.mode == "jump":
            number = text.lower().lstrip("l")
            if not number.isdigit():
                grid.post_message(HeadGrid.Said(f"not a layer number: {text!r}"))
                return
            if grid.jump(int(number)):
                self.close()
        elif grid.apply_filter(text):
            self.close()

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self.query_one("#grid-find", Input).has_focus:
            event.stop()
            self.close()
