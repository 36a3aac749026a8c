"""Names round-trip, the head-level graph has the right shape and order, circuits persist."""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import networkx as nx
import pytest

from workbench.errors import WorkbenchError
from workbench.graph import (
    INPUT,
    LOGITS,
    PORTS,
    Circuit,
    Edge,
    Graph,
    Node,
    compare,
    expand,
    head,
    mlp,
    parse_edge,
    parse_node,
)

CANONICAL = [
    "input", "logits", "a9.1", "a0.0", "a9.1<q>", "a9.1<k>", "a9.1<v>", "m9", "m0",
    "m9.n123", "m9.f123", "a9.f123", "a9.1@-1", "a9.1<q>@3", "m9@0", "m9.n7@-2", "input@0",
    "logits@-1", "a11.11<v>@-12",
]  # fmt: skip


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_names_round_trip(name: str) -> None:
    node = parse_node(name)
    assert str(node) == name
    assert parse_node(str(node)) == node


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("9.1", "a9.1"), ("L9H1", "a9.1"), ("l9h1", "a9.1"), ("  a9.1\t", "a9.1"),
        ("L9H1<q>@-1", "a9.1<q>@-1"), ("9.1<K>", "a9.1<k>"), (" m3 ", "m3"), ("LOGITS", "logits"),
    ],
)  # fmt: skip
def test_aliases_parse_to_canonical(alias: str, canonical: str) -> None:
    assert str(parse_node(alias)) == canonical


def test_parsed_fields() -> None:
    assert parse_node("a9.1<q>@-1") == Node("attn", 9, 1, port="q", pos=-1)
    assert parse_node("m9.n123") == Node("neuron", 9, 123)
    assert parse_node("a9.f5") == Node("feature", 9, 5, site="a")
    assert parse_node("m9.f5") == Node("feature", 9, 5, site="m")
    assert parse_node("input") == INPUT and INPUT.layer == -1
    assert parse_node("logits") == LOGITS and LOGITS.layer is None
    assert parse_node("a9.1<q>@-1").base() == head(9, 1)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a9,1", "expected a node like a9.1"), ("", "expected a node"), ("b3", "expected a node"),
        ("a9.1<x>", "<q>, <k> or <v>"), ("m9<q>", "only attention heads"),
        ("a9.1@x", "@3 or @-1"), ("a-1.0", "expected a node"), ("m9.x3", "expected a node"),
    ],
)  # fmt: skip
def test_bad_names_raise_helpful_errors(text: str, fragment: str) -> None:
    with pytest.raises(WorkbenchError, match="cannot parse") as err:
        parse_node(text)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_name_message_exact() -> None:
    with pytest.raises(WorkbenchError) as err:
        parse_node("a9,1")
    assert str(err.value) == (
        "cannot parse 'a9,1': expected a node like a9.1, m9, m9.n123, input, logits"
    )


def test_invalid_nodes_rejected() -> None:
    for bad in [
        lambda: Node("mlp", 3, port="q"),
        lambda: Node("attn", -2, 0),
        lambda: Node("feature", 1, 2),
        lambda: Node("input", 0),
        lambda: Node("mlp", 1, 4),
    ]:
        with pytest.raises(WorkbenchError, match="invalid node"):
            bad()


def test_sorting_is_topological() -> None:
    order = [
        "input", "a0.0", "a0.0@-1", "a0.0<q>", "a0.0<q>@2", "a0.0<k>", "a0.1", "a0.f3", "m0",
        "m0.n1", "m0.n2", "m0.f0", "a1.0", "m1", "a10.0", "m10", "logits",
    ]  # fmt: skip
    shuffled = order[:]
    random.Random(0).shuffle(shuffled)
    assert [str(n) for n in sorted(parse_node(x) for x in shuffled)] == order


@pytest.mark.parametrize(
    "name", ["a3.0->a9.1<q>", "input->m0", "m2->logits", "a0.1@-1->a1.0<v>@-1", "m0.f3->a1.f2"]
)
def test_edges_round_trip(name: str) -> None:
    edge = parse_edge(name)
    assert str(edge) == name
    assert parse_edge(f"  {name}  ") == edge


def test_edge_aliases_and_errors() -> None:
    assert str(parse_edge("L3H0->9.1<q>")) == "a3.0->a9.1<q>"
    for bad in ["a3.0", "a3.0->", "a0.0->a1.0->m1", "->m0"]:
        with pytest.raises(WorkbenchError, match="expected an edge like a3.0->a9.1<q>"):
            parse_edge(bad)
    for bad in ["logits->m0", "m0->input", "a0.0<q>->m0"]:
        with pytest.raises(WorkbenchError, match="invalid edge"):
            parse_edge(bad)


def test_gpt2_small_has_32491_edges() -> None:
    g = Graph.from_sizes(12, 12)
    assert g.n_edges == 32_491
    assert len(g.sources) == 1 + 12 * 13
    assert len(g.receivers) == 12 * (3 * 12 + 1) + 1
    assert len(g.edge_index) == len(set(g.edges)) == 32_491


def test_tiny_graph_counted_by_hand() -> None:
    # 2 layers, 2 heads. Sources: input a0.0 a0.1 m0 a1.0 a1.1 m1 (7).
    # Layer 0: 6 q/k/v receivers x 1 source (input) = 6; m0 <- input a0.0 a0.1 = 3.
    # Layer 1: 6 q/k/v receivers x 4 (input a0.0 a0.1 m0) = 24; m1 <- those 4 + a1.0 a1.1 = 6.
    # logits <- all 7 = 7.  Total 6 + 3 + 24 + 6 + 7 = 46.
    g = Graph.from_sizes(2, 2)
    assert g.n_edges == 46
    assert [str(n) for n in g.sources] == ["input", "a0.0", "a0.1", "m0", "a1.0", "a1.1", "m1"]
    assert [str(n) for n in g.receivers[:7]] == [
        "a0.0<q>", "a0.1<q>", "a0.0<k>", "a0.1<k>", "a0.0<v>", "a0.1<v>", "m0",
    ]  # fmt: skip
    assert str(g.receivers[-1]) == "logits" and len(g.receivers) == 15
    assert [str(n) for n in g.nodes] == [*(str(n) for n in g.sources), "logits"]
    assert str(g.edges[0]) == "input->a0.0<q>"
    assert [str(e) for e in g.edges[6:9]] == ["input->m0", "a0.0->m0", "a0.1->m0"]
    assert str(g.edges[-1]) == "m1->logits"


def test_index_formulas() -> None:
    n_layers, n_heads = 12, 12
    g = Graph.from_sizes(n_layers, n_heads)
    for layer in range(n_layers):
        base = layer * (3 * n_heads + 1)
        for h in range(n_heads):
            assert g.source_index[head(layer, h)] == 1 + layer * (n_heads + 1) + h
            for k, port in enumerate(PORTS):
                assert g.receiver_index[head(layer, h, port)] == base + k * n_heads + h
        assert g.source_index[mlp(layer)] == 1 + layer * (n_heads + 1) + n_heads
        assert g.receiver_index[mlp(layer)] == base + 3 * n_heads
    assert g.source_index[INPUT] == 0
    assert g.receiver_index[LOGITS] == n_layers * (3 * n_heads + 1)
    assert all(g.edge_index[e] == i for i, e in enumerate(g.edges))


def test_n_upstream_matches_edges_and_is_a_prefix() -> None:
    g = Graph.from_sizes(3, 4)
    per_receiver = Counter(e.dst for e in g.edges)
    assert g.n_upstream(head(2, 1, "k")) == 1 + 2 * 5
    assert g.n_upstream(mlp(2)) == 1 + 2 * 5 + 4
    assert g.n_upstream(LOGITS) == 1 + 3 * 5
    for receiver in g.receivers:
        assert per_receiver[receiver] == g.n_upstream(receiver)
        srcs = [e.src for e in g.edges if e.dst == receiver]
        assert tuple(srcs) == g.sources[: g.n_upstream(receiver)] == g.upstream(receiver)
    # edges run receiver by receiver, in receiver order
    assert [g.receiver_index[e.dst] for e in g.edges] == sorted(
        g.receiver_index[e.dst] for e in g.edges
    )
    with pytest.raises(WorkbenchError, match="not a receiver"):
        g.n_upstream(INPUT)


def test_graph_of_config_and_check() -> None:
    g = Graph.of(SimpleNamespace(n_layers=2, n_heads=2))
    assert g == Graph.from_sizes(2, 2) and g.n_edges == 46
    with pytest.raises(WorkbenchError) as err:
        g.check(parse_node("a99.1"))
    assert str(err.value) == "unknown node 'a99.1': model has layers 0-1"
    with pytest.raises(WorkbenchError, match="model has heads 0-1"):
        g.check(parse_node("a1.2"))
    with pytest.raises(WorkbenchError, match="bad graph sizes"):
        Graph.from_sizes(2, 0)


def test_expand_patterns() -> None:
    g = Graph.from_sizes(12, 12)
    assert [str(n) for n in expand("a9.*", g)] == [f"a9.{h}" for h in range(12)]
    assert len(expand("a*.*", g)) == 144
    assert [str(n) for n in expand("a*.3", g)] == [f"a{layer}.3" for layer in range(12)]
    assert [str(n) for n in expand("m*", g)] == [f"m{layer}" for layer in range(12)]
    assert [str(n) for n in expand("a2.*<q>@-1", g)][:2] == ["a2.0<q>@-1", "a2.1<q>@-1"]
    assert [str(n) for n in expand("m*@3", g)][-1] == "m11@3"
    assert expand("L3H2", g) == [head(3, 2)]
    assert expand(" m5.n7 ", g) == [Node("neuron", 5, 7)]
    with pytest.raises(WorkbenchError, match="model has layers 0-11"):
        expand("a12.*", g)
    with pytest.raises(WorkbenchError, match="model has heads 0-11"):
        expand("a*.12", g)
    for bad in ["m*<q>", "x*", "a*", "a9.*.1"]:
        with pytest.raises(WorkbenchError, match="cannot expand"):
            expand(bad, g)


def _small() -> Circuit:
    return Circuit(
        nodes=["a0.0", "m0"],
        edges=["input->a0.0<q>", "input->a0.0<k>", "a0.0->m0", "m0->logits"],
        scores={"a0.0": 0.5, "input->a0.0<q>": -1.25, "m0->logits": 2.0},
        name="c1",
    )


def test_circuit_contents_and_digraph() -> None:
    c = _small()
    assert [str(n) for n in c.nodes] == ["input", "a0.0", "m0", "logits"]
    assert [str(e) for e in c.edges] == [
        "input->a0.0<q>", "input->a0.0<k>", "a0.0->m0", "m0->logits",
    ]  # fmt: skip
    assert c.scores == {"a0.0": 0.5, "input->a0.0<q>": -1.25, "m0->logits": 2.0}
    g = c.digraph
    assert isinstance(g, nx.DiGraph) and nx.is_frozen(g)
    assert g.number_of_edges("input", "a0.0") == 2  # q and k are parallel edges
    assert g.edges["input", "a0.0", "q"] == {
        "port": "q", "edge": parse_edge("input->a0.0<q>"), "score": -1.25,
    }  # fmt: skip
    assert g.nodes["a0.0"]["score"] == 0.5 and g.edges["a0.0", "m0", ""]["port"] is None
    assert parse_edge("a0.0->m0") in c and parse_edge("input->a0.0<v>") not in c
    with pytest.raises(WorkbenchError, match="not in the circuit"):
        Circuit(nodes=["m0"], scores={"m1": 1.0})
    with pytest.raises(WorkbenchError, match="must be finite"):
        Circuit(nodes=["m0"], scores={"m0": float("nan")})


def test_circuit_json_round_trip(tmp_path) -> None:
    c = _small()
    data = c.to_json()
    assert data["version"] == 1 and data["nodes"] == ["input", "a0.0", "m0", "logits"]
    back = Circuit.from_json(json.loads(json.dumps(data)))
    assert back == c
    assert (back.nodes, back.edges, back.scores, back.name) == (c.nodes, c.edges, c.scores, "c1")
    path = c.save(tmp_path / "c1.json")
    assert Circuit.load(path) == c
    assert [p.name for p in tmp_path.iterdir()] == ["c1.json"]  # no temp file left behind
    assert c != Circuit(c.nodes, c.edges, name="c1")  # scores count for equality


def test_circuit_load_errors_name_the_file(tmp_path) -> None:
    ok = {"version": 1, "nodes": ["m0"], "edges": []}
    cases: dict[str, str | None] = {
        "missing.json": None,
        "garbage.json": "{not json",
        "version.json": json.dumps({**ok, "version": 2}),
        "names.json": json.dumps({**ok, "nodes": ["a9,1"]}),
        "types.json": json.dumps({**ok, "nodes": "m0"}),
        "score.json": json.dumps({**ok, "scores": {"m0": []}}),
        "array.json": "[]",
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(WorkbenchError, match="cannot read circuit") as err:
            Circuit.load(tmp_path / name)
        assert name in str(err.value) and "\n" not in str(err.value)


def test_from_nodes_keeps_edges_inside_the_set() -> None:
    g = Graph.from_sizes(2, 2)
    c = Circuit.from_nodes(["a0.1", "L1H0"], g)
    assert [str(n) for n in c.nodes] == ["input", "a0.1", "a1.0", "logits"]
    expected = {
        *(f"input->a0.1<{p}>" for p in "qkv"), *(f"input->a1.0<{p}>" for p in "qkv"),
        *(f"a0.1->a1.0<{p}>" for p in "qkv"), "input->logits", "a0.1->logits", "a1.0->logits",
    }  # fmt: skip
    assert {str(e) for e in c.edges} == expected and len(c.edges) == 12
    full = Circuit.from_nodes(g.nodes, g)
    assert set(full.edges) == set(g.edges)
    with pytest.raises(WorkbenchError, match="model has layers 0-1"):
        Circuit.from_nodes(["a2.0"], g)
    with pytest.raises(WorkbenchError, match="whole components"):
        Circuit.from_nodes(["a0.0@-1"], g)


def test_from_edges_adds_endpoints() -> None:
    c = Circuit.from_edges(["a0.1->a1.0<v>"], scores={"a0.1->a1.0<v>": 3.0})
    assert [str(n) for n in c.nodes] == ["a0.1", "a1.0"]
    assert c.scores == {"a0.1->a1.0<v>": 3.0}


def test_compare_and_jaccard() -> None:
    a = Circuit(["a0.0", "a0.1", "m0"], ["a0.0->m0", "a0.1->m0"])
    b = Circuit(["a0.1", "m0", "a1.0", "a1.1"], ["a0.1->m0", "m0->a1.0<q>"])
    diff = compare(a, b)
    assert [str(n) for n in diff.shared_nodes] == ["a0.1", "m0"]
    assert [str(n) for n in diff.only_a_nodes] == ["a0.0"]
    assert [str(n) for n in diff.only_b_nodes] == ["a1.0", "a1.1"]
    assert [str(e) for e in diff.shared_edges] == ["a0.1->m0"]
    assert [str(e) for e in diff.only_a_edges] == ["a0.0->m0"]
    assert [str(e) for e in diff.only_b_edges] == ["m0->a1.0<q>"]
    assert diff.jaccard_nodes == pytest.approx(2 / 5)
    assert diff.jaccard_edges == pytest.approx(1 / 3)
    same = compare(a, a)
    assert same.jaccard_nodes == same.jaccard_edges == 1.0 and not same.only_a_edges
    assert compare(Circuit(), Circuit()).jaccard_edges == 1.0


def test_edges_are_arithmetic_views_that_round_trip() -> None:
    g = Graph.from_sizes(3, 4)
    listed = list(g.edges)  # iteration builds them receiver by receiver
    assert len(listed) == len(g.edges) == g.n_edges
    assert all(g.edge(i) == e and g.index(e) == i for i, e in enumerate(listed))
    assert g.edges[-1] == listed[-1] and g.edges[2:5] == tuple(listed[2:5])
    assert list(g.edge_index) == listed and g.edge_index[listed[7]] == 7
    for source in g.sources:
        assert [listed[i] for i in g.outgoing(source)] == [e for e in listed if e.src == source]
    for r, receiver in enumerate(g.receivers):
        assert [listed[i].dst for i in g.incoming(receiver)] == [receiver] * g.upstream_counts[r]
    outside = [Edge(mlp(2), head(1, 0, "q")), Edge(INPUT, head(0, 0, "q", pos=1)),
               Edge(INPUT, head(0, 0))]  # upstream of its receiver; a position; no port
    for edge in outside:
        assert g.index(edge) is None and edge not in g.edge_index and edge not in g.edges
    with pytest.raises(KeyError):
        g.edge_index[outside[0]]
    with pytest.raises(IndexError):
        g.edge(g.n_edges)


def test_gpt2_xl_graph_stores_nothing_per_edge() -> None:
    """48 layers x 25 heads: 2,235,025 edges, none of them built or stored."""
    g = Graph.from_sizes(48, 25)
    assert g.n_edges == 2_235_025 and g.n_sources == 1 + 48 * 26
    stored = [v for v in vars(g).values() if isinstance(v, tuple | dict | list)]
    assert max(len(v) for v in stored) <= g.n_receivers + 1
    for i in (0, 1, 999_999, 1_234_567, g.n_edges - 1):
        assert g.index(g.edge(i)) == i
    assert str(g.edge(-1)) == "m47->logits" and str(g.edge(0)) == "input->a0.0<q>"
    # a47.24<v> is the last receiver before m47 and reads 1 + 47 * 26 sources; a46.24 is the
    # the second-to-last of them (m46 is last)
    assert g.index(parse_edge("a46.24->a47.24<v>")) == g.mlp_offset[47] - 2
    assert g.mlp_offset[47] == g.logits_offset - (1 + 47 * 26 + 25)
