"""Rasterise a layered circuit into terminal lines: boxes for nodes, braille lines for edges.

Where it sits: the graph pane asks `draw` for a `Picture` of the edges it wants shown (the top-K
by |score|, chosen in `graph_layout`) at its size and zoom, then shows a window of it (pan). Pure
Rich data, no Textual, no engine.

1. Rows: one per rank that holds a node (`input` at the bottom, `logits` at the top); ranks with
   nothing on them are left out. `gap` text rows of edges lie between two node rows.
2. Columns: the layout engine's order and spacing within each row, scaled to `width` and pushed
   apart so boxes never overlap; an edge's dummy points (where it crosses a row) are one column.
3. Edges are polylines on a braille canvas (2 x 4 dots per cell) from the top of the source box,
   through its bend points, to the bottom of the receiver box; q, k and v edges end at the left,
   middle and right of a head's box and have their own colours. A cell shows the colour of the
   strongest edge through it (focused edges win); boxes are drawn over lines.

Invariant: every edge given is rasterised (`n_edges` counts them); the picture depends only on
its inputs, so the same circuit at the same size draws the same lines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text

from workbench.layered import Layered

FILL = {"input": "black on white", "attn": "black on cyan", "mlp": "black on magenta",
        "logits": "black on green", "neuron": "white on blue", "feature": "black on yellow"}
PORT_STYLE = {"": "white", "q": "yellow", "k": "bright_green", "v": "bright_red"}
_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [dy][dx]


@dataclass(frozen=True)
class DrawNode:
    name: str
    kind: str
    label: str  # the name plus its compare mark
    style: str = ""  # extra style: "italic" (only in the second circuit)...


@dataclass(frozen=True)
class DrawEdge:
    src: str
    dst: str
    port: str  # "", "q", "k" or "v"
    weight: float  # |score| / max |score| in [0, 1]; 1 when unscored


@dataclass(frozen=True)
class Box:
    row: int
    col: int
    width: int


@dataclass(frozen=True)
class Picture:
    lines: tuple[Text, ...]
    width: int
    boxes: dict[str, Box]
    n_edges: int
    rows: tuple[tuple[int, str], ...]  # (text row, rank label) of each node row

    @property
    def height(self) -> int:
        return len(self.lines)


def _edge_style(edge: DrawEdge, focused: bool, dim_rest: bool) -> tuple[float, str]:
    colour = PORT_STYLE.get(edge.port, "white")
    if focused:
        return (2.0 + edge.weight, f"bold {colour}")
    if dim_rest:
        return (edge.weight, "bright_black")
    strength = "bold " if edge.weight >= 0.66 else ("" if edge.weight >= 0.2 else "dim ")
    return (edge.weight, strength + colour)


def draw(nodes: Sequence[DrawNode], edges: Sequence[DrawEdge], lay: Layered,
         rank_labels: dict[int, str], *, width: int, gap: int = 2,
         focus: str | None = None, dim_rest: bool = False) -> Picture:
    """The picture of `nodes` and `edges` placed by `lay` (edge i bends at `lay.bends[i]`)."""
    node_by = {n.name: n for n in nodes}
    ranks = sorted({lay.nodes[n.name].rank for n in nodes if n.name in lay.nodes})
    row_of = {r: (len(ranks) - 1 - i) * (gap + 1) for i, r in enumerate(ranks)}
    # Members of each row: real boxes and the dummies of the edges drawn.
    members: dict[int, list[tuple[float, str, int]]] = {r: [] for r in ranks}
    for name, node in node_by.items():
        placed = lay.nodes[name]
        members[placed.rank].append((placed.x, name, len(node.label) + 2))
    for i, _ in enumerate(edges):
        for j, (rank, x) in enumerate(lay.bends[i]):
            if rank in members:
                members[rank].append((x, f"\0{i}.{j}", 1))
    xs = [x for row in members.values() for x, _, _ in row]
    lo, hi = min(xs, default=0.0), max(xs, default=1.0)
    cols: dict[str, tuple[int, int]] = {}  # name -> (col, width)
    canvas_width = width
    for row in members.values():
        row.sort(key=lambda m: (m[0], m[1]))
        placed_cols = _spread(row, lo, hi, width)
        for (_, name, w), col in zip(row, placed_cols, strict=True):
            cols[name] = (col, w)
            canvas_width = max(canvas_width, col + w)
    height = (len(ranks) - 1) * (gap + 1) + 1 if ranks else 0
    dots = [[0] * canvas_width for _ in range(height)]
    style: list[list[tuple[float, str] | None]] = [[None] * canvas_width for _ in range(height)]
    order = sorted(range(len(edges)), key=lambda i: (edges[i].src == focus or
                                                       edges[i].dst == focus, edges[i].weight))
    drawn = 0
    for i in order:
        edge = edges[i]
        if edge.src not in cols or edge.dst not in cols:
            continue
        src_rank, dst_rank = lay.nodes[edge.src].rank, lay.nodes[edge.dst].rank
        points = [_top(cols[edge.src], row_of[src_rank])]
        for j, (rank, _) in enumerate(lay.bends[i]):
            key = f"\0{i}.{j}"
            if key in cols and rank in row_of:
                c = cols[key][0] * 2
                points += [(c, row_of[rank] * 4 + 3), (c, row_of[rank] * 4)]
        end = _bottom(cols[edge.dst], row_of[dst_rank], edge.port)
        stub = (end[0], end[1] + 3)  # the last cell runs straight up into the box
        points += [stub, end]
        pri = _edge_style(edge, focus is not None and focus in (edge.src, edge.dst), dim_rest)
        for a, b in zip(points[:-1], points[1:-1], strict=False):
            _line(a, b, dots, style, pri)
        _line(stub, end, dots, style, (pri[0] + 0.5, pri[1]))  # the port's colour shows there
        drawn += 1
    lines = []
    for y in range(height):
        text = Text()
        for x in range(canvas_width):
            bits = dots[y][x]
            cell = style[y][x]
            text.append(chr(0x2800 + bits) if bits else " ", style=cell[1] if cell else "")
        lines.append(text)
    boxes: dict[str, Box] = {}
    for name, node in node_by.items():
        if name not in cols:
            continue
        col, w = cols[name]
        y = row_of[lay.nodes[name].rank]
        look = f"{FILL.get(node.kind, 'reverse')} {node.style}".strip()
        if name == focus:
            look = f"bold reverse {look}"
        label = Text(f" {node.label} ", style=look)
        lines[y] = lines[y][:col] + label + lines[y][col + w:]
        boxes[name] = Box(y, col, w)
    labels = tuple((row_of[r], rank_labels.get(r, str(r))) for r in ranks)
    return Picture(tuple(lines), canvas_width, boxes, drawn, labels)


def _spread(row: list[tuple[float, str, int]], lo: float, hi: float, width: int) -> list[int]:
    """Columns for a row's members in order: at their scaled x, pushed apart to not overlap
    (one blank between boxes, none between dummies), then pulled back inside `width`."""
    span = max(hi - lo, 1e-9)
    want = [round((x - lo) / span * max(width - w, 0)) for x, _, w in row]
    cols: list[int] = []
    for k, (_, _name, w) in enumerate(row):
        if not cols:
            cols.append(max(0, want[k]))
            continue
        _, _, prev_w = row[k - 1]
        sep = 0 if (prev_w == 1 and w == 1) else 1
        cols.append(max(want[k], cols[-1] + prev_w + sep))
    limit = width
    for k in range(len(row) - 1, -1, -1):  # pull back from the right edge where there is room
        w = row[k][2]
        cols[k] = max(0, min(cols[k], limit - w))
        sep = 0 if (k and row[k - 1][2] == 1 and w == 1) else 1
        limit = cols[k] - sep
    for k in range(1, len(row)):  # re-check left to right (the pull-back may have overlapped)
        _, _, prev_w = row[k - 1]
        sep = 0 if (prev_w == 1 and row[k][2] == 1) else 1
        cols[k] = max(cols[k], cols[k - 1] + prev_w + sep)
    return cols


def _top(box: tuple[int, int], row: int) -> tuple[int, int]:
    col, w = box
    return (col * 2 + w, row * 4 - 1)


def _bottom(box: tuple[int, int], row: int, port: str) -> tuple[int, int]:
    col, w = box
    at = {"q": 2, "k": w, "v": 2 * w - 3}.get(port, w)
    return (col * 2 + at, row * 4 + 4)


def _line(a: tuple[int, int], b: tuple[int, int], dots: list[list[int]],
          style: list[list[tuple[float, str] | None]], pri: tuple[float, str]) -> None:
    """Bresenham from dot a to dot b, setting braille bits and the cells' styles."""
    (x0, y0), (x1, y1) = a, b
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    height, width = len(dots), len(dots[0]) if dots else 0
    while True:
        cx, cy = x0 // 2, y0 // 4
        if 0 <= cy < height and 0 <= cx < width:
            dots[cy][cx] |= _BITS[y0 % 4][x0 % 2]
            old = style[cy][cx]
            if old is None or pri[0] >= old[0]:
                style[cy][cx] = pri
        if x0 == x1 and y0 == y1:
            return
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy
