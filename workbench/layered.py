"""Layered (Sugiyama) positions for a circuit: Graphviz `dot -Tplain` when present, else grandalf.

Where it sits: the terminal graph pane (`tui/graph_canvas`) and the matplotlib circuit figure
(`figures_mpl`) both draw from a `Layered`. This module only decides where things go; it draws
nothing and imports no Textual or matplotlib.

1. Ranks are fixed by the residual stream, not by the layout engine: `input` is rank 0, then per
   layer its attention sublayer (heads, attention features) and its MLP sublayer (MLP, neurons,
   MLP features), `logits` last. Rank r is drawn above rank r-1.
2. An edge that skips ranks is split into a chain of one-rank hops through dummy points (one per
   rank it crosses), so both engines route it around the boxes in between; the dummies'
   positions come back as the edge's bend points.
3. The engine only orders and spaces the nodes within a rank (crossing minimisation): `x` is its
   horizontal position in its own units, comparable within one `Layered`.

Invariant: the same nodes and edges give the same `Layered` (inputs are sorted first, the engine
is deterministic); every node given is placed exactly once.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from workbench.graph import Node

Engine = Literal["dot", "grandalf"]
MAX_DUMMIES = 4000  # beyond this, skipped ranks are not routed (edges become straight lines)
DOT_TIMEOUT = 20.0


def rank_of(node: Node, n_layers: int) -> int:
    """0 for input, 2L+1 for layer L's attention sublayer, 2L+2 for its MLP sublayer, and
    2*n_layers+1 for logits."""
    if node.kind == "input":
        return 0
    if node.kind == "logits":
        return 2 * n_layers + 1
    layer = node.layer or 0
    on_attn = node.kind == "attn" or (node.kind == "feature" and node.site == "a")
    return 2 * layer + (1 if on_attn else 2)


def rank_label(rank: int, n_layers: int) -> str:
    if rank == 0:
        return "input"
    if rank == 2 * n_layers + 1:
        return "logits"
    layer, sub = divmod(rank - 1, 2)
    return f"{'am'[sub]}{layer}"


@dataclass(frozen=True)
class Placed:
    name: str
    rank: int
    x: float


@dataclass(frozen=True)
class Layered:
    """Positions: `nodes` by name; `bends[i]` the (rank, x) points edge i passes through."""

    nodes: dict[str, Placed]
    bends: tuple[tuple[tuple[int, float], ...], ...]
    n_ranks: int
    engine: Engine

    def rank_members(self, rank: int) -> list[Placed]:
        return sorted((p for p in self.nodes.values() if p.rank == rank),
                      key=lambda p: (p.x, p.name))


def engine_available() -> Engine:
    return "dot" if shutil.which("dot") is not None else "grandalf"


def layout(nodes: Sequence[Node], edges: Sequence[tuple[str, str]], *, widths: dict[str, float]
           | None = None, engine: Engine | None = None) -> Layered:
    """Place `nodes` (ranks from `rank_of`) and route `edges` (source name, receiver name)."""
    engine = engine or engine_available()
    n_layers = max((n.layer or 0 for n in nodes if n.kind not in ("input", "logits")),
                   default=-1) + 1
    ranks = {str(n.with_port(None)): rank_of(n, n_layers) for n in nodes}  # keeps @pos
    # Keep logits exactly one rank above the last sublayer that has nodes.
    n_ranks = 2 * n_layers + 2
    widths = widths or {}
    order = sorted(ranks, key=lambda name: (ranks[name], name))
    chains: list[list[str]] = []
    dummies: dict[str, int] = {}
    budget = MAX_DUMMIES
    for i, (src, dst) in enumerate(edges):
        lo, hi = ranks[src], ranks[dst]
        chain = [src]
        if hi - lo > 1 and budget >= hi - lo - 1:
            budget -= hi - lo - 1
            for r in range(lo + 1, hi):
                name = f"_d{i}_{r}"
                dummies[name] = r
                chain.append(name)
        chain.append(dst)
        chains.append(chain)
    all_ranks = {**ranks, **dummies}
    xs = _dot_x(order, dummies, chains, all_ranks, widths) if engine == "dot" else None
    if xs is None:  # no dot, or dot failed: grandalf always works
        engine, xs = "grandalf", _grandalf_x(order, dummies, chains, all_ranks, widths)
    placed = {name: Placed(name, ranks[name], xs[name]) for name in order}
    bends = tuple(tuple((all_ranks[d], xs[d]) for d in chain[1:-1]) for chain in chains)
    return Layered(placed, bends, n_ranks, engine)


def _quote(name: str) -> str:
    return '"' + name.replace('"', r"\"") + '"'


def _dot_x(order: list[str], dummies: dict[str, int], chains: list[list[str]],
           ranks: dict[str, int], widths: dict[str, float]) -> dict[str, float] | None:
    lines = ["digraph L {", "rankdir=BT; nodesep=0.15; ranksep=0.3; splines=false;",
             "node [shape=box fixedsize=true height=0.3 label=\"\"];"]
    by_rank: dict[int, list[str]] = {}
    for name in [*order, *sorted(dummies)]:
        by_rank.setdefault(ranks[name], []).append(name)
    for rank in sorted(by_rank):
        lines.append("{ rank=same; " + " ".join(
            f"{_quote(n)} [width={0.05 if n in dummies else widths.get(n, len(n) + 2) / 10:.2f}]"
            for n in by_rank[rank]) + " }")
    # Invisible spine so empty ranks still take their place in the order.
    spine = [f"_r{r}" for r in range(max(ranks.values(), default=0) + 1)]
    for r, name in enumerate(spine):
        lines.append(f"{{ rank=same; {name} [style=invis width=0.01]; "
                     + (_quote(by_rank[r][0]) if r in by_rank else "") + " }")
    lines += [f"{a} -> {b} [style=invis];" for a, b in zip(spine, spine[1:], strict=False)]
    for chain in chains:
        lines += [f"{_quote(a)} -> {_quote(b)};" for a, b in zip(chain, chain[1:], strict=False)]
    lines.append("}")
    try:
        done = subprocess.run(["dot", "-Tplain"], input="\n".join(lines), capture_output=True,
                              text=True, timeout=DOT_TIMEOUT, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    xs: dict[str, float] = {}
    for line in done.stdout.splitlines():
        if line.startswith("node "):
            words = shlex.split(line)
            xs[words[1]] = float(words[2])
    if any(n not in xs for n in ranks):  # an unexpected dot: fall back rather than fail
        return None
    return xs


def _grandalf_x(order: list[str], dummies: dict[str, int], chains: list[list[str]],
                ranks: dict[str, int], widths: dict[str, float]) -> dict[str, float]:
    from grandalf.graphs import Edge as GEdge
    from grandalf.graphs import Graph as GGraph
    from grandalf.graphs import Vertex
    from grandalf.layouts import SugiyamaLayout

    class View:
        def __init__(self, w: float) -> None:
            self.w, self.h, self.xy = w, 1.0, (0.0, 0.0)

    names = [*order, *sorted(dummies)]
    top = max(ranks.values(), default=0)
    spine = [f"_r{r}" for r in range(top + 1)]
    vertex = {n: Vertex(n) for n in [*names, *spine]}
    for n, v in vertex.items():
        v.view = View(0.5 if n in dummies or n in spine else widths.get(n, len(n) + 2))
    pairs = {(a, b) for chain in chains for a, b in zip(chain, chain[1:], strict=False)}
    pairs |= {(a, b) for a, b in zip(spine, spine[1:], strict=False)}
    has_in = {b for _, b in pairs}
    # Pin every rank: a node with no edge from the rank below hangs from the spine, so the
    # longest-path layering puts each node exactly on its rank.
    for n in names:
        if ranks[n] > 0 and n not in has_in:
            pairs.add((spine[ranks[n] - 1], n))
    edges = [GEdge(vertex[a], vertex[b]) for a, b in sorted(pairs)]
    graph = GGraph([vertex[n] for n in [*spine, *names]], edges)
    xs: dict[str, float] = {}
    offset = 0.0
    for component in graph.C:
        sug = SugiyamaLayout(component)
        sug.init_all()
        sug.draw(3)
        members = [v for v in component.sV]
        lo = min(v.view.xy[0] - v.view.w / 2 for v in members)
        hi = max(v.view.xy[0] + v.view.w / 2 for v in members)
        for v in members:
            xs[v.data] = v.view.xy[0] - lo + offset
        offset += hi - lo + 2.0
    return xs
