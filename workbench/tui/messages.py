"""Messages between the session worker thread and the UI (posting a message is thread-safe).

Flow: the app queues command lines; its worker thread executes them one at a time through
`Session.execute` and posts `CommandStarted`, any number of `Progress`, then `CommandFinished`
(with the outcome and the performance view for the new state) and, when the prompt answers
changed, `PromptsReady`. Opening the session posts `Booted` (model resident: the screen is
usable) then `ViewsReady` (first performance and prompt views), or `BootFailed`. Tests
record these with `App.run_test(message_hook=...)`.

Invariant: the worker never touches a widget; everything it wants shown travels in a message.
"""

from __future__ import annotations

from textual.message import Message

from workbench.session import Outcome, Session
from workbench.tui.views import Snapshot


class CommandStarted(Message):
    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line


class Progress(Message):
    """`fraction` in 0..1, or None while the length of the work is unknown."""

    def __init__(self, fraction: float | None, text: str) -> None:
        super().__init__()
        self.fraction = fraction
        self.text = text


class CommandFinished(Message):
    def __init__(self, outcome: Outcome, snapshot: Snapshot) -> None:
        super().__init__()
        self.outcome = outcome
        self.snapshot = snapshot


class PromptsReady(Message):
    """The prompt table for the state of the last `CommandFinished` (built after it)."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class Booted(Message):
    def __init__(self, session: Session, snapshot: Snapshot, outcomes: list[Outcome],
                 notices: list[str] | None = None) -> None:
        super().__init__()
        self.session = session
        self.snapshot = snapshot
        self.outcomes = outcomes
        self.notices = notices or []  # e.g. "could not reopen X: ...; started a new session"


class ViewsReady(Message):
    """The first performance and prompt views, built after `Booted` (the screen is usable
    before they are: at XL size on a CPU the first forward passes take seconds)."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class BootFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
