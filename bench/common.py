"""Helpers shared by the benchmark scripts: timing loops, peak memory and the random GPT-2-small
checkpoint (torch and the standard library only, so the auto-circuit peer venv imports it too).

Run the scripts from the repository root (`python bench/NAME.py`); Python puts `bench/` on the
path, so they import this module as `common`.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def timed(fn: Callable[[], Any], repeats: int, warmups: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls, after `warmups` untimed ones."""
    for _ in range(warmups):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def median_seconds(fn: Callable[[], Any], repeats: int, warmups: int = 1
                   ) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (this process, all threads) of `fn`."""
    for _ in range(warmups):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpt2_small_checkpoint(directory: Path, n_positions: int = 64) -> Path:
    """A random GPT-2-small-sized model (12 layers, 12 heads, d_model 768, GPT-2's vocabulary
    size) with the digit tokenizer, saved as an HF checkpoint. Digit-tokenizer ids are < 51, so
    the large vocabulary only costs what GPT-2's unembedding costs."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.tokenizer import build_tokenizer, save_tokenizer

    tok = build_tokenizer()
    config = GPT2Config(n_layer=12, n_head=12, n_embd=768, n_positions=n_positions,
                        vocab_size=50257, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(str(directory))
    save_tokenizer(tok, directory)
    return directory


GPT2_SHAPES: dict[str, tuple[int, int, int]] = {  # name -> (n_layer, n_head, n_embd)
    "small": (12, 12, 768), "medium": (24, 16, 1024), "large": (36, 20, 1280),
    "xl": (48, 25, 1600),
}


def gpt2_shaped_checkpoint(directory: Path, shape: str, n_positions: int = 64,
                           seed: int = 0) -> Path:
    """A random GPT-2-shaped checkpoint (`GPT2_SHAPES`, GPT-2's vocabulary size, the digit
    tokenizer) written one tensor at a time, so that even XL (6.2 GB in float32) is made with
    one tensor in memory. Initialised as `transformers` does: N(0, 0.02) matrices (output
    projections / sqrt(2 n_layer)), zero biases, unit LayerNorm gains. Reused when present."""
    import json

    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.tokenizer import build_tokenizer, save_tokenizer

    if (directory / "model.safetensors").is_file():
        return directory
    n_layer, n_head, n_embd = GPT2_SHAPES[shape]
    tok = build_tokenizer()
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                        vocab_size=50257, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in GPT2LMHeadModel(config).state_dict().items()
                  if k != "lm_head.weight"}
    header: dict[str, Any] = {}
    at = 0
    for key, dims in shapes.items():
        n = 4 * int(torch.Size(dims).numel())
        header[key] = {"dtype": "F32", "shape": list(dims), "data_offsets": [at, at + n]}
        at += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    gen = torch.Generator().manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "model.safetensors.part"
    with tmp.open("wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for key, dims in shapes.items():
            if key.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                t = torch.ones(dims)
            elif key.endswith(".bias"):
                t = torch.zeros(dims)
            else:
                std = 0.02 / (2 * n_layer) ** 0.5 if key.endswith("c_proj.weight") else 0.02
                t = torch.randn(dims, generator=gen) * std
            f.write(t.contiguous().numpy().tobytes())
    config.save_pretrained(str(directory))
    save_tokenizer(tok, directory)
    tmp.rename(directory / "model.safetensors")
    return directory
