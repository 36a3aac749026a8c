"""Open or resume the session the TUI works on (headless: no Textual here).

1. A new session file gets a header, then `load MODEL` runs through `Session.execute`, so the
   log starts with the load and replays on its own.
2. An existing session file is resumed by replaying it: its command lines are read, the file is
   restarted, and each command is executed again in order (the log ends up as it was, with
   fresh outcomes). When its first command is not a `load`, the model named in its header is
   loaded first (as `workbench replay` does). The model given on the command line only applies
   when the log names none.
3. While a resume runs, a copy of the original log sits beside it (`NAME.resume-backup`) and is
   removed once every command has run, so a crash or a cancel mid-way loses nothing.

Invariant: every change to the session goes through `Session.execute`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.model import DEFAULT_MODEL, load_model
from workbench.session import Outcome, Session
from workbench.sessionlog import SessionLog, is_jsonl_session, read_script

Progress = Callable[[float, str], None]


def _recorded(path: Path | None) -> tuple[list[str], str | None] | None:
    """(command lines, header model source) of an existing session file, else None."""
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return None
    if is_jsonl_session(path):
        header, entries = SessionLog.read(path)
        return [e.cmd for e in entries], header.model_source
    return read_script(path), None


def open_session(model: str | None, path: Path | None, device: str = "auto",
                 progress: Progress | None = None, cancelled: Callable[[], bool] | None = None,
                 download: bool = False) -> tuple[Session, list[Outcome]]:
    """A session with the model resident; `path` is created, or resumed when it exists.

    Returns the session and the outcomes of the commands run (load and replayed ones); when the
    model does not load, the last outcome says why and nothing is replayed. Raises
    `WorkbenchError` with one line when the resume is cancelled.
    """
    report = progress or (lambda fraction, message: None)
    stop = cancelled or (lambda: False)
    found = _recorded(path)
    commands, recorded_model = found if found is not None else ([], None)
    backup = None
    if found is not None and path is not None:
        backup = path.with_name(path.name + ".resume-backup")
        shutil.copyfile(path, backup)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    session = Session(path, device=device)
    outcomes: list[Outcome] = []
    if not commands or commands[0].split()[0] != "load":
        source = recorded_model or model or DEFAULT_MODEL
        if source.startswith("object:"):
            raise WorkbenchError(f"{path} was recorded on a model object ({source}); add a "
                                 "load command to it or open it from Python")
        report(0.0, f"loading {source}")
        if download:
            load_model(source, device=device, download=True)  # fetch into the local cache
        outcome = session.execute(f"load {source}" + (f" device={device}"
                                                      if device != "auto" else ""))
        outcomes.append(outcome)
        if not outcome.ok:  # keep the session: the user can `load` another model
            return session, outcomes
    for i, line in enumerate(commands):
        if stop():
            raise WorkbenchError(f"resume cancelled after {i} of {len(commands)} commands; "
                                 f"the original log is kept at {backup}")
        report(i / len(commands), f"resuming: {line}")
        outcomes.append(session.execute(line, progress=None, cancelled=stop))
    if backup is not None:
        backup.unlink(missing_ok=True)
    return session, outcomes
