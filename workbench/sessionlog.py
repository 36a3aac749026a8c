"""The session log: an append-only JSON Lines file, with large tensors beside it as safetensors.

Where it sits: `Session.execute` appends one `Entry` per command after it runs; `workbench replay`
reads the log back (or a plain-text script of command lines) and re-executes it, comparing each
entry's `digest` with the new result's to check determinism.

Format (version 1):
    line 1      {"type": "header", "format": 1, "workbench": "0.1.0",
                 "model": {"source": ..., "sha256": ...},
                 "device": ..., "seed": ..., "created": ...}
    line 2..    {"type": "command", "n": 1, "cmd": "...", "ok": true, "out": {...},
                 "error": null, "digest": "...", "seconds": 0.12}
    beside it   <log stem>.tensors/<name>.safetensors

Invariants: every write replaces the whole file atomically (temp file in the same directory, then
`os.replace`), so a crash leaves either the old log or the new one, never half a line. Appending
rewrites the file, which is O(log size); logs hold hundreds of commands, not millions. Nothing
here pickles; torch and safetensors are imported only inside the tensor helpers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    import torch

__all__ = [
    "FORMAT",
    "Entry",
    "Header",
    "SessionLog",
    "default_session_path",
    "digest",
    "is_jsonl_session",
    "load_tensors",
    "read_script",
    "save_tensors",
]

FORMAT = 1
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

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "header",
            "format": self.format,
            "workbench": self.workbench,
            "model": {"source": self.model_source, "sha256": self.model_sha256},
            "device": self.device,
            "seed": self.seed,
            "created": self.created,
        }

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

    def to_json(self) -> dict[str, Any]:
        return {"type": "command", **asdict(self)}

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
        )


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


def _atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old content or the new, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SessionLog:
    """A session log file: `start` it with a header, then `append` one entry per command."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lines: list[str] | None = None  # the file's lines, loaded lazily

    def start(self, header: Header) -> None:
        """Create (or overwrite) the log with just the header line."""
        self._lines = [_dumps(header.to_json())]
        self._write()

    def append(self, entry: Entry) -> None:
        """Add one command line; the whole file is rewritten atomically."""
        lines = self._load()
        try:
            line = _dumps(entry.to_json())
        except ValueError as exc:  # NaN/inf in `out`: not valid JSON
            raise WorkbenchError(f"cannot log command {entry.n}: {exc}") from None
        lines.append(line)
        try:
            self._write()
        except BaseException:
            lines.pop()
            raise

    def header(self) -> Header:
        return _parse_lines(self.path, self._load())[0]

    def entries(self) -> list[Entry]:
        return _parse_lines(self.path, self._load())[1]

    def _load(self) -> list[str]:
        """The file's non-blank lines, read (and validated) once when it was not started here."""
        if self._lines is None:
            if not self.path.exists():
                raise WorkbenchError(f"session log {self.path} has not been started")
            lines = _read_text(self.path).splitlines()
            _parse_lines(self.path, lines)  # refuse to extend a corrupt log
            self._lines = [ln for ln in lines if ln.strip()]
        return self._lines

    def _write(self) -> None:
        assert self._lines is not None
        _atomic_write(self.path, "\n".join(self._lines) + "\n")

    @staticmethod
    def read(path: str | os.PathLike[str]) -> tuple[Header, list[Entry]]:
        """Read a log; `WorkbenchError` names the file, line number and reason for a bad line."""
        p = Path(path)
        return _parse_lines(p, _read_text(p).splitlines())


def _read_text(path: Path) -> str:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        raise WorkbenchError(f"no such session file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkbenchError(f"cannot read {path}: {exc}") from None


def _parse_lines(path: Path, lines: list[str]) -> tuple[Header, list[Entry]]:
    header: Header | None = None
    entries: list[Entry] = []
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
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
    """A new timestamped log path under `$WORKBENCH_HOME` or the user data dir's `sessions/`."""
    base = os.environ.get("WORKBENCH_HOME")
    if not base:
        import platformdirs

        base = platformdirs.user_data_dir("circuit-workbench")
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    directory = Path(base).expanduser() / "sessions"
    path = directory / f"{stamp}.jsonl"
    k = 2
    while path.exists():  # two sessions started in the same second
        path = directory / f"{stamp}-{k}.jsonl"
        k += 1
    return path
