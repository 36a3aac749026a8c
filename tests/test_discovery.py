"""Automatic circuit discovery against circuits known by construction.

The micro model is a seeded 2-layer, 2-head GPT-2 whose head 1 of every layer and whose MLPs
write nothing (their output weights are zeroed): every edge out of or into them is dead, every
other edge is live. Each method must find exactly that. The "linear" variant adds a large
constant to every position embedding, which makes every LayerNorm scale (nearly) constant, so
the model is linear in each edge and EAP must equal the exact single-edge patching effect.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plugins.acdc import Params as AcdcParams
from plugins.acdc import acdc
from plugins.eap import edge_attribution
from workbench.ablation import AblationEngine
from workbench.graph import Edge
from workbench.metrics import metric
from workbench.model import LoadedModel, load_model
from workbench.session import Session
from workbench.tasks import make_task
from workbench.tasks.encode import encode
from workbench.tokenizer import build_tokenizer, save_tokenizer

DEAD = {"a0.1", "a1.1", "m0", "m1"}


def build_micro(directory: Path, linear: bool = False) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer()
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tok),
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, initializer_range=0.5)
    torch.manual_seed(3)
    model = GPT2LMHeadModel(cfg).eval()
    d_head = 8
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_proj.weight[d_head: 2 * d_head] = 0.0  # head 1 writes nothing
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
        if linear:  # a huge constant direction freezes every LayerNorm scale...
            big = torch.zeros(16)
            big[0], big[1] = 400.0, -400.0
            model.transformer.wpe.weight += big
            model.transformer.ln_f.weight *= 1000.0  # ...and this keeps the logits readable
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    save_tokenizer(tok, directory)
    return directory


def _engine(model: LoadedModel, n: int = 16) -> AblationEngine:
    prompts = make_task("addition", digits=2).prompt_set(n, seed=2)
    return AblationEngine(model, encode(prompts, model.tokenizer))


def _dead(edge: Edge) -> bool:
    return str(edge.src) in DEAD or str(edge.dst.base()) in DEAD


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> AblationEngine:
    path = build_micro(tmp_path_factory.mktemp("micro") / "ckpt")
    return _engine(load_model(str(path), device="cpu"))


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> AblationEngine:
    path = build_micro(tmp_path_factory.mktemp("linear") / "ckpt", linear=True)
    return _engine(load_model(str(path), device="cpu", dtype="float64"))


def _single_edge_effect(engine: AblationEngine, index: int, mode: str, name: str) -> float:
    keep = torch.ones(engine.graph.n_edges, **engine.kw)
    keep[index] = 0.0
    ref = engine.clean_logits
    with torch.no_grad():
        return metric(name, engine.edge_logits(keep, mode), engine.enc, ref) - metric(  # type: ignore[arg-type]
            name, engine.clean_logits, engine.enc, ref)  # type: ignore[arg-type]


def test_eap_scores_dead_edges_zero_and_live_edges_not(micro: AblationEngine) -> None:
    scores = edge_attribution(micro, "logit_diff", "resample")
    dead = torch.tensor([_dead(e) for e in micro.graph.edges])
    assert scores[dead].abs().max() == 0.0
    assert (scores[~dead].abs() > 1e-6).float().mean() > 0.8


def test_eap_equals_gradient_of_the_edge_mask(micro: AblationEngine) -> None:
    keep = torch.ones(micro.graph.n_edges, requires_grad=True)
    with torch.enable_grad():
        from workbench.metrics import metric_per_prompt

        metric_per_prompt("logit_diff", micro.edge_logits(keep, "mean"), micro.enc).mean() \
            .backward()
    scores = edge_attribution(micro, "logit_diff", "mean", batch_size=5)  # chunked too
    assert keep.grad is not None
    torch.testing.assert_close(scores, -keep.grad, atol=1e-6, rtol=1e-4)


def test_eap_equals_exact_patching_where_the_model_is_linear(linear: AblationEngine) -> None:
    scores = edge_attribution(linear, "logit_diff", "resample")
    checked = 0
    for index in scores.abs().argsort(descending=True)[:12].tolist():
        exact = _single_edge_effect(linear, index, "resample", "logit_diff")
        assert scores[index].item() == pytest.approx(exact, rel=0.02, abs=1e-6)
        checked += abs(exact) > 1e-5
    assert checked >= 6


def test_eap_ig_finds_the_same_dead_edges(micro: AblationEngine) -> None:
    scores = edge_attribution(micro, "logit_diff", "resample", steps=4)
    dead = torch.tensor([_dead(e) for e in micro.graph.edges])
    assert scores[dead].abs().max() == 0.0
    assert scores[~dead].abs().sum() > 0


def test_acdc_tau_zero_keeps_every_edge_that_changes_the_metric(micro: AblationEngine) -> None:
    keep, _, stats = acdc(micro, AcdcParams(tau=0.0, metric="kl"), "resample")
    assert stats.tested > 0
    for index, edge in enumerate(micro.graph.edges):
        if keep[index] == 0 and not _dead(edge):
            # removed although live: its removal must not change the metric at all
            assert abs(_single_edge_effect(micro, index, "resample", "kl")) < 1e-6
    assert all(keep[i] == 0 for i, e in enumerate(micro.graph.edges) if _dead(e))
    assert keep.sum() > 0


def test_acdc_with_a_huge_tau_keeps_nothing(micro: AblationEngine) -> None:
    keep, _, _ = acdc(micro, AcdcParams(tau=1e9), "resample")
    assert keep.sum() == 0


def test_acdc_batched_prefixes_equal_the_sequential_algorithm(add3: LoadedModel) -> None:
    engine = _engine(add3, n=24)
    one, _, s1 = acdc(engine, AcdcParams(tau=0.02, replicas=1), "resample")
    many, _, s8 = acdc(engine, AcdcParams(tau=0.02, replicas=8), "resample")
    assert torch.equal(one, many)
    assert s8.forwards < s1.forwards and s1.tested == s8.tested


def test_mask_drops_dead_edges(micro: AblationEngine, tmp_path: Path) -> None:
    from plugins.mask import Params, run
    from workbench.plugins import Context

    ctx = Context(model=None, prompts=None, enc=micro.enc, metric="kl", mode="resample",  # type: ignore[arg-type]
                  graph=micro.graph, engine=micro)
    result = run(ctx, Params(steps=40, lr=0.2, sparsity=50.0))
    circuit = result.parts[0][1].circuit
    assert circuit.edges and not any(_dead(e) for e in circuit.edges)


def test_mask_minibatch_split_into_chunks_gives_the_same_mask(
        add3: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """A minibatch over the memory budget is split and its gradients summed before the step:
    the same Adam updates as one chunk (up to float summation order)."""
    from plugins import mask
    from workbench import memory
    from workbench.plugins import Context

    engine = _engine(add3, n=24)
    ctx = Context(model=add3, prompts=None, enc=engine.enc, metric="logit_diff",  # type: ignore[arg-type]
                  mode="mean", graph=engine.graph, engine=engine)
    params = mask.Params(steps=15, batch_size=16)
    whole = dict(mask.run(ctx, params).parts)["keep"].values
    chunks = []
    monkeypatch.setattr(memory, "fit_chunk", lambda *a, **k: chunks.append(5) or 5)
    split = dict(mask.run(ctx, params).parts)["keep"].values
    assert chunks == [5]
    assert [memory.balanced(n, c) for n, c in ((32, 14), (32, 32), (5, 1), (7, 3), (10, 64))] \
        == [11, 32, 1, 3, 10]
    torch.testing.assert_close(split, whole, atol=1e-4, rtol=1e-4)


def test_session_runs_discovery_and_checks_circuits(add3: LoadedModel, tmp_path: Path) -> None:
    s = Session(tmp_path / "s.jsonl", model=add3)
    assert s.execute("task addition digits=3 n=32 seed=4").ok
    assert s.execute("run prune target=80 thresholds=80 orders=1").ok
    assert s.execute("select r1 top=1").ok
    check = s.execute("check c1")
    assert check.ok and check.out["percent"] >= 80.0  # prune meets its target when checked
    eap = s.execute("run eap")
    assert eap.ok and eap.out["n"] == s.engine().graph.n_edges
    mask = s.execute("run mask steps=40 target_edges=25 batch_size=32 metric=kl")
    assert mask.ok
    assert s.execute("select r2 top=25").ok and s.execute("select r3 top=1").ok
    # mask and eap agree on the top edges of add3
    eap_top = {str(e) for e, _ in s.state.result("r2").ranked()[:10]}  # type: ignore[union-attr]
    mask_edges = {str(e) for e in s.state.circuit("c3").circuit.edges}
    assert len(eap_top & mask_edges) >= 5
    cmp = s.execute("compare c2 c3")
    assert cmp.ok and 0.0 <= cmp.out["jaccard_edges"] <= 1.0
