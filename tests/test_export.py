"""DOT is deterministic and layered; exports dispatch on suffix and write atomically."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from workbench import export as export_module
from workbench.errors import WorkbenchError
from workbench.export import COLOURS, export, to_dot
from workbench.graph import Circuit, Graph


def _circuit() -> Circuit:
    base = Circuit.from_nodes(["a0.1", "m0", "a1.0"], Graph.from_sizes(2, 2), name="c1")
    scores = {"a0.1->a1.0<q>": 4.0, "input->m0": -2.0, "m0->logits": 1e-9, "a1.0": 0.25}
    return Circuit(base.nodes, base.edges, scores, name="c1")


def _node_lines(dot: str) -> list[str]:
    return re.findall(r'^\t\t"?([\w.@<>-]+)"? \[', dot, flags=re.M)


def test_dot_is_deterministic_and_sorted() -> None:
    c = _circuit()
    dot = to_dot(c)
    assert dot == to_dot(c)
    shuffled = Circuit(reversed(c.nodes), reversed(c.edges), c.scores, name="c1")
    assert to_dot(shuffled) == dot
    assert _node_lines(dot) == ["input", "a0.1", "m0", "a1.0", "logits"]
    edges = re.findall(r"^\t(\S+) -> (\S+)", dot, flags=re.M)
    assert edges[0] == ("input", '"a0.1"') and edges[-1] == ('"a1.0"', "logits")
    assert len(edges) == len(c.edges) == 18  # a0.1: 3, m0: 2, a1.0: 9, logits: 4


def test_dot_layers_colours_ports_and_widths() -> None:
    dot = to_dot(_circuit())
    assert dot.count("rank=same") == 3  # rows a0, m0, a1
    assert "rank=min" in dot and "rank=max" in dot and "rankdir=BT" in dot
    assert 'subgraph rank_a0 {\n\t\trank=same\n\t\t"a0.1"' in dot
    assert f'm0 [fillcolor="{COLOURS["mlp"]}"]' in dot
    assert f'"a0.1" [fillcolor="{COLOURS["attn"]}"]' in dot
    assert '"a1.0" [label="a1.0\\n+0.25"' in dot  # node score shown under its name
    for port in "qkv":
        assert f'input -> "a1.0" [label={port}' in dot
    assert '"a0.1" -> "a1.0" [label=q color="#404040" penwidth=5.00]' in dot  # top score
    assert 'input -> m0 [color="#cb181d" penwidth=3.00]' in dot  # half of top, negative
    assert 'm0 -> logits [color="#404040" penwidth=1.00]' in dot  # clamped at the minimum
    assert "peripheries" not in dot


def test_dot_marks_shared_nodes_and_kinds() -> None:
    c = Circuit(["m1.n7", "a1.f3", "m0.f2"], ["input->a0.0<v>", "a0.0->m1.n7"])
    dot = to_dot(c, shared={"a0.0", "a0.0->m1.n7"})
    assert '"a0.0" [fillcolor="#9ecae1" penwidth=2 peripheries=2]' in dot
    assert dot.count("peripheries=2") == 1
    assert '"a0.0" -> "m1.n7" [style=bold]' in dot
    assert f'"m1.n7" [fillcolor="{COLOURS["neuron"]}"]' in dot
    assert f'"a1.f3" [fillcolor="{COLOURS["feature"]}"]' in dot
    assert _node_lines(dot) == ["input", "a0.0", "m0.f2", "a1.f3", "m1.n7"]
    assert "penwidth=1" not in dot  # no scores, no widths
    assert len(set(COLOURS.values())) == len(COLOURS)


def test_export_dot_and_json(tmp_path) -> None:
    c = _circuit()
    path = export(c, tmp_path / "c1.dot")
    assert path == tmp_path / "c1.dot" and path.read_text() == to_dot(c)
    path = export(c, str(tmp_path / "c1.json"))
    assert json.loads(path.read_text())["version"] == 1
    assert Circuit.load(path) == c
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.dot", "c1.json"]  # no temp files


def test_export_rejects_unknown_suffix_and_missing_folder(tmp_path) -> None:
    with pytest.raises(WorkbenchError) as err:
        export(_circuit(), tmp_path / "c1.pdf")
    assert "'.pdf'" in str(err.value) and ".dot, .json, .svg, .png" in str(err.value)
    with pytest.raises(WorkbenchError, match="use one of"):
        export(_circuit(), tmp_path / "c1")
    with pytest.raises(WorkbenchError, match="does not exist"):
        export(_circuit(), tmp_path / "nowhere" / "c1.dot")
    assert list(tmp_path.iterdir()) == []


def test_export_svg(tmp_path) -> None:
    path = tmp_path / "c1.svg"
    if shutil.which("dot"):
        export(_circuit(), path)
        text = path.read_text()
        assert text.startswith("<?xml") or "<svg" in text
        assert "a0.1" in text
    else:
        with pytest.raises(WorkbenchError, match="needs Graphviz's dot"):
            export(_circuit(), path)
        assert not path.exists()


@pytest.mark.parametrize("suffix", [".svg", ".png"])
def test_export_without_dot_explains_the_fix(tmp_path, monkeypatch, suffix: str) -> None:
    monkeypatch.setattr(export_module.shutil, "which", lambda name: None)
    path = tmp_path / f"c1{suffix}"
    with pytest.raises(WorkbenchError) as err:
        export(_circuit(), path)
    assert str(err.value) == (
        f"exporting {suffix} needs Graphviz's dot: install Debian's graphviz package "
        "(apt-get install graphviz)"
    )
    assert not path.exists() and list(tmp_path.iterdir()) == []
