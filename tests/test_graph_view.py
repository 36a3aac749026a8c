"""The circuit drawn as a layered DAG: layout engines, the braille canvas, and the graph tab.

The Pilot tests replay the bundled `sessions/addition.wb` (minus its `load`, the fixture's add3
is the same model) in a temp dir and look at the graph tab at 120x40, as a person would.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pilot_helpers import settle
from pytest_textual_snapshot import SVGImageExtension
from textual.pilot import Pilot

from workbench import layered
from workbench.graph import Circuit, Graph, parse_node
from workbench.layered import layout, rank_of
from workbench.model import LoadedModel
from workbench.session import Session
from workbench.sessionlog import read_script
from workbench.tui.app import WorkbenchApp
from workbench.tui.graph_canvas import DrawEdge, DrawNode, draw
from workbench.tui.graph_layout import circuit_layout
from workbench.tui.panes.graph_view import GraphView

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOTS = Path(__file__).parent / "snapshots"
HAS_DOT = shutil.which("dot") is not None


@pytest.fixture
def snap_compare(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(SVGImageExtension, "dirname", classmethod(
        lambda cls, *, test_location: str(SNAPSHOTS / "test_graph_view")))
    return snap_compare


def _edges(c: Circuit) -> list[tuple[str, str]]:
    return [(e.ends()[0], e.ends()[1]) for e in c.edges]


def _circuit() -> Circuit:
    return Circuit.from_nodes(["a0.0", "a0.1", "a0.2", "a0.3", "m0", "a1.2", "m1"],
                              Graph.from_sizes(2, 4))


@pytest.mark.parametrize("engine", [
    "grandalf", pytest.param("dot", marks=pytest.mark.skipif(not HAS_DOT, reason="no dot"))])
def test_layout_keeps_ranks_and_routes_long_edges(engine: str) -> None:
    c = _circuit()
    edges = _edges(c)
    lay = layout(c.nodes, edges, engine=engine)  # type: ignore[arg-type]
    assert lay.engine == engine
    assert set(lay.nodes) == {str(n) for n in c.nodes}
    for n in c.nodes:
        assert lay.nodes[str(n)].rank == rank_of(n, 2)
    assert [p.name for p in lay.rank_members(0)] == ["input"]
    assert [p.name for p in lay.rank_members(5)] == ["logits"]
    assert sorted(p.name for p in lay.rank_members(1)) == ["a0.0", "a0.1", "a0.2", "a0.3"]
    for (src, dst), bends in zip(edges, lay.bends, strict=True):
        lo, hi = lay.nodes[src].rank, lay.nodes[dst].rank
        assert [r for r, _ in bends] == list(range(lo + 1, hi))  # one bend per rank crossed
    assert layout(c.nodes, edges, engine=engine) == lay  # type: ignore[arg-type]


def test_without_dot_the_layout_falls_back_to_grandalf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layered.shutil, "which", lambda name: None)
    assert layered.engine_available() == "grandalf"
    c = _circuit()
    assert layout(c.nodes, _edges(c)).engine == "grandalf"
    monkeypatch.setattr(layered.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(
        OSError("dot broke")))
    assert layout(c.nodes, _edges(c), engine="dot").engine == "grandalf"


def _picture(focus: str | None = None, dim_rest: bool = False) -> Any:
    c = Circuit.from_edges(["input->a0.0<q>", "input->a0.0<k>", "input->a0.0<v>",
                            "a0.0->m0", "input->m0", "m0->logits"])
    lay = layout(c.nodes, _edges(c), engine="grandalf")
    nodes = [DrawNode(str(n), n.kind, str(n)) for n in c.nodes]
    edges = [DrawEdge(*e.ends(), weight=1.0) for e in c.edges]
    labels = {r: str(r) for r in range(lay.n_ranks)}
    return draw(nodes, edges, lay, labels, width=40, gap=3, focus=focus, dim_rest=dim_rest), c


def test_canvas_draws_boxes_by_rank_and_every_edge_as_dots() -> None:
    pic, c = _picture()
    assert pic.n_edges == len(c.edges) == 6
    rows = {name: box.row for name, box in pic.boxes.items()}
    assert rows["logits"] < rows["m0"] < rows["a0.0"] < rows["input"]  # input at the bottom
    for name, box in pic.boxes.items():
        assert pic.lines[box.row].plain[box.col:box.col + box.width] == f" {name} "
    for name in ("input", "a0.0", "m0"):  # a line leaves the top of every source box
        box = pic.boxes[name]
        above = pic.lines[box.row - 1].plain[box.col:box.col + box.width]
        assert any("\u2800" < ch <= "\u28ff" for ch in above), name
    # q, k and v arrive at three different columns under a0.0, in their own colours.
    box = pic.boxes["a0.0"]
    under = pic.lines[box.row + 1]
    cells = [x for x in range(box.col, box.col + box.width) if under.plain[x] != " "]
    colours = {_style_at(under, x) for x in cells}
    assert {"yellow", "bright_green", "bright_red"} <= {c.split()[-1] for c in colours}


def _style_at(text: Any, x: int) -> str:
    return " ".join(str(s.style) for s in text.spans if s.start <= x < s.end)


def test_focus_draws_the_nodes_edges_bold_and_dims_the_rest() -> None:
    pic, _ = _picture(focus="m0", dim_rest=True)
    spans = [s for line in pic.lines for s in line.spans]
    assert any("bold" in str(s.style) for s in spans)
    assert any(str(s.style) == "bright_black" for s in spans)
    box = pic.boxes["m0"]
    assert "reverse" in _style_at(pic.lines[box.row], box.col + 1)


def test_large_circuits_draw_the_top_k_edges_and_say_so() -> None:
    graph = Graph.from_sizes(12, 12)
    base = Circuit.from_nodes([n for n in graph.nodes if n.kind in ("attn", "mlp")], graph)
    scores = {str(e): (i % 97) - 48.0 + 0.001 * i for i, e in enumerate(base.edges)}
    c = Circuit(base.nodes, base.edges, scores, name="big")
    view = circuit_layout(c)
    assert view.n_edges == len(c.edges) > 10_000
    top = view.top_edges(50)
    assert len(top) == 50
    cutoff = min(abs(s or 0) for *_, s in top)
    assert sum(abs(v) > cutoff for k, v in scores.items()) <= 50
    assert all(parse_node(src) < parse_node(dst) for src, dst, _, _ in top)


# -- the graph tab ------------------------------------------------------------------------------


def _addition_session(add3: LoadedModel, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Session:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setattr(layered, "engine_available", lambda: "grandalf")  # same on any machine
    s = Session(Path("addition.jsonl"), model=add3, seed=0)
    for line in read_script(ROOT / "sessions" / "addition.wb"):
        if not line.startswith("load "):
            assert s.execute(line).ok, line
    return s


@pytest.mark.asyncio
async def test_addition_graph_tab_draws_every_edge(add3: LoadedModel, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    session = _addition_session(add3, tmp_path, monkeypatch)
    app = WorkbenchApp(session, keymap={})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("3")
        await pilot.pause()
        view = app.query_one(GraphView)
        assert view.picture is not None
        pic = view.last
        assert pic is not None
        union = {e.ends() for cid in ("c1", "c2")
                 for e in session.state.circuit(cid).circuit.edges}
        assert view.picture.n_edges == len(union) == pic.n_edges  # nothing hidden
        assert set(pic.boxes) == set(view.picture.order)
        assert pic.height <= view.size.height and pic.width <= view.size.width  # fits 120x40
        view.focus()
        await pilot.press("down", "f")
        await pilot.pause()
        assert view.dim_rest and view.selected_name == view.picture.order[1]
        await pilot.press("plus")
        await pilot.pause()
        assert view.last is not None and view.last.width > pic.width


def test_snapshot_addition_graph_120x40(snap_compare: Any, add3: LoadedModel, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app = WorkbenchApp(_addition_session(add3, tmp_path, monkeypatch), keymap={})

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(app, pilot)
        await pilot.press("3")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)
