"""The workbench's settings: one typed object, defaults in code, then TOML, environment, flags.

Precedence, lowest first: the defaults below; `settings.toml` (at `$WORKBENCH_CONFIG`, else in
the home folder when `WORKBENCH_HOME` is set, else in the platformdirs user config dir); the
`WORKBENCH_<FIELD>` environment variables (`WORKBENCH_HOME`, `WORKBENCH_LOG`,
`WORKBENCH_MAX_PROMPTS`, ...); command-line flags (`workbench --home DIR --log-level INFO`).

Where it sits: `current()` is read where a path or limit is needed (session paths, crash
reports, the key map, the prompt limit); the CLI calls `configure(**flags)` once at start.
Technique options are never here: they live in each plugin's `Params`.

Invariant: reading settings never creates a folder or a file; a bad value in the file or the
environment is one `WorkbenchError` naming where it came from and what is accepted.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

__all__ = ["Settings", "configure", "current", "load"]

APP = "circuit-workbench"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class Settings:
    """Where the workbench keeps its files, and the limits that keep work bounded."""

    home: Path | None = None  # data folder (sessions/, crash/); None: the platformdirs one
    config_dir: Path | None = None  # keys.toml and settings.toml; None: home, else platformdirs
    log_level: str = "WARNING"  # logging level of the `workbench` command
    max_prompts: int = 20_000  # largest prompt set `task n=` builds (raise it to go further)
    max_line: int = 10_000  # longest command line accepted (characters)
    max_work: int = 50_000_000  # largest run, in prompt x forward-pass equivalents

    def __post_init__(self) -> None:
        if self.log_level.upper() not in LOG_LEVELS:
            raise WorkbenchError(f"log_level {self.log_level!r}: choose {'|'.join(LOG_LEVELS)}")
        object.__setattr__(self, "log_level", self.log_level.upper())
        for name in ("max_prompts", "max_line", "max_work"):
            if not 1 <= getattr(self, name) <= 10**15:
                raise WorkbenchError(f"{name} must be between 1 and 10**15")

    @property
    def data_dir(self) -> Path:
        if self.home is not None:
            return self.home.expanduser()
        import platformdirs

        return Path(platformdirs.user_data_dir(APP))

    @property
    def config_folder(self) -> Path:
        if self.config_dir is not None:
            return self.config_dir.expanduser()
        if self.home is not None:
            return self.home.expanduser()
        import platformdirs

        return Path(platformdirs.user_config_dir(APP))

    @property
    def sessions_dir(self) -> Path:
        return self.data_dir / "sessions"

    @property
    def crash_dir(self) -> Path:
        return self.data_dir / "crash"

    @property
    def keys_file(self) -> Path:
        return self.config_folder / "keys.toml"


_FIELDS = {f.name: f for f in fields(Settings)}


def _typed(name: str, value: Any, where: str) -> Any:
    kind = _FIELDS[name].type
    try:
        if "Path" in str(kind):
            if not isinstance(value, str) or not value:
                raise ValueError
            return Path(value)
        if kind in ("int", int):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if not isinstance(value, str):
            raise ValueError
        return value
    except ValueError:
        raise WorkbenchError(f"{where}: {name} = {value!r} is not a valid {kind}") from None


def _settings_file(env: dict[str, str]) -> Path | None:
    if env.get("WORKBENCH_CONFIG"):
        return Path(env["WORKBENCH_CONFIG"]).expanduser()
    folder = env.get("WORKBENCH_CONFIG_DIR") or env.get("WORKBENCH_HOME")
    if folder:
        return Path(folder).expanduser() / "settings.toml"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP)) / "settings.toml"


def load(env: dict[str, str] | None = None, file: Path | None = None,
         **flags: Any) -> Settings:
    """Settings from defaults, the TOML file, `WORKBENCH_*` variables and `flags` (None skipped)."""
    env = dict(os.environ if env is None else env)
    values: dict[str, Any] = {}
    path = file or _settings_file(env)
    if path is not None and path.is_file():
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise WorkbenchError(f"cannot read settings {path}: {exc}; fix or remove it"
                                 ) from None
        for key, value in table.items():
            if key not in _FIELDS:
                raise WorkbenchError(f"{path}: unknown setting {key!r}; settings: "
                                     + ", ".join(_FIELDS))
            values[key] = _typed(key, value, str(path))
    for name in _FIELDS:
        var = "WORKBENCH_LOG" if name == "log_level" else f"WORKBENCH_{name.upper()}"
        if env.get(var):
            values[name] = _typed(name, env[var], var)
    for name, value in flags.items():
        if name not in _FIELDS:
            raise TypeError(f"unknown setting {name}")
        if value is not None:
            values[name] = _typed(name, str(value), f"--{name.replace('_', '-')}")
    return Settings(**values)


_fixed: Settings | None = None
_flags: dict[str, Any] = {}


def current() -> Settings:
    """The settings in force: file and environment as they are now, plus the flags given to
    `configure` (or exactly the object given to it)."""
    return _fixed if _fixed is not None else load(**_flags)


def configure(settings: Settings | None = None, **flags: Any) -> Settings:
    """Fix the settings for this process: the CLI passes its flags (None: not given); a test or
    notebook may pass a whole `Settings`. `configure()` goes back to file and environment."""
    global _fixed, _flags
    _fixed = settings
    _flags = {k: v for k, v in flags.items() if v is not None}
    return current()


def replace(**changes: Any) -> Settings:
    """The current settings with `changes`."""
    return dataclasses.replace(current(), **changes)
