"""Lay out a circuit (or two compared circuits) for the terminal: one row per layer.

Where it sits: the graph pane renders a `GraphLayout`; the app builds one from the circuit the
user last selected (`select`, a technique's `CircuitResult`) or the last `compare c1 c2`. Pure
data, no Textual.

1. Rows run top to bottom: `logits`, layer L-1 ... layer 0, `input` (the residual stream flows
   up). A layer's row holds its heads in index order, then its MLP.
2. Each node carries its kind (input/attn/mlp/logits...) for colour, and when comparing, where
   it is found: in both circuits, only the first, or only the second (marked `*`, `¹`, `²`).
3. `edges_of(name)` lists the selected node's incoming and outgoing edges (union of both
   circuits when comparing), in topological order.

Invariant: `order` lists every laid-out node exactly once, in the order the rows show them, so
stepping through it visits the picture from top-left to bottom-right.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from workbench.graph import Circuit, Edge, Node
from workbench.session import State
from workbench.tui.result_views import circuit_of

Where = Literal["", "both", "a", "b"]


@dataclass(frozen=True)
class LaidNode:
    name: str
    kind: str
    where: Where = ""
    score: float | None = None


@dataclass(frozen=True)
class GraphLayout:
    title: str
    rows: tuple[tuple[str, tuple[LaidNode, ...]], ...]  # (row label, nodes)
    circuits: tuple[Circuit, ...]
    legend: str = ""

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(n.name for _, nodes in self.rows for n in nodes)

    @property
    def n_nodes(self) -> int:
        return len(self.order)

    def edges_of(self, name: str) -> tuple[tuple[Edge, ...], tuple[Edge, ...]]:
        """(incoming, outgoing) edges of the node called `name`, deduplicated and sorted."""
        incoming: set[Edge] = set()
        outgoing: set[Edge] = set()
        for circuit in self.circuits:
            g = circuit.digraph
            if name not in g:
                continue
            incoming.update(d["edge"] for *_, d in g.in_edges(name, data=True))
            outgoing.update(d["edge"] for *_, d in g.out_edges(name, data=True))
        return (tuple(sorted(incoming, key=Edge.sort_key)),
                tuple(sorted(outgoing, key=Edge.sort_key)))

    @cached_property
    def nodes(self) -> dict[str, LaidNode]:
        return {n.name: n for _, nodes in self.rows for n in nodes}

    @cached_property
    def n_edges(self) -> int:
        """Edges in the picture: the union over the circuits (an edge in both counts once)."""
        return len(self._edge_union)

    @cached_property
    def _edge_union(self) -> dict[tuple[str, str, str], float | None]:
        union: dict[tuple[str, str, str], float | None] = {}
        for circuit in self.circuits:
            for src, dst, port, score in circuit.digraph.edges(keys=True, data="score"):
                if union.get((src, dst, port)) is None:
                    union[(src, dst, port)] = score
        return union

    def top_edges(self, k: int) -> list[tuple[str, str, str, float | None]]:
        """At most `k` edges (source, receiver, port, score) to draw: the largest |score| first,
        unscored edges after them in topological order; returned in topological order."""
        union = self._edge_union
        nodes = self.nodes
        order = {name: i for i, name in enumerate(self.order)}
        keys = list(union)
        if len(keys) > k:
            keys = heapq.nsmallest(k, keys, key=lambda e: (
                -abs(union[e] or 0.0), union[e] is None, -order.get(e[0], 0),
                order.get(e[1], 0), e[2]))
        keys = [e for e in keys if e[0] in nodes and e[1] in nodes]
        keys.sort(key=lambda e: (-order.get(e[0], 0), -order.get(e[1], 0), e[2]))
        return [(*e, union[e]) for e in keys]

    def neighbours(self, name: str) -> frozenset[str]:
        incoming, outgoing = self.edges_of(name)
        return frozenset([str(e.src) for e in incoming] +
                         [str(e.dst.with_port(None)) for e in outgoing])


def _row_label(node: Node) -> tuple[int, str]:
    """(sort key, label): logits first, then layers from the top down, input last."""
    if node.kind == "logits":
        return (-(10**9), "logits")
    if node.kind == "input":
        return (10**9, "input")
    layer = node.layer or 0
    return (-layer, f"L{layer}")


def _layout(nodes: list[LaidNode], by_name: dict[str, Node], title: str,
            circuits: tuple[Circuit, ...], legend: str) -> GraphLayout:
    rows: dict[tuple[int, str], list[LaidNode]] = {}
    for laid in sorted(nodes, key=lambda n: by_name[n.name].sort_key()):
        rows.setdefault(_row_label(by_name[laid.name]), []).append(laid)
    ordered = tuple((label, tuple(items)) for (_, label), items in sorted(rows.items()))
    return GraphLayout(title, ordered, circuits, legend)


def circuit_layout(circuit: Circuit, title: str = "") -> GraphLayout:
    """One circuit: every node, its score when it has one."""
    scores = circuit.scores
    by_name = {str(n): n for n in circuit.nodes}
    nodes = [LaidNode(name, n.kind, "", scores.get(name)) for name, n in by_name.items()]
    heading = title or f"{circuit.name or 'circuit'}: {len(nodes)} nodes, " \
                       f"{len(circuit.edges)} edges"
    return _layout(nodes, by_name, heading, (circuit,), "")


def compare_layout(a: Circuit, b: Circuit) -> GraphLayout:
    """Two circuits over the union of their nodes, each marked shared / only-a / only-b."""
    in_a = {str(n): n for n in a.nodes}
    in_b = {str(n): n for n in b.nodes}
    by_name = {**in_a, **in_b}
    nodes: list[LaidNode] = []
    for name, node in by_name.items():
        where: Where = "both" if name in in_a and name in in_b else \
            ("a" if name in in_a else "b")
        nodes.append(LaidNode(name, node.kind, where))
    shared = sum(n.where == "both" for n in nodes)
    na, nb = a.name or "first", b.name or "second"
    title = f"{na} vs {nb}: {shared} shared of {len(nodes)} nodes"
    legend = f"* in both   ¹ only in {na}   ² only in {nb}"
    return _layout(nodes, by_name, title, (a, b), legend)


def layout_for(state: State, source: tuple[str, ...] | None) -> GraphLayout | None:
    """What the graph pane shows: `("compare", c1, c2)`, `("result", r<n>)` (a technique's
    circuit), `("circuit", c<n>)`, or by default the newest circuit; None when there is none."""
    circuits = dict(state.circuits)
    kind, ids = (source[0], source[1:]) if source else ("", ())
    if kind == "compare" and len(ids) == 2 and all(c in circuits for c in ids):
        return compare_layout(circuits[ids[0]].circuit, circuits[ids[1]].circuit)
    if kind == "result":
        found = circuit_of(dict(state.results).get(ids[0]))
        if found is not None:
            return circuit_layout(found.circuit, f"{ids[0]}: {found.title}")
    if kind == "circuit" and ids[0] in circuits:
        return circuit_layout(circuits[ids[0]].circuit)
    if circuits:
        return circuit_layout(list(circuits.values())[-1].circuit)
    return None
