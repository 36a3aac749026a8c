"""The engine is right for every GPT-2 variant we accept, or the variant is refused in one line.

A matrix of `GPT2Config` variants (attention scaling, upcast attention, epsilon, every
activation function researchers use, non-causal attention, an untied unembedding, a non-default
MLP width), each a random checkpoint built in a tmp dir with weights scaled so that attention is
far from uniform (checked) and LayerNorm gains/biases and value biases non-trivial (so folding
is exercised), loaded through `load_model`:

1. the engine's clean logits equal an independent forward: the *unfolded* checkpoint loaded by
   `transformers` itself (eager attention), centred, to 1e-6 relative (measured 2e-7 .. 4e-7,
   while the nearest variants, gelu vs gelu_new, differ by 2e-6);
2. the engine's own load-time check agrees (it compares with the folded reference model);
3. variants that cannot run are refused before loading, in one line naming the config field;
   an engine that disagrees with its model is refused naming the variant's fields (simulated by
   dropping the per-layer scale); `LoadedModel.wrap` runs the same checks, so a wrapped GPT-Neo
   bridge and an encoder-decoder GPT-2 are refused.

`bench/variants.py` prints the error per variant (float32 and bfloat16) from the same matrix.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from workbench.ablation import AblationEngine
from workbench.errors import WorkbenchError
from workbench.metrics import answer_logits
from workbench.model import LoadedModel, load_model
from workbench.tasks import make_task
from workbench.tasks.encode import EncodedPrompts, encode
from workbench.tokenizer import build_tokenizer, save_tokenizer

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "scale_attn_by_inverse_layer_idx": {"scale_attn_by_inverse_layer_idx": True},
    "reorder_and_upcast_attn": {"reorder_and_upcast_attn": True},
    "inverse_layer_idx+upcast": {"scale_attn_by_inverse_layer_idx": True,
                                 "reorder_and_upcast_attn": True},
    "scale_attn_weights=False": {"scale_attn_weights": False},
    "layer_norm_epsilon=0.5": {"layer_norm_epsilon": 0.5},
    **{f"act={a}": {"activation_function": a} for a in (
        "gelu", "relu", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu", "silu", "gelu_10",
        "tanh", "mish", "gelu_accurate")},
    "is_causal=False": {"is_causal": False},
    "untied unembedding": {"tie_word_embeddings": False},
    "n_inner=40": {"n_inner": 40},
}
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "add_cross_attention": ({"add_cross_attention": True}, "add_cross_attention=True"),
    "act=xielu": ({"activation_function": "xielu"}, "activation_function 'xielu' has learned"),
    "act=bogus": ({"activation_function": "bogus"}, "activation_function 'bogus' is not one"),
}


def build_variant(directory: Path, overrides: dict[str, Any], seed: int = 0) -> Path:
    """A random 3-layer GPT-2 (d_model 32, 4 heads) with `overrides`, saved with the digit
    tokenizer. q/k are scaled up so attention patterns are sharp; LayerNorm and bias
    parameters are random."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer()
    config = GPT2Config(n_layer=3, n_head=4, n_embd=32, n_positions=32, vocab_size=len(tok),
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, **overrides)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif name.endswith("c_attn.weight"):
                p[:, : 2 * 32].mul_(12.0)  # q and k: scores of order 10, sharp patterns
            elif name.endswith(("wte.weight", "wpe.weight", "lm_head.weight")):
                p.mul_(20.0)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    save_tokenizer(tok, directory)
    return directory


def prompts(model: LoadedModel, n: int = 16) -> EncodedPrompts:
    return encode(make_task("addition", digits=3).prompt_set(n, seed=3), model.tokenizer)


def reference_error(directory: Path, engine: AblationEngine) -> float:
    """max |engine - transformers on the unfolded checkpoint| / max |transformers| (centred
    answer logits), and a check that attention is not uniform."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(directory), attn_implementation="eager").eval()
    enc = engine.enc
    with torch.no_grad():
        out = hf(enc.clean, output_attentions=True)
    sharpest = max(float(a[:, :, -1].max()) for a in out.attentions)
    assert sharpest > 0.5, "attention is too uniform to test the scale"
    raw = out.logits - out.logits.mean(-1, keepdim=True)
    ref = answer_logits(raw, enc)
    return float((engine.clean_logits.float() - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def variant_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("variants")
    return {name: build_variant(root / f"v{i}", o)
            for i, (name, o) in enumerate(VARIANTS.items())}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_engine_equals_transformers_for_each_variant(variant_dirs: dict[str, Path],
                                                     name: str) -> None:
    model = load_model(str(variant_dirs[name]), device="cpu")
    engine = AblationEngine(model, prompts(model))
    assert engine.check_error < 1e-5  # the engine's own check, against the folded model
    assert reference_error(variant_dirs[name], engine) < 1e-6  # measured 2e-7 .. 4e-7


def test_variants_change_the_function(variant_dirs: dict[str, Path]) -> None:
    """Each variant's setting matters: the plain model's weights with the variant's config
    give different logits (so agreement above is not vacuous)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    plain = GPT2LMHeadModel.from_pretrained(str(variant_dirs["plain"]),
                                            attn_implementation="eager").eval()
    tokens = torch.tensor([[0, 5, 6, 7, 14, 8, 9, 10, 17]])
    with torch.no_grad():
        base = plain(tokens).logits
    for name, overrides in VARIANTS.items():
        if name in ("plain", "untied unembedding", "n_inner=40", "reorder_and_upcast_attn",
                    "act=gelu_fast", "act=gelu_pytorch_tanh", "act=gelu_accurate"):
            continue  # shapes, not the function of the same weights; upcasting is a no-op in
            # float32 (it matters in half precision); gelu_new's formula by other names
        config = GPT2Config.from_pretrained(str(variant_dirs["plain"]))
        for key, value in overrides.items():  # (from_pretrained ignores unknown keys)
            setattr(config, key, value)
        other = GPT2LMHeadModel.from_pretrained(str(variant_dirs["plain"]), config=config,
                                                attn_implementation="eager").eval()
        with torch.no_grad():
            logits = other(tokens).logits
        # > 10x the engine's error (1e-6 of logits ~10): e.g. gelu vs gelu_new is 1.8e-5
        assert float((logits - base).abs().max()) > 1e-5, name


@pytest.mark.parametrize("name", list(REFUSED))
def test_unsupported_variants_are_refused_before_loading(tmp_path: Path, name: str) -> None:
    overrides, message = REFUSED[name]
    directory = build_variant(tmp_path / "v", {}) if name != "add_cross_attention" else \
        build_variant(tmp_path / "v", overrides)
    import json

    cfg = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**cfg, **overrides}))
    with pytest.raises(WorkbenchError) as info:
        load_model(str(directory), device="cpu")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_engine_that_disagrees_with_its_model_is_refused(variant_dirs: dict[str, Path]) -> None:
    """An engine missing the layer scaling (the bug of issue 11) is caught at build time,
    with one line naming the config field."""
    model = load_model(str(variant_dirs["scale_attn_by_inverse_layer_idx"]), device="cpu")
    w = model.weights
    model.weights = dataclasses.replace(w, attn_scale=(w.attn_scale[0],) * w.n_layers)
    with pytest.raises(WorkbenchError) as info:
        AblationEngine(model, prompts(model))
    message = str(info.value)
    assert "scale_attn_by_inverse_layer_idx=True" in message and "\n" not in message
    assert "differ from the model's own forward" in message


def test_wrap_checks_variants_like_load(variant_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    directory = variant_dirs["scale_attn_by_inverse_layer_idx"]
    hf = GPT2LMHeadModel.from_pretrained(str(directory)).eval()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    model = LoadedModel.wrap(hf, AutoTokenizer.from_pretrained(str(directory)), "mine")
    engine = AblationEngine(model, prompts(model))
    assert reference_error(directory, engine) < 1e-4
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())  # untouched
    hf.config.add_cross_attention = True
    with pytest.raises(WorkbenchError, match="add_cross_attention=True"):
        LoadedModel.wrap(hf, AutoTokenizer.from_pretrained(str(directory)), "mine")


@pytest.mark.slow
def test_wrapped_gpt_neo_bridge_is_refused(tmp_path: Path) -> None:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

    tok = build_tokenizer()
    save_tokenizer(tok, tmp_path)
    config = GPTNeoConfig(num_layers=2, num_heads=2, hidden_size=16, max_position_embeddings=32,
                          vocab_size=len(tok), attention_types=[[["global", "local"], 1]],
                          window_size=4)
    neo = GPTNeoForCausalLM(config).eval()
    neo.save_pretrained(str(tmp_path))
    bridge = TransformerBridge.boot_transformers(
        str(tmp_path.resolve()), tokenizer=AutoTokenizer.from_pretrained(str(tmp_path)),
        device="cpu")
    with pytest.raises(WorkbenchError) as info:
        LoadedModel.wrap(bridge, name="neo")
    assert "architecture 'gpt_neo' is not supported" in str(info.value)
    assert "\n" not in str(info.value)
