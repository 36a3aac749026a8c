"""The plot tab (the selected result's figure) and the train tab (the loaded model's training
curves), driven with Pilot on the bundled add3."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pilot_helpers import settle
from pytest_textual_snapshot import SVGImageExtension
from textual.pilot import Pilot
from textual.widgets import Static

from workbench.figures import Heat, Lines, Panels
from workbench.model import LoadedModel
from workbench.plugins import Context, Curve, Technique, load_registry
from workbench.session import Session
from workbench.tui.app import WorkbenchApp
from workbench.tui.panes.plots import FigurePane, LinesPlot, heat_text

SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture
def snap_compare(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(SVGImageExtension, "dirname", classmethod(
        lambda cls, *, test_location: str(SNAPSHOTS / "test_plots_tui")))
    return snap_compare


@dataclass(frozen=True)
class Params:
    n: int = 5


def _curve(ctx: Context, params: Params) -> Curve:
    xs = tuple(float(i) for i in range(params.n, -1, -1))
    return Curve("performance vs components left", "components left", xs,
                 {"performance %": tuple(100.0 * x / params.n for x in xs)}, "%")


def _session(add3: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    registry = {**load_registry(), "curve": Technique("curve", "a curve", Params, _curve)}
    s = Session(Path("plots.jsonl"), model=add3, registry=registry)
    assert s.execute("task addition digits=3 n=16").ok
    return s


def _braille(plot: LinesPlot) -> int:
    return sum("\u2800" < ch <= "\u28ff" for ch in plot.plt.build())


@pytest.mark.asyncio
async def test_train_tab_shows_add3_per_digit_loss_curves(add3: LoadedModel, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    app = WorkbenchApp(_session(add3, tmp_path, monkeypatch), keymap={})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("5")
        await pilot.pause()
        pane = app.query_one("#train-pane", FigurePane)
        assert isinstance(pane.figure, Panels)
        plots = list(pane.query(LinesPlot))
        assert [p.fig.title for p in plots][0].startswith("training loss per answer digit")
        loss = plots[0].fig
        assert [name for name, _ in loss.series] == ["d0", "d1", "d2", "d3"] and loss.log_y
        assert {name for name, *_ in loss.shelves} == {"d2", "d3"}
        assert _braille(plots[0]) > 50  # the curves are drawn
        notes = " ".join(str(s.render()) for s in pane.query(Static))
        assert "shelf d2" in notes and "log 10" in notes


@pytest.mark.asyncio
async def test_plot_tab_draws_the_selected_result(add3: LoadedModel, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    app = WorkbenchApp(_session(add3, tmp_path, monkeypatch), keymap={})
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        app.submit("run dla")
        await settle(app, pilot)
        title = str(app.query_one("#result-title", Static).render())
        assert title.startswith("r1 node scores") and "(add3 float32; 1 of 1" in title
        await pilot.press("4")
        await pilot.pause()
        pane = app.query_one("#plot-pane", FigurePane)
        assert isinstance(pane.figure, Heat) and pane.figure.signed
        assert pane.figure.rows == ("L0", "L1") and pane.figure.cols[-1] == "mlp"
        app.submit("run curve n=4")
        await settle(app, pilot)
        await pilot.press("4")
        await pilot.pause()
        assert isinstance(pane.figure, Lines)
        (plot,) = pane.query(LinesPlot)
        assert plot.fig.x == (4.0, 3.0, 2.0, 1.0, 0.0) and _braille(plot) > 10
        await pilot.press("left_square_bracket", "4")  # back to r1: the heatmap again
        await pilot.pause()
        assert isinstance(pane.figure, Heat)


def test_heat_text_is_signed_and_labelled() -> None:
    fig = Heat("dla", ("L0", "L1"), ("h0", "mlp"), ((1.0, -2.0), (0.5, float("nan"))), "x")
    text = heat_text(fig)
    assert "+1" in text.plain and "-2" in text.plain and "?" in text.plain
    styles = [str(s.style) for s in text.spans]
    assert any("rgb(255," in s for s in styles) and any(",255)" in s for s in styles)


def test_snapshot_train_tab_120x40(snap_compare: Any, add3: LoadedModel, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app = WorkbenchApp(_session(add3, tmp_path, monkeypatch), keymap={})

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(app, pilot)
        await pilot.press("5")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 40), run_before=run_before)
