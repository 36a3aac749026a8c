"""Open or reopen the session the TUI works on (headless: no Textual here).

1. A new session file gets a header, then `load MODEL` runs through `Session.execute`, so the
   log starts with the load and replays on its own.
2. An existing session log is reopened: its recorded commands are executed again, in order,
   with recording off and writes off, to rebuild the state. The file is never rewritten: the
   recorded entries stay exactly as they were (a command that failed then stays failed in the
   file even if it would pass now), and new commands are appended after them. Recorded `save`
   and `export` commands are not repeated (nothing is written that the user did not ask for
   now). When its first command is not a `load`, the model named in its header is loaded first.
3. A plain-text script given as the session is run into a new log (the script is not touched).
4. A file that cannot be reopened (random bytes, a newer format, a model object) leaves a
   working screen: a fresh session in the data folder, with a notice that says why.

Invariant: every change to the session goes through `Session.execute`; the reopened file only
ever grows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.files import Writes
from workbench.model import DEFAULT_MODEL, load_model
from workbench.session import Outcome, Session
from workbench.sessionlog import (
    SessionLog,
    default_session_path,
    is_jsonl_session,
    read_script,
)

Progress = Callable[[float, str], None]


@dataclass
class Opened:
    """The session the TUI works on, the outcomes that built it, and notices to show."""

    session: Session
    outcomes: list[Outcome]
    notices: list[str] = field(default_factory=list)


def open_session(model: str | None, path: Path | None, device: str = "auto",
                 progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
                 download: bool = False, dtype: str | None = None
                 ) -> tuple[Session, list[Outcome]]:
    """A session with the model resident; `path` is created, or reopened when it exists.

    Raises `WorkbenchError` with one line when `path` cannot be reopened or the reopening is
    cancelled (`open_or_fresh` turns that into a fresh session and a notice).
    """
    opened = _open(model, path, device, progress, cancelled, download, dtype)
    return opened.session, opened.outcomes


def open_or_fresh(model: str | None, path: Path | None, device: str = "auto",
                  progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
                  download: bool = False, dtype: str | None = None) -> Opened:
    """`open_session`, but a refused file gives a fresh session and a notice, never nothing."""
    try:
        return _open(model, path, device, progress, cancelled, download, dtype)
    except WorkbenchError as exc:
        fresh = default_session_path()
        opened = _open(model, fresh, device, progress, None, download, dtype)
        opened.notices.insert(0, f"could not reopen {path}: {exc}; started a new session "
                                 f"{fresh} (the file was not changed)")
        return opened


def _open(model: str | None, path: Path | None, device: str, progress: Progress | None,
          cancelled: Callable[[], bool] | None, download: bool, dtype: str | None = None
          ) -> Opened:
    """`dtype` (None: float32) is the new session's first load's; a reopened log keeps the
    dtype its recorded load names."""
    report = progress or (lambda fraction, message: None)
    stop = cancelled or (lambda: False)
    exists = path is not None and path.is_file() and path.stat().st_size > 0
    if exists and path is not None and is_jsonl_session(path):
        return _reopen(model, path, device, report, stop, download, dtype)
    script: list[str] = []
    notices: list[str] = []
    if exists and path is not None:  # a script: run it into a new log, leave it as it is
        script = read_script(path)
        new = default_session_path()
        notices.append(f"{path} is a script, not a session log: its {len(script)} commands "
                       f"were run into a new session {new}")
        path = new
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    session = Session(path, device=device)
    outcomes: list[Outcome] = []
    if not script or script[0].split()[0] != "load":
        source = model or DEFAULT_MODEL
        report(0.0, f"loading {source}")
        if download:
            load_model(source, device=device, download=True)  # fetch into the local cache
        outcome = session.execute(f"load {source}" + (f" device={device}"
                                                      if device != "auto" else "")
                                  + (f" dtype={dtype}" if dtype else ""))
        outcomes.append(outcome)
        if not outcome.ok:  # keep the session: the user can `load` another model
            return Opened(session, outcomes, notices)
    session.writes = Writes.nowhere()
    try:
        for i, line in enumerate(script):
            if stop():
                raise WorkbenchError(f"cancelled after {i} of {len(script)} commands")
            report(i / len(script), f"running: {line}")
            outcomes.append(session.execute(line, cancelled=stop))
    finally:
        session.writes = Writes()
    return Opened(session, outcomes, notices)


def _reopen(model: str | None, path: Path, device: str, report: Progress,
            stop: Callable[[], bool], download: bool, dtype: str | None = None) -> Opened:
    """Rebuild the state of an existing log by re-running its commands, unrecorded."""
    header, entries = SessionLog.read(path)  # a corrupt log is refused here, unchanged
    notices = SessionLog.verify(path)
    first_loads = bool(entries) and entries[0].cmd.split()[0] == "load"
    if dtype and first_loads:
        notices.append(f"--dtype {dtype} not applied: {path} starts with its own load, which "
                       f"is replayed as recorded (type  load MODEL dtype={dtype}  to switch)")
    preloaded = None
    if not first_loads:
        source = header.model_source or model or DEFAULT_MODEL
        if source.startswith("object:"):
            raise WorkbenchError(f"{path} was recorded on a model object ({source}); add a "
                                 "load command to it or open it from Python")
        report(0.0, f"loading {source}")
        preloaded = load_model(source, device=device, download=download,
                               dtype=dtype or "float32")  # type: ignore[arg-type]
    session = Session(path, model=preloaded, device=device, seed=header.seed or 0,
                      resume=True)
    session.recording, session.writes = False, Writes.nowhere()
    outcomes: list[Outcome] = []
    differ = 0
    try:
        for i, entry in enumerate(entries):
            if stop():
                raise WorkbenchError(f"reopening cancelled after {i} of {len(entries)} "
                                     "commands")
            report(i / max(1, len(entries)), f"reopening: {entry.cmd}")
            outcome = session.execute(entry.cmd, cancelled=stop)
            outcomes.append(outcome)
            if entry.ok and (not outcome.ok or outcome.digest != entry.digest) and \
                    entry.cmd.split()[0] not in ("save", "export"):
                differ += 1
    finally:
        session.recording, session.writes = True, Writes()
    if differ:
        notices.append(f"{differ} reopened command(s) gave a different result than recorded "
                       "(the file keeps what was recorded; the log pane shows what ran now)")
    return Opened(session, outcomes, notices)
