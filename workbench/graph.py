"""Node and edge names, the head-level computational graph, and circuits.

The one module that generates and parses component names (DESIGN.md, "Graph naming"): `input`,
`logits`, `a9.1`, `a9.1<q>`, `m9`, `m9.n123`, `m9.f123`, `a9.f123`, each optionally at a position
(`a9.1@-1`), and edges `a3.0->a9.1<q>`. Everything else writes names with `str(node)` and reads
them with `parse_node`, `parse_edge` and `expand`. `Graph` is the computational graph at head
granularity with q/k/v inputs; `Circuit` is a scored subset of it that saves to versioned JSON.

Invariants: `str(parse_node(s)) == s` for every canonical name; sorting nodes gives topological
order (input, layer-0 heads, m0, layer-1 heads, ..., logits); `Graph.sources`, `.receivers` and
`.edges` fix the order that score tensors are indexed by -- change it and saved tensors are misread.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache, total_ordering
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, overload

import networkx as nx

from workbench.errors import WorkbenchError
from workbench.files import write_atomic  # noqa: F401  (export imports it from here)

if TYPE_CHECKING:
    from torch import Tensor

Kind = Literal["input", "attn", "mlp", "neuron", "feature", "logits"]
Port = Literal["q", "k", "v"]
Site = Literal["a", "m"]
KINDS: tuple[Kind, ...] = ("input", "attn", "mlp", "neuron", "feature", "logits")
PORTS: tuple[Port, ...] = ("q", "k", "v")
FORMAT_VERSION = 1
_EXPECTED = "expected a node like a9.1, m9, m9.n123, input, logits"


@total_ordering
@dataclass(frozen=True)
class Node:
    """A component: `layer` is -1 for input and None for logits; `index` is the head for attn and
    the neuron/feature number for neuron/feature; `site` ('a' or 'm') only for features; `port`
    only for attention receivers; `pos` a token position (may be negative) or None for all."""

    kind: Kind
    layer: int | None = None
    index: int = 0
    site: Site | None = None
    port: Port | None = None
    pos: int | None = None

    def __post_init__(self) -> None:
        ends = {"input": -1, "logits": None}
        if self.kind not in KINDS:
            problem = f"kind must be one of {', '.join(KINDS)}"
        elif self.kind in ends and (self.layer != ends[self.kind] or self.index or self.site):
            problem = "input takes layer=-1, logits layer=None, and neither an index or site"
        elif self.kind not in ends and (self.layer is None or self.layer < 0 or self.index < 0):
            problem = "layer and index must be non-negative integers"
        elif self.kind == "mlp" and self.index:
            problem = "an MLP has no index (a neuron is kind='neuron')"
        elif (self.site is not None) != (self.kind == "feature") or self.site not in (None, *"am"):
            problem = "a feature needs site 'a' or 'm'; other kinds take none"
        elif self.port is not None and (self.kind != "attn" or self.port not in PORTS):
            problem = "only attention heads have a port, and it is 'q', 'k' or 'v'"
        else:
            return
        raise WorkbenchError(f"invalid node {self!r}: {problem}")

    def __str__(self) -> str:
        layer, i = self.layer, self.index
        core = {"attn": f"a{layer}.{i}", "mlp": f"m{layer}", "neuron": f"m{layer}.n{i}"}.get(
            self.kind, f"{self.site}{layer}.f{i}" if self.kind == "feature" else self.kind
        )
        port = f"<{self.port}>" if self.port else ""
        return core + port + ("" if self.pos is None else f"@{self.pos}")

    def sort_key(self) -> tuple[int, ...]:
        """Topological key: input, per layer (heads, attn features, mlp, neurons, mlp features),
        logits; then port (none, q, k, v), then position (none first)."""
        if self.kind == "input":
            head: tuple[int, ...] = (0, 0, 0, 0)
        elif self.kind == "logits":
            head = (2, 0, 0, 0)
        else:
            sub = {"attn": 0, "mlp": 2, "neuron": 3}.get(self.kind, 1 if self.site == "a" else 4)
            head = (1, self.layer or 0, sub, self.index)
        port = 0 if self.port is None else 1 + PORTS.index(self.port)
        pos = (0, 0) if self.pos is None else (1, self.pos)
        return (*head, port, *pos)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def base(self) -> Node:
        """The component alone: no port, no position."""
        return replace(self, port=None, pos=None)

    def with_port(self, port: Port | None) -> Node:
        return replace(self, port=port)

    def at(self, pos: int | None) -> Node:
        return replace(self, pos=pos)


INPUT = Node("input", -1)
LOGITS = Node("logits", None)


def head(layer: int, index: int, port: Port | None = None, pos: int | None = None) -> Node:
    return Node("attn", layer, index, port=port, pos=pos)


def mlp(layer: int, pos: int | None = None) -> Node:
    return Node("mlp", layer, pos=pos)


@total_ordering
@dataclass(frozen=True)
class Edge:
    """`src` feeds `dst`; an attention receiver carries its port on `dst` (`a3.0->a9.1<q>`)."""

    src: Node
    dst: Node

    def __post_init__(self) -> None:
        if self.src.kind == "logits" or self.dst.kind == "input" or self.src.port is not None:
            raise WorkbenchError(
                f"invalid edge '{self}': edges run from input or a component (no port) "
                "to a later component or logits"
            )

    def __str__(self) -> str:
        return f"{self.src}->{self.dst}"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Edge):
            return NotImplemented
        return self.sort_key() < other.sort_key()

    def sort_key(self) -> tuple[int, ...]:
        return (*self.src.sort_key(), *self.dst.sort_key())

    def ends(self) -> tuple[str, str, str]:
        """(source name, receiver component name, port or "") -- the key in `Circuit.digraph`."""
        return str(self.src), str(self.dst.with_port(None)), self.dst.port or ""


def _split(text: str) -> tuple[str, Port | None, int | None]:
    """'a9.1<q>@-1' -> ('a9.1', 'q', -1); raises on a malformed port or position."""
    core, pos = text.strip(), None
    if not core.isascii():  # `\d` and str.lower() would take a0.1 with a full-width digit
        bad = next(ch for ch in core if not ch.isascii())
        raise WorkbenchError(f"cannot parse {core[:40]!r}: {bad!r} (U+{ord(bad):04X}) is not "
                             "ASCII; names are written in ASCII, like a0.1")
    if "@" in core:
        core, _, p = core.rpartition("@")
        if not re.fullmatch(r"-?[0-9]+", p.strip()):
            raise WorkbenchError(f"cannot parse {text.strip()!r}: a position is like @3 or @-1")
        pos = int(p)
    port: Port | None = None
    if core.endswith(">") and "<" in core:
        core, _, p = core[:-1].rpartition("<")
        p = p.strip().lower()
        if p not in PORTS:
            raise WorkbenchError(f"cannot parse {text.strip()!r}: a port is <q>, <k> or <v>")
        port = cast(Port, p)
    return core.strip().lower(), port, pos


_CORES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], Node]], ...] = (
    (re.compile(r"input"), lambda m: INPUT),
    (re.compile(r"logits"), lambda m: LOGITS),
    (re.compile(r"a?(\d+)\.(\d+)", re.ASCII), lambda m: head(int(m[1]), int(m[2]))),
    (re.compile(r"l(\d+)h(\d+)", re.ASCII), lambda m: head(int(m[1]), int(m[2]))),
    (re.compile(r"m(\d+)", re.ASCII), lambda m: mlp(int(m[1]))),
    (re.compile(r"m(\d+)\.n(\d+)", re.ASCII), lambda m: Node("neuron", int(m[1]), int(m[2]))),
    (re.compile(r"a(\d+)\.f(\d+)", re.ASCII),
     lambda m: Node("feature", int(m[1]), int(m[2]), site="a")),
    (re.compile(r"m(\d+)\.f(\d+)", re.ASCII),
     lambda m: Node("feature", int(m[1]), int(m[2]), site="m")),
)


@lru_cache(maxsize=1 << 16)  # nodes are immutable; loading a large circuit re-reads each name
def parse_node(text: str) -> Node:
    """Read a canonical name or an alias (`9.1`, `L9H1` -> `a9.1`); whitespace around is fine."""
    core, port, pos = _split(text)
    for pattern, build in _CORES:
        match = pattern.fullmatch(core)
        if match:
            node = build(match)
            if port is not None and node.kind != "attn":
                raise WorkbenchError(
                    f"cannot parse {text.strip()!r}: only attention heads have <q|k|v> inputs"
                )
            return replace(node, port=port, pos=pos)
    raise WorkbenchError(f"cannot parse {text.strip()!r}: {_EXPECTED}")


def parse_edge(text: str) -> Edge:
    """Read `SRC->DST`, e.g. `a3.0->a9.1<q>`; either end may use an alias."""
    parts = text.split("->")
    if len(parts) != 2 or not all(part.strip() for part in parts):
        raise WorkbenchError(f"cannot parse {text.strip()!r}: expected an edge like a3.0->a9.1<q>")
    return Edge(parse_node(parts[0]), parse_node(parts[1]))


class HasSizes(Protocol):
    n_layers: int
    n_heads: int


class EdgeView(Sequence[Edge]):
    """`graph.edges`: every edge in score-tensor order, made on demand from index arithmetic
    (GPT-2 XL has 2.2 million; none is stored). Supports len, indexing, slices and iteration."""

    __slots__ = ("_graph",)

    def __init__(self, graph: Graph) -> None:
        self._graph = graph

    def __len__(self) -> int:
        return self._graph.n_edges

    @overload
    def __getitem__(self, i: int) -> Edge: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[Edge, ...]: ...
    def __getitem__(self, i: int | slice) -> Edge | tuple[Edge, ...]:
        if isinstance(i, slice):
            return tuple(self._graph.edge(j) for j in range(*i.indices(len(self))))
        return self._graph.edge(int(i))

    def __iter__(self) -> Iterator[Edge]:
        g = self._graph
        for r, receiver in enumerate(g.receivers):
            for s in range(g.upstream_counts[r]):
                yield Edge(g.sources[s], receiver)

    def __contains__(self, edge: object) -> bool:
        return isinstance(edge, Edge) and self._graph.index(edge) is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EdgeView) and other._graph == self._graph

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EdgeView({self._graph.n_edges} edges)"


class EdgeIndex(Mapping[Edge, int]):
    """`graph.edge_index`: edge -> its position in score tensors, by arithmetic (no dict)."""

    __slots__ = ("_graph",)

    def __init__(self, graph: Graph) -> None:
        self._graph = graph

    def __getitem__(self, edge: Edge) -> int:
        i = self._graph.index(edge)
        if i is None:
            raise KeyError(edge)
        return i

    def __contains__(self, edge: object) -> bool:
        return isinstance(edge, Edge) and self._graph.index(edge) is not None

    def __iter__(self) -> Iterator[Edge]:
        return iter(self._graph.edges)

    def __len__(self) -> int:
        return self._graph.n_edges


@dataclass(frozen=True)
class Graph:
    """The head-level computational graph and its one index scheme: sources, receivers (q/k/v
    split) and edges, in the fixed order score tensors and keep vectors use.

    Sources: input, then per layer its heads then its MLP. Receivers: per layer the q inputs of
    its heads, then k, then v, then its MLP; finally logits. Edges run receiver by receiver,
    each receiver reading from a prefix of the sources, so edge `i` and `index(edge)` are
    arithmetic: nothing per edge is built (`edges` and `edge_index` are views). Build with
    `Graph.from_sizes` or `Graph.of(cfg)`; one instance per size is shared.
    """

    n_layers: int
    n_heads: int
    sources: tuple[Node, ...] = field(init=False, repr=False, compare=False)
    receivers: tuple[Node, ...] = field(init=False, repr=False, compare=False)
    source_index: dict[Node, int] = field(init=False, repr=False, compare=False)
    receiver_index: dict[Node, int] = field(init=False, repr=False, compare=False)
    upstream_counts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    edge_offsets: tuple[int, ...] = field(init=False, repr=False, compare=False)
    attn_offset: tuple[int, ...] = field(init=False, repr=False, compare=False)
    mlp_offset: tuple[int, ...] = field(init=False, repr=False, compare=False)
    logits_offset: int = field(init=False, repr=False, compare=False)
    n_sources: int = field(init=False, repr=False, compare=False)
    n_receivers: int = field(init=False, repr=False, compare=False)
    n_edges: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_layers < 0 or self.n_heads < 1:
            raise WorkbenchError(
                f"bad graph sizes n_layers={self.n_layers}, n_heads={self.n_heads}: "
                "need n_layers >= 0 and n_heads >= 1"
            )
        sources: list[Node] = [INPUT]
        receivers: list[Node] = []
        counts: list[int] = []
        attn_offset: list[int] = []
        mlp_offset: list[int] = []
        offsets: list[int] = []
        at = 0
        for layer in range(self.n_layers):
            heads = [head(layer, h) for h in range(self.n_heads)]
            n_attn, n_mlp = self.up_attn(layer), self.up_mlp(layer)
            attn_offset.append(at)
            for p in PORTS:  # all q, all k, all v
                for h in heads:
                    receivers.append(h.with_port(p))
                    counts.append(n_attn)
                    offsets.append(at)
                    at += n_attn
            mlp_offset.append(at)
            receivers.append(mlp(layer))
            counts.append(n_mlp)
            offsets.append(at)
            at += n_mlp
            sources += [*heads, mlp(layer)]
        receivers.append(LOGITS)
        counts.append(len(sources))
        offsets.append(at)
        values: dict[str, object] = {
            "sources": tuple(sources),
            "receivers": tuple(receivers),
            "source_index": {n: i for i, n in enumerate(sources)},
            "receiver_index": {n: i for i, n in enumerate(receivers)},
            "upstream_counts": tuple(counts),
            "edge_offsets": (*offsets, at + len(sources)),
            "attn_offset": tuple(attn_offset),
            "mlp_offset": tuple(mlp_offset),
            "logits_offset": at,
            "n_sources": len(sources),
            "n_receivers": len(receivers),
            "n_edges": at + len(sources),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_sizes(cls, n_layers: int, n_heads: int) -> Graph:
        return _graph(n_layers, n_heads)

    @classmethod
    def of(cls, cfg: HasSizes) -> Graph:
        """From any config with `.n_layers` and `.n_heads` (e.g. a TransformerLens cfg)."""
        return _graph(int(cfg.n_layers), int(cfg.n_heads))

    @property
    def nodes(self) -> tuple[Node, ...]:
        """Every component (no ports): the sources, then logits."""
        return (*self.sources, LOGITS)

    @property
    def edges(self) -> EdgeView:
        """Every edge in index order, built on demand (a view, not a list)."""
        return EdgeView(self)

    @property
    def edge_index(self) -> EdgeIndex:
        """edge -> index, by arithmetic (a read-only mapping view)."""
        return EdgeIndex(self)

    # -- edges by index ----------------------------------------------------------------------

    def edge(self, i: int) -> Edge:
        """The edge at index `i` (negative counts from the end)."""
        s, r = self.edge_ends(i)
        return Edge(self.sources[s], self.receivers[r])

    def edge_ends(self, i: int) -> tuple[int, int]:
        """(source index, receiver index) of edge `i`."""
        n = self.n_edges
        if not -n <= i < n:
            raise IndexError(f"edge index {i} out of range for {n} edges")
        i %= n
        r = bisect_right(self.edge_offsets, i) - 1
        return i - self.edge_offsets[r], r

    def index(self, edge: Edge) -> int | None:
        """The position of `edge` in score tensors, or None if it is not in this graph."""
        r = self.receiver_index.get(edge.dst)
        s = self.source_index.get(edge.src)
        if r is None or s is None or s >= self.upstream_counts[r]:
            return None
        return self.edge_offsets[r] + s

    def incoming(self, receiver: Node) -> range:
        """The edge indices into `receiver` (its upstream sources in order)."""
        r = self.receiver_index.get(receiver)
        if r is None:
            self.n_upstream(receiver)  # raises the right message
            raise WorkbenchError(f"'{receiver}' is not a receiver of this graph")
        return range(self.edge_offsets[r], self.edge_offsets[r + 1])

    def outgoing(self, source: Node) -> list[int]:
        """The edge indices out of `source` (one per receiver downstream of it)."""
        s = self.source_index.get(source)
        if s is None:
            raise WorkbenchError(f"'{source}' is not a source of this graph")
        return [self.edge_offsets[r] + s for r, n in enumerate(self.upstream_counts) if n > s]

    # -- index arithmetic --------------------------------------------------------------------

    def up_attn(self, layer: int) -> int:
        """Sources feeding layer `layer`'s q/k/v inputs."""
        return 1 + layer * (self.n_heads + 1)

    def up_mlp(self, layer: int) -> int:
        """Sources feeding layer `layer`'s MLP."""
        return self.up_attn(layer) + self.n_heads

    def head_source(self, layer: int, index: int) -> int:
        return 1 + layer * (self.n_heads + 1) + index

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def attn_receiver(self, layer: int, port: int, index: int) -> int:
        return layer * (3 * self.n_heads + 1) + port * self.n_heads + index

    def mlp_receiver(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    def attn_keep(self, keep: Tensor, layer: int) -> Tensor:
        """(..., n_edges) -> (..., n_upstream, 3, n_heads): the edges into layer's q/k/v."""
        n, h = self.up_attn(layer), self.n_heads
        block = keep[..., self.attn_offset[layer]: self.attn_offset[layer] + 3 * h * n]
        return block.unflatten(-1, (3, h, n)).movedim(-1, -3)

    def mlp_keep(self, keep: Tensor, layer: int) -> Tensor:
        """(..., n_edges) -> (..., n_upstream): the edges into layer's MLP."""
        return keep[..., self.mlp_offset[layer]: self.mlp_offset[layer] + self.up_mlp(layer)]

    def logits_keep(self, keep: Tensor) -> Tensor:
        """(..., n_edges) -> (..., n_sources): the edges into logits."""
        return keep[..., self.logits_offset:]

    # -- checks ------------------------------------------------------------------------------

    def check(self, node: Node) -> Node:
        """Return `node` if its layer and head exist in this model, else raise."""
        if node.kind in ("input", "logits"):
            return node
        layer = node.layer if node.layer is not None else -1
        if not 0 <= layer < self.n_layers:
            raise WorkbenchError(f"unknown node '{node}': model has layers 0-{self.n_layers - 1}")
        if node.kind == "attn" and node.index >= self.n_heads:
            raise WorkbenchError(f"unknown node '{node}': model has heads 0-{self.n_heads - 1}")
        return node

    def n_upstream(self, receiver: Node) -> int:
        """How many sources feed `receiver`; they are always `sources[:n]`."""
        self.check(receiver)
        if receiver.kind == "attn":
            return self.up_attn(receiver.layer or 0)
        if receiver.kind == "mlp":
            return self.up_mlp(receiver.layer or 0)
        if receiver.kind == "logits":
            return 1 + self.n_layers * (self.n_heads + 1)
        raise WorkbenchError(
            f"'{receiver}' is not a receiver in the head-level graph: use aL.H<q|k|v>, mL or logits"
        )

    def upstream(self, receiver: Node) -> tuple[Node, ...]:
        return self.sources[: self.n_upstream(receiver)]


@cache
def _graph(n_layers: int, n_heads: int) -> Graph:
    return Graph(n_layers, n_heads)  # immutable, so one per size is shared


def expand(pattern: str, graph: Graph) -> list[Node]:
    """Nodes named by a command pattern (`a9.*`, `a*.*`, `a*.3`, `m*`) or a plain name/alias,
    checked against `graph`; `<q|k|v>` and `@P` suffixes carry over to every node."""
    core, port, pos = _split(pattern)
    if "*" not in core:
        return [graph.check(parse_node(pattern))]
    if core == "m*" and port is None:
        return [mlp(layer, pos) for layer in range(graph.n_layers)]
    match = re.fullmatch(r"a(\*|[0-9]+)\.(\*|[0-9]+)", core)
    if not match:
        raise WorkbenchError(
            f"cannot expand {pattern.strip()!r}: expected a pattern like a9.*, a*.*, a*.3, m* "
            "or a node name"
        )
    layers = range(graph.n_layers) if match[1] == "*" else [int(match[1])]
    heads = range(graph.n_heads) if match[2] == "*" else [int(match[2])]
    return [graph.check(head(layer, h, port, pos)) for layer in layers for h in heads]


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
