"""One metric contract for every method (issue 13): custom metrics, l2, directions, EAP's sides.

The "Done when" checks: a session metric `mine` = minus the logit difference gives exactly the
negated EAP scores of `metric=logit_diff`, and every scoring technique reports the metric it
used; `metric l2` exists and ACDC runs under it. Plus the contract's edges: two- and
three-argument functions, declared directions, one-line errors, and EAP on a metric whose
gradient vanishes at the clean run (refused, with the corrupted side checked against autograd).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import Tensor

from plugins.eap import edge_attribution
from workbench.ablation import AblationEngine
from workbench.errors import WorkbenchError
from workbench.metrics import (
    BUILTIN_METRICS,
    METRICS,
    Metric,
    as_metric,
    get_metric,
    l2_per_prompt,
    logit_diff_per_prompt,
)
from workbench.model import LoadedModel
from workbench.session import Session
from workbench.tasks.encode import EncodedPrompts

TASK = "task addition digits=3 n=16 seed=3"


def minus_logit_diff(logits: Tensor, enc: EncodedPrompts) -> Tensor:
    return -logit_diff_per_prompt(logits, enc)


def ok(s: Session, line: str) -> dict:
    outcome = s.execute(line)
    assert outcome.ok, f"{line}: {outcome.error}"
    return outcome.out


@pytest.fixture(scope="module")
def mine() -> Session:
    s = Session(model="add3", metrics={"mine": minus_logit_diff})
    ok(s, TASK)
    ok(s, "metric mine")
    return s


def test_session_metric_negates_eap_exactly(mine: Session) -> None:
    ours = mine.execute("run eap")
    builtin = mine.execute("run eap metric=logit_diff")
    assert ours.ok and builtin.ok
    assert ours.out["metric"] == "mine" and builtin.out["metric"] == "logit_diff"
    assert torch.equal(ours.result.values, -builtin.result.values)
    assert builtin.result.values.abs().max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("line", [
    "run eap_ig steps=2", "run acdc tau=0.5", "run mask steps=3 batch_size=8",
    "run prune thresholds=80 orders=0", "run patch site=head_out",
    "run path_patch senders=a0.* receivers=logits", "run ablate_each nodes=a1.*",
])
def test_every_scoring_technique_reports_the_session_metric(mine: Session, line: str) -> None:
    assert ok(mine, line)["metric"] == "mine"


def test_metric_option_overrides_the_session_metric(mine: Session) -> None:
    for line in ["run acdc tau=0.5 metric=kl", "run patch site=head_out metric=prob",
                 "run prune thresholds=80 orders=0 metric=logit_diff"]:
        assert ok(mine, line)["metric"] == line.rsplit("=", 1)[1]
    assert ok(mine, "perf metric=prob")["metric_name"] == "prob"
    assert ok(mine, "perf")["metric_name"] == "mine"
    bad = mine.execute("run eap metric=nope")
    assert not bad.ok and bad.error == (
        "unknown metric 'nope': choose one of logit_diff, prob, accuracy, kl, l2, prob_diff, "
        "mine")


def test_mine_performance_equals_logit_diff_performance(mine: Session) -> None:
    ok(mine, "ablate a0.1")
    try:
        a, b = ok(mine, "perf"), ok(mine, "perf metric=logit_diff")
        assert a["percent"] == pytest.approx(b["percent"], abs=1e-4)
        assert a["metric"] == pytest.approx(-b["metric"], abs=1e-5)
    finally:
        ok(mine, "restore all")


def test_acdc_runs_under_l2(add3: LoadedModel) -> None:
    s = Session(model=add3)
    ok(s, TASK)
    assert ok(s, "metric l2") == {"metric": "l2"}
    full = ok(s, "perf")
    assert full["metric_full"] == 0.0 and full["metric_empty"] > 0 and full["percent"] == 100.0
    out = ok(s, "run acdc tau=0.05")
    assert out["metric"] == "l2" and out["kind"] == "circuit" and out["edges"] > 0
    assert "l2" in out["title"]


def test_l2_uses_centred_logits() -> None:
    torch.manual_seed(0)
    clean = torch.randn(3, 2, 11)
    run = torch.randn(3, 2, 11)
    by_hand = ((run - run.mean(-1, keepdim=True)) - (clean - clean.mean(-1, keepdim=True))) \
        .pow(2).sum(-1).mean(-1)
    torch.testing.assert_close(l2_per_prompt(run, clean), by_hand)
    shifted = run + torch.randn(3, 2, 1)  # a constant per position (compatibility mode's fold)
    torch.testing.assert_close(l2_per_prompt(shifted, clean), by_hand)
    assert l2_per_prompt(clean, clean).abs().max() == 0.0
    l2 = BUILTIN_METRICS["l2"]
    assert l2.direction == "lower" and l2.flat_at_clean and l2.worse_by(0.0, 1.0) == 1.0


def test_builtins_declare_their_direction() -> None:
    assert METRICS == ("logit_diff", "prob", "accuracy", "kl", "l2", "prob_diff")
    lower = {name for name, m in BUILTIN_METRICS.items() if m.direction == "lower"}
    assert lower == {"kl", "l2"}
    assert not BUILTIN_METRICS["accuracy"].differentiable
    from workbench.commands import METRICS as PARSED

    assert set(PARSED) == set(METRICS)  # the parser's did-you-mean list knows every built-in


def test_two_and_three_argument_functions_and_metric_objects(add3: LoadedModel) -> None:
    def three(logits: Tensor, enc: EncodedPrompts, clean: Tensor) -> Tensor:
        return (logits - clean).abs().sum((-1, -2))  # distance to the clean model, lower better

    s = Session(model=add3, metrics={
        "two": minus_logit_diff, "three": Metric("three", three, "lower"),
        "plain3": three,
    })
    ok(s, TASK)
    assert s.metrics["two"].direction == "higher" and s.metrics["three"].direction == "lower"
    for name in ("two", "three", "plain3"):
        ok(s, f"metric {name}")
        assert ok(s, "perf")["percent"] == 100.0
    ok(s, "metric three")
    ok(s, "ablate a1.*")
    out = ok(s, "perf")
    assert out["metric"] > out["metric_full"] == 0.0 and 0 <= out["percent"] < 100


def test_a_metric_of_the_wrong_shape_is_one_line(add3: LoadedModel) -> None:
    s = Session(model=add3, metrics={"scalar": lambda logits, enc: logits.mean()})
    ok(s, TASK)
    ok(s, "metric scalar")
    bad = s.execute("perf")
    assert not bad.ok and bad.error == (
        "metric scalar returned (): a metric gives one value per prompt, a tensor of shape (16,)")
    with pytest.raises(WorkbenchError, match="not a function"):
        as_metric("x", 3)  # type: ignore[arg-type]
    with pytest.raises(WorkbenchError, match="unknown metric 'x'"):
        get_metric("x")


def test_eap_refuses_a_metric_flat_at_the_clean_run(add3: LoadedModel) -> None:
    s = Session(model=add3)
    ok(s, TASK)
    for name in ("kl", "l2"):
        bad = s.execute(f"run eap metric={name}")
        assert not bad.ok and "\n" not in (bad.error or "")
        assert bad.error == (
            f"eap: {name} is minimal at the clean run, so its gradient there is zero and the "
            f"scores would be noise; use run eap metric={name} side=corrupted (gradients at the "
            f"ablated input) or run eap_ig metric={name}")
        assert ok(s, f"run eap metric={name} side=corrupted")["metric"] == name
        assert ok(s, f"run eap_ig metric={name} steps=2")["metric"] == name
    assert not s.execute("run eap metric=accuracy").ok


@pytest.mark.parametrize("name", ["kl", "l2", "logit_diff"])
def test_corrupted_side_eap_is_the_mask_gradient_of_the_swapped_run(
        add3: LoadedModel, name: str) -> None:
    """side=corrupted = (out_corrupted - out_clean) . dM/d(receiver input) at the corrupted run,
    which is the keep-gradient at keep = 1 of an engine whose base run is the corrupted prompts
    and whose resample values are the clean run (autograd through the edge forward)."""
    from workbench.tasks import make_task
    from workbench.tasks.encode import encode

    enc = encode(make_task("addition", digits=3).prompt_set(8, seed=5), add3.tokenizer)
    engine = AblationEngine(add3, enc)
    fn = get_metric(name)
    ours = edge_attribution(engine, fn, "resample", at=0.0)
    swapped = AblationEngine(add3, dataclasses.replace(enc, clean=enc.corrupted,
                                                       corrupted=enc.clean))
    keep = torch.ones(engine.graph.n_edges, requires_grad=True)
    with torch.enable_grad():
        logits = swapped.edge_logits(keep, "resample")
        fn.per_prompt(logits, engine.enc, engine.clean_logits).mean().backward()
    assert keep.grad is not None and keep.grad.abs().max() > 1e-4
    torch.testing.assert_close(ours, keep.grad, atol=1e-5, rtol=1e-3)


# -- select on circuits and connectivity -------------------------------------------------------


@pytest.mark.parametrize("line", [
    "run acdc tau=0.5", "run mask steps=3 batch_size=8 target_edges=10",
    "run prune thresholds=80 orders=0",
])
def test_select_takes_a_circuit_result_as_it_is(mine: Session, line: str) -> None:
    rid = ok(mine, line)["id"]
    out = ok(mine, f"select {rid}")
    result = mine.state.result(rid)
    found = result.circuit if hasattr(result, "circuit") else result.parts[0][1].circuit
    circuit = mine.state.circuit(out["id"]).circuit
    assert (circuit.nodes, circuit.edges) == (found.nodes, found.edges) and out["edges"] > 0
    again = ok(mine, f"select {rid} top=1")  # old session files: accepted, said to be unused
    assert again["edges"] == out["edges"] and "not used" in again["note"]


def test_select_on_scores_still_needs_top_or_threshold(mine: Session) -> None:
    rid = ok(mine, "run eap")["id"]
    bad = mine.execute(f"select {rid}")
    assert not bad.ok and bad.error == (
        "select: this result holds edge scores, not a circuit; give top=K or threshold=T")


def test_select_top_drops_edges_cut_off_from_input_or_logits(mine: Session) -> None:
    import networkx as nx

    rid = ok(mine, "run eap metric=logit_diff")["id"]
    scores = mine.state.result(rid)
    top = [e for e, _ in scores.ranked()[:40]]
    out = ok(mine, f"select {rid} top=40")
    circuit = mine.state.circuit(out["id"]).circuit
    assert out["edges"] + out["dropped"] == 40 and out["dropped"] > 0
    g = nx.DiGraph([e.ends()[:2] for e in top])
    for edge in top:  # brute force: on a path input -> src -> dst -> logits, or dropped
        src, dst, _ = edge.ends()
        on_path = (src == "input" or nx.has_path(g, "input", src)) and (
            dst == "logits" or nx.has_path(g, dst, "logits"))
        assert (edge in circuit) == on_path, edge
    threshold = abs(scores.ranked()[40][1])
    by_threshold = ok(mine, f"select {rid} threshold={threshold}")
    assert by_threshold["edges"] + by_threshold.get("dropped", 0) >= 40
