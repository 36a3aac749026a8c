"""Dictionary files: SAELens layout round trip, circuit-tracer layout, hub names through the
Hugging Face cache (a cache folder written here; nothing downloads), bad files, and that the
activation spaces the dictionaries read are the hook points their files name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from workbench.errors import WorkbenchError
from workbench.features.dictionary import Dictionary
from workbench.features.files import (
    load_circuit_tracer,
    load_folder,
    load_saelens,
    resolve,
    save_saelens,
)
from workbench.features.replacement import DictionarySet, run
from workbench.hooks import Site, capture, hook_name
from workbench.model import LoadedModel
from workbench.tasks import make_task
from workbench.tasks.encode import encode
from workbench.weights import Weights


def make(site: str = "attn_out", layer: int = 0, d: int = 16, n: int = 40,
         sparsity: str = "jumprelu", seed: int = 0) -> Dictionary:
    g = torch.Generator().manual_seed(seed)
    return Dictionary(site=site, layer=layer, W_enc=torch.randn(d, n, generator=g),  # type: ignore[arg-type]
                      b_enc=torch.randn(n, generator=g), W_dec=torch.randn(n, d, generator=g),
                      b_dec=torch.randn(d, generator=g), sparsity=sparsity,  # type: ignore[arg-type]
                      k=4 if sparsity == "topk" else None,
                      threshold=torch.rand(n, generator=g) if sparsity == "jumprelu" else None)


@pytest.mark.parametrize(("site", "sparsity"), [("attn_out", "jumprelu"), ("mlp", "topk"),
                                                ("mlp_out", "relu"), ("resid_pre", "topk")])
def test_saelens_layout_round_trips(tmp_path: Path, site: str, sparsity: str) -> None:
    d = make(site, 1, sparsity=sparsity)
    save_saelens(d, tmp_path / "x", "tiny")
    cfg = json.loads((tmp_path / "x" / "cfg.json").read_text())
    assert cfg["d_in"] == 16 and cfg["d_sae"] == 40 and cfg["hook_layer"] == 1
    want = {"attn_out": "blocks.1.hook_attn_out", "mlp": "blocks.1.ln2.hook_normalized",
            "mlp_out": "blocks.1.hook_mlp_out", "resid_pre": "blocks.1.hook_resid_pre"}
    assert cfg["hook_name"] == want[site]
    if site == "mlp":
        assert cfg["hook_name_out"] == "blocks.1.hook_mlp_out" and cfg["d_out"] == 16
    back = load_saelens(tmp_path / "x")
    assert back.same_as(d)
    x = torch.randn(5, 16)
    torch.testing.assert_close(back(x), d(x), rtol=0, atol=0)


def test_a_hand_written_saelens_folder_loads(tmp_path: Path) -> None:
    """A folder as SAELens writes it (its own field names, no workbench block)."""
    folder = tmp_path / "blocks.0.hook_attn_out"
    folder.mkdir()
    g = torch.Generator().manual_seed(1)
    t = {"W_enc": torch.randn(16, 32, generator=g), "b_enc": torch.zeros(32),
         "W_dec": torch.randn(32, 16, generator=g), "b_dec": torch.zeros(16),
         "threshold": torch.full((32,), 0.5)}
    save_file(t, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": 16, "d_sae": 32, "hook_name":
        "blocks.0.hook_attn_out", "hook_layer": 0, "apply_b_dec_to_input": True,
        "normalize_activations": "none", "dtype": "float32", "model_name": "tiny"}))
    (d,) = load_folder(folder)
    assert (d.key, d.sparsity, d.apply_b_dec_to_input) == ("a0", "jumprelu", True)
    x = torch.randn(3, 16)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    torch.testing.assert_close(d.encode(x), pre * (pre > 0.5))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "standard", "d_in": 16, "d_sae": 32, "hook_name":
        "blocks.0.hook_attn_out", "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(WorkbenchError, match="normalize_activations"):
        load_folder(folder)


def test_circuit_tracer_layout_loads(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    for layer in range(2):  # circuit-tracer's converted files: W_enc (d_sae, d_model)
        save_file({"W_enc": torch.randn(48, 16, generator=g), "b_enc": torch.zeros(48),
                   "W_dec": torch.randn(48, 16, generator=g), "b_dec": torch.zeros(16),
                   "activation_function.threshold": torch.full((48,), 0.1)},
                  str(tmp_path / f"layer_{layer}.safetensors"))
    (tmp_path / "config.yaml").write_text(
        "model_name: tiny\nfeature_input_hook: ln2.hook_normalized\n"
        "feature_output_hook: hook_mlp_out\ntranscoders:\n  - layer_0.safetensors\n"
        "  - layer_1.safetensors\n")
    ds = load_circuit_tracer(tmp_path)
    assert [d.key for d in ds] == ["m0", "m1"]
    assert ds[0].W_enc.shape == (16, 48) and ds[0].sparsity == "jumprelu"
    (tmp_path / "config.yaml").write_text(
        "feature_input_hook: hook_resid_pre\nfeature_output_hook: hook_mlp_out\n"
        "transcoders: [layer_0.safetensors]\n")
    with pytest.raises(WorkbenchError, match="feature_input_hook"):
        load_folder(tmp_path)


def test_hub_names_resolve_through_the_local_cache(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hugging Face cache folder (models--owner--repo/snapshots/REV, refs/main) written
    here; huggingface_hub's own snapshot_download finds it with local_files_only."""
    repo = tmp_path / "hub" / "models--someone--tiny-saes"
    snap = repo / "snapshots" / ("a" * 40)
    save_saelens(make("attn_out", 0), snap / "blocks.0.hook_attn_out")
    save_saelens(make("mlp", 1, sparsity="topk"), snap / "blocks.1.mlp")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert [d.key for d in resolve("someone/tiny-saes")] == ["a0", "m1"]
    (d,) = resolve("someone/tiny-saes/blocks.1.mlp")
    assert d.key == "m1"
    with pytest.raises(WorkbenchError, match="not in the local Hugging Face cache"):
        resolve("someone/other-saes")


def test_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="no such folder"):
        resolve(str(tmp_path / "missing"))
    (tmp_path / "x").mkdir()
    with pytest.raises(WorkbenchError, match="no dictionaries here"):
        resolve(str(tmp_path / "x"))
    (tmp_path / "x" / "cfg.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="not JSON"):
        resolve(str(tmp_path / "x"))
    save_saelens(make(), tmp_path / "y")
    (tmp_path / "y" / "sae_weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(WorkbenchError, match="not a safetensors file"):
        resolve(str(tmp_path / "y"))


def test_sites_read_the_hook_points_their_files_name(tiny_model: LoadedModel) -> None:
    """What the replacement feeds a dictionary is the bridge's activation at the hook point
    its SAELens file names (compatibility mode = a processed TransformerLens model)."""
    enc = encode(make_task("addition", digits=2).prompt_set(6, seed=0), tiny_model.tokenizer)
    w = Weights.from_bridge(tiny_model.bridge)
    tr = run(w, enc.clean, DictionarySet(), "keep")
    names = {"attn": hook_name(Site.ATTN_OUT, 1), "ln2": hook_name(Site.LN2_NORMALIZED, 1),
             "mlp_out": hook_name(Site.MLP_OUT, 1), "mid": hook_name(Site.RESID_MID, 1)}
    acts = capture(tiny_model.bridge, enc.clean, list(names.values()))
    for key, mine in (("attn", tr.attn_true[1]), ("ln2", tr.mlp_in[1]),
                      ("mlp_out", tr.mlp_out[1]), ("mid", tr.resid_mid[1])):
        torch.testing.assert_close(acts[names[key]], mine, atol=1e-5, rtol=1e-4, msg=key)
