"""The "looking" techniques and the hook module: identities that must hold exactly, cross-checks
against a direct computation, and a few behaviours of the bundled `add3` model.

- hooks: names from typed sites; every site exists on the bridge; hooks fire once and are gone
  after the `with` block (also after an exception); gated sites need their flag.
- logit_lens at `final` is the model's own logits (prob, rank and logit diff).
- attn's patterns (recomputed from the cached residuals) equal the bridge's hook_pattern and a
  direct computation from the folded weights; add3 has heads that read the operand digits of
  the same place value.
- ov_copy scores are fractions; with `top_k` = everything they are 1.
- ablate_each of a head equals `ablate` + `perf` through the session.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from plugins import ablate_each, attn, logit_lens, ov_copy
from workbench.ablation import Ablation, AblationEngine
from workbench.errors import WorkbenchError
from workbench.graph import Graph, parse_node
from workbench.hooks import Site, capture, hook_flags, hook_name, hooks
from workbench.model import LoadedModel
from workbench.plugins import Cancelled, Context, NodeScores, Table
from workbench.positions import arithmetic_roles, position_labels
from workbench.session import Session
from workbench.tasks import make_task
from workbench.tasks.encode import encode
from workbench.weights import ln


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: thread hand-off costs more than it saves on the shared 2-core machine
    (measured 5-30x per engine call under load). Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_ctx(model: LoadedModel, task: str = "addition", n: int = 8, **options: object
             ) -> Context:
    prompts = make_task(task, **options).prompt_set(n=n, seed=3)
    engine = AblationEngine(model, encode(prompts, model.tokenizer), Graph.of(model.card))
    return Context(model=model, prompts=prompts, enc=engine.enc, metric="logit_diff",
                   mode="mean", graph=engine.graph, engine=engine)


@pytest.fixture(scope="module")
def tiny(tiny_model: LoadedModel) -> Context:
    return make_ctx(tiny_model)


@pytest.fixture(scope="module")
def add(add3: LoadedModel) -> Context:
    return make_ctx(add3, n=32, digits=3)


# -- hooks -------------------------------------------------------------------------------------


def test_hook_names_from_sites() -> None:
    assert hook_name(Site.PATTERN, 3) == "blocks.3.attn.hook_pattern"
    assert hook_name(Site.RESID_PRE, 0) == "blocks.0.hook_resid_pre"
    assert hook_name(Site.Q_INPUT, 1) == "blocks.1.hook_q_input"
    assert hook_name(Site.MLP_POST, 2) == "blocks.2.mlp.hook_post"
    assert hook_name(Site.EMBED) == "hook_embed"
    with pytest.raises(WorkbenchError, match="not per layer"):
        hook_name(Site.POS_EMBED, 0)
    with pytest.raises(WorkbenchError, match="needs a layer"):
        hook_name(Site.Z)


def test_every_site_exists_on_the_bridge(tiny_model: LoadedModel) -> None:
    for site in Site:
        name = hook_name(site, None if site in (Site.EMBED, Site.POS_EMBED) else 1)
        assert tiny_model.bridge.get_hook_point(name) is not None, name


def test_captured_activations_match_the_engine(tiny: Context) -> None:
    eng = tiny.engine
    names = [hook_name(Site.RESID_PRE, 1), hook_name(Site.RESID_POST, 1),
             hook_name(Site.Z, 0), hook_name(Site.MLP_POST, 1)]
    acts = capture(tiny.model.bridge, eng.enc.clean, names)
    torch.testing.assert_close(acts[names[0]], eng.clean.resid_pre[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(acts[names[1]], eng.clean.resid_pre[2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(acts[names[2]], eng.clean.z[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(acts[names[3]], eng.clean.post_at(eng.weights, 1), atol=1e-5,
                               rtol=1e-4)


def test_hooks_fire_once_and_are_removed_even_on_error(tiny: Context) -> None:
    bridge = tiny.model.bridge
    calls: list[int] = []
    name = hook_name(Site.RESID_PRE, 1)  # an alias of blocks.1.hook_in: must fire once
    point = bridge.get_hook_point(name)
    with torch.no_grad(), hooks(bridge, [(name, lambda act, hook: calls.append(1))]):
        bridge(tiny.enc.clean[:2])
    assert calls == [1]
    assert not point.fwd_hooks and not point._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with hooks(bridge, [(name, lambda act, hook: None)]):
            raise RuntimeError("boom")
    assert not point.fwd_hooks and not point._forward_hooks
    with pytest.raises(WorkbenchError, match="does not exist"):
        with hooks(bridge, [(name, lambda act, hook: None), ("blocks.99.hook_resid_pre", id)]):
            pass
    assert not point.fwd_hooks  # the first hook was added, then removed


def test_gated_sites_need_their_flag_and_flags_are_restored(tiny: Context) -> None:
    bridge, tokens = tiny.model.bridge, tiny.enc.clean[:2]
    result, q_input = hook_name(Site.RESULT, 0), hook_name(Site.Q_INPUT, 1)
    with pytest.raises(WorkbenchError, match="use_attn_result"):
        capture(bridge, tokens, [result])
    with pytest.raises(RuntimeError, match="boom"):
        with hook_flags(bridge, split_qkv=True, attn_result=True):
            acts = capture(bridge, tokens, [result, q_input])
            n_heads, d_model = tiny.graph.n_heads, tiny.engine.weights.W_E.shape[1]
            assert acts[result].shape[2:] == (n_heads, d_model)
            assert acts[q_input].shape[2:] == (n_heads, d_model)
            raise RuntimeError("boom")
    assert (bridge.cfg.use_split_qkv_input, bridge.cfg.use_attn_result) == (False, False)


# -- logit lens ----------------------------------------------------------------------------------


def test_logit_lens_final_row_is_the_models_own_logits(tiny: Context) -> None:
    eng, enc = tiny.engine, tiny.engine.enc
    logits = eng.clean_logits  # (batch, n_answer, vocab)
    own = logits.gather(-1, enc.answer[..., None]).squeeze(-1)
    con = logits.gather(-1, enc.contrast[..., None]).squeeze(-1)
    differ = (enc.answer != enc.contrast).float()
    expected = {
        "prob": logits.softmax(-1).gather(-1, enc.answer[..., None]).squeeze(-1).mean(0),
        "rank": (logits > own[..., None]).sum(-1).float().mean(0),
        "logit_diff": ((own - con) * differ).sum(0) / differ.sum(0).clamp(min=1),
    }
    for stat, want in expected.items():
        table = logit_lens.run(tiny, logit_lens.Params(stat=stat, positions="answer"))
        assert table.rows[-1] == "final" and len(table.rows) == tiny.graph.n_layers + 1
        assert table.cols == tuple(f"a{i}" for i in range(enc.n_answer))
        torch.testing.assert_close(table.values[-1], want, atol=1e-5, rtol=1e-4)


def test_logit_lens_all_positions_reads_the_chosen_digit(tiny: Context) -> None:
    enc = tiny.engine.enc
    digit = 1
    full = logit_lens.run(tiny, logit_lens.Params(digit=digit))
    one = logit_lens.run(tiny, logit_lens.Params(digit=digit, positions="answer"))
    assert full.values.shape == (tiny.graph.n_layers + 1, enc.clean.shape[1])
    assert full.cols == position_labels(tiny.model.tokenizer, enc)
    p = int(enc.answer_pos[0, digit])  # the same for every prompt of a fixed-width task
    torch.testing.assert_close(full.values[:, p], one.values[:, 0])
    assert full.cols[p].endswith(f">a{digit}")
    with pytest.raises(WorkbenchError, match="digit=9"):
        logit_lens.run(tiny, logit_lens.Params(digit=9))


# -- attention ---------------------------------------------------------------------------------


def test_attention_scores_match_patterns_from_the_weights(tiny: Context) -> None:
    eng, w = tiny.engine, tiny.engine.weights
    n_pos = eng.n_pos
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    for layer in range(w.n_layers):
        h = ln(eng.clean.resid_pre[layer], w.eps)
        q = torch.einsum("bpd,hde->bphe", h, w.W_Q[layer]) + w.b_Q[layer]
        k = torch.einsum("bpd,hde->bphe", h, w.W_K[layer]) + w.b_K[layer]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / w.d_head**0.5
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        for back in (1, 3):
            got = attn.run(tiny, attn.Params(score="back", k=back))
            want = pattern.diagonal(-back, 2, 3).mean((0, 2))  # (head,) mass on q - back
            for head in range(w.n_heads):
                assert got.scores[f"a{layer}.{head}"] == pytest.approx(float(want[head]),
                                                                       abs=1e-5)
        table = attn.run(tiny, attn.Params(head=f"a{layer}.1"))
        torch.testing.assert_close(table.values, pattern[:, 1].mean(0), atol=1e-5, rtol=1e-4)
    assert attn.run(tiny, attn.Params()).scores == attn.run(
        tiny, attn.Params(score="back", k=1)).scores


def test_attention_pattern_equals_the_bridge_hook_pattern(tiny: Context) -> None:
    """attn reads `api.attention_pattern` (from the cached residuals); TransformerLens's own
    hook_pattern on the bridge is the independent reference."""
    eng = tiny.engine
    got: dict[int, torch.Tensor] = {}

    def keep(layer: int) -> object:
        def hook(pattern: torch.Tensor, hook: object = None) -> None:
            got[layer] = pattern.detach().float()
        return hook

    bridge = tiny.model.bridge
    fwd = [(hook_name(Site.PATTERN, layer), keep(layer)) for layer in range(eng.graph.n_layers)]
    with torch.no_grad(), hooks(bridge, fwd):
        bridge(eng.enc.clean)
    for layer in range(eng.graph.n_layers):
        mine = tiny.api.attention_pattern(layer)
        torch.testing.assert_close(mine, got[layer], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(tiny.api.attention_pattern(layer, rows=[2, 0]),
                                   mine[[2, 0]])
    with pytest.raises(WorkbenchError, match="layers are"):
        tiny.api.attention_pattern(eng.graph.n_layers)


def test_head_pattern_table_is_causal_and_rows_sum_to_one(tiny: Context) -> None:
    table = attn.run(tiny, attn.Params(head="a1.0"))
    assert isinstance(table, Table) and table.rows == table.cols
    torch.testing.assert_close(table.values.sum(-1), torch.ones(len(table.rows)))
    assert float(table.values.triu(1).abs().max()) == 0.0
    with pytest.raises(WorkbenchError, match="attention head"):
        attn.run(tiny, attn.Params(head="m1"))


def test_operand_roles_of_addition_prompts(add: Context) -> None:
    enc = add.engine.enc  # <bos> a a a + b b b = c c c
    roles = arithmetic_roles(add.model.tokenizer, enc)
    assert roles.operand1[0].nonzero().flatten().tolist() == [1, 2, 3]
    assert roles.operand2[0].nonzero().flatten().tolist() == [5, 6, 7]
    # answer unit 3 (units) sums the operands' units digits; unit 0 (final carry) has none
    assert roles.place[0, 3].nonzero().flatten().tolist() == [3, 7]
    assert roles.place[0, 1].nonzero().flatten().tolist() == [1, 5]
    assert not roles.place[0, 0].any()


def test_add3_has_place_value_and_operand_heads(add: Context) -> None:
    place = attn.run(add, attn.Params(score="place"))
    both = attn.run(add, attn.Params(score="operand", k=0))
    one = attn.run(add, attn.Params(score="operand", k=1))
    two = attn.run(add, attn.Params(score="operand", k=2))
    assert max(place.scores.values()) > 0.6  # some head reads exactly the digits to add
    assert max(both.scores.values()) > 0.8
    for name in both.scores:
        assert 0 <= place.scores[name] <= both.scores[name] + 1e-6 <= 1 + 2e-6
        assert both.scores[name] == pytest.approx(one.scores[name] + two.scores[name], abs=1e-5)


def test_operand_scores_need_arithmetic_prompts(tiny_model: LoadedModel) -> None:
    ctx = make_ctx(tiny_model, task="sequence", width=1, length=4)
    with pytest.raises(WorkbenchError, match="no prompt has"):
        attn.run(ctx, attn.Params(score="operand"))


# -- OV / QK scores ----------------------------------------------------------------------------


def test_ov_scores_are_fractions_and_saturate(add: Context) -> None:
    n_heads = add.graph.n_layers * add.graph.n_heads
    for score in ("copy", "successor"):
        got = ov_copy.run(add, ov_copy.Params(score=score))
        assert isinstance(got, NodeScores) and len(got.scores) == n_heads
        assert all(0.0 <= v <= 1.0 for v in got.scores.values())
        every = ov_copy.run(add, ov_copy.Params(score=score, among="digits", top_k=10))
        assert set(every.scores.values()) == {1.0}
    qk = ov_copy.run(add, ov_copy.Params(score="qk"))
    assert all(torch.isfinite(torch.tensor(v)) for v in qk.scores.values())


def test_digit_tokens_and_svd_table(add: Context) -> None:
    ids, texts = ov_copy.digit_tokens(add.model.tokenizer, add.engine.enc.answer)
    assert texts == tuple("0123456789")  # the digit tokenizer has no ' 0'
    assert [add.model.tokenizer.decode([i]) for i in ids] == list(texts)
    table = ov_copy.run(add, ov_copy.Params(head="a1.0", n_dirs=3))
    assert isinstance(table, Table) and table.values.shape == (3, 20)
    assert table.cols[0] == "in:'0'" and table.cols[-1] == "out:'9'"
    out = table.values[:, 10:]
    top = out.gather(1, out.abs().argmax(1, keepdim=True))
    assert bool((top > 0).all())  # signs fixed: each direction's largest digit logit is +
    w = add.engine.weights
    s = torch.linalg.svdvals(w.W_V[1, 0] @ w.W_O[1, 0])
    assert table.rows[0].startswith(f"dir0 s={float(s[0]):.3g} ")


# -- ablate each ---------------------------------------------------------------------------------


def test_ablate_each_equals_ablate_then_perf(tiny_model: LoadedModel) -> None:
    session = Session(model=tiny_model)
    for line in ("task addition n=8 seed=3", "ablate a1.1 mode=mean"):
        assert session.execute(line).ok
    direct = session.execute("perf").out["percent"]
    assert session.execute("restore all").ok
    run = session.execute("run ablate_each mode=mean")
    assert run.ok, run.error
    assert run.result.scores["a1.1"] == pytest.approx(direct, abs=1e-4)
    assert session.execute("perf").out["percent"] == pytest.approx(100.0)


def test_ablate_each_modes_and_positions(tiny: Context) -> None:
    eng = tiny.engine
    table = ablate_each.run(tiny, ablate_each.Params(mode="all", nodes="m*,a1.*"))
    assert table.cols == ("zero", "mean", "resample")
    assert table.rows == ("m0", "a1.0", "a1.1", "m1")  # topological order
    for j, mode in enumerate(table.cols):
        single = ablate_each.run(tiny, ablate_each.Params(mode=mode, nodes="a1.*,m*"))
        assert [single.scores[r] for r in table.rows] == pytest.approx(
            table.values[:, j].tolist(), abs=1e-4)
    drop = ablate_each.run(tiny, ablate_each.Params(mode=mode, score="drop", nodes="a1.*,m*"))
    assert drop.scores == pytest.approx({k: 100 - v for k, v in single.scores.items()})
    per_pos = ablate_each.run(tiny, ablate_each.Params(per_position=True, nodes="a1.0,m0"))
    assert per_pos.rows == ("m0", "a1.0") and per_pos.values.shape == (2, eng.n_pos)
    node = parse_node("a1.0")
    want = eng.perf(eng.logits([Ablation(node.at(4), "mean")]), "logit_diff", "mean").percent
    assert float(per_pos.values[1, 4]) == pytest.approx(want, abs=1e-6)


def test_ablate_each_reports_progress_and_stops_on_cancel(tiny: Context) -> None:
    seen: list[float] = []
    ctx = replace(tiny, progress=lambda f, m: seen.append(f))
    ablate_each.run(ctx, ablate_each.Params(nodes="a*.*"))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    stop = replace(tiny, cancelled=lambda: True)
    with pytest.raises(Cancelled):
        ablate_each.run(stop, ablate_each.Params())
    with pytest.raises(WorkbenchError, match="not a head or an MLP"):
        ablate_each.run(tiny, ablate_each.Params(nodes="input"))
