"""The command line (REPL): type any command of the language; history and completion.

Where it sits: the bottom of the main screen, under the log. Enter posts `Entered(line)`; the
app queues it for `Session.execute`, exactly like a toggle in the grid. Up/Down walk the
history (this session's lines, oldest first); Tab completes the word under the cursor (verbs,
node names from the model's graph, technique names and their `Params` fields, ids) and the
grey inline suggestion shows the first candidate (Right accepts it). `:` focuses the line
from anywhere; Esc leaves it.

Invariant: the widget never executes anything; completion is `completion.complete`, injected
by the app as a plain callable so the widget holds no reference to the session.
"""

from __future__ import annotations

from collections.abc import Callable

from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input

from workbench.tui.completion import common_prefix
from workbench.tui.keys import bindings

Completer = Callable[[str], list[str]]


class _Suggest(Suggester):
    def __init__(self, completer: Completer) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.completer = completer

    async def get_suggestion(self, value: str) -> str | None:
        if not value.strip():
            return None
        try:
            found = self.completer(value)
        except Exception:  # completion must never break typing
            return None
        return found[0] if found else None


class CommandLine(Input):
    BINDINGS = bindings("cmdline")
    DEFAULT_CSS = """
    CommandLine { border: none; height: 1; padding: 0 1; background: $surface; }
    CommandLine:focus { border: none; background: $boost; }
    """

    class Entered(Message):
        def __init__(self, line: str) -> None:
            super().__init__()
            self.line = line

    class Candidates(Message):
        """Several completions fit: the app shows them."""

        def __init__(self, candidates: list[str]) -> None:
            super().__init__()
            self.candidates = candidates

    class Left(Message):
        """Esc: the user is done typing."""

    def __init__(self, completer: Completer, *, id: str | None = None) -> None:
        super().__init__(placeholder=": type a command (help, Tab completes, Up for history)",
                         suggester=_Suggest(completer), id=id, select_on_focus=False)
        self.completer = completer
        self.history: list[str] = []
        self._at = 0  # position in history; len(history) = the line being typed
        self._draft = ""

    async def action_submit(self) -> None:
        line = self.value.strip().lstrip(":").strip()  # ":perf" out of vim habit is fine
        if not line:
            return
        if not self.history or self.history[-1] != line:
            self.history.append(line)
        self._at, self._draft = len(self.history), ""
        self.value = ""
        self.post_message(self.Entered(line))

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        if self._at == len(self.history):
            self._draft = self.value
        self._at = min(max(self._at + step, 0), len(self.history))
        self.value = self.history[self._at] if self._at < len(self.history) else self._draft
        self.cursor_position = len(self.value)

    def action_complete(self) -> None:
        try:
            found = self.completer(self.value)
        except Exception:
            found = []
        if not found:
            self.app.bell()
            return
        if len(found) == 1:
            only = found[0]
            self.value = only if only.endswith("=") else only + " "
        else:
            prefix = common_prefix(found)
            if len(prefix) > len(self.value):
                self.value = prefix
            self.post_message(self.Candidates(found))
        self.cursor_position = len(self.value)

    def action_leave(self) -> None:
        self.post_message(self.Left())
