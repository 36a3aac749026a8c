"""Headless replay of a session log or a plain-text script (`workbench replay FILE`).

1. Read the commands: a JSON Lines session (header + recorded outcomes and digests) or a script
   (one command per line, `#` comments).
2. Start a fresh `Session`. When a session was recorded on a model that no command loads (a
   model object handed to the Python API), load the header's model source first.
3. Check the file's integrity (format 2): a line edited after it was written is reported.
4. Execute each command; compare its digest with the recorded one; stop at the first command
   that fails where the recording succeeded (unless `keep_going`). A command that failed in the
   recording too (a typo in the TUI) is expected to fail again and is not counted.

Invariant: replay goes through `Session.execute` like every other front end, and it writes only
where the user asked now: `save`/`export` paths of the file land under `out` (absolute paths
and `..` are refused) unless `allow_writes`, since a session file can come from anyone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from workbench.errors import WorkbenchError
from workbench.files import Writes
from workbench.model import LoadedModel, load_model
from workbench.session import Outcome, Session
from workbench.sessionlog import SessionLog, is_jsonl_session, read_script

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mismatch:
    n: int
    cmd: str
    recorded: str | None
    now: str | None


@dataclass
class ReplayReport:
    outcomes: list[Outcome] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)
    failures: list[Outcome] = field(default_factory=list)
    session: Session | None = None
    problems: list[str] = field(default_factory=list)  # integrity: lines edited after writing

    @property
    def ok(self) -> bool:
        return not self.failures and not self.mismatches and not self.problems

    def summary(self) -> str:
        """One line: how many commands ran, failed and differed."""
        ran = len(self.outcomes)
        words = [f"{ran} command{'s' if ran != 1 else ''} replayed",
                 f"{len(self.failures)} failed", f"{len(self.mismatches)} differ"]
        if self.problems:
            words.append(f"{len(self.problems)} edited line(s)")
        return ", ".join(words) + (": ok" if self.ok else ": FAILED")


def default_out(path: Path) -> Path:
    """Where a replay's `save`/`export` files go by default: `NAME.replay/` beside the file."""
    return path.with_name(path.name + ".replay")


def replay(path: str | Path, keep_going: bool = False, model: LoadedModel | None = None,
           log_to: str | Path | None = None,
           on_outcome: Callable[[Outcome], None] | None = None,
           out: str | Path | None = None, allow_writes: bool = False) -> ReplayReport:
    """Re-execute a session file headless and report failures and digest differences.

    `save`/`export` write under `out` (default `default_out(path)`), or where the file says
    when `allow_writes`."""
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f"session file {path} does not exist: check the path")
    recorded: list[tuple[str, bool, str | None]]
    source, seed = None, 0
    problems: list[str] = []
    if is_jsonl_session(path):
        header, entries = SessionLog.read(path)
        problems = SessionLog.verify(path)
        recorded = [(e.cmd, e.ok, e.digest) for e in entries]
        source = header.model_source
        seed = header.seed if header.seed is not None else 0  # `task` without seed= uses it
    else:
        recorded = [(line, True, None) for line in read_script(path)]
    loads_first = bool(recorded) and recorded[0][0].split()[0] == "load"
    loads_any = any(cmd.split()[0] == "load" for cmd, _, _ in recorded if cmd.split())
    start_model: LoadedModel | str | None = model
    if start_model is None and not loads_first and source and not source.startswith("object:"):
        # Load it here, not as Session(model=source): that would run an extra `load` command
        # and shift every command number away from the recording's.
        start_model = load_model(source)
    if start_model is None and not loads_any:
        raise WorkbenchError(f"{path} does not load a model and none was given; add a load "
                             "command first (e.g. load add3)")
    session = Session(path=log_to, model=start_model, seed=seed)
    if not allow_writes:
        session.writes = Writes.under(Path(out) if out is not None else default_out(path))
    report = ReplayReport(session=session)
    if problems and problems[0].endswith("(save it again to upgrade)"):
        log.info(problems[0])  # format 1: nothing to verify; not a failure
    else:
        report.problems = problems
    for cmd, was_ok, was_digest in recorded:
        outcome = session.execute(cmd)
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if not outcome.ok and was_ok:
            report.failures.append(outcome)
            if not keep_going:
                break
        elif outcome.ok and was_digest is not None and outcome.digest != was_digest:
            report.mismatches.append(Mismatch(outcome.n, cmd, was_digest, outcome.digest))
    return report
