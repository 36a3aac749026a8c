"""Regression corpus of issue 14: each bad input a new user tried, and what it must give now.

Every error is one line naming the problem and the fix, logged as a failed command, with the
state unchanged; a bug shows one line plus a crash report path under the data folder; replay
and reopen write nothing the user did not ask for now; the session file only grows.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from pilot_helpers import settle

from workbench import cli
from workbench.cli import main
from workbench.files import Writes, write_atomic
from workbench.model import LoadedModel
from workbench.session import Session
from workbench.sessionlog import SessionLog
from workbench.tui.boot import open_or_fresh, open_session

TASK = "task addition digits=3 n=16"


@pytest.fixture
def s(add3: LoadedModel, tmp_path: Path) -> Session:
    session = Session(tmp_path / "s.jsonl", model=add3)
    assert session.execute(TASK).ok
    return session


def failed(s: Session, line: str) -> str:
    """Run `line`; assert it failed in one line, was logged failed, changed nothing."""
    before, log_before = s.state, s.path.read_bytes() if s.path else b""
    outcome = s.execute(line)
    assert not outcome.ok and outcome.error
    assert "\n" not in outcome.error and "Traceback" not in outcome.error
    assert s.state is before
    if s.path is not None:
        text = s.path.read_bytes()
        assert text.startswith(log_before)
        last = json.loads(text.splitlines()[-1])
        assert last["ok"] is False and last["error"] == outcome.error
    return outcome.error


# -- 1. tracebacks ---------------------------------------------------------------------------


def test_prompts_on_a_binary_file(s: Session, tmp_path: Path) -> None:
    (tmp_path / "bin.jsonl").write_bytes(bytes(range(256)) * 4)
    error = failed(s, f"prompts {tmp_path}/bin.jsonl")
    assert "is not UTF-8 text" in error and "give a JSONL file" in error


@pytest.mark.parametrize("line", ["export c1 /proc/x.dot", "save /proc/nope.jsonl",
                                  "export c1 {tmp}/a-file/deep/x.json", "save {tmp}"])
def test_writes_to_a_place_that_cannot_be_written(s: Session, line: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("a file, not a folder")
    assert s.execute("select a0.0 a0.1").ok
    error = failed(s, line.format(tmp=tmp_path))
    assert error.startswith(("cannot write", "cannot create folder"))
    assert "choose" in error or "give a file name" in error


def test_a_bug_is_one_line_with_a_crash_report(s: Session, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    tech = s.registry["dla"]

    def broken(ctx: object, params: object) -> None:
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(s.registry, "dla", type(tech)(**{**tech.__dict__, "run": broken}))
    error = failed(s, "run dla")
    assert error.startswith("internal error (ZeroDivisionError: boom)")
    reports = list((tmp_path / "home" / "crash").glob("crash-*.txt"))
    assert len(reports) == 1 and str(reports[0]) in error
    assert "ZeroDivisionError" in reports[0].read_text() and "Traceback" in reports[0].read_text()
    assert s.execute("perf").ok  # the next command works


def test_write_atomic_never_leaves_a_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    write_atomic(target, b"old")

    def fail(tmp: str) -> None:
        Path(tmp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(Exception, match="cannot write .*No space left"):
        write_atomic(target, b"", writer=fail)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.bin"]


# -- 2. replay and reopen write nothing the user did not ask for now ---------------------------


def test_replay_cannot_overwrite_a_file_outside_its_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    evil = tmp_path / "evil.wb"
    for target in (victim, "../victim.txt"):
        evil.write_text(f"load add3\nsave {target}\n")
        assert main(["replay", str(evil)]) == 1
        err = capsys.readouterr().err
        assert "refusing to write" in err and "FAILED" in err.splitlines()[-1]
        assert victim.read_text() == "precious\n"
    evil.write_text("load add3\nsave copy.jsonl\n")  # relative: lands in the output folder
    assert main(["replay", str(evil)]) == 0
    assert (tmp_path / "evil.wb.replay" / "copy.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.wb", "evil.wb.replay",
                                                           "victim.txt"]


def test_writes_policy_refuses_escapes(tmp_path: Path) -> None:
    policy = Writes.under(tmp_path)
    assert policy.target("out/c.dot") == (tmp_path / "out" / "c.dot").resolve()
    for bad in ("/etc/passwd", "../x", "out/../../x", "~/x"):
        with pytest.raises(Exception, match="refusing to write"):
            policy.target(bad)
    assert Writes.nowhere().target("x") is None


def test_reopen_does_not_repeat_exports_and_never_rewrites_the_log(
    add3: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "s.jsonl"
    first, _ = open_session("add3", path, device="cpu")
    for line in (TASK, "select a0.0 m0", "export c1 out/c1.json", "save copy.jsonl",
                 "prompts later.jsonl", "perf"):
        first.execute(line)
    assert [e.ok for e in SessionLog.read(path)[1]] == [True, True, True, True, True, False, True]
    (tmp_path / "out" / "c1.json").unlink()
    (tmp_path / "copy.jsonl").unlink()
    # The file the failed command wanted exists now: on reopen it passes, but its logged
    # entry stays ok:false (history is not rewritten).
    (tmp_path / "later.jsonl").write_text(json.dumps(
        {"clean": "123+456=", "corrupted": "923+456=", "answer": "0579"}) + "\n")
    before = path.read_bytes()
    again, outcomes = open_session(None, path, device="cpu")
    assert path.read_bytes() == before
    assert not (tmp_path / "out" / "c1.json").exists() and not (tmp_path / "copy.jsonl").exists()
    assert [o.cmd for o in outcomes][-2:] == ["prompts later.jsonl", "perf"]
    assert again.state.prompts is not None and len(again.state.prompts) == 1
    # New commands are appended after the recorded ones, numbered on.
    outcome = again.execute("perf")
    assert outcome.n == 8 and path.read_bytes().startswith(before)
    assert [e.n for e in SessionLog.read(path)[1]] == list(range(1, 9))
    assert SessionLog.read(path)[1][5].ok is False
    assert again.execute("export c1 out/c1.json").ok  # asked for now: written
    assert (tmp_path / "out" / "c1.json").is_file()


# -- 3. a refused --session leaves a working screen ------------------------------------------


def test_refused_session_gives_a_fresh_one_with_a_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(bytes((i * 97 + 13) % 256 for i in range(3000)))
    before = garbage.read_bytes()
    opened = open_or_fresh("add3", garbage, device="cpu")
    assert garbage.read_bytes() == before
    assert opened.notices and opened.notices[0].startswith(f"could not reopen {garbage}")
    assert opened.session.path is not None and opened.session.path != garbage
    assert opened.session.path.parent == tmp_path / "home" / "sessions"
    assert opened.session.execute("perf").ok


@pytest.mark.asyncio
async def test_tui_on_a_refused_session_is_usable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.tui.app import WorkbenchApp

    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\xff\xfe random bytes \x00\x01" * 50)
    app = WorkbenchApp(model="add3", session_path=garbage, device="cpu", keymap={})

    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        assert app.ready and app.session is not None
        assert app.session.path != garbage and garbage.read_bytes().startswith(b"\xff\xfe")
        app.submit("ablate a0.1")
        app.submit("prompts " + str(garbage))  # a failing command: logged, one line
        await settle(app, pilot)
        assert [o.ok for o in app.session.outcomes] == [True, True, False]
        assert [str(a.target) for a in app.session.state.ablations] == ["a0.1"]
        log = app.session.path
        assert log is not None and json.loads(log.read_text().splitlines()[-1])["ok"] is False


# -- 4. bounded work, ASCII names, merged duplicates, alphabets, long lines -----------------


def test_absurd_prompt_count_is_refused_before_work(s: Session) -> None:
    error = failed(s, "task addition n=10000000")
    assert "over the limit of 20,000" in error and "WORKBENCH_MAX_PROMPTS=10000000" in error
    assert "GiB of cached activations" in error


@pytest.mark.parametrize("line,fragment", [
    ("run acdc tau=nan", "not a finite number"),
    ("run acdc tau=inf", "not a finite number"),
    ("run acdc tau=1e999", "not a finite number"),
    ("run acdc tau=-1", "out of range: use 0 to"),
    ("run acdc replicas=100000000", "out of range"),
    ("run mask steps=1000000000", "out of range"),
    ("run acdc tau=０.1", "expects float"),
    ("select r1 threshold=nan", "must be a finite number"),
])
def test_options_are_range_checked(s: Session, line: str, fragment: str) -> None:
    assert s.execute("run dla").ok
    assert fragment in failed(s, line)


def test_names_are_ascii_only(s: Session) -> None:
    error = failed(s, "ablate a０.1")
    assert "is not ASCII" in error and "U+FF10" in error
    failed(s, "ablate a0.١")  # Arabic-Indic digit one


def test_duplicate_names_are_merged(s: Session) -> None:
    out = s.execute("ablate a0.0 a0.0 a0.* a0.0").out
    assert out["ablated"] == ["a0.0", "a0.1", "a0.2", "a0.3"]


def test_prompt_files_are_checked_against_the_task_alphabet(s: Session, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"clean": "12a+456=", "corrupted": "123+456=",
                                "answer": "0579"}) + "\n")
    error = failed(s, f"prompts {path}")
    assert "'a'" in error and "addition prompts never contain" in error


def test_a_huge_line_is_not_echoed_whole(s: Session) -> None:
    error = failed(s, "x" * 100_000)
    assert len(error) < 300 and "100,000" in error
    assert len(s.outcomes[-1].cmd) <= 1001
    error = failed(s, "ablate " + "a" * 5_000)  # under the line limit: the word is cut
    assert len(error) < 400 and "(5,003 chars)" in error


# -- 5. integrity -----------------------------------------------------------------------------


def test_an_edited_output_is_reported_by_replay(
    s: Session, capsys: pytest.CaptureFixture[str]
) -> None:
    assert s.execute("perf").ok
    assert s.path is not None
    assert main(["replay", str(s.path)]) == 0
    capsys.readouterr()
    lines = s.path.read_text().splitlines()
    row = json.loads(lines[-1])
    row["out"]["percent"] = 42.0  # digest and check left alone
    lines[-1] = json.dumps(row)
    s.path.write_text("\n".join(lines) + "\n")
    assert main(["replay", str(s.path)]) == 1
    err = capsys.readouterr().err
    assert f"integrity: {s.path}, line {len(lines)}: it was edited after it was written" in err


# -- 7. CLI help -------------------------------------------------------------------------------


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name, sub in cli.SUBCOMMANDS.items():
        if name != "open":
            assert f"  {name}" in text and sub.summary in text


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_every_flag_has_help(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.ArgumentParser] = []
    real = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *a: object, **k: object) -> None:
        seen.append(self)
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        cli.SUBCOMMANDS[name].run([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", real)
    assert seen
    missing = [a.dest for a in seen[0]._actions if not a.help]
    assert missing == [], f"workbench {name}: flags without help: {missing}"


def test_long_runs_are_estimated_and_refused_before_work(
    s: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBENCH_MAX_WORK", "500")
    edges = s.engine().graph.n_edges
    error = failed(s, "run acdc")
    assert f"about {16 * (2 + 0.5 * edges):,.0f} prompt forward passes" in error
    assert "WORKBENCH_MAX_WORK=" in error and "over the limit of 500" in error
    assert "over the limit" in failed(s, "run mask steps=1000")
    assert s.execute("run mask steps=5").ok  # 16 x 12 FE: under the limit


def test_a_log_that_cannot_grow_keeps_memory_and_file_in_step(
    s: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workbench.sessionlog as sessionlog

    def full(path: object, line: str) -> None:
        raise sessionlog.WorkbenchError(f"cannot append to '{path}': No space left on device")

    before, n, logged = s.state, len(s.outcomes), s.path.read_bytes()
    monkeypatch.setattr(sessionlog, "append_line", full)
    outcome = s.execute("ablate a0.1")
    assert not outcome.ok and "No space left" in outcome.error and "not kept" in outcome.error
    assert s.state is before and len(s.outcomes) == n and s.path.read_bytes() == logged
    monkeypatch.undo()
    assert s.execute("ablate a0.1").n == n + 1
