"""Command palette (Ctrl+P) entries for every verb of the command language.

Where it sits: `WorkbenchApp.COMMANDS` includes `VerbCommands`. Choosing a verb that takes no
arguments (`perf`, `undo`, `redo`, `help`) runs it; any other verb is written into the command
line (`ablate `) for the user to finish, with completion.

Invariant: the palette runs nothing itself; it hands lines to the app's `submit` or `prefill`,
so palette actions land in the session log like everything else.
"""

from __future__ import annotations

from functools import partial
from typing import Protocol, runtime_checkable

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.markup import escape

from workbench.commands import VERBS


@runtime_checkable
class CommandTarget(Protocol):
    def submit(self, line: str) -> None: ...

    def prefill(self, line: str) -> None: ...


class VerbCommands(Provider):
    """One palette command per verb: `verb: summary`."""

    def _act(self, verb: str) -> None:
        app = self.app
        if not isinstance(app, CommandTarget):
            return
        if VERBS[verb].min_args == 0 and verb != "help":
            app.submit(verb)
        else:
            app.prefill(verb + " ")

    def _entries(self) -> list[tuple[str, str, str]]:
        return [(verb, escape(f"{verb}: {spec.summary}"), escape(spec.usage))
                for verb, spec in VERBS.items()]

    async def discover(self) -> Hits:
        for verb, title, usage in self._entries():
            yield DiscoveryHit(title, partial(self._act, verb), help=usage)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        word = query.strip().lower()
        for verb, title, usage in self._entries():
            score = matcher.match(title)
            if score > 0:
                if word and verb.startswith(word):  # typing a verb finds that verb first
                    score += 1.0
                yield Hit(score, matcher.highlight(title), partial(self._act, verb), help=usage)
