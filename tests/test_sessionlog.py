"""Session log: JSONL round trip, atomic writes, line-numbered errors, stable digests, plain
scripts, safetensors beside the log and the default session path."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.sessionlog import (
    Entry,
    Header,
    SessionLog,
    default_session_path,
    digest,
    is_jsonl_session,
    load_tensors,
    read_script,
    save_tensors,
)

HEADER = Header(
    workbench="0.1.0",
    model_source="add3",
    model_sha256="ab" * 32,
    device="cpu",
    seed=0,
    created="2025-01-02T03:04:05+00:00",
)
ENTRIES = [
    Entry(1, "load add3 device=cpu", True, {"model": "add3"}, None, "0123456789abcdef", 0.5),
    Entry(2, "perf", True, {"percent": 100.0, "metric": 3.25, "accuracy": 0.98}, None, "d1", 0.01),
    Entry(3, "ablat a9.1", False, {}, "unknown command 'ablat': did you mean ablate?", None, 0.0),
]


def _write_log(path: Path) -> SessionLog:
    log = SessionLog(path)
    log.start(HEADER)
    for entry in ENTRIES:
        log.append(entry)
    return log


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "s.jsonl"  # parent dirs are created
    log = _write_log(path)
    assert log.header() == HEADER
    assert log.entries() == ENTRIES
    assert SessionLog.read(path) == (HEADER, ENTRIES)
    assert SessionLog(path).entries() == ENTRIES  # a fresh object reads the file


def test_file_format(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write_log(path)
    lines = path.read_text("utf-8").splitlines()
    assert len(lines) == 1 + len(ENTRIES)
    head = json.loads(lines[0])
    assert head.pop("check") == digest(head)  # the line's own integrity digest
    assert head == {
        "type": "header",
        "format": 2,
        "workbench": "0.1.0",
        "model": {"source": "add3", "sha256": "ab" * 32},
        "device": "cpu",
        "seed": 0,
        "created": "2025-01-02T03:04:05+00:00",
    }
    second = json.loads(lines[2])
    assert second["type"] == "command"
    assert second["n"] == 2 and second["cmd"] == "perf" and second["ok"] is True
    assert second["out"]["percent"] == 100.0 and second["error"] is None


def test_header_defaults_record_creation_time() -> None:
    header = Header(workbench="0.1.0")
    assert header.format == 2
    assert datetime.fromisoformat(header.created).tzinfo is not None


def test_start_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    log = _write_log(path)
    log.start(HEADER)
    assert SessionLog.read(path) == (HEADER, [])


def test_appending_to_an_existing_log(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write_log(path)
    extra = Entry(4, "undo", True, {}, None, None, 0.0)
    SessionLog(path).append(extra)
    assert SessionLog.read(path)[1] == [*ENTRIES, extra]


def test_append_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="has not been started"):
        SessionLog(tmp_path / "none.jsonl").append(ENTRIES[0])


def test_writes_leave_no_temp_files(tmp_path: Path) -> None:
    _write_log(tmp_path / "s.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]


def test_failed_start_keeps_old_content_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.jsonl"
    log = _write_log(path)
    before = path.read_bytes()

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(WorkbenchError, match="cannot write .*disk full"):
        log.start(HEADER)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"]
    assert log.entries() == ENTRIES


def test_append_only_in_fact(tmp_path: Path) -> None:
    """Appending never rewrites a written line: the old bytes are a prefix of the new file."""
    path = tmp_path / "s.jsonl"
    _write_log(path)
    before = path.read_bytes()
    inode = path.stat().st_ino
    SessionLog(path).append(Entry(4, "perf", True, {}, None, digest({}), 0.0))
    assert path.read_bytes().startswith(before) and path.stat().st_ino == inode
    assert SessionLog.verify(path) == []


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write_log(path)
    whole = path.read_bytes()
    with path.open("ab") as f:
        f.write(b'{"type": "command", "n": 4, "cmd": "pe')  # a crash mid-append
    assert SessionLog.read(path) == (HEADER, ENTRIES)  # readers ignore the torn line
    extra = Entry(4, "undo", True, {}, None, digest({}), 0.0)
    SessionLog(path).append(extra)
    assert path.read_bytes().startswith(whole)
    assert SessionLog.read(path)[1] == [*ENTRIES, extra] and SessionLog.verify(path) == []


def test_verify_reports_an_edited_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    _write_log(path)
    lines = path.read_text().splitlines()
    row = json.loads(lines[2])
    row["out"]["percent"] = 99.0  # edited, digest and check left alone
    lines[2] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    assert SessionLog.verify(path) == [f"{path}, line 3: it was edited after it was written "
                                       "(its check digest differs)"]


def test_nan_in_out_is_refused(tmp_path: Path) -> None:
    log = SessionLog(tmp_path / "s.jsonl")
    log.start(HEADER)
    with pytest.raises(WorkbenchError, match="cannot log command 1"):
        log.append(Entry(1, "perf", True, {"percent": float("nan")}, None, None, 0.0))
    assert log.entries() == []


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"type": "banana"}', "unknown line type 'banana'"),
        ('{"type": "command", "n": 4}', "missing field 'cmd'"),
        (
            '{"type": "command", "n": "4", "cmd": "perf", "ok": true, "out": {}, '
            '"error": null, "digest": null, "seconds": 0}',
            "field 'n' has the wrong type (str)",
        ),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = tmp_path / "s.jsonl"
    _write_log(path)
    with path.open("a", encoding="utf-8") as f:
        f.write(bad_line + "\n")
    with pytest.raises(WorkbenchError) as info:
        SessionLog.read(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 5: ")
    assert reason in message


def test_first_line_must_be_header(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(ENTRIES[0].to_json()) + "\n")
    with pytest.raises(WorkbenchError, match=r"line 1: the first line must be the header"):
        SessionLog.read(path)


def test_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({**HEADER.to_json(), "format": 3}) + "\n")
    with pytest.raises(WorkbenchError, match="session format 3 is newer"):
        SessionLog.read(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="no such session file"):
        SessionLog.read(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(WorkbenchError, match="empty session file"):
        SessionLog.read(tmp_path / "empty.jsonl")


def test_digest_ignores_key_order_and_float_noise() -> None:
    a = {"percent": 87.123456, "scores": [0.1, 0.2, (1, 2)], "id": "r1"}
    b = {"id": "r1", "scores": [0.1 + 1e-12, 0.2, [1, 2]], "percent": 87.1234560000001}
    assert digest(a) == digest(b)
    assert len(digest(a)) == 16
    assert all(ch in "0123456789abcdef" for ch in digest(a))
    assert digest({"x": -0.0}) == digest({"x": 0.0})


def test_digest_changes_with_real_changes() -> None:
    base = {"percent": 87.12, "nodes": ["a9.1", "m3"]}
    assert digest(base) != digest({"percent": 87.13, "nodes": ["a9.1", "m3"]})
    assert digest(base) != digest({"percent": 87.12, "nodes": ["a9.1"]})
    assert digest(base) != digest({"percent": 87.12, "nodes": ["m3", "a9.1"]})
    assert digest(1) != digest(True)
    assert digest([1.0]) != digest([1.001])


def test_digest_of_tensor_matches_list() -> None:
    torch = pytest.importorskip("torch")
    assert digest({"s": torch.tensor([0.5, 0.25])}) == digest({"s": [0.5, 0.25]})


def test_plain_script(tmp_path: Path) -> None:
    path = tmp_path / "s.wb"
    path.write_text(
        "# find the adder\n\nload add3 device=cpu\n  task addition n=8  \n# end\nperf\n"
    )
    assert not is_jsonl_session(path)
    assert read_script(path) == ["load add3 device=cpu", "task addition n=8", "perf"]
    log_path = tmp_path / "s.jsonl"
    _write_log(log_path)
    assert is_jsonl_session(log_path)


def test_tensors_round_trip(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    log_path = tmp_path / "run1.jsonl"
    scores = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()  # non-contiguous
    ref = save_tensors(log_path, "r1", {"scores": scores, "mask": torch.tensor([True, False])})
    assert ref == "run1.tensors/r1.safetensors"
    assert (tmp_path / ref).is_file()
    assert sorted(p.name for p in (tmp_path / "run1.tensors").iterdir()) == ["r1.safetensors"]
    for key in (ref, "r1"):
        back = load_tensors(log_path, key)
        assert torch.equal(back["scores"], scores)
        assert torch.equal(back["mask"], torch.tensor([True, False]))


def test_tensor_names_and_refs_are_checked(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    log_path = tmp_path / "s.jsonl"
    with pytest.raises(WorkbenchError, match="bad tensor file name"):
        save_tensors(log_path, "../evil", {"x": torch.zeros(1)})
    with pytest.raises(WorkbenchError, match="outside"):
        load_tensors(log_path, "../other.safetensors")
    with pytest.raises(WorkbenchError, match="missing tensor file"):
        load_tensors(log_path, "r9")


def test_default_session_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    when = datetime(2025, 3, 4, 5, 6, 7)
    path = default_session_path(when)
    assert path == tmp_path / "sessions" / "20250304-050607.jsonl"
    SessionLog(path).start(HEADER)
    assert default_session_path(when) == tmp_path / "sessions" / "20250304-050607-2.jsonl"


def test_default_session_path_uses_user_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    platformdirs = pytest.importorskip("platformdirs")
    monkeypatch.delenv("WORKBENCH_HOME", raising=False)
    path = default_session_path()
    assert path.parent == Path(platformdirs.user_data_dir("circuit-workbench")) / "sessions"
    assert path.suffix == ".jsonl"


def test_sessionlog_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, workbench.sessionlog; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
