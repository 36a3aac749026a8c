"""Direct logit attribution on `add3`: the contributions are an exact decomposition.

1. Component mode: input + every head + every MLP + `extra["bias"]` == the logit-difference
   metric of the clean run (all digits, and one digit with `digit=1`), checked against the
   bridge's own logits as well as the engine's.
2. Neuron mode (`layer=1`): neurons + bias + rest_of_model + other_neurons == the same metric,
   and the pieces agree with component mode (m1 = its neurons + its output bias).
3. Bad parameters fail with one clear line; `select_circuit` keeps the top |scores|.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from plugins.dla import TECHNIQUE, Params, run
from workbench.ablation import AblationEngine
from workbench.errors import WorkbenchError
from workbench.graph import INPUT, LOGITS, Circuit, parse_node
from workbench.metrics import answer_logits, logit_diff_per_prompt
from workbench.model import LoadedModel
from workbench.plugins import Context, NodeScores, load_registry, select_circuit
from workbench.tasks import make_task
from workbench.tasks.encode import encode

RTOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small forwards on a shared 2-core machine: one thread is faster. Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ctx(add3: LoadedModel) -> Context:
    prompts = make_task("addition", digits=3).prompt_set(64, seed=1)
    enc = encode(prompts, add3.tokenizer)
    engine = AblationEngine(add3, enc)
    return Context(model=add3, prompts=prompts, enc=engine.enc, metric="logit_diff",
                   mode="mean", graph=engine.graph, engine=engine)


def logit_diffs(ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, n_answer) logit(answer) - logit(contrast) from the bridge, and the 0/1 mask of
    positions where answer and contrast differ (the metric leaves the others out)."""
    al = answer_logits(ctx.model.logits(ctx.enc.clean), ctx.enc)
    diff = (al.gather(-1, ctx.enc.answer.unsqueeze(-1))
            - al.gather(-1, ctx.enc.contrast.unsqueeze(-1))).squeeze(-1)
    return diff, (ctx.enc.answer != ctx.enc.contrast).float()


def total(result: NodeScores, *extra: str) -> float:
    return sum(result.scores.values()) + sum(result.extra[k] for k in ("bias", *extra))


def test_registered_under_its_short_name() -> None:
    assert load_registry(("plugins.dla",))["dla"] is TECHNIQUE
    assert TECHNIQUE.params({"digit": "1", "layer": "0"}) == Params(layer=0, digit=1)


def test_contributions_sum_to_logit_diff(ctx: Context) -> None:
    result = run(ctx, Params())
    assert set(result.scores) == {str(n) for n in ctx.graph.sources}  # input, heads, MLPs
    engine_metric = float(logit_diff_per_prompt(ctx.engine.clean_logits, ctx.enc).mean())
    diff, mask = logit_diffs(ctx)
    bridge_metric = float(((diff * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean())
    assert abs(engine_metric) > 1.0  # a trained model: a real signal to decompose
    assert total(result) == pytest.approx(engine_metric, rel=RTOL)
    assert total(result) == pytest.approx(bridge_metric, rel=RTOL)
    assert result.extra["bias"] != 0.0


def test_one_digit_sums_to_that_digits_logit_diff(ctx: Context) -> None:
    diff, mask = logit_diffs(ctx)
    per_digit = (diff * mask).mean(0)  # prompts where the two digits tie count 0
    assert total(run(ctx, Params(digit=1))) == pytest.approx(float(per_digit[1]), rel=RTOL)
    for i in range(ctx.enc.n_answer):
        assert total(run(ctx, Params(digit=i))) == pytest.approx(float(per_digit[i]), rel=RTOL)
    assert len({round(float(v), 3) for v in per_digit}) > 1  # the digits really differ


@pytest.mark.parametrize("top", [None, 10])
def test_neurons_sum_to_logit_diff(ctx: Context, top: int | None) -> None:
    d_mlp = ctx.engine.weights.d_mlp
    result = run(ctx, Params(layer=1, top_neurons=top or d_mlp))
    assert len(result.scores) == (top or d_mlp)
    assert all(parse_node(k).kind == "neuron" and parse_node(k).layer == 1 for k in result.scores)
    want = float(logit_diff_per_prompt(ctx.engine.clean_logits, ctx.enc).mean())
    assert total(result, "rest_of_model", "other_neurons") == pytest.approx(want, rel=RTOL)
    if top is None:
        assert result.extra["other_neurons"] == pytest.approx(0.0, abs=1e-4)
    else:  # the kept ones are the largest
        kept = min(abs(v) for v in result.scores.values())
        everything = run(ctx, Params(layer=1, top_neurons=d_mlp)).scores
        assert sorted(abs(v) for v in everything.values())[-top] == pytest.approx(kept)
    # Against component mode: m1 = its neurons + its output bias, and the rest is the rest.
    components = run(ctx, Params())
    neurons = sum(result.scores.values()) + result.extra["other_neurons"]
    b_out = result.extra["bias"] - components.extra["bias"]
    assert components.scores["m1"] == pytest.approx(neurons + b_out, rel=RTOL, abs=1e-4)
    rest = sum(v for k, v in components.scores.items() if k != "m1")
    assert result.extra["rest_of_model"] == pytest.approx(rest, rel=RTOL, abs=1e-4)


@pytest.mark.parametrize(("options", "message"), [
    ({"digit": "9"}, r"digit=9: answers have digits 0\.\.3"),
    ({"layer": "7"}, r"layer=7: the model has layers 0\.\.1"),
    ({"digit": "-1"}, r"digit=-1"),
])
def test_bad_params_raise(ctx: Context, options: dict[str, str], message: str) -> None:
    with pytest.raises(WorkbenchError, match=message):
        TECHNIQUE.run(ctx, TECHNIQUE.params(options))


def test_unknown_option_is_refused() -> None:
    with pytest.raises(WorkbenchError, match="did you mean digit"):
        TECHNIQUE.params({"digits": "1"})


def test_select_top_three(ctx: Context) -> None:
    result = run(ctx, Params())
    # `input` is in every circuit, so it is not one of the three picked.
    ranked = sorted((k for k in result.scores if k != "input"),
                    key=lambda k: -abs(result.scores[k]))
    circuit = select_circuit(result, ctx.graph, top=3)
    chosen = [parse_node(k) for k in ranked[:3]]
    assert set(circuit.nodes) == {INPUT, LOGITS, *chosen}
    assert circuit.scores == {k: pytest.approx(result.scores[k]) for k in ranked[:3]}
    assert set(circuit.edges) == set(Circuit.from_nodes(chosen, ctx.graph).edges)
    assert min(abs(result.scores[k]) for k in ranked[:3]) >= max(
        abs(result.scores[k]) for k in ranked[3:])
