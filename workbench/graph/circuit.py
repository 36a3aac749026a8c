"""Circuits: scored subsets of the graph (networkx underneath), saved as versioned JSON;
connectivity pruning and comparison.

Compute, prune and render are separate stages joined by plain data: techniques and `select`
make a `Circuit`, `connected` keeps what links input to logits, `compare` diffs two, and
`workbench.export` renders one.

Invariant: a circuit's JSON (`to_json`) is sorted and versioned (`FORMAT_VERSION`); equal
circuits have equal JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx

from workbench.errors import WorkbenchError
from workbench.files import write_atomic
from workbench.graph.layout import Graph
from workbench.graph.names import INPUT, LOGITS, Edge, Node, parse_edge, parse_node

FORMAT_VERSION = 1


def _names(items: object) -> bool:
    return isinstance(items, list) and all(isinstance(x, str) for x in items)


def _as_node(item: Node | str) -> Node:
    return item if isinstance(item, Node) else parse_node(item)


def _as_edge(item: Edge | str) -> Edge:
    return item if isinstance(item, Edge) else parse_edge(item)


class Circuit:
    """A named set of nodes and edges with optional scores (keyed by canonical names).

    Underneath is a frozen networkx MultiDiGraph (a DiGraph subclass): nodes are component names
    (no ports) with attribute `node`; an edge runs from its source to its receiver's component,
    keyed by the port ("" for none), with attributes `port`, `edge` and, when scored, `score`.
    Parallel q/k/v edges into one head are why it is a multigraph.
    """

    def __init__(
        self,
        nodes: Iterable[Node | str] = (),
        edges: Iterable[Edge | str] = (),
        scores: Mapping[str, float] | None = None,
        name: str = "",
    ) -> None:
        self.name = name
        g = nx.MultiDiGraph()
        for item in nodes:
            node = _as_node(item).with_port(None)
            g.add_node(str(node), node=node)
        for item in edges:
            edge = _as_edge(item)
            src, dst, port = edge.ends()
            g.add_node(src, node=edge.src)
            g.add_node(dst, node=edge.dst.with_port(None))
            g.add_edge(src, dst, key=port, port=edge.dst.port, edge=edge)
        for key, value in (scores or {}).items():
            self._set_score(g, key, value)
        self._g = nx.freeze(g)

    @staticmethod
    def _set_score(g: nx.MultiDiGraph, key: str, value: float) -> None:
        score = float(value) if isinstance(value, int | float) else math.nan
        if not math.isfinite(score):
            raise WorkbenchError(f"score for '{key}' is {score}: scores must be finite")
        if "->" in key:
            ends = parse_edge(key).ends()
            if not g.has_edge(*ends):
                raise WorkbenchError(f"score for '{key}', but that edge is not in the circuit")
            g.edges[ends]["score"] = score
        else:
            name = str(parse_node(key))
            if name not in g:
                raise WorkbenchError(f"score for '{key}', but that node is not in the circuit")
            g.nodes[name]["score"] = score

    @classmethod
    def from_nodes(cls, nodes: Iterable[Node | str], graph: Graph, name: str = "") -> Circuit:
        """Node-level circuit: `nodes` plus input and logits, and every edge of `graph` whose
        source and receiver component are both in the set."""
        keep = {INPUT, LOGITS}
        for item in nodes:
            node = graph.check(_as_node(item))
            if node.pos is not None or node.port is not None:
                raise WorkbenchError(
                    f"from_nodes takes whole components, got '{node}': drop the <port> and @P"
                )
            keep.add(node)
        edges = [Edge(s, r) for r in graph.receivers if r.base() in keep
                 for s in graph.upstream(r) if s in keep]
        return cls(keep, edges, name=name)

    @classmethod
    def from_edges(
        cls, edges: Iterable[Edge | str], scores: Mapping[str, float] | None = None, name: str = ""
    ) -> Circuit:
        return cls((), edges, scores, name)

    @property
    def digraph(self) -> nx.MultiDiGraph:
        """The frozen graph underneath (read-only)."""
        return self._g

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(sorted((n for _, n in self._g.nodes(data="node")), key=Node.sort_key))

    @property
    def edges(self) -> tuple[Edge, ...]:
        return tuple(sorted((e for *_, e in self._g.edges(data="edge")), key=Edge.sort_key))

    @property
    def scores(self) -> dict[str, float]:
        """Node then edge scores, in sorted order, keyed by canonical name."""
        nodes = [(d["node"], d["score"]) for _, d in self._g.nodes(data=True) if "score" in d]
        edges = [(d["edge"], d["score"]) for *_, d in self._g.edges(data=True) if "score" in d]
        ordered = sorted(nodes, key=lambda kv: kv[0].sort_key()) + sorted(
            edges, key=lambda kv: kv[0].sort_key()
        )
        return {str(k): v for k, v in ordered}

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Edge):
            return self._g.has_edge(*item.ends())
        return isinstance(item, Node) and str(item) in self._g

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Circuit):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Circuit(name={self.name!r}, nodes={len(self._g)}, edges={len(self.edges)})"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "name": self.name,
            "nodes": [str(n) for n in self.nodes],
            "edges": [str(e) for e in self.edges],
            "scores": self.scores,
        }

    @classmethod
    def from_json(cls, data: Any) -> Circuit:
        if not isinstance(data, dict):
            raise WorkbenchError("not a circuit: expected a JSON object with version, nodes, edges")
        if data.get("version") != FORMAT_VERSION:
            raise WorkbenchError(
                f"unsupported circuit version {data.get('version')!r}: this workbench reads "
                f"version {FORMAT_VERSION}"
            )
        nodes, edges, scores = data.get("nodes"), data.get("edges"), data.get("scores", {})
        if not (_names(nodes) and _names(edges) and isinstance(scores, dict)):
            raise WorkbenchError(
                "bad circuit: 'nodes' and 'edges' must be lists of names, 'scores' an object"
            )
        return cls(nodes, edges, scores, str(data.get("name", "")))

    def save(self, path: str | Path) -> Path:
        text = json.dumps(self.to_json(), indent=2) + "\n"
        return write_atomic(path, text.encode())

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise WorkbenchError(f"cannot read circuit '{path}': {exc.strerror or exc}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WorkbenchError(f"cannot read circuit '{path}': not JSON ({exc})") from exc
        try:
            return cls.from_json(data)
        except (WorkbenchError, TypeError, ValueError) as exc:
            raise WorkbenchError(f"cannot read circuit '{path}': {exc}") from exc


def connected(edges: Iterable[Edge]) -> tuple[list[Edge], list[Edge]]:
    """Split `edges` into those on some path from `input` to `logits` through these edges and
    those cut off from either end (as circuit-tracer's `prune_graph` prunes to what reaches the
    target): an edge s -> r stays when s is reached from input and r's component reaches logits.
    Order is kept."""
    edges = list(edges)
    g = nx.DiGraph()
    g.add_edges_from(e.ends()[:2] for e in edges)
    start, end = str(INPUT), str(LOGITS)
    forward = nx.descendants(g, start) | {start} if start in g else set()
    backward = nx.ancestors(g, end) | {end} if end in g else set()
    kept, dropped = [], []
    for e in edges:
        src, dst, _ = e.ends()
        (kept if src in forward and dst in backward else dropped).append(e)
    return kept, dropped


@dataclass(frozen=True)
class CircuitDiff:
    """What two circuits share and what only one has; Jaccard is 1.0 when both are empty."""

    shared_nodes: tuple[Node, ...]
    only_a_nodes: tuple[Node, ...]
    only_b_nodes: tuple[Node, ...]
    shared_edges: tuple[Edge, ...]
    only_a_edges: tuple[Edge, ...]
    only_b_edges: tuple[Edge, ...]
    jaccard_nodes: float
    jaccard_edges: float


def compare(a: Circuit, b: Circuit) -> CircuitDiff:
    na, nb, ea, eb = set(a.nodes), set(b.nodes), set(a.edges), set(b.edges)

    def jaccard(x: set[Any], y: set[Any]) -> float:
        return len(x & y) / len(x | y) if x | y else 1.0

    def nodes(x: set[Node]) -> tuple[Node, ...]:
        return tuple(sorted(x, key=Node.sort_key))

    def edges(x: set[Edge]) -> tuple[Edge, ...]:
        return tuple(sorted(x, key=Edge.sort_key))

    return CircuitDiff(
        nodes(na & nb), nodes(na - nb), nodes(nb - na),
        edges(ea & eb), edges(ea - eb), edges(eb - ea),
        jaccard(na, nb), jaccard(ea, eb),
    )  # fmt: skip
