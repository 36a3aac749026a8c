"""Writing files: one atomic writer, one append for logs, and the rule for where writes may go.

Where it sits: every file the workbench writes for the user (exports, circuits, saved sessions,
tensors beside a log) goes through `write_atomic`; session logs grow through `append_line`.
`Writes` is the policy a `Session` applies to the paths named in `save`/`export`: anywhere
(interactive use), only under one folder (`workbench replay --out DIR`), or nowhere (reopening a
session: recorded writes are not repeated).

Invariants: `write_atomic` leaves the old file or the new one, never a mix, and never leaves its
temporary file behind; `append_line` writes one whole line with a single `write` and fsyncs it.
Every failure is a `WorkbenchError` naming the path and the fix, never an `OSError`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import WorkbenchError

__all__ = ["Writes", "append_line", "write_atomic"]


def _why(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def write_atomic(path: str | Path, data: bytes | str, *, mkdir: bool = False,
                 writer: Callable[[str], None] | None = None) -> Path:
    """Write `data` (or let `writer(tmp_path)` write) to `path` via a temp file and `os.replace`.

    `mkdir` creates missing parent folders (a new `out/` for exports); without it a missing
    folder is an error naming it. Returns the path written.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        if mkdir:
            path.parent.mkdir(parents=True, exist_ok=True)
        if not path.parent.is_dir():
            raise WorkbenchError(f"cannot write '{path}': folder '{path.parent}' does not exist; "
                                 "create it or choose another path")
        if path.is_dir():
            raise WorkbenchError(f"cannot write '{path}': it is a folder; give a file name")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise WorkbenchError(f"cannot write '{path}': {_why(exc)}; choose a folder you can "
                             "write to") from None
    try:
        if writer is None:
            with os.fdopen(fd, "wb") as handle:
                handle.write(raw)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            writer(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise WorkbenchError(f"cannot write '{path}': {_why(exc)}; choose a folder you can "
                             "write to") from None
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after os.replace; removed on any failure
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append `line` plus a newline to `path` in one `write`, then fsync (crash-safe append).

    A crash can at worst leave a torn last line without its newline; `sessionlog` cuts such a
    line off before it appends again (it was never a whole record).
    """
    path = Path(path)
    if "\n" in line:
        raise ValueError("append_line takes one line")
    data = (line + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise WorkbenchError(f"cannot write '{path}': {_why(exc)}; choose a folder you can "
                             "write to") from None
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(28, "short write (disk full?)")
        os.fsync(fd)
    except OSError as exc:
        raise WorkbenchError(f"cannot append to '{path}': {_why(exc)}") from None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Writes:
    """Where `save` and `export` may write: anywhere, only under `root`, or nowhere."""

    mode: str = "anywhere"  # "anywhere" | "under" | "nowhere"
    root: Path | None = None

    @classmethod
    def under(cls, root: str | Path) -> Writes:
        return cls("under", Path(root))

    @classmethod
    def nowhere(cls) -> Writes:
        return cls("nowhere")

    def target(self, given: str) -> Path | None:
        """The path to write for a user-given `given`, None when writes are off; refuses escapes.

        Under a root, `given` must be relative and stay inside it: `out/a.dot` is written as
        `ROOT/out/a.dot`; `/etc/x` and `../x` are refused.
        """
        if self.mode == "nowhere":
            return None
        path = Path(given)
        if self.mode == "anywhere" or self.root is None:
            return path
        if path.is_absolute() or given.startswith("~"):
            raise WorkbenchError(f"refusing to write '{given}': replay writes only under "
                                 f"{self.root}; use a relative path, or replay with "
                                 "--allow-writes")
        root = self.root.resolve()
        target = (root / path).resolve()
        if target != root and root not in target.parents:
            raise WorkbenchError(f"refusing to write '{given}': it leaves {self.root}; use a "
                                 "path inside it, or replay with --allow-writes")
        return target
