"""The plugin contract: every registered technique, run with default Params on the tiny model,
is deterministic, leaves the model as it found it, and names only nodes and edges that parse.

"As it found it" means: no hook on any TransformerLens hook point, every other module's torch
hooks exactly as before (transformers installs its own output-capturing hooks on the wrapped
model at the first forward, so those are compared with a snapshot taken after a warm-up
forward, not required to be absent), no parameter requiring grad, grad mode unchanged, and the
bridge's `use_split_qkv_input` / `use_attn_result` flags as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from test_features_attr import random_dicts  # SAEs/transcoders for feature_attr, feature_info
from transformer_lens.hook_points import HookPoint

from workbench.ablation import AblationEngine
from workbench.graph import Circuit, Graph, parse_edge, parse_node
from workbench.model import LoadedModel
from workbench.plugins import (
    CircuitResult,
    Composite,
    Context,
    EdgeScores,
    NodeScores,
    Table,
    load_registry,
)
from workbench.tasks import make_task
from workbench.tasks.encode import encode

REGISTRY = load_registry()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: thread hand-off costs more than it saves on the shared 2-core machine
    (measured 5-30x per engine call under load). Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ctx(tiny_model: LoadedModel) -> Context:
    prompts = make_task("addition", digits=2).prompt_set(n=8, seed=1)
    enc = encode(prompts, tiny_model.tokenizer)
    engine = AblationEngine(tiny_model, enc, Graph.of(tiny_model.card))
    with torch.no_grad():
        tiny_model.bridge(enc.clean[:1])  # warm-up: transformers installs its capture hooks
    dicts = random_dicts(tiny_model.card.d_model, tiny_model.card.n_layers, dtype=torch.float32)
    return Context(model=tiny_model, prompts=prompts, enc=engine.enc, metric="logit_diff",
                   mode="mean", graph=engine.graph, engine=engine, dictionaries=dicts)


# Techniques that read a task's own prompts run on bpe-numbers with `task years`.
NEEDS_YEARS = {"year_probs"}


@pytest.fixture(scope="module")
def years_ctx(bpe_numbers: LoadedModel) -> Context:
    prompts = make_task("years").prompt_set(n=8, seed=1)
    enc = encode(prompts, bpe_numbers.tokenizer)
    engine = AblationEngine(bpe_numbers, enc, Graph.of(bpe_numbers.card))
    with torch.no_grad():
        bpe_numbers.bridge(enc.clean[:1])
    return Context(model=bpe_numbers, prompts=prompts, enc=engine.enc, metric="prob_diff",
                   mode="mean", graph=engine.graph, engine=engine)


def model_state(model: LoadedModel) -> dict[str, Any]:
    bridge = model.bridge
    modules = list(bridge.named_modules())
    original = getattr(bridge, "original_model", None)
    if isinstance(original, torch.nn.Module):
        modules += [(f"original.{n}", m) for n, m in original.named_modules()]
    hooks = {name: tuple(id(h) for d in (m._forward_hooks, m._forward_pre_hooks,
                                         m._backward_hooks, m._backward_pre_hooks)
                         for h in d.values())
             for name, m in modules}
    lens_hooks = sorted(name for name, m in modules if isinstance(m, HookPoint) and (
        m._forward_hooks or m._backward_hooks or m.fwd_hooks or m.bwd_hooks))
    params = [p for _, m in modules for p in m.parameters(recurse=False)]
    return {
        "hooks": hooks,
        "lens_hooks": lens_hooks,
        "grad_params": sum(bool(p.requires_grad) for p in params),
        "grad_mode": torch.is_grad_enabled(),
        "flags": (bool(bridge.cfg.use_split_qkv_input), bool(bridge.cfg.use_attn_result)),
    }


def assert_same(a: Any, b: Any, where: str) -> None:
    """Two runs' results are equal field by field, tensors exactly."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert torch.equal(a.detach().cpu(), b.detach().cpu()), f"{where} differs between runs"
    elif isinstance(a, Graph):
        assert (a.n_layers, a.n_heads) == (b.n_layers, b.n_heads), where
    elif isinstance(a, Circuit):
        assert a.to_json() == b.to_json(), f"{where} differs between runs"
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, tuple | list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys differ between runs"
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    else:
        assert a == b, f"{where} differs between runs"


def names_parse(result: Any) -> None:
    if isinstance(result, Composite):
        for _, part in result.parts:
            names_parse(part)
    elif isinstance(result, NodeScores):
        for name in result.scores:
            assert str(parse_node(name)) == name
    elif isinstance(result, EdgeScores):
        assert result.values.shape == (result.graph.n_edges,)
        for edge, _ in result.ranked()[:50]:
            assert str(parse_edge(str(edge))) == str(edge)
    elif isinstance(result, CircuitResult):
        for node in result.circuit.nodes:
            assert str(parse_node(str(node))) == str(node)
        for edge in result.circuit.edges:
            assert str(parse_edge(str(edge))) == str(edge)
    elif isinstance(result, Table):
        assert result.values.shape == (len(result.rows), len(result.cols))
    elif callable(getattr(result, "select", None)):  # results that make their own circuits
        circuit = result.select(top=20)
        for node in circuit.nodes:
            assert str(parse_node(str(node))) == str(node)
        for edge in circuit.edges:
            assert str(parse_edge(str(edge))) == str(edge)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_plugin_contract(name: str, ctx: Context, request: pytest.FixtureRequest) -> None:
    if name in NEEDS_YEARS:
        ctx = request.getfixturevalue("years_ctx")
    tech = REGISTRY[name]
    assert tech.name == name and tech.cost, f"{name} must state its cost"
    before = model_state(ctx.model)
    first = tech.run(ctx, tech.Params())
    assert model_state(ctx.model) == before, f"{name} changed the model's state"
    second = tech.run(ctx, tech.Params())
    assert model_state(ctx.model) == before
    assert first.summary() == second.summary(), f"{name} is not deterministic"
    assert_same(first, second, name)
    names_parse(first)


def test_the_state_check_sees_leaks(ctx: Context) -> None:
    """A hook, a grad flag or a q/k/v-split flag left behind must change `model_state`."""
    bridge = ctx.model.bridge
    before = model_state(ctx.model)
    point = bridge.get_hook_point("blocks.0.attn.hook_pattern")
    handle = point.add_hook(lambda act, hook: None, dir="fwd")
    assert model_state(ctx.model) != before
    handle.hook.remove()
    point.fwd_hooks.clear()
    param = next(bridge.parameters())
    param.requires_grad_(True)
    assert model_state(ctx.model) != before
    param.requires_grad_(False)
    bridge.set_use_split_qkv_input(True)
    assert model_state(ctx.model) != before
    bridge.set_use_split_qkv_input(False)
    assert model_state(ctx.model) == before


def test_registry_has_the_built_ins() -> None:
    assert {"dla", "logit_lens", "attn", "ov_copy", "ablate_each"} <= set(REGISTRY)
