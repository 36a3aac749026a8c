"""`Session.execute`: every verb of the command language v1 on the bundled `add3` model.

Each verb is driven through the one entry point with small prompt sets (n=32); outcomes are
checked against what the verb promises (DESIGN.md, "Command language v1" and "Sessions") and,
where theory fixes a number, against it: the full model is 100%, everything ablated is exactly
0%, a node circuit gives the same faithfulness at node and edge level, a user metric equal to
`prob` gives `prob`'s percentages. Every user error must come back as `ok=False` with one line
and leave the immutable `State` exactly as it was. The log is read back while the session runs,
and a dropped session is replayed from it.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from workbench.commands import VERBS
from workbench.graph import Circuit
from workbench.model import LoadedModel
from workbench.plugins import Context, Table, Technique
from workbench.replay import replay
from workbench.session import Outcome, Session
from workbench.sessionlog import SessionLog, digest_out, load_tensors
from workbench.tasks import make_task
from workbench.tasks.encode import EncodedPrompts

TASK = "task addition digits=3 n=32 seed=1"
DIGEST = re.compile(r"[0-9a-f]{16}")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: on a shared 2-core machine extra torch threads only add waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ok(session: Session, line: str) -> dict[str, Any]:
    """Execute `line`, insist it succeeded, return its JSON summary."""
    outcome = session.execute(line)
    assert outcome.ok, f"{line}: {outcome.error}"
    return outcome.out


def fails(session: Session, line: str) -> Outcome:
    """Execute `line`, insist it failed with one line and left the state untouched."""
    before = session.state
    outcome = session.execute(line)
    assert not outcome.ok, f"{line} should fail"
    assert outcome.error and "\n" not in outcome.error
    assert outcome.out == {} and outcome.digest is None
    assert session.state is before, f"{line} changed the state"
    return outcome


@pytest.fixture
def session(tmp_path: Path, add3: LoadedModel) -> Session:
    s = Session(tmp_path / "s.jsonl", model=add3, device="cpu")
    ok(s, TASK)
    return s


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory, add3: LoadedModel) -> Session:
    """A session with an ablation, a result r1 and a circuit c1, shared by the error tests."""
    s = Session(tmp_path_factory.mktemp("busy") / "busy.jsonl", model=add3, device="cpu")
    for line in (TASK, "ablate a0.1", "run dla", "select r1 top=3"):
        ok(s, line)
    return s


# -- load, task, prompts, metric ----------------------------------------------------------------


def test_load_through_the_real_loader(tmp_path: Path) -> None:
    path = tmp_path / "load.jsonl"
    s = Session(path, device="cpu")
    assert s.state.model is None
    ok(s, "help")  # logged before any model is known
    out = ok(s, "load add3 device=cpu")
    assert out["model"] == "add3" and out["layers"] == 2 and out["heads"] == 4
    assert out["device"] == "cpu" and re.fullmatch(r"[0-9a-f]{64}", out["identity"])
    assert s.state.model is not None and s.state.model.identity.sha256 == out["identity"]
    # The model's default task gives a prompt set at once, so perf works right after load.
    assert s.state.prompts is not None and s.state.prompts.recipe["task"] == "addition"
    assert ok(s, "perf")["percent"] == 100.0
    # The log is append-only: the header (written before the load) is never rewritten; the
    # load entry names the model, and replay runs it.
    header, entries = SessionLog.read(path)
    assert header.model_source is None and entries[1].out["identity"] == out["identity"]
    assert [e.cmd for e in entries] == ["help", "load add3 device=cpu", "perf"]


def test_task_with_options_and_corruption(session: Session) -> None:
    out = ok(session, "task addition digits=3 n=48 seed=2 corrupt=random_digit")
    assert out["name"] == "addition" and out["n"] == 48
    prompts = session.state.prompts
    assert prompts is not None and len(prompts) == 48
    assert prompts.recipe["corrupt"] == "random_digit" and prompts.recipe["seed"] == 2
    for pair in prompts.pairs:  # one operand digit changed, everything else equal
        assert len(pair.clean) == len(pair.corrupted) == 8
        assert sum(a != b for a, b in zip(pair.clean, pair.corrupted, strict=True)) == 1
        a, b = pair.clean[:-1].split("+")
        assert "".join(pair.answer) == f"{int(a) + int(b):04d}"
    assert out["example"] == prompts.pairs[0].clean
    assert ok(session, "perf")["accuracy"] == 1.0  # add3 is exact on held-out problems


def test_prompts_from_jsonl(session: Session, tmp_path: Path) -> None:
    prompts = make_task("addition", digits=3).prompt_set(31, seed=5, split="test")
    path = tmp_path / "mine.jsonl"
    prompts.save_jsonl(path)
    with path.open("a") as f:  # plus one written by hand: a string answer is free text
        f.write(json.dumps({"clean": "123+456=", "corrupted": "923+456=", "answer": "0579",
                            "contrast": "1379"}) + "\n")
    out = ok(session, f"prompts {path}")
    assert out["name"] == "mine" and out["n"] == 32 and out["example"] == prompts.pairs[0].clean
    last = session.state.prompts.pairs[-1] if session.state.prompts is not None else None
    assert last is not None and last.answer == ("0579",) and last.multi_token
    assert session.state.model is not None
    assert session.engine().enc.answer[-1].tolist() == session.state.model.tokenizer.encode(
        "0579", add_special_tokens=False)  # the digit tokenizer: one token per digit
    perf = ok(session, "perf")
    assert perf["percent"] == 100.0 and perf["accuracy"] == 1.0


@pytest.mark.parametrize("name", ["logit_diff", "prob", "accuracy", "kl"])
def test_every_metric_gives_100_for_the_full_model(session: Session, name: str) -> None:
    assert ok(session, f"metric {name}") == {"metric": name}
    assert session.state.metric == name
    full = ok(session, "perf")
    assert full["metric_name"] == name and full["percent"] == 100.0
    ablated = ok(session, "ablate a0.*")
    assert ablated["percent"] < 50.0
    if name == "kl":  # KL from the full model: 0 for itself, positive once heads are gone
        assert full["metric"] == 0.0 and ablated["metric"] > 0.1
    else:
        assert ablated["metric"] < full["metric"]


# -- ablate and restore -----------------------------------------------------------------------


def test_ablate_a_pattern(session: Session) -> None:
    out = ok(session, "ablate a0.*")
    assert out["ablated"] == ["a0.0", "a0.1", "a0.2", "a0.3"] and out["mode"] == "mean"
    assert [str(a.target) for a in session.state.ablations] == out["ablated"]
    assert out["percent"] < 0.0 and out["accuracy"] == 0.0  # layer-0 attention is vital
    assert ok(session, "perf") == out  # perf repeats the live numbers


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_ablation_modes(session: Session, mode: str) -> None:
    out = ok(session, f"ablate a0.1 mode={mode}")
    assert out["mode"] == mode and session.state.mode == mode
    assert session.state.ablations[0].mode == mode
    assert out["percent"] < 90.0
    # Performance % measures against the empty model of the same mode.
    engine = session.engine()
    empty = engine.perf(engine.empty_logits(mode), "logit_diff", mode).metric  # type: ignore[arg-type]
    assert out["metric_empty"] == pytest.approx(empty, abs=1e-5)


def test_modes_give_different_values_and_mode_is_sticky(session: Session) -> None:
    percents = {m: ok(session, f"ablate a0.1 mode={m}")["percent"] for m in
                ("zero", "mean", "resample")}
    assert len(set(percents.values())) == 3
    out = ok(session, "ablate a0.2")  # no mode=: the last one given (resample)
    assert out["mode"] == "resample"
    assert [a.mode for a in session.state.ablations] == ["resample", "resample"]
    out = ok(session, "ablate a0.3 mode=zero")  # earlier ablations keep their own mode
    assert out["ablated"] == ["a0.1 resample", "a0.2 resample", "a0.3"]


def test_ablate_at_one_position(session: Session) -> None:
    last = ok(session, "ablate a0.* pos=-1")
    assert last["ablated"] == ["a0.0@-1", "a0.1@-1", "a0.2@-1", "a0.3@-1"]
    # Position -1 (of BOS 123+456= 0 5 7) predicts only the units digit.
    assert last["per_digit"][:3] == [1.0, 1.0, 1.0] and last["per_digit"][3] < 0.5
    ok(session, "restore all")
    eleven = ok(session, "ablate a0.* pos=11")  # 12 tokens: -1 is position 11
    assert eleven["percent"] == last["percent"] and eleven["per_digit"] == last["per_digit"]
    fails(session, "ablate a0.0 pos=12")


def test_ablate_query_key_value_inputs(session: Session) -> None:
    out = ok(session, "ablate a1.0<q>")
    assert out["ablated"] == ["a1.0<q>"] and 90.0 < out["percent"] < 101.0
    ok(session, "restore all")
    values = ok(session, "ablate a0.*<v>")["percent"]
    ok(session, "restore all")
    queries = ok(session, "ablate a0.*<q>")["percent"]
    assert values < 0.0 < queries < 90.0  # layer 0 moves operand digits through its values


def test_an_edge_and_all_edges_into_an_input(session: Session) -> None:
    one = ok(session, "ablate a0.1->a1.0<v>")
    assert one["ablated"] == ["a0.1->a1.0<v>"]
    ok(session, "restore all")
    whole = ok(session, "ablate a1.2<v>")
    ok(session, "restore all")
    # Ablating every edge into a1.2<v> feeds it the ablated residual: the same as ablating the
    # input itself (mean mode: the mean residual is the sum of the sources' means).
    upstream = ["input", "a0.0", "a0.1", "a0.2", "a0.3", "m0"]
    edges = ok(session, "ablate " + " ".join(f"{s}->a1.2<v>" for s in upstream))
    assert len(edges["ablated"]) == 6
    assert edges["metric"] == pytest.approx(whole["metric"], abs=1e-4)
    assert whole["metric"] != pytest.approx(whole["metric_full"], abs=1e-2)


def test_ablate_a_neuron(session: Session) -> None:
    out = ok(session, "ablate m0.n3")
    assert out["ablated"] == ["m0.n3"]
    assert out["metric"] != out["metric_full"] and out["percent"] > 90.0
    fails(session, "ablate m0.n100000")


def test_restore_by_name_pattern_position_edge_and_all(session: Session) -> None:
    ok(session, "ablate a0.* a1.0<q> m1 a0.1->a1.0<v>")
    ok(session, "ablate a1.1 pos=-1")
    out = ok(session, "restore a1.0<q>")
    assert out["ablated"] == ["a0.0", "a0.1", "a0.2", "a0.3", "m1", "a0.1->a1.0<v>", "a1.1@-1"]
    assert ok(session, "restore a0.*")["ablated"] == ["m1", "a0.1->a1.0<v>", "a1.1@-1"]
    assert ok(session, "restore a1.1@-1 a0.1->a1.0<v>")["ablated"] == ["m1"]
    # Every named component must be ablated, else nothing is restored.
    assert "a0.0 is not ablated" in (fails(session, "restore m1 a0.0").error or "")
    out = ok(session, "restore all")
    assert out["ablated"] == [] and out["percent"] == 100.0 and session.state.ablations == ()


# -- perf ---------------------------------------------------------------------------------------


def test_perf_full_model_is_100(session: Session) -> None:
    out = ok(session, "perf")
    assert out["percent"] == 100.0 and out["accuracy"] == 1.0
    assert out["metric"] == out["metric_full"] == out["logit_diff"]
    assert out["per_digit"] == [1.0] * 4 and out["ablated"] == []


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_perf_with_everything_ablated(session: Session, mode: str) -> None:
    heads_and_mlps = ok(session, f"ablate a*.* m* mode={mode}")
    assert len(heads_and_mlps["ablated"]) == 10
    assert abs(heads_and_mlps["percent"]) < 25.0  # near 0; the clean embedding still flows
    # With the embedding ablated too, the residual is exactly the empty model's: 0%.
    everything = ok(session, "ablate input")
    assert everything["percent"] == pytest.approx(0.0, abs=1e-3)
    assert everything["metric"] == pytest.approx(everything["metric_empty"], abs=1e-4)


# -- run, select, check, compare, export ----------------------------------------------------------


def test_run_select_check_compare(session: Session) -> None:
    run = session.execute("run dla")
    assert run.ok and run.out["id"] == "r1" and run.out["technique"] == "dla"
    assert run.out["kind"] == "node_scores" and run.out["n"] == 11  # input, 8 heads, 2 MLPs
    assert session.state.result("r1") is run.result
    top = [name for name, _ in run.out["top"] if name not in ("input", "logits")][:3]

    c1 = ok(session, "select r1 top=3")
    assert c1["id"] == "c1" and c1["level"] == "node"
    assert set(c1["nodes"]) == {"input", "logits", *top}
    c2 = ok(session, "select a0.* m0 m1")
    assert c2["id"] == "c2" and c2["level"] == "node"
    assert c2["nodes"] == ["input", "a0.0", "a0.1", "a0.2", "a0.3", "m0", "m1", "logits"]
    circuit = session.state.circuit("c2").circuit
    assert isinstance(circuit, Circuit) and circuit.name == "c2" and c2["edges"] == len(
        circuit.edges)

    node = ok(session, "check c2")
    assert node["id"] == "c2" and node["level"] == "node" and node["mode"] == "mean"
    assert node["percent"] > 85.0  # layer-1 attention is nearly idle on addition
    edge = ok(session, "check c2 level=edge")
    assert edge["level"] == "edge"  # a node circuit holds every edge between its nodes
    assert edge["percent"] == pytest.approx(node["percent"], abs=1e-2)
    zero = ok(session, "check c2 mode=zero")
    assert zero["mode"] == "zero" and session.state.mode == "mean"  # check changes nothing
    assert ok(session, "check c1")["percent"] < node["percent"]  # DLA misses layer 0

    diff = ok(session, "compare c1 c2")
    assert set(diff["shared_nodes"]) == {"input", "logits", *(set(top) & set(c2["nodes"]))}
    assert set(diff["only_b_nodes"]) == set(c2["nodes"]) - set(c1["nodes"])
    assert set(diff["only_a_nodes"]) == set(c1["nodes"]) - set(c2["nodes"])
    assert 0.0 < diff["jaccard_nodes"] < 1.0


def test_select_by_threshold(session: Session) -> None:
    run = ok(session, "run dla")
    out = ok(session, "select r1 threshold=1.0")
    big = {name for name, score in run["top"] if abs(score) >= 1.0 and name != "input"}
    assert set(out["nodes"]) == {"input", "logits", *big}


def test_edge_scores_give_edge_level_circuits(session: Session) -> None:
    assert ok(session, "run eap")["kind"] == "edge_scores"
    out = ok(session, "select r1 top=20")
    assert out["level"] == "edge" and out["edges"] + out.get("dropped", 0) == 20
    edge = ok(session, "check c1")
    assert edge["level"] == "edge"  # the circuit's own level is the default
    node = ok(session, "check c1 level=node")
    assert node["level"] == "node" and node["percent"] != edge["percent"]


def test_export_dot_and_json(session: Session, tmp_path: Path) -> None:
    ok(session, "select a0.1 a1.0 m0")
    out = ok(session, f"export c1 {tmp_path / 'c1.dot'}")
    assert out == {"id": "c1", "path": str(tmp_path / "c1.dot")}
    dot = (tmp_path / "c1.dot").read_text()
    assert dot.startswith("digraph c1") and '"a0.1"' in dot and "m1" not in dot
    target = tmp_path / "new" / "dir" / "c1.json"  # missing folders are created, like save
    ok(session, f"export c1 {target}")
    assert Circuit.load(target) == session.state.circuit("c1").circuit


def test_export_svg_without_graphviz_is_a_clear_error(
    session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    ok(session, "select a0.1 m0")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    outcome = fails(session, f"export c1 {tmp_path / 'c1.svg'}")
    assert "Graphviz" in (outcome.error or "") and "apt-get install graphviz" in (
        outcome.error or "")
    assert not (tmp_path / "c1.svg").exists()


# -- save, undo/redo, help ----------------------------------------------------------------------


def test_save_copies_the_log(session: Session, tmp_path: Path) -> None:
    ok(session, "perf")
    target = tmp_path / "copies" / "saved.jsonl"
    out = ok(session, f"save {target}")
    assert out == {"path": str(target), "commands": 2}
    assert session.path is not None
    saved, now = target.read_text().splitlines(), session.path.read_text().splitlines()
    assert saved == now[:-1]  # everything up to, not including, the save itself


def test_save_without_a_log_file_writes_one(add3: LoadedModel, tmp_path: Path) -> None:
    s = Session(model=add3)  # a notebook session: no file
    ok(s, TASK)
    ok(s, "ablate a0.1")
    ok(s, f"save {tmp_path / 'nb.jsonl'}")
    header, entries = SessionLog.read(tmp_path / "nb.jsonl")
    assert header.model_source == "add3" and [e.cmd for e in entries] == [TASK, "ablate a0.1"]
    assert entries[1].digest == s.outcomes[1].digest


def test_undo_redo_restore_ablations_and_results(session: Session) -> None:
    start = session.state
    one = ok(session, "ablate a0.1")
    after_one = session.state
    two = ok(session, "ablate a0.2")
    after_two = session.state
    run = session.execute("run dla")
    after_run = session.state
    ok(session, "perf")  # not state-changing: undo skips it

    assert ok(session, "undo") == {"ablations": ["a0.1", "a0.2"]}
    assert session.state is after_two and session.state.results == ()
    assert ok(session, "perf")["percent"] == two["percent"]
    fails(session, "select r1 top=3")  # r1 is gone
    ok(session, "undo")
    assert session.state is after_one and ok(session, "perf")["percent"] == one["percent"]
    ok(session, "undo")
    assert session.state is start  # just after the fixture's task

    ok(session, "redo")
    ok(session, "redo")
    assert session.state is after_two
    ok(session, "redo")
    assert session.state is after_run and session.state.result("r1") is run.result
    assert fails(session, "redo").error == "nothing to redo"

    ok(session, "undo")
    ok(session, "ablate a0.3")  # a new change forgets what was undone
    assert fails(session, "redo").error == "nothing to redo"
    assert ok(session, "run dla")["id"] == "r1"  # the undone r1's id is free again
    logged = [e.cmd for e in SessionLog.read(session.path or "")[1]]
    assert logged.count("undo") == 4 and logged.count("redo") == 5


def test_undo_of_task_and_metric(session: Session) -> None:
    prompts, engine = session.state.prompts, session.engine()
    ok(session, "metric prob")
    ok(session, "task addition digits=3 n=16 seed=9")
    assert session.engine() is not engine
    ok(session, "undo")
    assert session.state.prompts is prompts and session.engine() is engine  # cached, not rebuilt
    ok(session, "undo")
    assert session.state.metric == "logit_diff"
    ok(session, "undo")
    assert session.state.prompts is None  # before the fixture's task
    assert fails(session, "undo").error == "nothing to undo"


def test_help(session: Session) -> None:
    text = ok(session, "help")["text"]
    for verb in VERBS:
        assert re.search(rf"^{verb}\b", text, re.MULTILINE), verb
    assert ok(session, "help ablate")["text"].splitlines()[0] == f"usage: {VERBS['ablate'].usage}"
    assert "did you mean perf" in (fails(session, "help perff").error or "")


# -- errors: ok=False, one line, state unchanged ------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ablat a0.1", "did you mean ablate?"),
        ("ablate a9.1", "unknown node 'a9.1'"),
        ("ablate a0.1 mode=foo", "unknown ablation mode 'foo'"),
        ("check c1 mode=foo", "unknown ablation mode 'foo'"),
        ("ablate a0.1<x>", "a port is <q>, <k> or <v>"),
        ("ablate a1.0->a0.1<q>", "not in this model's graph"),
        ("ablate a0.1 pos=0 mode=zero", "ablated twice with different modes"),
        ("run dlx", "unknown technique 'dlx': did you mean dla?"),
        ("run dla foo=1", "dla has no option 'foo'"),
        ("run dla layer=abc", "expects int"),
        ("run dla layer=7", "layer=7"),
        ("select r7 top=3", "no result r7 (results: r1)"),
        ("select r1", "select: this result holds node scores, not a circuit; give top=K"),
        ("select a0.1->a1.0<q>", "not edges"),
        ("check c9", "no circuit c9 (circuits: c1)"),
        ("compare c1 c9", "no circuit c9"),
        ("export c9 out.dot", "no circuit c9"),
        ("export c1 out.txt", "needs a suffix"),
        ("metric nope", "unknown metric 'nope'"),
        ("task addition corrupt=nope", "no corruption 'nope'"),
        ("task additon", "did you mean addition?"),
        ("task addition n=0", "n=0 must be an integer >= 1"),
        ("restore a0.2", "a0.2 is not ablated"),
        ("prompts {tmp}/missing.jsonl", "does not exist"),
        ("prompts {tmp}/bad.jsonl", "bad.jsonl:2: not valid JSON"),
        ("prompts {tmp}/fields.jsonl", "fields.jsonl:1: missing field(s) corrupted"),
        ("prompts {tmp}/prompts.txt", "is not a .jsonl file"),
        ("load {tmp}/no/such/checkpoint", "does not exist"),
        ("load add3 dtype=float64", "unknown dtype 'float64'"),
        ('perf "unclosed', "cannot read command line"),
    ],
)
def test_user_errors_leave_the_state_unchanged(
    busy: Session, tmp_path: Path, line: str, expected: str
) -> None:
    (tmp_path / "bad.jsonl").write_text(
        json.dumps({"clean": "123+456=", "corrupted": "923+456=", "answer": "0579"})
        + '\n{"clean": "1+2=", \n')
    (tmp_path / "fields.jsonl").write_text('{"clean": "1+2=", "answer": "3"}\n')
    before, n = busy.state, len(busy.outcomes)
    outcome = fails(busy, line.format(tmp=tmp_path))
    assert expected in (outcome.error or ""), outcome.error
    assert busy.state is before and outcome.n == n + 1
    assert busy.path is not None
    last = json.loads(busy.path.read_text().splitlines()[-1])  # failures are logged too
    assert last["ok"] is False and last["error"] == outcome.error and last["digest"] is None


# -- a user's metric and a user's model ---------------------------------------------------------


def test_user_metric(add3: LoadedModel) -> None:
    def answer_prob(al: Tensor, enc: EncodedPrompts) -> Tensor:  # the built-in prob, by hand
        return al.float().softmax(-1).gather(-1, enc.answer.unsqueeze(-1)).squeeze(-1).mean(-1)

    s = Session(model=add3, metrics={"mine": answer_prob})
    ok(s, TASK)
    assert ok(s, "metric mine") == {"metric": "mine"}
    full = ok(s, "perf")
    assert full["metric_name"] == "mine" and full["percent"] == 100.0
    mine = ok(s, "ablate a0.1")
    ok(s, "metric prob")
    builtin = ok(s, "perf")
    assert mine["percent"] == pytest.approx(builtin["percent"], abs=1e-3)
    assert mine["metric"] == pytest.approx(builtin["metric"], abs=1e-5)


def test_user_held_model_object(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint))
    model = LoadedModel.wrap(hf, AutoTokenizer.from_pretrained(str(tiny_checkpoint)), "tiny")
    path = tmp_path / "held.jsonl"
    s = Session(path, model=model)
    assert SessionLog.read(path)[0].model_source == "object:tiny"
    ok(s, "task addition digits=3 n=16")
    assert ok(s, "perf")["percent"] == 100.0
    assert len(ok(s, "ablate a*.*")["ablated"]) == 4  # 2 layers x 2 heads
    assert ok(s, "run dla")["id"] == "r1"


def test_the_add3_fixture_object(add3: LoadedModel, tmp_path: Path) -> None:
    s = Session(tmp_path / "f.jsonl", model=add3)
    assert s.state.model is add3 and s.outcomes == []  # nothing loaded, nothing logged yet
    assert SessionLog.read(tmp_path / "f.jsonl")[0].model_sha256 == add3.identity.sha256


# -- the session file ---------------------------------------------------------------------------


def test_log_is_written_after_every_command(add3: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    s = Session(path, model=add3, seed=3)
    head = json.loads(path.read_text().splitlines()[0])
    assert head["type"] == "header" and head["format"] == 2 and head["workbench"]
    assert head["model"] == {"source": "add3", "sha256": add3.identity.sha256}
    assert head["device"] == "cpu" and head["seed"] == 3 and head["created"]
    lines = [TASK, "  # a comment is not a command", "", "ablate a0.1  # why", "ablat a0.2",
             "run dla"]
    logged = 0
    for line in lines:
        outcome = s.execute(line)
        logged += outcome.n != 0
        rows = [json.loads(x) for x in path.read_text().splitlines()]  # read back mid-session
        assert len(rows) == 1 + logged
        if outcome.n == 0:
            continue
        row = rows[-1]
        assert set(row) == {"type", "n", "cmd", "ok", "out", "error", "digest", "seconds",
                            "check"}
        assert row["type"] == "command" and row["n"] == outcome.n == logged
        assert row["cmd"] == outcome.cmd and row["ok"] is outcome.ok
        assert isinstance(row["seconds"], float) and row["seconds"] >= 0.0
        if outcome.ok:
            # The log keeps floats to 6 decimals; the digest is of the summary as stored.
            rounded = json.loads(json.dumps(outcome.out), parse_float=lambda x: round(float(x), 6))
            assert row["out"] == rounded and row["error"] is None
            assert DIGEST.fullmatch(row["digest"]) and row["digest"] == digest_out(row["out"])
        else:
            assert row["out"] == {} and row["error"] == outcome.error and row["digest"] is None
    assert [json.loads(x)["cmd"] for x in path.read_text().splitlines()[1:]] == [
        TASK, "ablate a0.1", "ablat a0.2", "run dla"]  # canonical text, comments dropped


@dataclass(frozen=True)
class _NoParams:
    pass


def _toy_table(ctx: Context, params: _NoParams) -> Table:
    return Table("toy", ("a", "b"), ("x", "y", "z"), torch.arange(6.0).view(2, 3))


TOY = Technique(name="toy", title="a table", Params=_NoParams, run=_toy_table)


def test_tensors_beside_the_log(add3: LoadedModel, tmp_path: Path) -> None:
    digests = []
    for name in ("one", "two"):
        s = Session(tmp_path / f"{name}.jsonl", model=add3, registry={"toy": TOY})
        ok(s, TASK)
        run = s.execute("run toy")
        assert run.ok and run.out["tensors"] == f"{name}.tensors/r1.safetensors"
        stored = load_tensors(tmp_path / f"{name}.jsonl", run.out["tensors"])
        assert torch.equal(stored["values"], torch.arange(6.0).view(2, 3))
        digests.append(run.digest)
    assert digests[0] == digests[1]  # where tensors are stored is not part of the result


def test_a_dropped_session_replays_from_its_file(add3: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "crash.jsonl"
    s = Session(path, model=add3)
    for line in (TASK, "ablate a0.* pos=-1", "ablate m0.n3", "restore a0.1@-1", "run dla",
                 "select r1 top=4", "check c1", "undo", "ablate a1.0<k>", "perf"):
        s.execute(line)
    last_perf = s.outcomes[-1].out
    n = len(s.outcomes)
    del s  # no close, no flush: the file must already hold everything
    gc.collect()
    report = replay(path, model=add3)
    assert report.ok and not report.mismatches and len(report.outcomes) == n
    assert report.outcomes[-1].out == last_perf
    assert report.session is not None
    assert [str(a.target) for a in report.session.state.ablations] == [
        "a0.0@-1", "a0.2@-1", "a0.3@-1", "m0.n3", "a1.0<k>"]


def test_engines_of_other_models_and_old_prompt_sets_are_released() -> None:
    """Cached runs are GBs at GPT-2 XL: a session keeps the engines of the last
    `ENGINES_KEPT` prompt sets of the current model only, and undo rebuilds an evicted one
    with the same numbers."""
    from workbench.session import ENGINES_KEPT

    s = Session()
    assert s.execute("load add3 device=cpu").ok
    assert s.execute("task addition digits=3 n=16").ok
    first = s.execute("ablate a1.0").out["percent"]
    prompts = s.state.prompts
    for seed in range(ENGINES_KEPT + 1):
        assert s.execute(f"task addition digits=3 n=16 seed={seed + 1}").ok
        assert s.execute("perf").ok
    assert len(s._engines) == ENGINES_KEPT
    assert s.execute("load mul2 device=cpu").ok and s.execute("perf").ok
    assert [m.card.name for m, _, _ in s._engines.values()] == ["mul2"]
    gc.collect()
    while s.state.prompts is not prompts:
        assert s.execute("undo").ok
    assert s.state.model is not None and s.state.model.card.name == "add3"
    assert s.execute("perf").out["percent"] == first  # rebuilt: the same numbers
