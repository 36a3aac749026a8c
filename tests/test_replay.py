"""`workbench replay FILE [--json] [--keep-going] [--log PATH]`, through `workbench.cli.main`.

What CI relies on: one JSON object per command with the documented keys, a non-zero exit at
the first failure (or a digest that differs from the recording, named by command), plain-text
scripts with comments, exports written by the replay, and every example session in `sessions/`
replaying cleanly. Loading `add3` is swapped for the session-scoped fixture (the loader itself
is tested in test_model.py and test_session.py), so each replay costs milliseconds, not a boot.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from workbench import replay as replay_module
from workbench import session as session_module
from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.export import to_dot
from workbench.model import LoadedModel
from workbench.replay import replay
from workbench.session import Session
from workbench.sessionlog import SessionLog

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted([*ROOT.glob("sessions/*.wb"), *ROOT.glob("sessions/*.jsonl")])
TASK = "task addition digits=3 n=32 seed=1"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: on a shared 2-core machine extra torch threads only add waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fast_load(add3: LoadedModel, monkeypatch: pytest.MonkeyPatch,
              request: pytest.FixtureRequest) -> None:
    """`load add3` / `load bpe-numbers` (any device) give the already loaded fixtures; other
    sources load for real."""
    real = session_module.load_model

    def load(source: str, *args: Any, **kwargs: Any) -> LoadedModel:
        if source == "bpe-numbers":
            return request.getfixturevalue("bpe_numbers")
        return add3 if source == "add3" else real(source, *args, **kwargs)

    monkeypatch.setattr(session_module, "load_model", load)
    monkeypatch.setattr(replay_module, "load_model", load)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Run `workbench replay ARGS`; return exit code, the JSON lines printed, and stderr."""
    code = main(["replay", *args])
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    return code, rows, captured.err


def script(tmp_path: Path, *lines: str, name: str = "s.wb") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_prints_one_object_per_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = script(tmp_path, "# a plain-text script", "load add3", "", TASK,
                  "perf   # the full model", "ablate a0.1", "run dla", "select r1 top=3",
                  "check c1")
    code, rows, err = cli(capsys, str(path), "--json")
    assert code == 0 and err == ""
    assert [r["n"] for r in rows] == list(range(1, 8))
    assert [r["cmd"] for r in rows] == ["load add3", TASK, "perf", "ablate a0.1", "run dla",
                                        "select r1 top=3", "check c1"]
    for row in rows:
        assert set(row) == {"n", "cmd", "ok", "out"} and row["ok"] is True
    perf, check = rows[2]["out"], rows[6]["out"]
    for out in (perf, check):
        assert {"percent", "metric", "accuracy"} <= set(out)
    assert perf["percent"] == 100.0 and perf["accuracy"] == 1.0
    assert isinstance(check["percent"], float) and check["metric_name"] == "logit_diff"
    assert rows[4]["out"]["id"] == "r1" and rows[5]["out"]["id"] == "c1"


def test_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = script(tmp_path, "load add3", TASK, "perf", "run dla", "select r1 top=2",
                  "export c1 c1.json")
    code = main(["replay", str(path), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[4] == "[5] select r1 top=2: -> c1"
    assert out[5] == f"[6] export c1 c1.json: wrote {tmp_path / 'o' / 'c1.json'}"
    assert out[2].startswith("[3] perf: performance 100.0%, logit_diff ")
    assert out[2].endswith(", accuracy 1.0")
    assert out[3] == "[4] run dla: -> r1 (direct logit attribution)"


def test_a_failure_stops_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = script(tmp_path, "load add3", TASK, "ablate a9.1", "perf")
    code, rows, err = cli(capsys, str(path), "--json")
    assert code != 0
    assert len(rows) == 3  # stopped at the failure
    failed = rows[2]
    assert set(failed) == {"n", "cmd", "ok", "error"} and failed["ok"] is False
    assert failed["n"] == 3 and failed["cmd"] == "ablate a9.1"
    assert "a9.1" in failed["error"] and "\n" not in failed["error"]
    assert "command 3 failed: ablate a9.1" in err


def test_keep_going_runs_past_a_failure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = script(tmp_path, "load add3", TASK, "ablat a0.1", "ablate a0.1", "perf")
    code, rows, err = cli(capsys, str(path), "--json", "--keep-going")
    assert [r["ok"] for r in rows] == [True, True, False, True, True]
    assert "did you mean ablate?" in rows[2]["error"]
    assert rows[4]["out"]["ablated"] == ["a0.1"]
    # Issue 14: --keep-going runs on but still exits non-zero, so it can gate CI.
    assert code == 1 and "command 3 failed: ablat a0.1" in err
    assert err.splitlines()[-1] == "5 commands replayed, 1 failed, 0 differ: FAILED"


def _record(add3: LoadedModel, path: Path) -> Session:
    """A recorded session on the fixture object (no load command: the header names add3)."""
    s = Session(path, model=add3)
    for line in (TASK, "ablate a0.* pos=-1", "ablate m0", "perf", "ablat a1.0", "run dla",
                 "select r1 top=3", "check c1", "select a0.* m0 m1", "compare c1 c2", "undo",
                 "metric kl", "perf"):
        s.execute(line)
    return s


def test_recorded_digests_match_on_replay(
    add3: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rec.jsonl"
    recorded = _record(add3, path)
    code, rows, err = cli(capsys, str(path), "--json")
    assert code == 0 and "digest" not in err
    _, entries = SessionLog.read(path)
    assert [r["n"] for r in rows] == [e.n for e in entries]  # numbering as recorded
    assert [r["cmd"] for r in rows] == [e.cmd for e in entries]
    assert [r["ok"] for r in rows] == [e.ok for e in entries]  # the typo fails again, uncounted
    assert rows[-1]["out"] == recorded.outcomes[-1].out


def test_a_tampered_digest_is_reported(
    add3: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rec.jsonl"
    _record(add3, path)
    lines = path.read_text().splitlines()
    row = json.loads(lines[4])
    assert row["cmd"] == "perf"
    row["digest"] = "0123456789abcdef"
    lines[4] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    code, rows, err = cli(capsys, str(path), "--json")
    assert code != 0
    assert len(rows) == len(lines) - 1  # a mismatch does not stop the replay
    assert "digest differs at command 4 (perf): recorded 0123456789abcdef" in err


def test_replay_api_reports_mismatches_and_failures(add3: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    _record(add3, path)
    text = path.read_text().replace('"cmd": "ablate m0"', '"cmd": "ablate m7"')
    path.write_text(text)
    report = replay(path, model=add3)
    assert not report.ok and [f.cmd for f in report.failures] == ["ablate m7"]
    assert len(report.outcomes) == 3  # stopped there
    report = replay(path, model=add3, keep_going=True)
    assert len(report.failures) == 1 and len(report.outcomes) == 13
    assert report.mismatches  # later numbers differ without m0 ablated


def test_the_recorded_seed_is_used(add3: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "seed.jsonl"
    s = Session(path, model=add3, seed=3)
    example = s.execute("task addition digits=3 n=16").out["example"]  # seed= from the session
    s.execute("perf")
    report = replay(path, model=add3)
    assert report.ok and not report.mismatches
    assert report.outcomes[0].out["example"] == example


def test_tensor_results_replay_under_another_log_name(
    add3: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "eap.jsonl"
    s = Session(path, model=add3)
    for line in (TASK, "run eap", "select r1 top=20", "check c1"):
        assert s.execute(line).ok
    assert s.outcomes[1].out["tensors"] == "eap.tensors/r1.safetensors"
    code, rows, err = cli(capsys, str(path), "--json", "--log", str(tmp_path / "again.jsonl"))
    assert code == 0 and err == ""  # the tensors' location is not part of the digest
    assert rows[1]["out"]["tensors"] == "again.tensors/r1.safetensors"
    assert (tmp_path / "again.tensors" / "r1.safetensors").is_file()


def test_a_model_object_session_needs_a_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint))
    model = LoadedModel.wrap(hf, AutoTokenizer.from_pretrained(str(tiny_checkpoint)), "tiny")
    path = tmp_path / "obj.jsonl"
    s = Session(path, model=model)
    s.execute("task addition digits=3 n=8")
    s.execute("perf")
    with pytest.raises(WorkbenchError, match="does not load a model"):
        replay(path)
    report = replay(path, model=model)
    assert report.ok and not report.mismatches


def test_exports_are_written_by_replay(
    add3: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    path = script(tmp_path, "load add3", TASK, "select a0.1 m0", f"export c1 {out}/c1.dot",
                  f"export c1 {out}/c1.json")
    code, rows, err = cli(capsys, str(path), "--json")  # absolute paths: refused by default
    assert code == 1 and not out.exists()
    assert rows[-1]["error"].startswith(f"refusing to write '{out}/c1.dot': replay writes only")
    code, rows, _ = cli(capsys, str(path), "--json", "--allow-writes")  # trusted: as written
    assert code == 0 and rows[-1]["out"] == {"id": "c1", "path": f"{out}/c1.json"}
    s = Session(model=add3)
    s.execute(TASK)
    circuit = s.execute("select a0.1 m0").result
    assert (out / "c1.dot").read_text() == to_dot(circuit)
    assert json.loads((out / "c1.json").read_text())["nodes"] == [
        "input", "a0.1", "m0", "logits"]


def test_log_records_the_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = script(tmp_path, "load add3", TASK, "ablate a0.2", "run dla", "save copy.jsonl")
    log = tmp_path / "again.jsonl"
    code, _, _ = cli(capsys, str(path), "--json", "--log", str(log))
    assert code == 0
    header, entries = SessionLog.read(log)
    assert entries[0].cmd == "load add3" and len(entries) == 5
    assert SessionLog.read(tmp_path / "s.wb.replay" / "copy.jsonl")[1][:4] == entries[:4]
    code, rows, err = cli(capsys, str(log), "--json")  # the new log replays, digests agree
    assert code == 0 and err == "" and len(rows) == 5


def test_a_missing_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rows, err = cli(capsys, str(tmp_path / "nope.wb"))
    assert code == 2 and rows == [] and "does not exist" in err


def test_there_are_example_sessions() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"addition.wb", "positions.wb"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_session_replays(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """CI's replay of `sessions/`: relative export paths land in a scratch copy of the tree."""
    monkeypatch.chdir(tmp_path)
    code, rows, err = cli(capsys, str(path), "--json", "--out", str(tmp_path))
    assert code == 0, err
    assert rows and all(r["ok"] for r in rows)
    assert any("percent" in r["out"] for r in rows)
    for row in rows:
        if row["cmd"].startswith("export "):
            assert (tmp_path / row["out"]["path"]).is_file()
