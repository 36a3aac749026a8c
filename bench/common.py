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
