"""Names, the index layout and circuits of the head-level graph (one module per job).

- `workbench.graph.names`: Node/Edge names, parsing and command patterns;
- `workbench.graph.layout`: `Graph`, the one index scheme of sources, receivers and edges;
- `workbench.graph.circuit`: `Circuit` (networkx, JSON), `connected`, `compare`.
Everything is re-exported here, so `from workbench.graph import Graph, parse_node` keeps working.
"""

from workbench.files import write_atomic
from workbench.graph.circuit import FORMAT_VERSION, Circuit, CircuitDiff, compare, connected
from workbench.graph.layout import EdgeIndex, EdgeView, Graph, HasSizes
from workbench.graph.names import (
    INPUT,
    KINDS,
    LOGITS,
    PORTS,
    Edge,
    Kind,
    Node,
    Port,
    Site,
    expand,
    head,
    mlp,
    parse_edge,
    parse_node,
)

__all__ = [
    "FORMAT_VERSION", "INPUT", "KINDS", "LOGITS", "PORTS", "Circuit", "CircuitDiff", "Edge",
    "EdgeIndex", "EdgeView", "Graph", "HasSizes", "Kind", "Node", "Port", "Site", "compare",
    "connected", "expand", "head", "mlp", "parse_edge", "parse_node", "write_atomic",
]
