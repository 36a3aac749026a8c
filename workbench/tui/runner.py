"""Run command lines through the session, one at a time, in a Textual thread worker.

Where it sits: `SessionRunner` is the base of `WorkbenchApp`. `submit(line)` queues a line;
one worker thread (`_drain`) executes the queue in order through `Session.execute`, with a
throttled `progress` callback and a `cancelled` callback that Esc (`action_cancel`) sets. After
each command it posts `CommandFinished` with the performance view, then `PromptsReady` with the
prompt table (unless more commands are queued). Opening the session (`boot`: load a model or
resume a log) runs in the same worker group and posts `Booted` as soon as the model is resident,
then `ViewsReady` with the first performance; commands submitted in between wait for it.
The subclass handles the messages and renders.

Invariants: only the worker touches the session, and only through `execute`, so commands never
overlap and everything lands in the log; an exception anywhere in the worker becomes a failed
outcome or `BootFailed` with one line, never a traceback on the terminal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from textual import work
from textual.app import App

from workbench.errors import WorkbenchError, crash_report
from workbench.session import Outcome, Session
from workbench.tui.boot import open_or_fresh
from workbench.tui.messages import (
    Booted,
    BootFailed,
    CommandFinished,
    CommandStarted,
    Progress,
    PromptsReady,
    ViewsReady,
)
from workbench.tui.views import Snapshot, build_snapshot, state_key, with_prompts

log = logging.getLogger(__name__)


class SessionRunner(App[None]):
    """An app with one session and a serial command queue executed off the UI thread."""

    def __init__(self, session: Session | None = None, *, model: str | None = None,
                 session_path: Path | None = None, device: str = "auto",
                 dtype: str | None = None, download: bool = False) -> None:
        super().__init__()
        self.session: Session | None = None
        self.ready = False  # the model is resident and the first views are shown
        self.busy = False  # the worker is executing or about to
        self._given = session
        self._open_args = (model, session_path, device, dtype, download)
        self._queue: deque[str] = deque()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._worker_last: Snapshot | None = None

    def on_unmount(self) -> None:
        self._queue.clear()
        self._cancel.set()  # a technique still running in the worker stops at its next check

    def boot(self) -> None:
        """Open the session in the worker; commands queue until the first views are shown."""
        with self._lock:
            self.busy = True
        self._boot()

    @work(thread=True, exit_on_error=False, group="session")
    def _boot(self) -> None:
        try:
            notices: list[str] = []
            if self._given is not None:
                session, outcomes = self._given, list(self._given.outcomes)
            else:
                model, path, device, dtype, download = self._open_args
                self.post_message(Progress(None, f"loading {model or 'the default model'}"))
                opened = open_or_fresh(model, path, device, self._progress(),
                                       self._cancel.is_set, download, dtype)
                session, outcomes, notices = opened.session, opened.outcomes, opened.notices
            first = Snapshot(None, problem="measuring performance...") \
                if session.state.model is not None else self._build(session, None)
            self.post_message(Booted(session, first, outcomes, notices))  # usable: grid, keys
            self.post_message(ViewsReady(self._build(session, None)))
        except WorkbenchError as exc:
            self.busy = False
            self.post_message(BootFailed(str(exc)))
        except Exception as exc:  # a bug must not leave a traceback on the user's terminal
            log.debug("opening the session failed", exc_info=True)
            self.busy = False
            self.post_message(BootFailed(crash_report(exc, "opening the session")))

    def on_views_ready(self, message: ViewsReady) -> None:
        """The first views are shown (by the subclass); queued commands may run now."""
        with self._lock:
            self.busy = False
        self._start_drain()

    def submit(self, line: str) -> None:
        """Queue one command line for `Session.execute` (the only way the UI changes state)."""
        self._queue.append(line)
        self._start_drain()

    def _start_drain(self) -> None:
        with self._lock:
            if self.busy or self.session is None or not self._queue:
                return
            self.busy = True
        self._drain()

    @work(thread=True, exit_on_error=False, group="session")
    def _drain(self) -> None:
        session = self.session
        assert session is not None
        while True:
            with self._lock:
                if not self._queue:
                    self.busy = False
                    return
                line = self._queue.popleft()
            self._cancel.clear()
            self.post_message(CommandStarted(line))
            try:
                outcome = session.execute(line, progress=self._progress(),
                                          cancelled=self._cancel.is_set)
            except Exception as exc:  # Session.execute catches bugs itself; this is a last guard
                log.debug("command %r failed", line, exc_info=True)
                outcome = Outcome(n=0, cmd=line[:200], ok=False,
                                  error=crash_report(exc, f"running {line[:200]!r}"))
            snapshot = self._build(session, outcome, prompts=False)
            self.post_message(CommandFinished(outcome, snapshot))  # performance first
            if snapshot.prompts is None and snapshot.key is not None and not self._queue:
                self.post_message(PromptsReady(self._build(session, outcome)))

    def _build(self, session: Session, outcome: Outcome | None,
               prompts: bool = True) -> Snapshot:
        try:
            last = self._worker_last
            if prompts and last is not None and last.key == state_key(session.state):
                self._worker_last = with_prompts(session, last)
            else:
                self._worker_last = build_snapshot(session, outcome, last, prompts=prompts)
        except Exception as exc:
            self._worker_last = Snapshot(None, problem="cannot show this state: "
                                         + crash_report(exc, "building the views"))
        return self._worker_last

    def _progress(self) -> Callable[[float, str], None]:
        """A throttled progress callback for the worker (at most ~20 messages a second)."""
        last = [0.0]

        def report(fraction: float, text: str) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.05 or fraction >= 1.0:
                last[0] = now
                self.post_message(Progress(fraction, text))

        return report

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "cancel":  # let Esc through to the focused widget when nothing runs
            return self.busy or not self.ready
        return True

    def action_cancel(self) -> None:
        dropped = len(self._queue)
        self._queue.clear()
        self._cancel.set()
        self.show_cancelling()
        if dropped:
            self.notify(f"dropped {dropped} queued command(s)", severity="warning")

    def show_cancelling(self) -> None:
        """Called on Esc while work runs; the subclass shows it."""
