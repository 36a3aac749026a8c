"""Settings: defaults in code, then settings.toml, then WORKBENCH_* variables, then flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench import settings
from workbench.errors import WorkbenchError
from workbench.sessionlog import default_session_path


def test_defaults_then_file_then_environment_then_flags(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.toml").write_text('max_prompts = 500\nlog_level = "info"\n')
    env = {"WORKBENCH_HOME": str(home)}
    assert settings.load(env={}, file=tmp_path / "none.toml").max_prompts == 20_000  # default
    got = settings.load(env=env)
    assert (got.max_prompts, got.log_level, got.data_dir) == (500, "INFO", home)
    got = settings.load(env={**env, "WORKBENCH_MAX_PROMPTS": "70"})
    assert got.max_prompts == 70 and got.log_level == "INFO"  # environment over file
    got = settings.load(env={**env, "WORKBENCH_MAX_PROMPTS": "70"}, max_prompts=9,
                        log_level=None)
    assert got.max_prompts == 9 and got.log_level == "INFO"  # flags over both; None skipped
    assert got.sessions_dir == home / "sessions" and got.crash_dir == home / "crash"
    assert got.keys_file == home / "keys.toml"


@pytest.mark.parametrize("env,message", [
    ({"WORKBENCH_MAX_PROMPTS": "lots"}, "WORKBENCH_MAX_PROMPTS: max_prompts = 'lots'"),
    ({"WORKBENCH_MAX_PROMPTS": "0"}, "max_prompts must be between 1"),
    ({"WORKBENCH_LOG": "LOUD"}, "log_level 'LOUD': choose DEBUG"),
])
def test_bad_values_are_one_line(env: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match=message):
        settings.load(env={"WORKBENCH_HOME": str(tmp_path), **env})


def test_bad_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("colour = 'red'\n")
    with pytest.raises(WorkbenchError, match=r"settings.toml: unknown setting 'colour'"):
        settings.load(env={"WORKBENCH_HOME": str(tmp_path)})


def test_reading_settings_creates_nothing(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    path = default_session_path()
    assert path.parent == tmp_path / "home" / "sessions" and not (tmp_path / "home").exists()


def test_cli_flags_configure_the_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    try:
        assert main(["eval", "n=50", "--max-prompts", "10", "--home", str(tmp_path)]) == 2
        assert "limit 10" in capsys.readouterr().err
        assert settings.current().data_dir == tmp_path
    finally:
        settings.configure()  # back to file and environment for the other tests
