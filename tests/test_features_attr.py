"""Feature-basis attribution against the frozen replacement model, in float64.

Random dictionaries on the tiny model (so nothing here depends on training): each node's
attribution must equal the exact change of the target when that node is removed from the
frozen linear model -- with and without detaching (then the detached nodes are held).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from workbench.ablation import AblationEngine
from workbench.errors import WorkbenchError
from workbench.features.attribution import Target, attribute, frozen_target, parse_target
from workbench.features.dictionary import Dictionary
from workbench.features.replacement import DictionarySet, logits, run
from workbench.graph import parse_node
from workbench.model import LoadedModel
from workbench.tasks import make_task
from workbench.tasks.encode import encode
from workbench.weights import Weights


def random_dicts(d_model: int, n_layers: int, d_sae: int = 24, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> DictionarySet:
    g = torch.Generator().manual_seed(seed)
    out = []
    for layer in range(n_layers):
        for site, sparsity in (("attn_out", "topk"), ("mlp", "jumprelu")):
            w_enc = torch.randn(d_model, d_sae, generator=g, dtype=dtype)
            out.append(Dictionary(
                site=site, layer=layer, W_enc=w_enc, b_enc=torch.randn(d_sae, generator=g,
                                                                         dtype=dtype) * 0.1,
                W_dec=torch.randn(d_sae, d_model, generator=g, dtype=dtype) * 0.3,
                b_dec=torch.randn(d_model, generator=g, dtype=dtype) * 0.1, sparsity=sparsity,
                k=5 if sparsity == "topk" else None,
                threshold=torch.full((d_sae,), 0.2, dtype=dtype) if sparsity == "jumprelu"
                else None))
    return DictionarySet(tuple(out))


@pytest.fixture(scope="module")
def setup(tiny_model: LoadedModel):  # type: ignore[no-untyped-def]
    prompts = make_task("addition", digits=2).prompt_set(12, seed=3)
    enc = encode(prompts, tiny_model.tokenizer)
    w = Weights.from_bridge(tiny_model.bridge)
    w = dataclasses.replace(w, **{f.name: getattr(w, f.name).double()
                                  for f in dataclasses.fields(w)
                                  if isinstance(getattr(w, f.name), torch.Tensor)})
    dicts = random_dicts(w.W_E.shape[1], w.n_layers)
    tr = run(w, enc.clean, dicts, "keep")
    return w, enc, dicts, tr


def test_replacement_with_errors_kept_is_the_model(tiny_model: LoadedModel) -> None:
    prompts = make_task("addition", digits=2).prompt_set(8, seed=1)
    engine = AblationEngine(tiny_model, encode(prompts, tiny_model.tokenizer))
    dicts = random_dicts(engine.weights.W_E.shape[1], engine.weights.n_layers,
                         dtype=torch.float32)
    tr = run(engine.weights, engine.enc.clean, dicts, "keep")
    torch.testing.assert_close(logits(engine.weights, tr, engine.enc.answer_pos),
                               engine.clean_logits, atol=1e-4, rtol=1e-4)
    dropped = logits(engine.weights, run(engine.weights, engine.enc.clean, dicts, "drop"),
                     engine.enc.answer_pos)
    assert (dropped - engine.clean_logits).abs().max() > 1e-2  # random dictionaries are bad


@pytest.mark.parametrize("target_name", ["metric", "m1.f3@-1", "a1.f2@5", "m0.f1@4"])
def test_each_attribution_is_the_exact_removal_effect(setup, target_name: str) -> None:  # type: ignore[no-untyped-def]
    w, enc, dicts, tr = setup
    n_pos = enc.clean.shape[1]
    target = parse_target(target_name, dicts, n_pos)
    if target.key is not None and float(tr.feats[target.key][:, target.pos,
                                                              target.index].abs().sum()) == 0:
        # pick an active feature at that site and position instead
        active = (tr.feats[target.key][:, target.pos] > 0).sum(0).argmax()
        target = Target(target.key, int(active), target.pos)
    att = attribute(w, tr, dicts, enc, target)
    full = frozen_target(w, tr, dicts, enc, target)
    assert full == pytest.approx(att.value, abs=1e-9)
    assert len(att.scores) > 10
    ranked = sorted(att.scores, key=lambda k: -abs(att.scores[k]))
    for name in ranked[:12] + ranked[-4:]:
        effect = full - frozen_target(w, tr, dicts, enc, target, remove=[name])
        assert effect == pytest.approx(att.scores[name], abs=1e-5), name


def test_detached_nodes_are_held_in_the_reference(setup) -> None:  # type: ignore[no-untyped-def]
    w, enc, dicts, tr = setup
    target = Target()
    base = attribute(w, tr, dicts, enc, target)
    pruned = attribute(w, tr, dicts, enc, target, top=3)
    detached = set(pruned.scores) - set(pruned.kept)
    assert detached
    full = frozen_target(w, tr, dicts, enc, target)
    lower = [k for k in pruned.scores if k.startswith(("a0", "m0", "input"))]
    changed = 0
    for name in sorted(lower, key=lambda k: -abs(pruned.scores[k]))[:8]:
        effect = full - frozen_target(w, tr, dicts, enc, target, remove=[name], hold=detached)
        assert effect == pytest.approx(pruned.scores[name], abs=1e-5), name
        changed += abs(pruned.scores[name] - base.scores.get(name, 0.0)) > 1e-6
    assert changed  # detaching changed what reaches the lower layers


def test_edges_into_a_node_sum_to_its_attribution(setup) -> None:  # type: ignore[no-untyped-def]
    w, enc, dicts, tr = setup
    att = attribute(w, tr, dicts, enc, Target(), edge_nodes=6)
    assert att.edges
    into_logits = sum(v for (s, t), v in att.edges.items() if t == "logits")
    # every node writes into the logits directly too: the direct edges of all nodes plus the
    # biases give the target; check the direct effect of the top node against the frozen model
    top = max((k for k in att.kept if ".f" in k and k.startswith("m1")),
              key=lambda k: abs(att.scores[k]))
    # m1 is the last writer: its whole effect is direct
    assert att.edges[(top, "logits")] == pytest.approx(att.scores[top], abs=1e-9)
    assert into_logits != 0


def test_feature_attr_refuses_without_transcoders(setup) -> None:  # type: ignore[no-untyped-def]
    w, enc, dicts, tr = setup
    only_attn = DictionarySet(tuple(d for d in dicts.dictionaries if d.site == "attn_out"))
    with pytest.raises(WorkbenchError, match="needs a transcoder for every MLP"):
        attribute(w, run(w, enc.clean, only_attn, "keep"), only_attn, enc, Target())
    with pytest.raises(WorkbenchError, match="positions are"):
        parse_target("m0.f1@99", dicts, enc.clean.shape[1])


def test_qk_shares_are_exact_on_each_side(setup) -> None:  # type: ignore[no-untyped-def]
    """Removing a node's write at the query position changes the pattern entry's score by
    its query-side share (the key side held), and likewise for the key side."""
    w, enc, dicts, tr = setup
    att = attribute(w, tr, dicts, enc, Target(), qk=3)
    assert len(att.qk) == 6 and att.qk[0].weight >= att.qk[-1].weight > 0  # 3 per layer
    entry = next(e for e in att.qk if e.head.startswith("a1"))  # reads features, not just input
    layer, head = (int(x) for x in entry.head[1:].split("."))
    assert any(".f" in name for name in entry.query)

    def score(drop: str, side: str) -> float:
        x = tr.resid_pre[layer].clone()
        node = parse_node(drop)
        pos = entry.q if side == "query" else entry.k
        assert node.pos == pos
        if node.kind == "input":
            write = tr.embed[:, pos]
        else:
            d = dicts.get(f"{node.site}{node.layer}")
            write = tr.errors[d.key][:, pos] if node.index == d.d_sae else \
                tr.feats[d.key][:, pos, node.index, None] * d.W_dec[node.index]
        scale = (x - x.mean(-1, keepdim=True)).pow(2).mean(-1, keepdim=True).add(w.eps).sqrt()
        y = x.clone()
        y[:, pos] -= write
        ln_clean = (x - x.mean(-1, keepdim=True)) / scale
        ln_drop = (y - y.mean(-1, keepdim=True)) / scale
        q_src = ln_drop if side == "query" else ln_clean
        k_src = ln_drop if side == "key" else ln_clean
        qv = q_src[:, entry.q] @ w.W_Q[layer, head] + w.b_Q[layer, head]
        kv = k_src[:, entry.k] @ w.W_K[layer, head] + w.b_K[layer, head]
        return float(((qv * kv).sum(-1) / w.d_head ** 0.5).mean())

    for side, shares in (("query", entry.query), ("key", entry.key)):
        for name, share in list(shares.items())[:3]:
            assert entry.score - score(name, side) == pytest.approx(share, abs=1e-6), name
