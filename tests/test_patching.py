"""Activation patching (`patch`) and path patching (`path_patch`), each against an independent
computation.

1. Patching a run with itself changes nothing, at every site and in both directions (asserted on
   raw metric values: the normalised effect is 0/0 there).
2. `clean_to_corrupt` equals TransformerLens's own `transformer_lens.patching` sweeps on the
   bridge (resid_pre, attn_out, mlp_out by position; head out/q/k/v all positions and by
   position; head pattern) and its direct path patching (`get_act_patch_direct_path`).
3. Path patching from every upstream source into a receiver equals patching its input; the
   restarted path run equals the engine's full edge forward.
4. On `add3`, the residual stream at the operand positions of layer 0 carries the answer and
   the BOS position carries nothing.

Everything runs on CPU on 8-32 prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
import transformer_lens.patching as tlp
from torch import Tensor

import plugins.patch as patch
import plugins.path_patch as path_patch
from workbench.ablation import Ablation, AblationEngine
from workbench.errors import WorkbenchError
from workbench.graph import LOGITS, Graph, parse_node
from workbench.metrics import MetricName, answer_logits, metric
from workbench.model import LoadedModel, load_model
from workbench.plugins import Context, NodeScores, Table, load_registry
from workbench.tasks import PromptSet, make_task
from workbench.tasks.encode import EncodedPrompts, encode
from workbench.tokenizer import build_tokenizer, save_tokenizer

TL_ATOL = 1e-4  # engine vs the bridge's forward, in logit-difference units


def context(model: LoadedModel, prompts: PromptSet, enc: EncodedPrompts | None = None,
            metric_name: MetricName = "logit_diff") -> Context:
    enc = enc if enc is not None else encode(prompts, model.tokenizer)
    engine = AblationEngine(model, enc)
    return Context(model=model, prompts=prompts, enc=engine.enc, metric=metric_name,
                   mode="resample", graph=engine.graph, engine=engine)


def addition(n: int, seed: int = 1, corrupt: str | None = None, digits: int = 3) -> PromptSet:
    return make_task("addition", digits=digits).prompt_set(n, seed=seed, corrupt=corrupt)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny architecture of `conftest` (2 layers, 2 heads, d_model 16) initialised 20x wider
    than GPT-2 (std 0.4). The shared `tiny_model` attends almost uniformly, so patching its
    queries or keys moves the metric by ~1e-7 and an agreement test there would prove nothing;
    here attention is sharp and effects are ~0.1-1 logits. Private, too: TransformerLens's
    direct path patching flips a bridge flag (and restores it)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer()
    config = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tok),
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, initializer_range=0.4)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("sharp") / "ckpt"
    GPT2LMHeadModel(config).eval().save_pretrained(str(directory))
    save_tokenizer(tok, directory)
    return load_model(str(directory), device="cpu")


@pytest.fixture(scope="module")
def tiny_ctx(tiny: LoadedModel) -> Context:
    return context(tiny, addition(8, digits=1))  # 6 tokens: by-position sweeps stay short


@pytest.fixture(scope="module")
def add3_ctx(add3: LoadedModel) -> Context:
    return context(add3, addition(16))


# --- 1. patching a run with itself ------------------------------------------------------------


SITES = ("resid", "attn_out", "mlp_out", "head_out", "head_q", "head_k", "head_v",
         "head_pattern")


@pytest.mark.parametrize("direction", ["corrupt_to_clean", "clean_to_corrupt"])
def test_patching_clean_into_clean_changes_nothing(tiny: LoadedModel, direction: str) -> None:
    prompts = addition(8, digits=1)
    enc = encode(prompts, tiny.tokenizer)
    ctx = context(tiny, prompts, dataclasses.replace(enc, corrupted=enc.clean))
    clean = metric("logit_diff", ctx.engine.clean_logits, ctx.engine.enc)
    sweeps = [(site, False) for site in SITES] + [("resid", True), ("head_q", True)]
    for site, by_position in sweeps:
        sw = patch.sweep(ctx, patch.Params(site, direction, by_position))  # type: ignore[arg-type]
        assert sw.baseline.base == pytest.approx(clean, abs=1e-6)
        assert sw.baseline.other == pytest.approx(clean, abs=1e-6)
        assert torch.allclose(sw.patched, torch.full_like(sw.patched, clean), atol=1e-5), site
    for each in (True, False):
        ps = path_patch.sweep(ctx, path_patch.Params("input,a*.*,m*", "a1.*,m1,logits", each,
                                                     direction))  # type: ignore[arg-type]
        assert all(abs(v - clean) < 1e-5 for v in ps.scores.values())
    with pytest.raises(WorkbenchError, match="score the same"):
        patch.run(ctx, patch.Params("head_out", direction))  # type: ignore[arg-type]


# --- 2. agreement with TransformerLens's patching module ---------------------------------------


def tl_metric(enc: EncodedPrompts) -> Callable[[Tensor], Tensor]:
    """TransformerLens metric: full logits (batch, pos, vocab) -> scalar logit difference."""
    return lambda logits: torch.tensor(metric("logit_diff", answer_logits(logits, enc), enc))


def tl_sweep(ctx: Context, sweep: Callable[..., Tensor]) -> Tensor:
    """A TransformerLens patching sweep on the bridge: clean activations into the corrupted run."""
    enc = ctx.engine.enc
    with torch.no_grad():
        _, clean_cache = ctx.model.bridge.run_with_cache(enc.clean)
        return sweep(ctx.model.bridge, enc.corrupted, clean_cache, tl_metric(enc)).cpu()


def assert_agree(ours: Tensor, theirs: Tensor, base: float) -> None:
    """Equal to TL_ATOL, and to 0.1% of the sweep's largest effect (the tiny random model's
    effects are small, so the absolute tolerance alone would prove little)."""
    assert ours.shape == theirs.shape
    effect = float((theirs - base).abs().max())
    assert effect > 1e-5  # not vacuous: some patch moved the metric
    error = float((ours - theirs).abs().max())
    assert error < TL_ATOL and error < 1e-3 * effect, (error, effect)


def by_pos(t: Tensor) -> Tensor:
    """TransformerLens's (layer, pos, head) -> our (layer * head, pos)."""
    return t.permute(0, 2, 1).reshape(-1, t.shape[1])


def all_pos(t: Tensor) -> Tensor:
    return t.reshape(-1, 1)


TL_SWEEPS = [  # (site, by_position, TransformerLens sweep, its result -> our (rows, cols))
    ("resid", True, tlp.get_act_patch_resid_pre, lambda t: t),
    ("attn_out", True, tlp.get_act_patch_attn_out, lambda t: t),
    ("mlp_out", True, tlp.get_act_patch_mlp_out, lambda t: t),
    ("head_out", False, tlp.get_act_patch_attn_head_out_all_pos, all_pos),
    ("head_out", True, tlp.get_act_patch_attn_head_out_by_pos, by_pos),
    ("head_q", False, tlp.get_act_patch_attn_head_q_all_pos, all_pos),
    ("head_q", True, tlp.get_act_patch_attn_head_q_by_pos, by_pos),
    ("head_k", False, tlp.get_act_patch_attn_head_k_all_pos, all_pos),
    ("head_v", False, tlp.get_act_patch_attn_head_v_all_pos, all_pos),
    ("head_v", True, tlp.get_act_patch_attn_head_v_by_pos, by_pos),
    ("head_pattern", False, tlp.get_act_patch_attn_head_pattern_all_pos, all_pos),
]


@pytest.mark.parametrize(("site", "by_position", "sweep", "layout"), TL_SWEEPS,
                         ids=[f"{s}-{'pos' if p else 'all'}" for s, p, *_ in TL_SWEEPS])
def test_clean_to_corrupt_matches_transformer_lens(
        tiny_ctx: Context, site: str, by_position: bool, sweep: Callable[..., Tensor],
        layout: Callable[[Tensor], Tensor]) -> None:
    ours = patch.sweep(tiny_ctx, patch.Params(site, "clean_to_corrupt", by_position))  # type: ignore[arg-type]
    assert_agree(ours.patched, layout(tl_sweep(tiny_ctx, sweep)), ours.baseline.base)


def test_resid_patching_matches_transformer_lens_on_add3(add3_ctx: Context) -> None:
    """The trained model: effects of several logits, so the absolute tolerance bites."""
    ours = patch.sweep(add3_ctx, patch.Params("resid", "clean_to_corrupt", True))
    theirs = tl_sweep(add3_ctx, tlp.get_act_patch_resid_pre)
    assert_agree(ours.patched, theirs, ours.baseline.base)
    assert float((theirs - ours.baseline.base).abs().max()) > 1.0


@pytest.mark.parametrize("port", ["q", "k", "v"])
def test_path_patching_matches_transformer_lens_direct_path(
        tiny: LoadedModel, tiny_ctx: Context, port: str) -> None:
    enc = tiny_ctx.engine.enc
    with torch.no_grad():
        _, clean_cache = tiny.bridge.run_with_cache(enc.clean)
        _, corrupted_cache = tiny.bridge.run_with_cache(enc.corrupted)
    n_heads = tiny.card.n_heads
    for src in range(n_heads):
        with torch.no_grad():
            theirs = tlp.get_act_patch_direct_path(
                tiny.bridge, enc.corrupted, clean_cache, corrupted_cache, tl_metric(enc),
                src_layer=0, src_head=src, component=port, verbose=False)  # type: ignore[arg-type]
        ours = path_patch.sweep(tiny_ctx, path_patch.Params(
            f"a0.{src}", f"a1.*<{port}>", each_sender=False, direction="clean_to_corrupt"))
        values = torch.tensor([ours.scores[f"a1.{h}<{port}>"] for h in range(n_heads)])
        assert_agree(values, theirs[1].cpu(), ours.baseline.base)
    assert not tiny.bridge.cfg.use_split_qkv_input  # TransformerLens restored its flag


# --- 3. path patching identities ----------------------------------------------------------------


@pytest.mark.parametrize("receiver", ["a1.0<q>", "a1.2<k>", "a1.3<v>", "a0.1<q>"])
def test_path_patching_from_every_upstream_source_equals_patching_the_input(
        add3_ctx: Context, receiver: str) -> None:
    engine, graph = add3_ctx.engine, add3_ctx.graph
    r = parse_node(receiver)
    runner = path_patch.PathRunner(engine)
    by_paths = runner.logits(list(graph.upstream(r)), [r])
    by_input = engine.logits([Ablation(r, "resample")])
    assert torch.allclose(by_paths, by_input, atol=1e-5, rtol=0)
    assert float((by_input - engine.clean_logits).abs().max()) > 1e-3


def test_path_patching_identity_is_exact_in_float64() -> None:
    """In float64 the identity holds to rounding (1e-9), so the 1e-5 above is float32 noise."""
    model = load_model("add3", device="cpu", dtype="float64")
    ctx = context(model, addition(16))
    r = parse_node("a1.1<k>")
    by_paths = path_patch.PathRunner(ctx.engine).logits(list(ctx.graph.upstream(r)), [r])
    assert by_paths.dtype == torch.float64
    assert torch.allclose(by_paths, ctx.engine.logits([Ablation(r, "resample")]), atol=1e-9,
                          rtol=0)
    sw = patch.sweep(ctx, patch.Params("head_k", "clean_to_corrupt"))
    assert sw.patched.isfinite().all()


def test_path_patching_into_logits_from_everything_is_the_corrupted_run(
        add3_ctx: Context) -> None:
    engine = add3_ctx.engine
    runner = path_patch.PathRunner(engine)
    everything = runner.logits(list(add3_ctx.graph.sources), [LOGITS])
    assert torch.allclose(everything, engine.corrupted_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("senders", "receivers"), [
    ("a0.*", "a1.1<k>,m1"), ("input,m0", "logits"), ("a0.2", "a1.*")])
def test_restarted_path_run_equals_the_full_edge_forward(
        add3_ctx: Context, senders: str, receivers: str) -> None:
    engine, graph = add3_ctx.engine, add3_ctx.graph
    s = path_patch.senders_of(senders, graph)
    r = path_patch.receivers_of(receivers, graph)
    restarted = path_patch.PathRunner(engine).logits(s, r)
    with torch.no_grad():
        keep = path_patch.keep_mask(graph, s, r).to(engine.weights.W_E.dtype)
        full = engine.edge_logits(keep, "resample")
    assert torch.allclose(restarted, full, atol=1e-5, rtol=0)
    assert float((full - engine.clean_logits).abs().max()) > 1e-4


def test_pattern_parsing() -> None:
    graph = Graph.from_sizes(2, 4)
    assert [str(n) for n in path_patch.senders_of("m0, input,a0.1,a0.1", graph)] == [
        "input", "a0.1", "m0"]
    assert [str(n) for n in path_patch.receivers_of("a1.0", graph)] == [
        "a1.0<q>", "a1.0<k>", "a1.0<v>"]
    for bad in ("senders", "receivers"):
        with pytest.raises(WorkbenchError):
            (path_patch.senders_of if bad == "senders" else path_patch.receivers_of)(
                "a0.0<q>" if bad == "senders" else "a1.0@3", graph)
    with pytest.raises(WorkbenchError, match="empty"):
        path_patch.senders_of(",", graph)


# --- 4. behaviour on add3, and the plugin contract -------------------------------------------


def test_operand_positions_carry_the_answer_and_bos_nothing(add3: LoadedModel) -> None:
    ctx = context(add3, addition(32, seed=2, corrupt="random_operands"))
    table = patch.run(ctx, patch.Params("resid", "corrupt_to_clean", True))
    assert isinstance(table, Table)
    assert table.rows[0] == "resid_pre 0" and table.cols[0].startswith("0:")
    layer0 = table.values[0]  # (pos,) normalised effect of patching resid_pre 0 at p
    operands = [1, 2, 3, 5, 6, 7]  # BOS abc + def =
    assert float(layer0[operands].abs().max()) > 0.2
    assert float(layer0[operands].abs().sum()) > 0.5
    assert abs(float(layer0[0])) < 1e-6  # BOS is the same token in both runs
    assert abs(float(layer0[4])) < 1e-6  # so is "+"


def test_run_results_and_registry(tiny_ctx: Context) -> None:
    registry = load_registry()
    assert {"patch", "path_patch"} <= set(registry)
    tech = registry["patch"]
    params = tech.params({"site": "head_q", "direction": "clean_to_corrupt"})
    heads = tech.run(tiny_ctx, params)
    assert isinstance(heads, NodeScores) and set(heads.scores) == {
        "a0.0", "a0.1", "a1.0", "a1.1"}
    assert isinstance(tech.run(tiny_ctx, tech.params({"site": "mlp_out", "by_position": "false"})),
                      NodeScores)
    by_pos = tech.run(tiny_ctx, tech.params({"site": "head_out", "by_position": "true"}))
    assert isinstance(by_pos, Table) and by_pos.values.shape == (4, tiny_ctx.engine.n_pos)
    with pytest.raises(WorkbenchError, match="all positions only"):
        tech.run(tiny_ctx, tech.params({"site": "head_pattern", "by_position": "true"}))
    with pytest.raises(WorkbenchError, match="must be one of"):
        tech.params({"site": "resid_mid"})
    paths = registry["path_patch"].run(tiny_ctx, registry["path_patch"].Params())
    assert isinstance(paths, NodeScores) and set(paths.scores) == {
        "a0.0", "a0.1", "a1.0", "a1.1"}
    joint = registry["path_patch"].run(tiny_ctx, registry["path_patch"].params(
        {"senders": "a0.*", "receivers": "a1.0,logits", "each_sender": "false"}))
    assert set(joint.scores) == {"a1.0<q>", "a1.0<k>", "a1.0<v>", "logits"}
    assert "all_receivers" in joint.extra
    with pytest.raises(WorkbenchError, match="upstream"):
        registry["path_patch"].run(tiny_ctx, registry["path_patch"].params(
            {"senders": "a1.*", "receivers": "a0.0<q>"}))
