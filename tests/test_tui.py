"""The TUI, driven with `App.run_test()` and `Pilot`: assertions on state, widgets and messages.

Every test builds a `Session` on the bundled `add3` (loaded once per test run) with a small
prompt set, wraps it in `WorkbenchApp` and drives it with keys and clicks. SVG snapshots use a
fixed relative session path (cwd = a temp dir), fixed seeds and no timestamps on screen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from pilot_helpers import settle
from pytest_textual_snapshot import SVGImageExtension
from rich.color import ColorType
from rich.style import Style
from rich.table import Table as RichTable
from rich.text import Text
from textual.message import Message
from textual.notifications import Notify
from textual.pilot import Pilot
from textual.widgets import Digits, Static

from workbench.graph import Circuit
from workbench.model import LoadedModel
from workbench.plugins import Context, Curve, NodeScores, Table, Technique
from workbench.replay import replay
from workbench.session import Session
from workbench.tui.app import WorkbenchApp
from workbench.tui.boot import open_session
from workbench.tui.command_line import CommandLine
from workbench.tui.completion import complete
from workbench.tui.graph_layout import compare_layout
from workbench.tui.help_screen import HelpScreen
from workbench.tui.keys import KEYS, load_keymap
from workbench.tui.messages import CommandFinished, Progress
from workbench.tui.panes.graph_view import GraphView
from workbench.tui.panes.head_grid import CELL, LABEL, HeadGrid
from workbench.tui.panes.log import LogPane
from workbench.tui.panes.performance import PerformancePane, percent_text
from workbench.tui.panes.results import render_result

TASK = "task addition digits=3 n=32"
SNAPSHOTS = Path(__file__).parent / "snapshots"


@pytest.fixture
def snap_compare(snap_compare: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """pytest-textual-snapshot's fixture, storing SVGs under tests/snapshots/."""
    monkeypatch.setattr(SVGImageExtension, "dirname",
                        classmethod(lambda cls, *, test_location: str(SNAPSHOTS / "test_tui")))
    return snap_compare


@pytest.fixture
def session(tmp_path: Path, add3: LoadedModel) -> Session:
    s = Session(tmp_path / "tui.jsonl", model=add3)
    assert s.execute(TASK).ok
    return s


def make_app(session: Session, **kwargs: Any) -> WorkbenchApp:
    return WorkbenchApp(session, keymap=kwargs.pop("keymap", {}), **kwargs)


def recorder() -> tuple[list[Message], Callable[[Message], None]]:
    """Every message the app handles, once each (the hook sees a bubbling one at every node)."""
    seen: list[Message] = []
    ids: set[int] = set()

    def hook(message: Message) -> None:
        if id(message) not in ids:
            ids.add(id(message))
            seen.append(message)

    return seen, hook


def log_commands(path: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [obj for obj in lines if obj["type"] == "command"]


# -- toggling -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_toggle_changes_the_shown_performance(session: Session) -> None:
    app = make_app(session)
    seen, hook = recorder()
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await settle(app, pilot)
        pane = app.query_one(PerformancePane)
        assert pane.view is not None and pane.view.percent == pytest.approx(100.0)
        full = percent_text(pane.view)
        digits = app.query_one("#perf-percent", Digits)
        assert digits.value == full

        await pilot.press("enter")  # the grid has focus; its cursor starts on a0.0
        await settle(app, pilot)
        toggles = [m for m in seen if isinstance(m, HeadGrid.Toggled)]
        assert [(t.node, t.ablated) for t in toggles] == [("a0.0", False)]
        assert [str(a.target) for a in session.state.ablations] == ["a0.0"]
        assert pane.view is not None and pane.view.percent is not None
        assert pane.view.percent < 99.0
        assert digits.value == percent_text(pane.view) != full
        grid = app.query_one(HeadGrid).view
        assert grid is not None and "a0.0" in grid.ablated
        assert session.outcomes[-1].cmd == "ablate a0.0"

        await pilot.press("space")  # toggling again restores it
        await settle(app, pilot)
        assert session.state.ablations == ()
        assert pane.view.percent == pytest.approx(100.0)
        assert session.outcomes[-1].cmd == "restore a0.0"
        assert len(pane.history) == 3  # full, ablated, full again


@pytest.mark.asyncio
async def test_arrow_keys_and_mouse_pick_cells(session: Session) -> None:
    app = make_app(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("down", "left", "enter")  # layer 1, last column: the MLP
        await pilot.press("left", "left", "space")  # layer 1, head 2
        await settle(app, pilot)
        await pilot.click(HeadGrid, offset=(LABEL + CELL * 1 + 2, 1))  # layer 0, head 1
        await settle(app, pilot)
        assert [str(a.target) for a in session.state.ablations] == ["m1", "a1.2", "a0.1"]
        assert [o.cmd for o in session.outcomes[-3:]] == ["ablate m1", "ablate a1.2",
                                                          "ablate a0.1"]


# -- the command line, the log and replay -------------------------------------------------------


@pytest.mark.asyncio
async def test_typed_command_lands_in_the_session_file(session: Session) -> None:
    app = make_app(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("colon", *"ablate a1.1 a0.2", "enter")
        await settle(app, pilot)
        assert app.query_one(LogPane).lines_shown[-1].startswith("[2] ablate a1.1 a0.2")
    assert session.path is not None
    entries = log_commands(session.path)
    assert [e["cmd"] for e in entries] == [TASK, "ablate a1.1 a0.2"]
    assert entries[-1]["ok"] and entries[-1]["out"]["ablated"] == ["a1.1", "a0.2"]


@pytest.mark.asyncio
async def test_replaying_the_file_reproduces_the_state(session: Session,
                                                       add3: LoadedModel) -> None:
    app = make_app(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("enter", "right", "enter")  # ablate a0.0, a0.1 from the grid
        await pilot.press("colon", *"ablate m1", "enter")
        for line in ("restore a0.0", "run dla", "select r1 top=3"):
            app.submit(line)  # what the command line does on Enter, without the typing
        await settle(app, pilot)
        await pilot.press("escape", "p")  # leave the command line; `p` runs perf
        await settle(app, pilot)
        shown = app.query_one(PerformancePane).view
    assert [o.cmd for o in session.outcomes[1:]] == [
        "ablate a0.0", "ablate a0.1", "ablate m1", "restore a0.0", "run dla",
        "select r1 top=3", "perf"]
    assert session.path is not None and shown is not None
    report = replay(session.path, model=add3)
    assert report.ok, (report.failures, report.mismatches)
    again = report.session
    assert again is not None
    assert [str(a.target) for a in again.state.ablations] == ["a0.1", "m1"]
    assert [str(a) for a in again.state.ablations] == [str(a) for a in session.state.ablations]
    assert report.outcomes[-1].out["percent"] == pytest.approx(shown.percent)
    assert [c for c, _ in again.state.circuits] == ["c1"]


@pytest.mark.asyncio
async def test_history_and_completion_on_the_command_line(session: Session) -> None:
    app = make_app(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("colon", "p", "enter")  # a typo: logged, then recalled with Up
        await settle(app, pilot)
        command = app.query_one("#command", CommandLine)
        await pilot.press("up")
        assert command.value == "p"
        await pilot.press("down", *"ab", "tab")
        assert command.value == "ablate "
        await pilot.press(*"a1.", "tab")  # several heads fit: the common prefix stays
        assert command.value == "ablate a1."


def test_completion_covers_verbs_nodes_and_plugin_params(session: Session) -> None:
    assert complete("ab", session) == ["ablate"]
    heads = complete("ablate a0.", session)
    assert "ablate a0.0" in heads and "ablate a0.3" in heads and "ablate a0.*" in heads
    assert "restore all" in complete("restore ", session)
    assert complete("run d", session) == ["run dla"]
    params = complete("run dla ", session)
    assert {"run dla layer=", "run dla digit=", "run dla top_neurons="} <= set(params)
    assert complete("ablate a0.0 mode=r", session) == ["ablate a0.0 mode=resample"]
    assert complete("metric lo", session) == ["metric logit_diff"]


# -- long work ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlowParams:
    steps: int = 2000


def slow_run(ctx: Context, params: SlowParams) -> NodeScores:
    for i in range(params.steps):
        ctx.check()  # raises Cancelled once Esc was pressed
        ctx.progress(i / params.steps, f"step {i}")
        time.sleep(0.01)
    return NodeScores("slow", {"a0.0": 1.0})


@pytest.mark.asyncio
async def test_escape_cancels_a_long_run_and_keeps_the_state(session: Session) -> None:
    session.registry["slow"] = Technique("slow", "a slow fake", SlowParams, slow_run)
    session.execute("ablate a1.0")
    before = session.state
    app = make_app(session)
    seen, hook = recorder()
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await settle(app, pilot)
        await pilot.press("colon", *"run slow", "enter")
        deadline = time.monotonic() + 20
        while not any(isinstance(m, Progress) and m.fraction for m in seen):
            assert time.monotonic() < deadline
            await pilot.pause(0.02)
        assert app.busy
        await pilot.press(*"hi")  # the UI still answers while the worker runs
        assert app.query_one("#command", CommandLine).value == "hi"
        await pilot.press("escape")
        await settle(app, pilot)
        finished = [m.outcome for m in seen if isinstance(m, CommandFinished)]
        assert finished[-1].cmd == "run slow" and not finished[-1].ok
        assert finished[-1].error == "cancelled; state unchanged"
        assert session.state is before and session.state.results == ()
        assert any(isinstance(m, Notify) and m.notification.severity == "error" for m in seen)
        await pilot.press("ctrl+u", "escape", "p")  # idle Esc leaves the command line
        await settle(app, pilot)
        assert session.outcomes[-1].cmd == "perf" and session.outcomes[-1].ok


@pytest.mark.asyncio
async def test_errors_show_as_one_line_notifications(session: Session) -> None:
    app = make_app(session)
    seen, hook = recorder()
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        await settle(app, pilot)
        await pilot.press("colon", *"ablate a9.9", "enter", *"frobnicate", "enter")
        await settle(app, pilot)
        errors = [m.notification.message for m in seen
                  if isinstance(m, Notify) and m.notification.severity == "error"]
        assert len(errors) == 2 and all("\n" not in e for e in errors)
        assert "a9.9" in errors[0] and "unknown command" in errors[1]
        assert app.is_running and session.state.ablations == ()


# -- keys, help and palette ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_bindings_can_be_remapped_from_keys_toml(session: Session, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    (tmp_path / "keys.toml").write_text('[keys]\n"grid.toggle" = "x"\n"no.such" = "y"\n')
    keymap, problems = load_keymap()
    assert keymap == {"grid.toggle": "x"} and len(problems) == 1 and "no.such" in problems[0]
    app = WorkbenchApp(session)  # reads the same file itself
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("enter")  # no longer bound
        await settle(app, pilot)
        assert not session.state.ablations
        await pilot.press("x")
        await settle(app, pilot)
        assert [str(a.target) for a in session.state.ablations] == ["a0.0"]


@pytest.mark.asyncio
async def test_help_screen_lists_every_binding(session: Session) -> None:
    app = make_app(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        table = app.screen.query_one("#help-bindings", Static).content
        assert isinstance(table, RichTable)
        ids = list(table.columns[3].cells)
        assert ids == [spec.id for spec in KEYS]
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


@pytest.mark.asyncio
async def test_palette_runs_verbs_through_the_session(session: Session) -> None:
    app = make_app(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        await pilot.press("ctrl+p", *"perf")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await settle(app, pilot)
        assert session.outcomes[-1].cmd == "perf"


# -- views and colours -------------------------------------------------------------------------


def _colours(text: Text) -> set[Any]:
    styles = [Style.parse(str(span.style)) if isinstance(span.style, str) else span.style
              for span in text.spans] + [Style.parse(str(text.style))]
    return {c for st in styles for c in (st.color, st.bgcolor) if c is not None}


def test_tables_and_curves_render_as_heatmaps_and_plots() -> None:
    table = Table("patching", ("a0", "a1"), ("0", "1", "2"), torch.tensor([[1.0, -0.5, 0.0],
                                                                          [0.2, 0.9, -1.0]]))
    heat = render_result(table)
    assert "a0" in heat.plain and "a1" in heat.plain and "|max| 1" in heat.plain
    curve = Curve("performance vs heads", "heads", (0.0, 1.0, 2.0, 3.0),
                  {"perf": (0.0, 40.0, 80.0, 100.0)})
    plot = render_result(curve).plain
    assert "perf: 0 .. 100" in plot and "█" in plot and "heads: 0 .. 3" in plot
    layout = compare_layout(Circuit(["a0.1", "m0"], ["a0.1->m0"], name="c1"),
                            Circuit(["m0", "m1"], ["m0->m1"], name="c2"))
    marks = {n.name: n.where for _, row in layout.rows for n in row}
    assert marks == {"a0.1": "a", "m0": "both", "m1": "b"}
    assert layout.order == ("m1", "a0.1", "m0")  # top row first: layer 1, then layer 0
    incoming, outgoing = layout.edges_of("m0")
    assert [str(e) for e in incoming] == ["a0.1->m0"] and [str(e) for e in outgoing] == ["m0->m1"]


@pytest.mark.asyncio
async def test_panes_use_only_the_16_ansi_colours(session: Session) -> None:
    app = make_app(session)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(app, pilot)
        for line in ("ablate a0.1", "run dla", "select r1 top=3", "select a0.* m0",
                     "compare c1 c2"):
            app.submit(line)
        await settle(app, pilot)
        table = Table("t", ("a",), ("0", "1"), torch.tensor([[1.0, -1.0]]))
        texts = [app.query_one(HeadGrid).render_text(), app.query_one(PerformancePane).details(),
                 app.query_one(GraphView).render(),
                 render_result(session.state.result("r1")), render_result(table)]
    colours = set().union(*(_colours(t) for t in texts))
    assert colours, "the panes should use some colour"
    assert all(c.type in (ColorType.STANDARD, ColorType.DEFAULT) for c in colours), colours


# -- opening and resuming -----------------------------------------------------------------------


def test_open_session_loads_then_resumes_by_replaying(tmp_path: Path, add3: LoadedModel) -> None:
    path = tmp_path / "s.jsonl"
    first, outcomes = open_session("add3", path, device="cpu")
    assert [o.cmd for o in outcomes] == ["load add3 device=cpu"]
    for line in (TASK, "ablate a0.3", "run dla", "this is a typo"):
        first.execute(line)
    before = path.read_bytes()
    again, replayed = open_session(None, path, device="cpu")
    assert path.read_bytes() == before  # reopening re-runs the commands but writes nothing
    assert [o.cmd for o in replayed][-3:] == ["ablate a0.3", "run dla", "this is a typo"]
    assert [str(a) for a in again.state.ablations] == [str(a) for a in first.state.ablations]
    assert [e["cmd"] for e in log_commands(path)] == [o.cmd for o in first.outcomes]
    assert not (tmp_path / "s.jsonl.resume-backup").exists()


# -- snapshots ----------------------------------------------------------------------------------


def _snap_session(add3: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    monkeypatch.chdir(tmp_path)  # the card shows the session path: keep it the same every run
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    s = Session(Path("snap.jsonl"), model=add3, seed=0)
    s.execute(TASK)
    return s


def test_snapshot_toggled_head_with_scores_100x30(snap_compare: Any, add3: LoadedModel,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(_snap_session(add3, tmp_path, monkeypatch))

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(app, pilot)
        app.submit("run dla")
        await settle(app, pilot)
        await pilot.press("down", "right", "enter", "1")
        await settle(app, pilot)

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)


def test_snapshot_compare_graph_160x50(snap_compare: Any, add3: LoadedModel, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(_snap_session(add3, tmp_path, monkeypatch))

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(app, pilot)
        for line in ("run dla", "select r1 top=3", "select a0.* m0", "compare c1 c2"):
            app.submit(line)
        await settle(app, pilot)
        app.query_one("#graph-view").focus()
        await pilot.press("down", "down")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(160, 50), run_before=run_before)


def test_snapshot_results_ranked_160x50(snap_compare: Any, add3: LoadedModel, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(_snap_session(add3, tmp_path, monkeypatch))

    async def run_before(pilot: Pilot[None]) -> None:
        await settle(app, pilot)
        app.submit("run dla")
        await settle(app, pilot)

    assert snap_compare(app, terminal_size=(160, 50), run_before=run_before)
