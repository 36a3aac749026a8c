"""The TUI at GPT-2 XL shape: 48 layers x 25 heads (1,200 heads, 2,235,025 edges).

The checkpoint is random and of reduced width (d_model 50, so d_head 2) with the digit
tokenizer, built in a temp dir and loaded through `load_model`, so the pilot tests run in
seconds while every count that scales with the model (cells, edges, names) is XL's. Also the
pieces underneath: `EdgeScores.top` / `above` against a full sort, and name search against a
brute-force match over `graph.edges`.
"""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path

import pytest
import torch
from pilot_helpers import settle

from workbench.graph import Graph
from workbench.model import LoadedModel, load_model
from workbench.plugins import EdgeScores, NodeScores
from workbench.session import Session
from workbench.tokenizer import build_tokenizer, save_tokenizer
from workbench.tui.app import WorkbenchApp
from workbench.tui.panes.graph_view import GraphView
from workbench.tui.panes.head_grid import HeadGrid
from workbench.tui.panes.results import ResultsPane
from workbench.tui.result_views import ranked
from workbench.tui.score_search import edge_ends, edge_mask

XL_LAYERS, XL_HEADS = 48, 25
XL_EDGES = 2_235_025


def build_xl_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A random GPT-2-XL-shaped checkpoint (48 x 25) of reduced width: d_model 50."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer()
    config = GPT2Config(n_layer=XL_LAYERS, n_head=XL_HEADS, n_embd=50, n_positions=32,
                        vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    save_tokenizer(tok, directory)
    return directory


@pytest.fixture(scope="module")
def xl_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path = build_xl_checkpoint(tmp_path_factory.mktemp("xl") / "ckpt")
    return load_model(str(path), device="cpu")


@pytest.fixture
def xl_session(tmp_path: Path, xl_model: LoadedModel) -> Session:
    s = Session(tmp_path / "xl.jsonl", model=xl_model)
    assert s.execute("task addition digits=3 n=8").ok
    return s


def line_text(grid: HeadGrid, y: int) -> str:
    return grid.render_line(y).text


# -- pilot tests at XL shape ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.asyncio
async def test_xl_grid_scrolls_jumps_and_toggles_one_cell(xl_session: Session) -> None:
    app = WorkbenchApp(xl_session, keymap={})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        grid = app.query_one(HeadGrid)
        assert grid.view is not None
        assert (grid.view.n_layers, grid.view.n_heads) == (XL_LAYERS, XL_HEADS)
        assert len(grid.rows_shown) == XL_LAYERS and len(grid.cols_shown) == XL_HEADS + 1
        height = grid.scrollable_content_region.height
        assert 3 <= height < XL_LAYERS + 2, "the grid must scroll, not fill the screen"
        assert line_text(grid, 0).split()[:2] == ["h0", "h1"]  # the sticky header

        await pilot.press("end")  # last layer: the grid scrolls, the header stays
        assert grid.cursor == (0, XL_LAYERS - 1) and grid.scroll_offset.y > 0
        shown = [line_text(grid, y).split()[:1] for y in range(1, height - 1)]
        assert ["L47"] in shown and line_text(grid, 0).split()[0] == "h0"
        await pilot.press("pageup")
        assert grid.cursor[1] < XL_LAYERS - 1
        await pilot.press("left")  # wraps to the MLP column: scrolls sideways
        assert grid.cursor[0] == XL_HEADS and grid.scroll_offset.x > 0
        assert "mlp" in line_text(grid, 0)
        await pilot.press("right", "number_sign", *"30", "enter")  # jump to layer 30
        assert grid.cursor == (0, 30) and grid.has_focus

        before = grid.cells_built
        await pilot.press("enter")
        await settle(app, pilot)
        assert [str(a.target) for a in xl_session.state.ablations] == ["a30.0"]
        assert xl_session.outcomes[-1].cmd == "ablate a30.0"
        assert grid.view is not None and "a30.0" in grid.view.ablated
        assert not grid.pending
        # the toggled cell is drawn (pending, then ablated); the other 1,247 are not rebuilt
        assert 1 <= grid.cells_built - before <= 3
        row = next(line_text(grid, y) for y in range(1, height - 1)
                   if line_text(grid, y).startswith("L30"))
        assert row.split()[1:3] == ["x", "off"]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_xl_filter_pattern_and_ablate_shown(xl_session: Session) -> None:
    app = WorkbenchApp(xl_session, keymap={})
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(app, pilot)
        grid = app.query_one(HeadGrid)
        await pilot.press("slash", *"a3?.*", "enter")
        assert grid.pattern == "a3?.*" and grid.has_focus
        assert grid.rows_shown == tuple(range(30, 40))
        assert grid.cols_shown == tuple(range(XL_HEADS))  # no MLP: m3? is not a3?.*
        assert grid.matched is not None and len(grid.matched) == 250
        assert grid.cursor == (0, 30)
        assert line_text(grid, 1).startswith("L30")
        assert "filter a3?.*" in line_text(grid, grid.scrollable_content_region.height - 1)

        await pilot.press("A")  # every shown cell, one logged command
        await settle(app, pilot)
        cmd = xl_session.outcomes[-1].cmd
        assert cmd.startswith("ablate a30.0 a30.1") and cmd.endswith("a39.24")
        assert len(xl_session.state.ablations) == 250

        await pilot.press("slash", *"nothing*", "enter")  # no match: the filter stays
        assert grid.pattern == "a3?.*"
        await pilot.press("escape", "escape")  # close the box, then clear the filter
        assert grid.pattern == "" and len(grid.rows_shown) == XL_LAYERS
        await pilot.press("slash", *"m4*", "enter")  # the MLP column alone
        assert grid.rows_shown == (4, *range(40, 48)) and grid.cols_shown == (XL_HEADS,)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_xl_eap_result_shows_top_k_and_searches(xl_session: Session) -> None:
    start = time.perf_counter()
    outcome = xl_session.execute("run eap")
    assert outcome.ok, outcome.error
    assert time.perf_counter() - start < 60
    result = xl_session.state.result("r1")
    assert isinstance(result, EdgeScores) and result.values.numel() == XL_EDGES
    app = WorkbenchApp(xl_session, keymap={})
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(app, pilot)
        pane = app.query_one(ResultsPane)
        body = str(pane.query_one("#result-body").content)
        assert f"top 40 of {XL_EDGES:,} by |score|" in body
        top = result.top(40)
        assert str(top[0][0]) in body and str(top[39][0]) in body
        renders = pane.renders
        await pilot.press("enter")  # a toggle re-shows the same result without re-rendering
        await settle(app, pilot)
        assert pane.renders == renders

        await pilot.press("ctrl+f", *"a47.*", "enter")
        body = str(pane.query_one("#result-body").content)
        # a47.h feeds m47 and logits (2 x 25 edges); each of its q/k/v reads 1 + 47 * 26 sources
        assert f"of {2 * 25 + 3 * 25 * (1 + 47 * 26):,} matching 'a47.*'" in body
        lines = [ln for ln in body.splitlines()[1:] if ln.strip()]
        assert len(lines) == 40 and all("a47." in ln.split()[0] for ln in lines)
        assert app.query_one(HeadGrid).has_focus  # Enter hands the keys back to the grid
        await pilot.press("ctrl+f", "ctrl+u", *"zzz", "enter")
        assert "nothing matches 'zzz'" in str(pane.query_one("#result-body").content)

        app.submit("select r1 top=20")  # the graph tab is fed (at most) the top 20 edges
        await settle(app, pilot)
        graph = app.query_one(GraphView)
        picture = graph.picture
        top20 = {str(e) for e, _ in result.top(20)}
        assert picture is not None and picture.circuits[0].name == "c1"
        assert 0 < len(picture.circuits[0].edges) <= 20
        assert {str(e) for e in picture.circuits[0].edges} <= top20
        await pilot.press("enter")  # a toggle does not lay the circuit out again
        await settle(app, pilot)
        assert graph.picture is picture


# -- the pieces underneath -----------------------------------------------------------------------


def test_edge_top_and_above_equal_a_full_stable_sort() -> None:
    graph = Graph.from_sizes(3, 2)
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(-4, 5, (graph.n_edges,), generator=gen).float() / 4  # many ties
    scores = EdgeScores("t", graph, values)
    order = torch.argsort(values.abs(), descending=True, stable=True).tolist()
    full = [(graph.edges[i], float(values[i])) for i in order]
    assert scores.ranked() == full and list(scores.ranked()) == full
    ranked_ = scores.ranked()
    assert len(ranked_) == len(full) and ranked_[3] == full[3] and ranked_[-1] == full[-1]
    for k in (0, 1, 7, graph.n_edges // 2, graph.n_edges, graph.n_edges + 5):
        assert scores.top(k) == full[:k] and scores.ranked()[:k] == full[:k]
    assert ranked_[2:9] == full[2:9] and ranked_[::5] == full[::5]
    assert scores.above(0.5) == [(e, v) for e, v in full if abs(v) >= 0.5]
    assert scores.summary()["top"][0] == [str(full[0][0]), full[0][1]]
    half = EdgeScores("t", graph, values.to(torch.bfloat16))
    assert [e for e, _ in half.top(10)] == [e for e, _ in full[:10]]


def test_edge_ends_and_search_match_brute_force_over_graph_edges() -> None:
    graph = Graph.from_sizes(3, 2)
    src, dst = edge_ends(3, 2)
    edges = list(graph.edges)
    assert [(graph.sources[s], graph.receivers[r]) for s, r in
            zip(src.tolist(), dst.tolist(), strict=True)] == [(e.src, e.dst) for e in edges]

    def brute(query: str) -> list[bool]:
        out = []
        for e in edges:
            s, d, b = str(e.src), str(e.dst), str(e.dst.base())
            hit = False
            for w in query.split():
                if "->" in w:
                    a, c = w.split("->")
                    hit |= fnmatch.fnmatchcase(s, a) and (fnmatch.fnmatchcase(d, c)
                                                          or fnmatch.fnmatchcase(b, c))
                else:
                    hit |= any(fnmatch.fnmatchcase(x, w) for x in (s, d, b))
            out.append(hit)
        return out

    for query in ("a1.*", "m*", "a?.1<q>", "input->a2.*", "a*.*->m2 logits", "a0.0->a1.1<k>",
                  "a2.1->*", "zzz"):
        assert edge_mask(graph, query).tolist() == brute(query), query
    assert edge_mask(graph, "0.1->L1H0<v>").tolist() == brute("a0.1->a1.0<v>")  # aliases


def test_ranked_search_on_node_scores() -> None:
    scores = NodeScores("dla", {"a0.0": 0.1, "a3.1": -2.0, "a30.2": 1.0, "m3": 5.0,
                                "a31.0": 0.5})
    view = ranked(scores, k=2, query="a3?.*")
    assert view.rows == (("a30.2", 1.0), ("a31.0", 0.5)) and view.matched == 2
    assert view.total == 5 and view.query == "a3?.*"
    assert ranked(scores, k=1).rows == (("m3", 5.0),)
