"""The session log: an append-only JSON Lines file, with large tensors beside it as safetensors.

Where it sits: `Session.execute` appends one `Entry` per command after it runs; `workbench replay`
reads the log back (or a plain-text script of command lines) and re-executes it, comparing each
entry's `digest` with the new result's to check determinism.

Format (version 2; version 1 files are read too):
    line 1      {"type": "header", "format": 2, "workbench": "0.1.0",
                 "model": {"source": ..., "sha256": ...},
                 "device": ..., "seed": ..., "created": ..., "check": "..."}
    line 2..    {"type": "command", "n": 1, "cmd": "...", "ok": true, "out": {...},
                 "error": null, "digest": "...", "seconds": 0.12, "check": "..."}
    beside it   <log stem>.tensors/<name>.safetensors

`digest` is the digest of `out` exactly as stored (minus `VOLATILE` keys, which depend on where
the log lives, not on the result): replay compares it with the re-executed command's and checks
it against the stored `out`. `check` is the digest of the whole line without itself, so any edit
of a line (an `out` value, `ok`, an error, the header's seed) is reported by `verify`.

Invariants: the file is append-only in fact: `start` writes a new file atomically (temp file,
then `os.replace`), `append` adds one line with one `write` and fsync, and nothing ever rewrites
a line already written. A crash can at worst tear the last line; the next `append` cuts that
torn tail (it was never a whole record) and readers ignore it. Nothing here pickles; torch and
safetensors are imported only inside the tensor helpers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError
from workbench.files import append_line, write_atomic

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT",
    "Entry",
    "Header",
    "SessionLog",
    "default_session_path",
    "digest",
    "digest_out",
    "is_jsonl_session",
    "load_tensors",
    "read_script",
    "save_tensors",
]

FORMAT = 2
VOLATILE = frozenset({"tensors", "written"})  # out keys that depend on where files go
_TENSOR_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Header:
    """First line of a log: who wrote it and with which model, device and seed."""

    workbench: str
    model_source: str | None = None
    model_sha256: str | None = None
    device: str | None = None
    seed: int | None = None
    created: str = field(default_factory=_now_iso)
    format: int = FORMAT
    check: str | None = field(default=None, compare=False)  # as read (None: format 1)

    def to_json(self) -> dict[str, Any]:
        return _checked({
            "type": "header",
            "format": self.format,
            "workbench": self.workbench,
            "model": {"source": self.model_source, "sha256": self.model_sha256},
            "device": self.device,
            "seed": self.seed,
            "created": self.created,
        })

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Header:
        """Build from a decoded line; `ValueError` names the first problem."""
        if obj.get("type") != "header":
            raise ValueError('the first line must be the header ({"type": "header", ...})')
        fmt = _field(obj, "format", int)
        if fmt > FORMAT:
            raise ValueError(f"session format {fmt} is newer than this workbench reads ({FORMAT})")
        model = _field(obj, "model", dict)
        return cls(
            workbench=_field(obj, "workbench", str),
            model_source=_field(model, "source", str, optional=True),
            model_sha256=_field(model, "sha256", str, optional=True),
            device=_field(obj, "device", str, optional=True),
            seed=_field(obj, "seed", int, optional=True),
            created=_field(obj, "created", str),
            format=fmt,
            check=_field(obj, "check", str, optional=True) if "check" in obj else None,
        )


@dataclass(frozen=True)
class Entry:
    """One executed command: its canonical text, outcome summary and result digest."""

    n: int
    cmd: str
    ok: bool
    out: dict[str, Any]
    error: str | None
    digest: str | None
    seconds: float
    check: str | None = field(default=None, compare=False)  # as read (None: format 1)

    def to_json(self) -> dict[str, Any]:
        body = {"type": "command", **asdict(self)}
        del body["check"]
        return _checked(body)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Entry:
        """Build from a decoded line; `ValueError` names the first problem."""
        if obj.get("type") != "command":
            raise ValueError(f"unknown line type {obj.get('type')!r} (expected 'command')")
        return cls(
            n=_field(obj, "n", int),
            cmd=_field(obj, "cmd", str),
            ok=_field(obj, "ok", bool),
            out=_field(obj, "out", dict),
            error=_field(obj, "error", str, optional=True),
            digest=_field(obj, "digest", str, optional=True),
            seconds=float(_field(obj, "seconds", (int, float))),
            check=_field(obj, "check", str, optional=True) if "check" in obj else None,
        )


def _checked(body: dict[str, Any]) -> dict[str, Any]:
    """`body` plus its `check`: the digest of the line without the check itself."""
    return {**body, "check": digest(body)}


def line_problem(obj: dict[str, Any]) -> str | None:
    """Why a decoded format-2 line fails its integrity checks, or None when it passes."""
    body = {k: v for k, v in obj.items() if k != "check"}
    if obj.get("check") != digest(body):
        return "it was edited after it was written (its check digest differs)"
    return None


def _field(
    obj: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool = False
) -> Any:
    if key not in obj:
        raise ValueError(f"missing field '{key}'")
    value = obj[key]
    if value is None and optional:
        return None
    # bool is an int subclass: an int field must not accept true/false, and vice versa.
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not isinstance(value, kind):
        raise ValueError(f"field '{key}' has the wrong type ({type(value).__name__})")
    return value


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)


class SessionLog:
    """A session log file: `start` it with a header, then `append` one entry per command."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._checked = False  # the existing file was validated (and a torn tail cut)

    def start(self, header: Header) -> None:
        """Create (or replace) the log with just the header line, atomically."""
        write_atomic(self.path, _dumps(header.to_json()) + "\n", mkdir=True)
        self._checked = True

    def append(self, entry: Entry) -> None:
        """Add one command line at the end; lines already written are never touched."""
        try:
            line = _dumps(entry.to_json())
        except ValueError as exc:  # NaN/inf in `out`: not valid JSON
            raise WorkbenchError(f"cannot log command {entry.n}: {exc}") from None
        if not self._checked:
            self._attach()
        append_line(self.path, line)

    def header(self) -> Header:
        return self.read(self.path)[0]

    def entries(self) -> list[Entry]:
        return self.read(self.path)[1]

    def _attach(self) -> None:
        """Validate an existing log before extending it, and cut a torn last line."""
        if not self.path.exists():
            raise WorkbenchError(f"session log {self.path} has not been started")
        raw = _read_text(self.path)
        _parse_lines(self.path, raw.splitlines(), torn=_torn(raw))  # refuse a corrupt log
        if _torn(raw):
            keep = raw.rfind("\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(len(raw[:keep].encode("utf-8")))
        self._checked = True

    @staticmethod
    def read(path: str | os.PathLike[str]) -> tuple[Header, list[Entry]]:
        """Read a log; `WorkbenchError` names the file, line number and reason for a bad line."""
        p = Path(path)
        raw = _read_text(p)
        return _parse_lines(p, raw.splitlines(), torn=_torn(raw))

    @staticmethod
    def verify(path: str | os.PathLike[str]) -> list[str]:
        """One line per integrity problem of a log (edited lines); empty when it is intact."""
        p = Path(path)
        raw = _read_text(p)
        lines = [(i, ln) for i, ln in enumerate(raw.splitlines(), start=1) if ln.strip()]
        if _torn(raw):
            lines = lines[:-1]
        problems: list[str] = []
        if not lines:
            return problems
        first = json.loads(lines[0][1])
        if first.get("format", 1) < 2:
            return [f"{p} is format {first.get('format', 1)}: its lines carry no check "
                    "digests, so edits cannot be detected (save it again to upgrade)"]
        for lineno, line in lines:
            why = line_problem(json.loads(line))
            if why is not None:
                problems.append(f"{p}, line {lineno}: {why}")
        return problems


def _torn(raw: str) -> bool:
    """Whether the text ends in a line that was never finished (a crash mid-append)."""
    if not raw or raw.endswith("\n"):
        return False
    last = raw.rsplit("\n", 1)[-1]
    try:
        json.loads(last)
    except json.JSONDecodeError:
        return True
    return False


def _read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise WorkbenchError(f"no such session file: {path}") from None
    except UnicodeDecodeError as exc:
        raise WorkbenchError(f"{path} is not a session file (not UTF-8 text at byte "
                             f"{exc.start}): give a .jsonl session log or a script of "
                             "commands") from None
    except OSError as exc:
        raise WorkbenchError(f"cannot read {path}: {exc.strerror or exc}") from None


def _parse_lines(path: Path, lines: list[str], torn: bool = False
                 ) -> tuple[Header, list[Entry]]:
    header: Header | None = None
    entries: list[Entry] = []
    if torn:  # the last line was cut short by a crash: it was never a record
        lines = lines[:-1]
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not a JSON object")
            if header is None:
                header = Header.from_json(obj)
            else:
                entries.append(Entry.from_json(obj))
        except json.JSONDecodeError as exc:
            raise WorkbenchError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from None
        except ValueError as exc:
            raise WorkbenchError(f"{path}, line {lineno}: {exc}") from None
    if header is None:
        raise WorkbenchError(f"{path}: empty session file (no header line)")
    return header, entries


def is_jsonl_session(path: str | os.PathLike[str]) -> bool:
    """True when the first non-blank line is a JSON object (a log), False for a plain script."""
    for line in _read_text(Path(path)).splitlines():
        if line.strip():
            try:
                return isinstance(json.loads(line), dict)
            except json.JSONDecodeError:
                return False
    return False


def read_script(path: str | os.PathLike[str]) -> list[str]:
    """The command lines of a plain-text script, without blank and comment-only lines."""
    lines = (ln.strip() for ln in _read_text(Path(path)).splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _canonical(obj: Any) -> Any:
    """Plain JSON data with floats rounded to 6 significant digits."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return repr(obj)  # "nan"/"inf": stable, and JSON has no literal for them
        rounded = float(f"{obj:.6g}")
        return 0.0 if rounded == 0 else rounded  # -0.0 and 0.0 digest alike
    if isinstance(obj, Enum):
        return _canonical(obj.value)
    if is_dataclass(obj) and not isinstance(obj, type):
        return _canonical(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return _canonical(obj.tolist())
    raise TypeError(f"cannot digest a {type(obj).__name__}")


def digest(obj: Any) -> str:
    """SHA-256 (16 hex chars) of canonical JSON: key order and float noise below 6 digits vanish."""
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def digest_out(out: dict[str, Any]) -> str:
    """The digest of a command's stored output, without the keys that depend on file places."""
    return digest({k: v for k, v in out.items() if k not in VOLATILE})


def _tensor_dir(log_path: str | os.PathLike[str]) -> Path:
    p = Path(log_path)
    return p.parent / f"{p.stem}.tensors"


def save_tensors(
    log_path: str | os.PathLike[str], name: str, tensors: dict[str, torch.Tensor]
) -> str:
    """Write `<log stem>.tensors/<name>.safetensors`; return its path relative to the log's dir."""
    from safetensors.torch import save_file

    if not _TENSOR_NAME.fullmatch(name):
        raise WorkbenchError(f"bad tensor file name '{name}': use letters, digits, _ . -")
    directory = _tensor_dir(log_path)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.safetensors"
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(target, b"", writer=lambda tmp: save_file(cpu, tmp))
    return f"{directory.name}/{target.name}"


def load_tensors(
    log_path: str | os.PathLike[str], ref: str, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Read tensors saved by `save_tensors`; `ref` is its returned path or the bare name."""
    from safetensors.torch import load_file

    directory = _tensor_dir(log_path)
    if ref.endswith(".safetensors"):
        path = Path(log_path).parent / ref
    else:
        path = directory / f"{ref}.safetensors"
    if path.resolve().parent != directory.resolve():
        raise WorkbenchError(f"tensor file '{ref}' is outside {directory}")
    if not path.is_file():
        raise WorkbenchError(f"missing tensor file {path}")
    return load_file(str(path), device=device)


def default_session_path(now: datetime | None = None) -> Path:
    """A new timestamped log path in the settings' `sessions/` folder (`WORKBENCH_HOME`...)."""
    from workbench.settings import current

    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    directory = current().sessions_dir
    path = directory / f"{stamp}.jsonl"
    k = 2
    while path.exists():  # two sessions started in the same second
        path = directory / f"{stamp}-{k}.jsonl"
        k += 1
    return path
