"""Shared fixtures: a tiny seeded GPT-2 checkpoint built in a temp dir, and the bundled `add3`.

Everything loads through `workbench.model.load_model`, the loader users use. The environment is
pinned offline before anything imports `transformers` or `wandb`, so no test can download.
"""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ["HF_HUB_OFFLINE"] = "1"
# Test models are tiny: one thread is as fast and never stalls on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Crash reports, default session paths and key maps of the tests stay out of the user's folders.
os.environ["WORKBENCH_HOME"] = __import__("tempfile").mkdtemp(prefix="workbench-test-home-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from workbench.model import LoadedModel, load_model  # noqa: E402
from workbench.tokenizer import build_tokenizer, save_tokenizer  # noqa: E402

torch.set_num_threads(1)


def build_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Save a random 2-layer, d_model 16 GPT-2 with the digit tokenizer into `directory`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer()
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=len(tok),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory))
    save_tokenizer(tok, directory)
    return directory


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of the tiny seeded GPT-2 checkpoint (config, safetensors, tokenizer)."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="session")
def add3() -> LoadedModel:
    return load_model("add3", device="cpu")


@pytest.fixture(scope="session")
def bpe_numbers() -> LoadedModel:
    """The bundled GPT-2-tokenizer model (years, counting): the test model for BPE paths."""
    return load_model("bpe-numbers", device="cpu")
