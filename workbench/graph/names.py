"""Node and edge names: the one module that generates and parses them (DESIGN.md, "Graph naming").

`input`, `logits`, `a9.1`, `a9.1<q>`, `m9`, `m9.n123`, `m9.f123`, `a9.f123`, each optionally at a
position (`a9.1@-1`), and edges `a3.0->a9.1<q>`. Everything else writes names with `str(node)`
and reads them with `parse_node`, `parse_edge` and `expand` (command patterns like `a9.*`).

Invariants: `str(parse_node(s)) == s` for every canonical name; sorting nodes gives topological
order (input, layer-0 heads, m0, layer-1 heads, ..., logits).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache, total_ordering
from typing import TYPE_CHECKING, Literal, cast

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.graph.layout import Graph

Kind = Literal["input", "attn", "mlp", "neuron", "feature", "logits"]
Port = Literal["q", "k", "v"]
Site = Literal["a", "m"]
KINDS: tuple[Kind, ...] = ("input", "attn", "mlp", "neuron", "feature", "logits")
PORTS: tuple[Port, ...] = ("q", "k", "v")
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
