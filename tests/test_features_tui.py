"""The TUI and feature circuits: the model card lists attached dictionaries, a feature_attr
result renders as a ranked list, and Enter on a feature node of the graph runs feature_info
on it (error nodes, which have no feature, do nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pilot_helpers import settle

from workbench.graph import parse_node
from workbench.model import LoadedModel
from workbench.session import Session
from workbench.tui.app import WorkbenchApp
from workbench.tui.panes.graph_view import GraphView
from workbench.tui.panes.results import render_result
from workbench.tui.views import card_view


@pytest.mark.asyncio
async def test_enter_on_a_feature_node_opens_feature_info(tmp_path: Path,
                                                          add3: LoadedModel) -> None:
    s = Session(tmp_path / "tui.jsonl", model=add3)
    for line in ("task addition digits=3 n=32", "sae load add3", "run feature_attr edges=5",
                 "select r1 top=6"):
        out = s.execute(line)
        assert out.ok, out.error
    card = card_view(s.state, None)
    assert card is not None and any(k == "dictionaries" and "m1: transcoder 1" in v
                                    for k, v in card.lines)
    assert "m" in render_result(s.state.result("r1")).plain  # a ranked list, not "no view"
    app = WorkbenchApp(s, keymap={})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.submit("select r1 top=6")  # the newest circuit is drawn in the graph tab
        await settle(app, pilot)
        view = app.query_one(GraphView)
        assert view.picture is not None
        order = list(view.picture.order)
        errors = {f"{d.key}.f{d.d_sae}" for d in s.state.dictionaries.dictionaries}
        feature = next(n for n in order if parse_node(n).kind == "feature"
                       and str(parse_node(n).base()) not in errors)
        view.focus()
        view.selected = order.index(feature)
        n_before = len(s.outcomes)
        await pilot.press("enter")
        await settle(app, pilot)
        assert len(s.outcomes) == n_before + 1
        last = s.outcomes[-1]
        assert last.ok, last.error
        assert last.cmd == f"run feature_info feature={parse_node(feature).base()}"
