"""The ablation engine's identities, each checked against an independent computation.

1. The fused forward reproduces the bridge's logits (tiny model and `add3`).
2. The full circuit reproduces the clean run and the empty circuit the all-ablated run, at node
   and edge level, in every mode; resample's empty model is the corrupted run.
3. Ablating every edge into a receiver equals ablating the receiver's input.
4. Single edge, node and mixed-mode ablations agree with hand-written TransformerLens hooks.
5. Recompute-from-layer is bit-identical to a fresh computation; positions, neurons and bad
   input behave as documented; edge masks carry EAP's gradient; the bridge is left untouched.

Everything runs on CPU on 32-64 prompts; the whole file takes a few seconds after model load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import Tensor

from workbench.ablation import Ablation, AblationEngine
from workbench.errors import WorkbenchError
from workbench.forward import MODES, Mode, Patch
from workbench.graph import LOGITS, Circuit, Edge, Graph, Node, head, mlp, parse_edge, parse_node
from workbench.metrics import answer_logits, logit_diff_per_prompt
from workbench.model import LoadedModel, load_model
from workbench.tasks import make_task
from workbench.tasks.encode import EncodedPrompts, encode

ATOL = 1e-4  # logits are ~10-30: float32 sums of deltas round at ~1e-5
BRIDGE_ATOL = 1e-4  # engine vs the bridge's own forward


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """These are many small forwards: on a shared 2-core machine one thread is much faster
    (a second thread mostly waits for a busy core). Restored for the rest of the suite."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def prompts(model: LoadedModel, n: int) -> EncodedPrompts:
    return encode(make_task("addition", digits=3).prompt_set(n, seed=1), model.tokenizer)


@pytest.fixture(scope="module")
def tiny_enc(tiny_model: LoadedModel) -> EncodedPrompts:
    return prompts(tiny_model, 32)


@pytest.fixture(scope="module")
def add3_enc(add3: LoadedModel) -> EncodedPrompts:
    return prompts(add3, 64)


@pytest.fixture
def add3_engine(add3: LoadedModel, add3_enc: EncodedPrompts) -> AblationEngine:
    return AblationEngine(add3, add3_enc)  # function scope: `logits` keeps restart state


def close(a: Tensor, b: Tensor, atol: float = ATOL) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=0)


def changed(a: Tensor, b: Tensor, by: float = 1e-3) -> bool:
    """The intervention did something measurable (so an agreement is not vacuous)."""
    return float((a - b).abs().max()) > by


# --- 1. the fused forward is the bridge's forward ------------------------------------------


@pytest.mark.parametrize("name", ["tiny_model", "add3"])
def test_fused_forward_reproduces_bridge_logits(name: str, request: pytest.FixtureRequest
                                                ) -> None:
    model: LoadedModel = request.getfixturevalue(name)
    enc = prompts(model, 32)
    engine = AblationEngine(model, enc)
    assert engine.clean_logits.shape == (enc.n, enc.n_answer, model.card.d_vocab)
    assert close(engine.clean_logits, answer_logits(model.logits(enc.clean), enc), BRIDGE_ATOL)
    assert close(engine.corrupted_logits, answer_logits(model.logits(enc.corrupted), enc),
                 BRIDGE_ATOL)
    assert close(engine.logits([]), engine.clean_logits, 0.0)  # no ablation: the cached run


# --- 2. full and empty circuits ------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_model", "add3"])
@pytest.mark.parametrize("mode", MODES)
def test_full_circuit_reproduces_clean_logits(name: str, mode: Mode,
                                              request: pytest.FixtureRequest) -> None:
    model: LoadedModel = request.getfixturevalue(name)
    engine = AblationEngine(model, prompts(model, 32))
    graph = engine.graph
    nodes = engine.circuit_logits(Circuit.from_nodes(graph.sources, graph), mode, "node")
    edges = engine.circuit_logits(Circuit.from_edges(graph.edges), mode, "edge")
    assert close(nodes, engine.clean_logits)
    assert close(edges, engine.clean_logits)
    # ... and the full circuit is not trivially the empty one.
    assert changed(engine.empty_logits(mode), engine.clean_logits, 1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_empty_circuit_reproduces_all_ablated_logits(add3_engine: AblationEngine,
                                                     mode: Mode) -> None:
    engine, w = add3_engine, add3_engine.weights
    empty = engine.empty_logits(mode)
    edge_level = engine.circuit_logits(Circuit.from_edges([]), mode, "edge")
    assert close(edge_level, empty)
    # Node level: every source ablated (input included) leaves only the ablation values.
    every_source = engine.logits([Ablation(n, mode) for n in engine.graph.sources])
    assert close(every_source, empty)
    # The empty model computed by hand: the logits read the residual of ablation values only.
    if mode == "zero":
        final = w.b_O.sum(0).expand(engine.enc.n, engine.n_pos, -1)  # only attention biases
    elif mode == "mean":
        final = engine.clean.resid_pre[-1].mean(0, keepdim=True).expand(engine.enc.n, -1, -1)
    else:
        final = engine.corrupted.resid_pre[-1]
    x = final - final.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + w.eps).sqrt()
    by_hand = answer_logits(x @ w.W_U + w.b_U, engine.enc)
    assert close(empty, by_hand)
    if mode == "resample":
        assert close(empty, engine.corrupted_logits)
    assert changed(empty, engine.clean_logits)


# --- 3. edges into a receiver == the receiver's input ---------------------------------------


def edges_into(graph: Graph, receiver: Node) -> list[Edge]:
    return [Edge(src, receiver) for src in graph.upstream(receiver)]


@pytest.mark.parametrize("mode", MODES)
def test_edges_into_head_equal_its_qkv_inputs(add3_engine: AblationEngine, mode: Mode) -> None:
    engine, graph = add3_engine, add3_engine.graph
    ports = [parse_node(f"a1.0<{p}>") for p in "qkv"]
    by_edges = engine.logits([Ablation(e, mode) for r in ports for e in edges_into(graph, r)])
    by_inputs = engine.logits([Ablation(r, mode) for r in ports])
    assert close(by_edges, by_inputs)
    assert changed(by_inputs, engine.clean_logits, 1e-4)
    for r in ports:  # each port alone, too
        one = engine.logits([Ablation(e, mode) for e in edges_into(graph, r)])
        assert close(one, engine.logits([Ablation(r, mode)]))


@pytest.mark.parametrize("mode", MODES)
def test_edges_into_mlp_and_logits_equal_their_inputs(add3_engine: AblationEngine,
                                                      mode: Mode) -> None:
    engine, graph, lay = add3_engine, add3_engine.graph, add3_engine.graph
    by_edges = engine.logits([Ablation(e, mode) for e in edges_into(graph, mlp(1))])
    receiver = torch.ones(lay.n_receivers, engine.n_pos)
    receiver[lay.mlp_receiver(1)] = 0.0  # m1's input, every position
    by_input = engine.forward.run(engine.enc.clean, engine.enc.answer_pos,
                                  Patch(receiver=receiver, edge_mode=mode), engine.values)[0]
    assert close(by_edges, by_input)
    assert changed(by_input, engine.clean_logits)
    into_logits = engine.logits([Ablation(e, mode) for e in edges_into(graph, LOGITS)])
    assert close(into_logits, engine.logits([Ablation(LOGITS, mode)]))
    assert close(into_logits, engine.empty_logits(mode))


def test_layout_indexes_edges_like_the_graph(add3_engine: AblationEngine) -> None:
    """The engine turns `graph.edge_index` into positions of the layout's keep vector."""
    graph, lay = add3_engine.graph, add3_engine.graph
    assert (lay.n_edges, lay.n_sources, lay.n_receivers) == (
        graph.n_edges, len(graph.sources), len(graph.receivers))
    for i, edge in enumerate(graph.edges):
        keep = torch.ones(lay.n_edges)
        keep[i] = 0.0
        src, dst = graph.source_index[edge.src], edge.dst
        if dst.kind == "attn":
            assert dst.layer is not None
            block = lay.attn_keep(keep, dst.layer)
            assert block[src, "qkv".index(dst.port or ""), dst.index] == 0
        elif dst.kind == "mlp":
            assert dst.layer is not None
            block = lay.mlp_keep(keep, dst.layer)
            assert block[src] == 0
        else:
            block = lay.logits_keep(keep)
            assert block[src] == 0
        assert int((block == 0).sum()) == 1, edge


# --- 4. agreement with hand-written TransformerLens hooks -----------------------------------


@pytest.fixture(scope="module")
def fresh(tiny_checkpoint: Path) -> Iterator[dict[str, LoadedModel]]:
    """Private copies of the models: these tests switch bridge flags on (and back off), so they
    must not touch the session-wide fixtures."""
    models = {"tiny": load_model(str(tiny_checkpoint), device="cpu"),
              "add3": load_model("add3", device="cpu")}
    yield models
    for model in models.values():
        model.bridge.set_use_split_qkv_input(False)
        model.bridge.set_use_attn_result(False)


def cache(model: LoadedModel, tokens: Tensor, name: str) -> Tensor:
    _, acts = model.bridge.run_with_cache(tokens, names_filter=lambda n: n == name)
    return acts[name].detach().clone()


def run_hooked(model: LoadedModel, enc: EncodedPrompts, hooks: list[tuple[str, Any]]
               ) -> Tensor:
    calls: list[str] = []

    def counted(name: str, fn: Any) -> Any:
        def hook(x: Tensor, hook: Any) -> Tensor:
            calls.append(name)
            return fn(x.clone())
        return hook

    with torch.no_grad():
        out = model.bridge.run_with_hooks(
            enc.clean, fwd_hooks=[(name, counted(name, fn)) for name, fn in hooks])
    assert sorted(set(calls)) == sorted(name for name, _ in hooks)  # every hook fired
    return answer_logits(out, enc)


@pytest.mark.parametrize(("name", "port"), [("tiny", "v"), ("add3", "q"), ("add3", "k"),
                                          ("add3", "v")])
def test_single_edge_matches_transformer_lens_hook(fresh: dict[str, LoadedModel], name: str,
                                                   port: str) -> None:
    """`a0.1->a1.0<p>` resample: head 1.0's p-input gets head 0.1's corrupted result instead
    of its clean one; no other head's input changes. (The random tiny model attends almost
    uniformly, so its q/k edges move logits by ~1e-6: those are checked on `add3`.)"""
    model = fresh[name]
    bridge = model.bridge
    enc = prompts(model, 32)
    engine = AblationEngine(model, enc)
    bridge.set_use_split_qkv_input(True)
    bridge.set_use_attn_result(True)
    try:
        result = "blocks.0.attn.hook_result"  # (batch, pos, head, d_model)
        delta = (cache(model, enc.corrupted, result) - cache(model, enc.clean, result))[:, :, 1]

        def patch(x: Tensor) -> Tensor:  # (batch, pos, head, d_model), before ln1
            x[:, :, 0] += delta
            return x

        ref = run_hooked(model, enc, [(f"blocks.1.hook_{port}_input", patch)])
    finally:
        bridge.set_use_split_qkv_input(False)
        bridge.set_use_attn_result(False)
    got = engine.logits([Ablation(parse_edge(f"a0.1->a1.0<{port}>"), "resample")])
    assert close(got, ref, BRIDGE_ATOL if name == "add3" else 1e-6)
    assert changed(got, engine.clean_logits, 0.1 if name == "add3" else 1e-4)
    assert not bridge.cfg.use_split_qkv_input and not bridge.cfg.use_attn_result


def test_node_and_mixed_modes_match_transformer_lens_hooks(fresh: dict[str, LoadedModel]
                                                           ) -> None:
    model = fresh["tiny"]
    enc = prompts(model, 32)
    engine = AblationEngine(model, enc)
    z0, z1 = "blocks.0.attn.hook_z", "blocks.1.attn.hook_z"  # (batch, pos, head, d_head)
    mean_z0 = cache(model, enc.clean, z0).mean(0)  # per position, over the batch
    corrupt_z1 = cache(model, enc.corrupted, z1)

    def mean_head1(z: Tensor) -> Tensor:
        z[:, :, 1] = mean_z0[:, 1]
        return z

    ref = run_hooked(model, enc, [(z0, mean_head1)])
    got = engine.logits([Ablation(parse_node("a0.1"), "mean")])
    assert close(got, ref, 1e-6)  # tiny random weights: small logits, small effects
    assert changed(got, engine.clean_logits, 1e-4)

    def zero_head0(z: Tensor) -> Tensor:
        z[:, :, 0] = 0.0
        return z

    def resample_head1(z: Tensor) -> Tensor:
        z[:, :, 1] = corrupt_z1[:, :, 1]
        return z

    ref = run_hooked(model, enc, [(z0, zero_head0), (z1, resample_head1)])
    mixed = engine.logits([Ablation(head(0, 0), "zero"), Ablation(head(1, 1), "resample")])
    assert close(mixed, ref, 1e-6)
    for mode in MODES:  # the modes really differ per node
        same = engine.logits([Ablation(head(0, 0), mode), Ablation(head(1, 1), mode)])
        assert changed(mixed, same, 1e-5)


# --- 5. restart, positions, neurons, errors, gradients, hygiene -----------------------------


def test_recompute_from_layer_is_exact(add3: LoadedModel, add3_enc: EncodedPrompts) -> None:
    engine = AblationEngine(add3, add3_enc)
    last = engine.weights.n_layers - 1
    e1, e2, e3 = (parse_edge(s) for s in ("m0->logits", "a1.0->logits", "a0.0->m1"))
    steps: list[tuple[list[Ablation], int]] = [
        ([Ablation(head(0, 1))], 0),
        ([Ablation(head(0, 1)), Ablation(head(last, 2))], last),  # toggle in the last layer
        ([Ablation(head(0, 1)), Ablation(head(last, 2)), Ablation(head(last, 3, "k"), "zero")],
         last),
        ([Ablation(head(last, 2))], 0),  # restoring a layer-0 head reruns everything
        ([Ablation(head(last, 2))], last + 1),  # nothing changed: only the unembedding
        ([Ablation(head(last, 2)), Ablation(LOGITS, "resample")], last + 1),
        ([Ablation(head(last, 2))], last + 1),
        ([], last),
        ([Ablation(e1, "resample")], 0),  # edges on: every layer's deltas are needed
        ([Ablation(e1, "resample"), Ablation(e2, "resample")], last + 1),
        ([Ablation(e1, "resample"), Ablation(e2, "resample"), Ablation(e3, "resample")], last),
        ([Ablation(e1, "mean")], 0),  # another edge mode: other deltas
    ]
    for ablations, start in steps:
        got = engine.logits(ablations)
        assert engine.last_start == start, ablations
        fresh = AblationEngine(add3, add3_enc)
        want = fresh.logits(ablations)
        assert fresh.last_start == 0
        assert torch.equal(got, want), ablations


def test_position_specific_ablation(add3_engine: AblationEngine, add3: LoadedModel,
                                    add3_enc: EncodedPrompts) -> None:
    engine, n_pos = add3_engine, add3_engine.n_pos
    node = head(0, 1)
    everywhere = engine.logits([Ablation(node, "resample")])
    first = engine.logits([Ablation(node.at(0), "resample")])
    assert changed(everywhere, first, 1e-4)
    assert torch.equal(engine.logits([Ablation(node.at(-1))]),
                       engine.logits([Ablation(node.at(n_pos - 1))]))
    # Causality: ablating the last token changes the last answer digit only.
    assert int(add3_enc.answer_pos.max()) == n_pos - 1
    last = engine.logits([Ablation(node.at(-1), "resample")])
    assert torch.equal(last[:, :-1], engine.clean_logits[:, :-1])
    assert changed(last[:, -1], engine.clean_logits[:, -1])
    # One padding column after every answer position: ablating there changes nothing at all.
    pad = torch.full((add3_enc.n, 1), add3.tokenizer.pad_token_id)
    padded = dataclasses.replace(add3_enc, clean=torch.cat([add3_enc.clean, pad], 1),
                                 corrupted=torch.cat([add3_enc.corrupted, pad], 1))
    wide = AblationEngine(add3, padded)
    assert close(wide.clean_logits, engine.clean_logits)
    for mode in MODES:
        after = wide.logits([Ablation(node.at(-1), mode), Ablation(mlp(1, pos=n_pos), mode)])
        assert torch.equal(after, wide.clean_logits)


def test_neurons(add3_engine: AblationEngine, add3: LoadedModel,
                 add3_enc: EncodedPrompts) -> None:
    engine, d_mlp = add3_engine, add3_engine.weights.d_mlp
    neurons = [Node("neuron", 0, i) for i in range(d_mlp)]
    # Linear through W_out: mean(post) @ W_out + b_out == mean(mlp_out), per position.
    all_mean = engine.logits([Ablation(n, "mean") for n in neurons])
    assert close(all_mean, engine.logits([Ablation(mlp(0), "mean")]), 1e-4)
    assert changed(all_mean, engine.clean_logits)
    # Zeroing every neuron leaves b_out; zeroing the MLP removes it too.
    all_zero = engine.logits([Ablation(n, "zero") for n in neurons])
    assert changed(all_zero, engine.logits([Ablation(mlp(0), "zero")]), 1e-5)
    engine.logits([])
    one = engine.logits([Ablation(Node("neuron", 1, 3), "resample")])
    assert engine.last_start == 1  # a neuron in layer 1 reruns layer 1 only
    assert changed(one, engine.clean_logits, 1e-6)
    fresh = AblationEngine(add3, add3_enc)
    assert torch.equal(one, fresh.logits([Ablation(Node("neuron", 1, 3), "resample")]))


def test_mixed_modes_and_bad_ablations(add3_engine: AblationEngine) -> None:
    engine = add3_engine
    mixed = engine.logits([Ablation(head(0, 0), "zero"), Ablation(head(1, 1), "mean"),
                           Ablation(parse_node("a1.2<q>"), "resample"),
                           Ablation(Node("neuron", 0, 5), "zero")])
    assert changed(mixed, engine.clean_logits)
    assert close(engine.logits([Ablation(head(0, 0)), Ablation(head(0, 0))]),
                 engine.logits([Ablation(head(0, 0))]), 0.0)  # same mode twice: once
    twice = [
        [Ablation(head(0, 0), "zero"), Ablation(head(0, 0), "mean")],
        [Ablation(head(0, 0), "zero"), Ablation(head(0, 0).at(-1), "mean")],
        [Ablation(parse_node("a1.0<k>"), "zero"), Ablation(parse_node("a1.0<k>"), "resample")],
        [Ablation(Node("neuron", 1, 7), "zero"), Ablation(Node("neuron", 1, 7), "mean")],
    ]
    for ablations in twice:
        with pytest.raises(WorkbenchError, match="ablated twice"):
            engine.logits(ablations)
    with pytest.raises(WorkbenchError, match="share one mode"):
        engine.logits([Ablation(parse_edge("m0->logits"), "zero"),
                       Ablation(parse_edge("m1->logits"), "mean")])
    n_pos, d_mlp = engine.n_pos, engine.weights.d_mlp
    for pos in (n_pos, -n_pos - 1):
        with pytest.raises(WorkbenchError, match=rf"position {pos} is outside .*{n_pos} tokens"):
            engine.logits([Ablation(head(0, 0).at(pos))])
    with pytest.raises(WorkbenchError, match=rf"m0\.n{d_mlp}: MLP 0 has neurons 0-{d_mlp - 1}"):
        engine.logits([Ablation(Node("neuron", 0, d_mlp))])
    with pytest.raises(WorkbenchError, match="layers 0-1"):
        engine.logits([Ablation(head(2, 0))])
    with pytest.raises(WorkbenchError, match="heads 0-3"):
        engine.logits([Ablation(head(0, 4))])
    with pytest.raises(WorkbenchError, match="not in this model's graph"):
        engine.logits([Ablation(Edge(mlp(1), head(1, 0, "q")))])  # m1 is downstream of a1.0
    assert close(engine.logits([]), engine.clean_logits, 0.0)  # errors left no state behind


def logit_diff(engine: AblationEngine, keep: Tensor, mode: Mode) -> Tensor:
    return logit_diff_per_prompt(engine.edge_logits(keep, mode), engine.enc).mean()


def test_edge_mask_gradient_flows(add3_engine: AblationEngine) -> None:
    n = add3_engine.graph.n_edges
    keep = torch.ones(n, requires_grad=True)
    logit_diff(add3_engine, keep, "mean").backward()
    assert keep.grad is not None and torch.isfinite(keep.grad).all()
    assert int((keep.grad.abs() > 1e-3).sum()) > n // 10
    with pytest.raises(WorkbenchError, match=f"{n} entries"):
        add3_engine.edge_logits(torch.ones(n - 1), "mean")


def double_engine(model: LoadedModel, enc: EncodedPrompts) -> AblationEngine:
    """The engine on a float64 load of the same checkpoint, so finite differences are exact
    enough to test a derivative to 1e-3 (float32 noise / eps would swamp it)."""
    assert model.directory is not None
    return AblationEngine(load_model(str(model.directory), device="cpu", dtype="float64"), enc)


@pytest.mark.parametrize("mode", ["mean", "resample"])
def test_edge_gradient_is_attribution_patching(add3: LoadedModel, mode: Mode) -> None:
    """d metric / d keep[e] at keep = 1 equals (M(keep) - M(keep with keep[e] = 1 - eps)) / eps:
    the EAP score of edge e is the gradient of the edge mask."""
    engine = double_engine(add3, prompts(add3, 32))
    n = engine.graph.n_edges
    keep = torch.ones(n, dtype=torch.float64, requires_grad=True)
    full = logit_diff(engine, keep, mode)
    full.backward()
    assert keep.grad is not None
    grad = keep.grad
    assert torch.isclose(full, logit_diff_per_prompt(engine.clean_logits, engine.enc).mean())
    big = (grad.abs() > 0.05 * grad.abs().max()).nonzero().flatten()
    chosen = grad.abs().argsort(descending=True)[:3].tolist() + big[torch.randperm(
        len(big), generator=torch.Generator().manual_seed(0))[:3]].tolist()
    eps = 1e-6
    for e in chosen:
        nudged = torch.ones(n, dtype=torch.float64)
        nudged[e] = 1 - eps
        with torch.no_grad():
            fd = float(full - logit_diff(engine, nudged, mode)) / eps
        assert fd == pytest.approx(float(grad[e]), rel=1e-3), engine.graph.edges[e]


def test_engine_leaves_the_bridge_unchanged(tiny_model: LoadedModel,
                                            tiny_enc: EncodedPrompts) -> None:
    bridge = tiny_model.bridge

    def module_hooks() -> dict[str, tuple[int, ...]]:
        """transformers itself hooks some modules (output capture): count, don't forbid."""
        return {name: tuple(len(getattr(m, a)) for a in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
            for name, m in bridge.named_modules()}

    logits_before = tiny_model.logits(tiny_enc.clean)  # transformers hooks on first call
    hooks_before = module_hooks()
    before = {k: v.clone() for k, v in bridge.state_dict().items()}
    engine = AblationEngine(tiny_model, tiny_enc)
    engine.logits([Ablation(head(0, 1)), Ablation(parse_edge("a0.0->a1.1<v>"), "resample")])
    keep = torch.ones(engine.graph.n_edges, requires_grad=True)
    logit_diff(engine, keep, "mean").backward()
    engine.circuit_logits(Circuit.from_nodes([head(1, 0)], engine.graph), "zero")
    engine.perf(engine.logits([Ablation(mlp(0))]), "logit_diff", "mean")
    for name, point in bridge.hook_dict.items():
        assert not point.fwd_hooks and not point.bwd_hooks, name
    assert module_hooks() == hooks_before
    assert not any(p.requires_grad for p in bridge.parameters())
    assert not bridge.cfg.use_split_qkv_input and not bridge.cfg.use_attn_result
    after = bridge.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(tiny_model.logits(tiny_enc.clean), logits_before)


def test_qkv_input_grads_equal_autograd_through_layer_norm() -> None:
    """The head-space LayerNorm backward EAP uses equals autograd on ln(x) @ W_r for every
    receiver, also for reading weights that are not centred (the mean(g) term)."""
    from workbench.forward import _qkv_input_grads
    from workbench.weights import Weights, ln

    torch.manual_seed(0)
    b, p, h, d, e = 2, 3, 2, 8, 4
    fused = torch.randn(1, d, 3 * h * e, dtype=torch.float64) + 0.5  # (layer, d, q|k|v heads)
    w = SimpleNamespace(W_QKV=fused, n_heads=h, d_head=e, eps=1e-5)
    w.qkv_mats = lambda layer: Weights.qkv_mats(w, layer)  # type: ignore[arg-type]
    mats = w.qkv_mats(0)  # (3, head, d, e)
    x = torch.randn(b, p, d, dtype=torch.float64) * 3 + 1
    qkv = (ln(x, 1e-5) @ fused[0]).detach().requires_grad_(True)
    qkv.grad = torch.randn_like(qkv)
    grads = qkv.grad.view(b, p, 3, h, e)
    got = _qkv_input_grads(w, 0, x, qkv)  # type: ignore[arg-type]
    for port in range(3):
        for i in range(h):
            xr = x.clone().requires_grad_(True)
            out = torch.einsum("bpd,de->bpe", ln(xr, 1e-5), mats[port, i])
            out.backward(grads[:, :, port, i])
            torch.testing.assert_close(got[port, i], xr.grad)
