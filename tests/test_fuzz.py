"""Fuzz tests (Hypothesis): the parser, the session-file loader, the prompt-file loader and
`Session.execute` on random lines and files.

Property: nothing but `WorkbenchError` escapes the loaders and the parser, `Session.execute`
never raises and never reports an internal error, and a failed command leaves the state, the
undo stack and the log's earlier lines exactly as they were. Each test is bounded (a fixed
number of examples, derandomized so CI tries the same cases every run, a few seconds each).
Run `pytest tests/test_fuzz.py --hypothesis-show-statistics` to see the cases tried.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from workbench.commands import VERBS, parse
from workbench.errors import WorkbenchError
from workbench.files import Writes
from workbench.model import LoadedModel
from workbench.session import Session
from workbench.sessionlog import Entry, Header, SessionLog, digest, is_jsonl_session, read_script
from workbench.tasks import PromptSet

BOUNDED = settings(derandomize=True, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])

# Words a user (or an attacker) might type: real names, near misses, odd numbers, odd scripts.
WORDS = st.sampled_from([
    "a0.1", "a0.0", "a1.3", "a9.9", "m0", "m1", "m*", "a0.*", "a*.*", "a*.1", "input", "logits",
    "a0.1<q>", "a0.1<k>@-1", "a0.0->a1.2<v>", "m0->logits", "L0H1", "0.1", "a０.1", "a0.١",
    "r1", "r2", "c1", "c2", "r0", "all", "dla", "eap", "patch", "logit_lens", "attn", "nope",
    "addition", "multiplication", "sequence", "greater_than", "logit_diff", "kl", "prob",
    "x" * 300, "..", "../x.dot", "/etc/passwd", "out/c.json", "c.dot", "s.jsonl", "p.jsonl",
    "\x00", "\u202e", "日本", "#", '"', "'", "\\", "=", "==",
])
VALUES = st.sampled_from([
    "0", "1", "3", "-1", "8", "nan", "inf", "-inf", "1e999", "1e-300", "１", "0x10", "1_0",
    "99999999999999999999", "mean", "zero", "resample", "cpu", "true", "false", "none", "",
    "node", "edge", "random_digit",
])
KEYS = st.sampled_from(["n", "seed", "mode", "pos", "top", "threshold", "tau", "steps",
                        "digits", "metric", "corrupt", "level", "device", "dtype", "k",
                        "batch_size", "replicas", "bogus"])
OPTION = st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES)
# Verbs that touch no model files and finish fast on 8 prompts (load is fuzzed by name only).
FAST_VERBS = [v for v in VERBS if v not in ("load",)] + ["lod", "RUN", "sae"]
LINE = st.one_of(
    st.builds(lambda v, ws: " ".join([v, *ws]), st.sampled_from(FAST_VERBS),
              st.lists(st.one_of(WORDS, OPTION), max_size=5)),
    st.text(max_size=80),
)

# The cheap techniques `run` may pick (the expensive ones have their own tests).
CHEAP = {"dla", "logit_lens", "attn", "eap", "patch"}


@settings(BOUNDED, max_examples=400)
@given(LINE)
def test_parser_raises_only_workbench_errors_and_round_trips(line: str) -> None:
    try:
        cmd = parse(line)
    except WorkbenchError as exc:
        assert "\n" not in str(exc) and len(str(exc)) <= 1000
        return
    if cmd is not None:
        assert parse(cmd.text) == cmd  # canonical text parses back to the same command


def _header_line() -> str:
    return json.dumps(Header(workbench="0.1.0", model_source="add3", seed=0).to_json())


def _entry_line(n: int) -> str:
    return json.dumps(Entry(n, "perf", True, {"percent": 100.0}, None, digest({}), 0.1).to_json())


JSON_ATOM = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                      st.text(max_size=10))
JSON_VALUE = st.recursive(JSON_ATOM, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8)


def _mutated_lines(draw: st.DrawFn, lines: list[str]) -> list[str]:
    """Valid lines with a few random edits: a line dropped, replaced, cut, or a field changed."""
    for _ in range(draw(st.integers(0, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "cut", "replace", "field", "swap"]))
        if action == "drop":
            lines.pop(i)
        elif action == "cut":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif action == "replace":
            lines[i] = draw(st.text(max_size=40))
        elif action == "swap" and len(lines) > 1:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            try:
                obj = json.loads(lines[i])
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and obj:
                key = draw(st.sampled_from(sorted(obj)))
                obj[key] = draw(JSON_VALUE)
                lines[i] = json.dumps(obj)
    return lines


@st.composite
def session_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "text", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    lines = [_header_line(), *(_entry_line(n) for n in range(1, draw(st.integers(0, 3)) + 1))]
    return ("\n".join(_mutated_lines(draw, lines)) + draw(st.sampled_from(["\n", ""]))
            ).encode()


@settings(BOUNDED, max_examples=300)
@given(session_files())
def test_session_file_loader_raises_only_workbench_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "s.jsonl"
    path.write_bytes(data)
    try:
        if is_jsonl_session(path):
            header, entries = SessionLog.read(path)
            assert isinstance(header, Header) and all(isinstance(e, Entry) for e in entries)
            problems = SessionLog.verify(path)
            assert all(isinstance(p, str) and "\n" not in p for p in problems)
            SessionLog(path).append(Entry(len(entries) + 1, "perf", True, {}, None, None, 0.0))
            assert SessionLog.read(path)[1][:len(entries)] == entries  # old lines kept
        else:
            assert isinstance(read_script(path), list)
    except WorkbenchError as exc:
        assert "\n" not in str(exc)


@st.composite
def prompt_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "mutated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    good = [json.dumps({"clean": "123+456=", "corrupted": "923+456=", "answer": "0579",
                        "contrast": "1579"}) for _ in range(draw(st.integers(1, 3)))]
    return "\n".join(_mutated_lines(draw, good)).encode("utf-8", "surrogatepass")


@settings(BOUNDED, max_examples=300)
@given(prompt_files())
def test_prompt_file_loader_raises_only_workbench_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(data)
    try:
        prompts = PromptSet.load_jsonl(path)
    except WorkbenchError as exc:
        assert "\n" not in str(exc)
        return
    assert len(prompts) >= 1


@pytest.fixture(scope="module")
def fuzz_session(add3: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Session:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "p.jsonl").write_text(json.dumps({"clean": "123+456=", "corrupted": "923+456=",
                                              "answer": "0579"}) + "\n")
    s = Session(root / "s.jsonl", model=add3, registry=None)
    s.registry = {k: v for k, v in s.registry.items() if k in CHEAP}
    s.writes = Writes.under(root)  # `save`/`export` of random paths stay in the scratch folder
    assert s.execute("task addition digits=3 n=8").ok
    return s


@settings(BOUNDED, max_examples=200)
@given(st.lists(LINE, min_size=1, max_size=4))
def test_execute_never_raises_and_a_failure_changes_nothing(
    fuzz_session: Session, monkeypatch: pytest.MonkeyPatch, lines: list[str]
) -> None:
    s = fuzz_session
    monkeypatch.setenv("WORKBENCH_MAX_PROMPTS", "16")  # `task n=` stays cheap
    monkeypatch.chdir(s.writes.root)  # `prompts p.jsonl` finds the scratch file
    assert s.path is not None
    for line in lines:
        before, undo, redo = s.state, list(s.undo_stack), list(s.redo_stack)
        logged = s.path.read_bytes()
        outcome = s.execute(line)
        event(f"{(line.split() or ['blank'])[0][:8]!r} ok={outcome.ok}")
        if outcome.n:
            assert s.path.read_bytes().startswith(logged)  # append-only
        if outcome.ok:
            continue
        assert outcome.error and "\n" not in outcome.error and len(outcome.error) <= 1000
        assert "internal error" not in outcome.error, (line, outcome.error)
        assert s.state is before and s.undo_stack == undo and s.redo_stack == redo
    s.execute("restore all")
