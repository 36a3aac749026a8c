"""The Circuit Workbench TUI: panes around one resident model, a log and a command line.

Layout (top to bottom): head grid and live performance on the left, tabs on the right (model
card and prompts, result views, circuit graph); a status line with the progress bar; the log;
the command line; the footer. `:` focuses the command line, `?` lists every key binding,
Ctrl+P opens the command palette.

Flow: every action -- a keypress in the grid, a line typed, a palette entry -- becomes a
command line passed to `submit`; `runner.SessionRunner` (the base class) executes queued lines
one at a time in a thread worker through `Session.execute`, feeding the progress bar and
honouring Esc, and posts the outcome and the views built for the new state. This class lays
out the panes and brings them up to date from those messages; the main thread only renders.
Loading or resuming the session runs in the worker too, so the UI never freezes.

Invariants: the session changes only inside `Session.execute`, so everything done here is in
the session file and replays with `workbench replay`; a failure anywhere in a callback is shown
as a one-line notification, never a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path

from textual import on
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, ProgressBar, Static, TabbedContent, TabPane

from workbench.session import Outcome, Session
from workbench.tui.command_line import CommandLine
from workbench.tui.completion import complete
from workbench.tui.graph_layout import GraphLayout, layout_for
from workbench.tui.help_screen import HelpScreen
from workbench.tui.keys import bindings, load_keymap
from workbench.tui.messages import (
    Booted,
    BootFailed,
    CommandFinished,
    CommandStarted,
    Progress,
    PromptsReady,
    ViewsReady,
)
from workbench.tui.palette import VerbCommands
from workbench.tui.panes.graph_view import GraphView
from workbench.tui.panes.head_grid import GridPane, HeadGrid
from workbench.tui.panes.log import LogPane
from workbench.tui.panes.performance import PerformancePane
from workbench.tui.panes.plots import FigurePane, result_figure, result_key, run_of, train_figure
from workbench.tui.panes.prompts import PromptsPane
from workbench.tui.panes.results import ResultsPane
from workbench.tui.result_views import circuit_of
from workbench.tui.runner import SessionRunner
from workbench.tui.views import Snapshot, card_view, grid_view

log = logging.getLogger(__name__)

CSS = """
#main { height: 1fr; }
#left { width: 44; max-width: 45%; border-right: solid $primary; overflow-y: auto; }
#right { width: 1fr; }
#status-row { height: 1; background: $panel; }
#status { width: 1fr; padding: 0 1; color: $text-muted; }
#progress { width: 36; display: none; }
#progress.running { display: block; }
"""


class WorkbenchApp(SessionRunner):
    """The workbench on one session. Give it a `Session` (tests, notebooks) or what to open."""

    TITLE = "Circuit Workbench"
    CSS = CSS
    BINDINGS = bindings("app")
    COMMANDS = App.COMMANDS | {VerbCommands}

    def __init__(self, session: Session | None = None, *, model: str | None = None,
                 session_path: Path | None = None, device: str = "auto",
                 dtype: str | None = None, download: bool = False,
                 keymap: dict[str, str] | None = None) -> None:
        super().__init__(session, model=model, session_path=session_path, device=device,
                         dtype=dtype, download=download)
        self.keymap, self._key_problems = (keymap, []) if keymap is not None else load_keymap()
        self.history: list[float] = []  # performance % after each change, for the sparkline
        self.selected_result: str | None = None
        self.graph_source: tuple[str, ...] | None = None
        self.snapshot: Snapshot | None = None

    # -- layout -------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield GridPane(id="grid-box")
                yield PerformancePane(id="perf")
            with TabbedContent(id="right", initial="prompts"):
                with TabPane("model & prompts", id="prompts"):
                    yield PromptsPane(id="prompts-pane")
                with TabPane("results", id="results"):
                    yield ResultsPane(id="results-pane")
                with TabPane("graph", id="graph"):
                    yield GraphView(id="graph-view")
                with TabPane("plot", id="plot"):
                    yield FigurePane("no results yet: try  run dla  or  run prune",
                                     id="plot-pane")
                with TabPane("train", id="train"):
                    yield FigurePane("no model loaded", id="train-pane")
        with Horizontal(id="status-row"):
            yield Static("starting...", id="status")
            yield ProgressBar(id="progress", show_eta=False)
        yield LogPane(id="log")
        yield CommandLine(self._complete, id="command")
        yield Footer()

    def on_mount(self) -> None:
        self.set_keymap(self.keymap)
        for problem in self._key_problems:
            self.notify(problem, severity="warning")
        self.query_one(HeadGrid).focus()
        self.boot()

    def on_booted(self, message: Booted) -> None:
        self.session = message.session
        for outcome in message.outcomes:
            self._record(outcome, quiet=True)
        last = message.outcomes[-1] if message.outcomes else None
        if last is not None and not last.ok:  # e.g. the model did not load
            self.notify(one_line(f"{last.cmd}: {last.error}"), severity="error")
        for notice in message.notices:  # e.g. a refused --session: a fresh session instead
            self.notify(one_line(notice), severity="warning", timeout=15)
            self.query_one(LogPane).note(one_line(notice))
        self._apply(message.snapshot)
        self.ready = True  # the grid and the keys work; performance follows (ViewsReady)
        self._status("measuring performance...")

    def on_views_ready(self, message: ViewsReady) -> None:
        try:
            self._apply(message.snapshot)
        except Exception as exc:
            from workbench.errors import crash_report

            self.notify(one_line("cannot show the state: " + crash_report(
                exc, "showing the first views")), severity="error")
        self._status("ready")
        self._set_running(False)
        super().on_views_ready(message)

    def on_boot_failed(self, message: BootFailed) -> None:
        self._set_running(False)
        self._status(one_line(f"could not open the session: {message.error}"))
        self.notify(one_line(message.error), severity="error")

    # -- following the worker -----------------------------------------------------------------

    def prefill(self, line: str) -> None:
        """Put `line` on the command line and focus it (for the palette)."""
        command = self.query_one(CommandLine)
        command.value = line
        command.cursor_position = len(line)
        command.focus()

    def on_command_started(self, message: CommandStarted) -> None:
        self._status(f"running: {message.line}   (Esc cancels)")
        self._set_running(True)

    def on_progress(self, message: Progress) -> None:
        self._set_running(True)
        bar = self.query_one(ProgressBar)
        if message.fraction is None:
            bar.update(total=None)
        else:
            bar.update(total=100, progress=100 * max(0.0, min(1.0, message.fraction)))
        if message.text:
            self._status(f"{message.text}   (Esc cancels)")

    def on_command_finished(self, message: CommandFinished) -> None:
        try:
            self._record(message.outcome)
            self._apply(message.snapshot)
        except Exception as exc:
            from workbench.errors import crash_report

            self.notify(one_line("cannot show the result: " + crash_report(
                exc, f"showing {message.outcome.cmd[:200]!r}")), severity="error")
        if not self._queue:
            self._set_running(False)
            self._status("ready")
            self.query_one(HeadGrid).settle()

    def on_prompts_ready(self, message: PromptsReady) -> None:
        if self.snapshot is not None and message.snapshot.key == self.snapshot.key:
            self.snapshot = message.snapshot
            self.query_one(PromptsPane).show_prompts(message.snapshot.prompts)

    def _record(self, outcome: Outcome, quiet: bool = False) -> None:
        """Log an outcome and follow it: select new results and circuits."""
        self.query_one(LogPane).add(outcome)
        if not outcome.ok:
            if not quiet:
                self.notify(one_line(f"{outcome.cmd}: {outcome.error}"), severity="error")
            return
        verb, out = outcome.cmd.split()[0], outcome.out
        tabs = self.query_one(TabbedContent)
        if verb == "run":
            self.selected_result = out["id"]
            if circuit_of(outcome.result) is not None:
                self.graph_source = ("result", out["id"])
            tabs.active = "results" if not quiet else tabs.active
        elif verb == "select":
            self.graph_source = ("circuit", out["id"])
            tabs.active = "graph" if not quiet else tabs.active
        elif verb == "compare":
            self.graph_source = ("compare", *outcome.cmd.split()[1:3])
            tabs.active = "graph" if not quiet else tabs.active

    # -- showing the state --------------------------------------------------------------------

    def _apply(self, snapshot: Snapshot) -> None:
        """Bring every pane up to date with the session's state and `snapshot`."""
        session = self.session
        if session is None:
            return
        state = session.state
        if snapshot.perf is not None and (self.snapshot is None or
                                          snapshot.key != self.snapshot.key):
            if snapshot.perf.percent is not None:
                self.history.append(snapshot.perf.percent)
        self.snapshot = snapshot
        self.query_one(PerformancePane).show(snapshot.perf, tuple(self.history))
        prompts = self.query_one(PromptsPane)
        prompts.show_card(card_view(state, str(session.path) if session.path else None))
        if snapshot.prompts is not None or snapshot.problem is not None:
            prompts.show_prompts(snapshot.prompts, snapshot.problem)  # else: PromptsReady
        ids = [rid for rid, _ in state.results]
        if self.selected_result not in ids:
            self.selected_result = ids[-1] if ids else None
        result = dict(state.results).get(self.selected_result or "")
        grid = self.query_one(HeadGrid)
        grid.show(grid_view(state, result), "no model: try  load add3")
        self.query_one("#left").styles.width = max(44, grid.wanted_width())  # CSS caps it
        index = ids.index(self.selected_result) if self.selected_result in ids else 0
        self.query_one(ResultsPane).show(self.selected_result, result, index, len(ids),
                                         dict(state.made_by).get(self.selected_result or "", ""))
        self.query_one(GraphView).show(self._graph_layout())
        rid = self.selected_result
        self.query_one("#plot-pane", FigurePane).show(result_key(rid, result),
                                                      lambda: result_figure(rid, result))
        directory = getattr(state.model, "directory", None)
        self.query_one("#train-pane", FigurePane).show(
            run_of(directory), lambda: train_figure(directory))

    def _graph_layout(self) -> GraphLayout | None:
        """The graph tab's layout; the same object while its source is unchanged, so a toggle
        does not lay a large circuit out again."""
        if self.session is None:
            return None
        state = self.session.state
        cached = getattr(self, "_layout_cache", None)
        if cached is not None and cached[0] == self.graph_source and \
                cached[1] is state.circuits and cached[2] is state.results:
            return cached[3]
        layout = layout_for(state, self.graph_source)
        self._layout_cache = (self.graph_source, state.circuits, state.results, layout)
        return layout

    def _status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    def _set_running(self, running: bool) -> None:
        bar = self.query_one(ProgressBar)
        if running == bar.has_class("running"):
            return
        bar.set_class(running, "running")
        if running:
            bar.update(total=None)
        self.refresh_bindings()  # Esc (cancel) shows in the footer only while work runs

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Esc (cancel) follows what the UI shows, not the worker's flag: the footer is
        refreshed on this thread, so reading `busy` here would race with the worker."""
        if action == "cancel":
            bars = self.query(ProgressBar)
            return not self.ready or any(bar.has_class("running") for bar in bars)
        return super().check_action(action, parameters)

    def _complete(self, line: str) -> list[str]:
        return complete(line, self.session)

    # -- actions and widget messages ----------------------------------------------------------

    def show_cancelling(self) -> None:
        self._status("cancelling...")

    def action_command(self, line: str) -> None:
        self.submit(line)

    def action_focus_command(self) -> None:
        self.query_one(CommandLine).focus()

    def action_focus_grid(self) -> None:
        self.query_one(HeadGrid).focus()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.keymap))

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_cycle_result(self, step: int) -> None:
        if self.session is None or not self.session.state.results:
            return
        ids = [rid for rid, _ in self.session.state.results]
        at = ids.index(self.selected_result) if self.selected_result in ids else 0
        self.selected_result = ids[(at + step) % len(ids)]
        if self.snapshot is not None:
            self._apply(self.snapshot)
        self.query_one(TabbedContent).active = "results"

    @on(HeadGrid.Toggled)
    def _toggle(self, message: HeadGrid.Toggled) -> None:
        self.submit(f"{'restore' if message.ablated else 'ablate'} {message.node}")

    @on(HeadGrid.AblateShown)
    def _ablate_shown(self, message: HeadGrid.AblateShown) -> None:
        self.submit("ablate " + " ".join(message.nodes))

    @on(HeadGrid.Said)
    def _grid_said(self, message: HeadGrid.Said) -> None:
        self._status(message.text)

    def action_search_results(self) -> None:
        self.query_one(TabbedContent).active = "results"
        self.query_one("#result-search").focus()

    @on(CommandLine.Entered)
    def _entered(self, message: CommandLine.Entered) -> None:
        self.submit(message.line)

    @on(CommandLine.Candidates)
    def _candidates(self, message: CommandLine.Candidates) -> None:
        words = [c.rsplit(" ", 1)[-1] for c in message.candidates]
        more = f" (+{len(words) - 12})" if len(words) > 12 else ""
        self._status("  ".join(words[:12]) + more)

    @on(CommandLine.Left)
    @on(ResultsPane.Left)
    def _left(self) -> None:
        self.query_one(HeadGrid).focus()

    @on(GraphView.OpenNode)
    def _open_node(self, message: GraphView.OpenNode) -> None:
        """Enter on a feature node: show it (`run feature_info`); error nodes have none."""
        from workbench.graph import parse_node

        node = parse_node(message.node)
        d = self.session.state.dictionaries.get(f"{node.site}{node.layer}") \
            if self.session is not None and node.kind == "feature" else None
        if d is not None and node.index < d.d_sae:
            self.submit(f"run feature_info feature={node.base()}")

    @on(GraphView.NextCircuit)
    def _next_circuit(self) -> None:
        if self.session is None or not self.session.state.circuits:
            return
        ids = [cid for cid, _ in self.session.state.circuits]
        now = self.graph_source[1] if self.graph_source and \
            self.graph_source[0] == "circuit" else ids[-1]
        at = ids.index(now) if now in ids else -1
        self.graph_source = ("circuit", ids[(at + 1) % len(ids)])
        self.query_one(GraphView).show(self._graph_layout())


def one_line(text: str) -> str:
    """Notifications are one line: the first line of `text`, shortened."""
    first = (text.strip().splitlines() or [""])[0]
    return first if len(first) <= 200 else first[:199] + "…"


def run_app(model: str | None, session_path: Path | None, device: str = "auto",
            download: bool = False, dtype: str | None = None) -> int:
    """Run the TUI in this terminal until the user quits."""
    WorkbenchApp(model=model, session_path=session_path, device=device, dtype=dtype,
                 download=download).run()
    return 0
