"""The head-level computational graph and its one index scheme (`Graph`).

Sources: input, then per layer its heads then its MLP. Receivers: per layer the q inputs of its
heads, then k, then v, then its MLP; finally logits. Edges run receiver by receiver, each
receiver reading a prefix of the sources, so edge `i` <-> `Edge` is arithmetic and nothing per
edge is stored (`edges` and `edge_index` are views): GPT-2 XL's 2.2 million edges cost nothing
until asked for. The forward's keep-vector blocks (`attn_keep`, `mlp_keep`, `logits_keep`) cut
the same order.

Invariant: `Graph.sources`, `.receivers` and `.edges` fix the order that score tensors and keep
vectors are indexed by -- change it and saved tensors are misread.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Protocol, overload

from workbench.errors import WorkbenchError
from workbench.graph.names import INPUT, LOGITS, PORTS, Edge, Node, head, mlp

if TYPE_CHECKING:
    from torch import Tensor


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
