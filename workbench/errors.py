"""The one exception type users see, and the crash report for everything else.

Every bad input (a missing path, a corrupt file, a typo in a command) raises `WorkbenchError`
with one line that names the problem and the fix. The CLI, the REPL and the TUI print that line
and keep the session; anything else escaping is a bug in the workbench: `crash_report` writes
its traceback to a file under the data folder and the user sees one line with that file's path.

Invariant: a `WorkbenchError` message is one line of bounded length: newlines become spaces and
an over-long word (a 100,000-character pasted line) is shortened in the middle.
"""

from __future__ import annotations

import re

MAX_WORD = 240  # longer words (a pasted blob, not a path) are shortened to their ends
MAX_MESSAGE = 1000
_LONG_WORD = re.compile(r"\S{" + str(MAX_WORD + 1) + ",}")


def one_line(text: str) -> str:
    """`text` as one bounded line: whitespace runs joined, long words cut in the middle."""
    flat = " ".join(str(text).split())

    def cut(m: re.Match[str]) -> str:
        word = m[0]
        return f"{word[:40]}…({len(word):,} chars)…{word[-20:]}"

    flat = _LONG_WORD.sub(cut, flat)
    return flat if len(flat) <= MAX_MESSAGE else flat[:MAX_MESSAGE - 1] + "…"


class WorkbenchError(Exception):
    """A user-facing error: its message is one clear line, never a traceback."""

    def __init__(self, message: object = "") -> None:
        super().__init__(one_line(str(message)))


def crash_report(exc: BaseException, what: str) -> str:
    """Write `exc`'s traceback to a report file; return the one line to show the user."""
    import traceback
    from datetime import UTC, datetime

    from workbench import __version__
    from workbench.files import write_atomic

    name = type(exc).__name__
    text = (f"workbench {__version__}\nwhile: {what}\n\n"
            + "".join(traceback.format_exception(exc)))
    try:
        from workbench.settings import current

        folder = current().crash_dir
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-%f")
        path = write_atomic(folder / f"crash-{stamp}.txt", text, mkdir=True)
        where = f"report in {path}"
    except Exception:  # the report is best effort; the session must go on
        where = "no report written (data folder not writable)"
    return one_line(f"internal error ({name}: {exc}); this is a bug in the workbench, "
                    f"{where}")
