"""Loading models: the tiny seeded checkpoint, wrapping user objects, every user-caused failure,
and the bundled `add3` (which must still solve held-out 3-digit addition).

Each error test asserts on the one line the user sees; none of them loads weights.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.model import LoadedModel, load_model
from workbench.tasks import make_task
from workbench.tasks.encode import encode
from workbench.tokenizer import build_tokenizer

TOKENS = torch.tensor([[0, 5, 6, 7, 14, 8, 9, 10, 17], [0, 13, 12, 11, 14, 4, 4, 4, 17]])


def centred(logits: torch.Tensor) -> torch.Tensor:
    """Compatibility mode centres the unembedding: compare logits up to a per-position shift."""
    return logits - logits.mean(-1, keepdim=True)


@pytest.fixture
def copy_of(tiny_checkpoint: Path, tmp_path: Path):
    """A fresh copy of the tiny checkpoint that a test may damage."""
    def make(name: str = "copy") -> Path:
        return Path(shutil.copytree(tiny_checkpoint, tmp_path / name))
    return make


# --- the tiny checkpoint -------------------------------------------------------------------


def test_tiny_checkpoint_loads_with_right_card(tiny_model: LoadedModel,
                                               tiny_checkpoint: Path) -> None:
    from transformers import GPT2LMHeadModel

    card = tiny_model.card
    assert (card.n_layers, card.n_heads, card.d_model, card.d_head) == (2, 2, 16, 8)
    assert (card.d_mlp, card.d_vocab, card.n_ctx) == (64, len(build_tokenizer()), 32)
    assert (card.device, card.dtype) == ("cpu", "float32")
    hf = GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint))
    assert card.n_params == hf.num_parameters()  # tied embeddings counted once
    assert tiny_model.directory == tiny_checkpoint.resolve()
    assert tiny_model.default_task() == ("addition", {"digits": 3})  # no train_config.json


def test_identity_is_sha256_of_weights(tiny_model: LoadedModel, tiny_checkpoint: Path) -> None:
    digest = hashlib.sha256((tiny_checkpoint / "model.safetensors").read_bytes()).hexdigest()
    assert tiny_model.identity.sha256 == digest
    assert tiny_model.identity.source == str(tiny_checkpoint.resolve())
    assert tiny_model.identity.short().endswith("@" + digest[:12])


def test_logits_shape_and_chunking(tiny_model: LoadedModel) -> None:
    logits = tiny_model.logits(TOKENS)
    assert logits.shape == (2, 9, tiny_model.card.d_vocab) and logits.dtype == torch.float32
    torch.testing.assert_close(tiny_model.logits(TOKENS, batch_size=1), logits)


def test_bridge_matches_raw_hf_up_to_constant(tiny_model: LoadedModel,
                                              tiny_checkpoint: Path) -> None:
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint)).eval()
    with torch.no_grad():
        raw = hf(TOKENS).logits
    ours = tiny_model.logits(TOKENS)
    torch.testing.assert_close(centred(ours), centred(raw), atol=1e-4, rtol=0)
    assert torch.equal(ours.argmax(-1), raw.argmax(-1))


def test_wrap_transformers_model(tiny_checkpoint: Path) -> None:
    """Both a saved tokenizer and one built in memory (no name_or_path) work."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    for tokenizer in (AutoTokenizer.from_pretrained(str(tiny_checkpoint)), build_tokenizer()):
        hf = GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint)).eval()
        n_params = hf.num_parameters()
        with torch.no_grad():
            raw = hf(TOKENS).logits  # before wrapping: the bridge rebuilds `hf` in place
        wrapped = LoadedModel.wrap(hf, tokenizer, name="mine")
        assert wrapped.identity.source == "object:mine"
        assert wrapped.card.n_layers == 2 and wrapped.card.n_params == n_params
        assert wrapped.directory is None
        torch.testing.assert_close(centred(wrapped.logits(TOKENS)), centred(raw), atol=1e-4,
                                   rtol=0)


def test_wrap_needs_tokenizer_and_gpt2(tiny_checkpoint: Path) -> None:
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(tiny_checkpoint))
    with pytest.raises(WorkbenchError, match="needs its tokenizer"):
        LoadedModel.wrap(hf)
    with pytest.raises(WorkbenchError, match="architecture None is not supported"):
        LoadedModel.wrap(torch.nn.Linear(2, 2), build_tokenizer())


# --- what users get wrong ------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="checkpoint directory .*missing does not exist"):
        load_model(str(tmp_path / "missing"))


def test_path_to_a_file(tiny_checkpoint: Path) -> None:
    with pytest.raises(WorkbenchError, match="config.json is a file; give the checkpoint dir"):
        load_model(str(tiny_checkpoint / "config.json"))


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(WorkbenchError, match="has no config.json: is it a Hugging Face"):
        load_model(str(tmp_path))


def test_invalid_config_json(copy_of) -> None:
    directory = copy_of()
    (directory / "config.json").write_text("{not json")
    with pytest.raises(WorkbenchError, match="config.json is not valid JSON"):
        load_model(str(directory))


def test_unsupported_architecture(copy_of) -> None:
    directory = copy_of()
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(WorkbenchError, match="architecture 'llama' is not supported yet; "
                                             r"supported: gpt2 \(GPT-2 family\)"):
        load_model(str(directory))


def test_no_weights(copy_of) -> None:
    directory = copy_of()
    (directory / "model.safetensors").unlink()
    with pytest.raises(WorkbenchError, match="has no weights"):
        load_model(str(directory))


def test_truncated_safetensors(copy_of) -> None:
    weights = copy_of() / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(WorkbenchError, match=r"model.safetensors is truncated \(\d+ bytes, "
                                             "header promises more\\); copy it again"):
        load_model(str(weights.parent))


@pytest.mark.parametrize(("head", "message"), [
    (b"\xff" * 8, r"corrupt or truncated \(bad header\)"),  # header length beyond the file
    (None, r"corrupt \(unreadable header\)"),  # right length, garbage JSON
    (b"\x01", r"truncated \(under 8 bytes\)"),
])
def test_corrupt_safetensors_header(copy_of, head: bytes | None, message: str) -> None:
    weights = copy_of() / "model.safetensors"
    data = weights.read_bytes()
    if head is None:
        weights.write_bytes(data[:8] + b"\x00\xfe" * 8 + data[24:])
    elif len(head) < 8:
        weights.write_bytes(head)
    else:
        weights.write_bytes(head + data[len(head):])
    with pytest.raises(WorkbenchError, match=message):
        load_model(str(weights.parent))


def test_hub_name_not_cached_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WorkbenchError) as info:
        load_model("nonexistent-model-xyz")
    message = str(info.value)
    assert "'nonexistent-model-xyz' is not a bundled model (add3" in message
    assert "--download" in message and "\n" not in message


def test_unknown_dtype(tiny_checkpoint: Path) -> None:
    with pytest.raises(WorkbenchError, match="unknown dtype 'int8': use one of float32"):
        load_model(str(tiny_checkpoint), dtype="int8")  # type: ignore[arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda(tiny_checkpoint: Path) -> None:
    with pytest.raises(WorkbenchError, match="device=cuda but no CUDA device is visible"):
        load_model(str(tiny_checkpoint), device="cuda")


def test_unknown_device(tiny_checkpoint: Path) -> None:
    with pytest.raises(WorkbenchError, match="unknown device 'tpu'"):
        load_model(str(tiny_checkpoint), device="tpu")


# --- the bundled default model -------------------------------------------------------------


def test_add3_is_bundled_and_knows_its_task(add3: LoadedModel) -> None:
    assert add3.identity.source == "add3"
    assert add3.default_task() == ("addition", {"digits": 3})
    assert add3.card.n_layers == 2 and add3.card.d_model == 64
    assert "workbench train --task addition digits=3" in add3.card.description


def test_add3_solves_held_out_addition(add3: LoadedModel) -> None:
    enc = encode(make_task("addition", digits=3).prompt_set(500, seed=1, split="test"),
                 add3.tokenizer)
    logits = add3.logits(enc.clean)  # (batch, pos, vocab)
    index = enc.answer_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    predicted = logits.gather(1, index).argmax(-1)  # (batch, n_answer)
    accuracy = (predicted == enc.answer).all(-1).float().mean().item()
    assert accuracy >= 0.99
