"""The engine API (`workbench.api`): each primitive against an independent reference, the one
keep polarity, and a third-party technique installed through an entry point.

- activations by name equal the engine's recorded runs and the bridge's own hooks' values;
- batched keep vectors equal one-at-a-time runs; a restart equals a run from layer 0, and a
  restart that would be wrong is refused;
- receiver gradients + edge products equal the autograd gradient of the edge keep vector;
- a `Patch` keep mask (1 = kept) with its mode equals the named ablation;
- PLUGINS.md's example, written to a temporary package with an entry_points.txt on sys.path,
  is found by `load_registry`, runs through `Session.execute`, and equals `run eap`.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import torch

from workbench.ablation import Ablation, AblationEngine
from workbench.engine.api import EngineAPI
from workbench.errors import WorkbenchError
from workbench.forward import MODES, Patch
from workbench.graph import head
from workbench.model import LoadedModel
from workbench.plugins import ENTRY_POINT_GROUP, load_registry
from workbench.session import Session
from workbench.tasks import make_task
from workbench.tasks.encode import encode

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def api(add3: LoadedModel) -> EngineAPI:
    enc = encode(make_task("addition", digits=3).prompt_set(12, seed=2), add3.tokenizer)
    return EngineAPI.of(AblationEngine(add3, enc))


def test_activations_by_name(api: EngineAPI) -> None:
    w = api.weights
    heads = api.head_outputs(1)
    for h in range(w.n_heads):
        torch.testing.assert_close(api.activation(f"a1.{h}"), heads[:, :, h])
    # The residual stream is the sum of every source's output plus the b_O biases.
    total = api.activation("input") + w.b_O[:2].sum(0)
    for layer in range(2):
        total = total + api.head_outputs(layer).sum(2) + api.activation(f"m{layer}")
    torch.testing.assert_close(total, api.residual(2), atol=1e-4, rtol=1e-4)
    assert api.activation("m0.n3").shape == api.post(0)[..., 3].shape
    assert api.activation("a0.1", run="mean").shape[0] == 1
    with pytest.raises(WorkbenchError, match="whole component"):
        api.activation("a0.1<q>")
    with pytest.raises(WorkbenchError, match="model has heads"):
        api.activation("a0.9")


def test_batched_and_restarted_edge_logits_equal_single_runs(api: EngineAPI) -> None:
    g = api.graph
    torch.manual_seed(0)
    keep = torch.ones(3, g.n_edges)
    late = torch.arange(g.attn_offset[1], g.n_edges)  # edges into layer 1 and the logits
    keep[:, late] = (torch.rand(3, late.numel()) > 0.3).float()
    batched = api.edge_logits(keep, "mean")
    restarted = api.edge_runner("mean").logits(keep, start_layer=1)
    for j in range(3):
        single = api.edge_logits(keep[j], "mean")
        torch.testing.assert_close(batched[j], single, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(restarted[j], single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(api.edge_logits(torch.ones(g.n_edges), "mean"), api.clean_logits,
                               atol=1e-5, rtol=1e-5)
    keep[0, 0] = 0.0  # an edge into layer 0 removed: a restart at 1 would be wrong
    with pytest.raises(WorkbenchError, match="start_layer=1 needs every edge"):
        api.edge_logits(keep, "mean", start_layer=1)
    with pytest.raises(WorkbenchError, match="one per edge"):
        api.edge_logits(torch.ones(5), "mean")


def test_receiver_grads_times_deltas_is_the_keep_gradient(api: EngineAPI) -> None:
    rows = slice(2, 9)
    keep = torch.ones(api.graph.n_edges, requires_grad=True)
    with torch.enable_grad():
        logits = api.edge_logits(keep, "resample", rows=rows)
        api.metric_values(logits, "prob", rows=rows).sum().backward()
    products = api.edge_products(api.source_deltas("resample", rows),
                                 api.receiver_grads("prob", "resample", rows))
    assert keep.grad is not None
    torch.testing.assert_close(products, keep.grad, atol=1e-6, rtol=1e-4)
    blocks = list(api.receiver_grads("prob", "resample", rows))
    assert sum(b.count for b in blocks) == api.graph.n_receivers
    assert [b.first for b in blocks] == sorted(b.first for b in blocks)


def test_residual_logits_and_swapped(api: EngineAPI) -> None:
    same = api.residual_logits(1, api.residual(1))
    torch.testing.assert_close(same, api.clean_logits, atol=1e-5, rtol=1e-5)
    swapped = api.swapped()
    torch.testing.assert_close(swapped.clean_logits, api.corrupted_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(swapped.activation("a0.0"), api.activation("a0.0", "corrupted"))


@pytest.mark.parametrize("mode", MODES)
def test_one_polarity_keep_masks_with_modes(add3: LoadedModel, mode: str) -> None:
    enc = encode(make_task("addition", digits=3).prompt_set(6, seed=1), add3.tokenizer)
    engine = AblationEngine(add3, enc)
    g = engine.graph
    keep = torch.ones(g.n_sources, engine.n_pos)
    keep[g.head_source(1, 2)] = 0.0  # 0 = ablated, like a zero in an edge keep vector
    modes = torch.full(keep.shape, MODES.index(mode), dtype=torch.long)
    by_mask = engine.forward.run(enc.clean, enc.answer_pos, Patch(node=keep, node_mode=modes),
                                 engine.values)[0]
    by_name = engine.logits([Ablation(head(1, 2), mode)])  # type: ignore[arg-type]
    torch.testing.assert_close(by_mask, by_name)
    half = keep.clone()
    half[g.head_source(1, 2)] = 0.5  # between: interpolates, as keep does for edges
    mid = engine.forward.run(enc.clean, enc.answer_pos, Patch(node=half, node_mode=modes),
                             engine.values)[0]
    assert not torch.allclose(mid, by_name) and not torch.allclose(mid, engine.clean_logits)


def _guide_example() -> str:
    text = (ROOT / "PLUGINS.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "TECHNIQUE = Technique(" in b)


def test_a_third_party_technique_installed_by_entry_point(
        add3: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "my_eap.py").write_text(_guide_example())
    info = site / "my_eap-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-eap\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        my_eap = my_eap:TECHNIQUE
        """))
    monkeypatch.syspath_prepend(str(site))
    registry = load_registry()
    assert "my_eap" in registry and registry["my_eap"].title == "EAP via the engine API"
    s = Session(model=add3, registry=registry)
    assert s.execute("task addition digits=3 n=16 seed=3").ok
    theirs = s.execute("run my_eap metric=prob")
    ours = s.execute("run eap metric=prob")
    assert theirs.ok and ours.ok, theirs.error
    assert theirs.out["metric"] == "prob" and theirs.out["technique"] == "my_eap"
    torch.testing.assert_close(theirs.result.values, ours.result.values)
    refused = s.execute("run my_eap metric=kl")
    assert not refused.ok and refused.error == (
        "my_eap: kl has no useful gradient at the clean run")
    assert s.execute(f"select {theirs.out['id']} top=10").ok
