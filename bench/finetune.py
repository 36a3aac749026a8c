"""Fine-tuning throughput: tokens/s of `workbench finetune`'s training step, and what it implies.

Measures, with randomly initialised GPT-2-architecture models (no download):
1. CPU, tiny model (4 layers, d_model 128, 4 heads, a 271-token vocabulary, block 128,
   micro-batch 8), `--threads` torch threads (default 1): tokens/s of `loop.train_step`
   (forward, backward, clip, AdamW) on random windows, median of `--steps` after 2 warmups.
2. CPU, the same model end to end through `finetune()` (tokenizing a synthetic JSONL corpus,
   evaluation and checkpoints included): the tokens/s the loop reports.
3. CUDA only (skipped without a device): gpt2-sized (124M) and gpt2-xl-sized (1.56B) models,
   vocab 50257, block 1024, bfloat16 autocast, fused AdamW (optionally `--compile`): tokens/s
   and peak GPU memory at each micro-batch that fits, and the projected wall time of one pass
   over 100k FineMath rows at ~1,400 tokens per row (140M tokens; evaluation not included).

Prints a table and writes `bench/results/finetune.json`. Run from the repository root:
`python bench/finetune.py [--steps 20] [--compile]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "finetune.json"
THREADS = 1  # on this shared 2-core machine, 2 threads made a step ~11x slower under load
FINEMATH_TOKENS = 100_000 * 1_400

from workbench.finetune import FinetuneConfig, finetune  # noqa: E402
from workbench.finetune.data import Batches  # noqa: E402
from workbench.finetune.loop import make_optimizer, placement, train_step  # noqa: E402

TINY = {"n_layer": 4, "n_head": 4, "n_embd": 128}
GPT2 = {"n_layer": 12, "n_head": 12, "n_embd": 768}
GPT2_XL = {"n_layer": 48, "n_head": 25, "n_embd": 1600}


def build(shape: dict[str, int], vocab: int, device: torch.device) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=vocab - 1, eos_token_id=vocab - 1,
                        **shape)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).to(device)


def step_throughput(shape: dict[str, int], vocab: int, block: int, micro_batch: int,
                    steps: int, device: torch.device, amp: torch.dtype | None,
                    compile: bool = False) -> dict[str, Any]:
    """Median tokens/s of `train_step` (grad_accum 1) and peak memory on CUDA."""
    cfg = FinetuneConfig(model="bench", data="bench", out="bench", block_size=block,
                         micro_batch=micro_batch, grad_accum=1, compile=compile, wandb=False)
    model = build(shape, vocab, device)
    n_params = model.num_parameters()
    optimizer = make_optimizer(model, cfg, device)
    tokens = np.random.default_rng(0).integers(0, vocab, (steps + 3) * micro_batch * block + 1,
                                               dtype=np.int64).astype(np.uint16)
    batches = Batches(tokens, block, micro_batch, seed=0)
    run = torch.compile(model) if compile else model
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        train_step(run, optimizer, batches, cfg, device, amp)  # .item() inside: synchronised
        if i >= 2:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    out = {"n_params": n_params, "block_size": block, "micro_batch": micro_batch,
           "step_seconds": round(median, 5), "tokens_per_s": round(block * micro_batch / median)}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    del model, optimizer, run
    return out


def end_to_end(steps: int, threads: int) -> dict[str, Any]:
    """The tiny model through `finetune()` on a synthetic corpus, on the CPU."""
    import tiktoken

    from workbench.finetune.codec import EOT, GPT2_PAT

    ranks = {bytes([i]): i for i in range(256)}
    for token in [b" " + str(d).encode() for d in range(10)] + [b" =", b" *", b"12", b" 12"]:
        ranks[token] = len(ranks)
    enc = tiktoken.Encoding(name="bench", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                            special_tokens={EOT: len(ranks)})
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        model = build(TINY, enc.n_vocab, torch.device("cpu"))
        model.save_pretrained(f"{tmp}/model")
        lines = [json.dumps({"text": " ".join(f"{rng.randrange(100)} * {rng.randrange(100)} = "
                                              f"{rng.randrange(10_000)}." for _ in range(20))})
                 for _ in range(2000)]
        Path(f"{tmp}/corpus.jsonl").write_text("\n".join(lines) + "\n")
        cfg = FinetuneConfig(model=f"{tmp}/model", data=f"{tmp}/corpus.jsonl", out=f"{tmp}/out",
                             rows=2000, block_size=128, micro_batch=8, grad_accum=1,
                             max_steps=steps, eval_every=steps, save_every=steps,
                             threads=threads, wandb=False, device="cpu", task_n=64)
        rows: list[dict[str, Any]] = []
        start = time.perf_counter()
        result = finetune(cfg, encoding=enc, on_log=rows.append)
        wall = time.perf_counter() - start
    train = [r["tokens_per_s"] for r in rows if r["kind"] == "train"][2:]
    return {"steps": result.step, "tokens": result.tokens, "wall_seconds": round(wall, 2),
            "train_tokens_per_s_median": round(statistics.median(train)),
            "overall_tokens_per_s": round(result.tokens / wall)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--compile", action="store_true", help="torch.compile the CUDA models")
    p.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": args.threads, "cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg())},
        "cpu_tiny_step": step_throughput(TINY, 271, 128, 8, args.steps, torch.device("cpu"),
                                         None),
        "cpu_tiny_end_to_end": end_to_end(max(args.steps, 30), args.threads),
    }
    print(f"CPU tiny step     {results['cpu_tiny_step']['tokens_per_s']:>10,} tokens/s "
          f"({results['cpu_tiny_step']['n_params']:,} params)")
    print(f"CPU tiny finetune {results['cpu_tiny_end_to_end']['train_tokens_per_s_median']:>10,}"
          f" tokens/s in the loop, {results['cpu_tiny_end_to_end']['overall_tokens_per_s']:,} "
          "overall (data, eval, checkpoints included)")
    if torch.cuda.is_available():
        device, amp = placement("cuda", "auto", args.compile)
        results["cuda"] = {"device": torch.cuda.get_device_name(), "autocast": str(amp),
                           "compile": args.compile, "models": {}}
        for name, shape, micro_batches in (("gpt2", GPT2, (8, 16, 32)),
                                           ("gpt2-xl", GPT2_XL, (2, 4, 8))):
            runs = []
            for mb in micro_batches:
                try:
                    runs.append(step_throughput(shape, 50257, 1024, mb, args.steps, device, amp,
                                                args.compile))
                except torch.cuda.OutOfMemoryError:
                    runs.append({"micro_batch": mb, "out_of_memory": True})
                torch.cuda.empty_cache()
            best = max((r for r in runs if "tokens_per_s" in r),
                       key=lambda r: r["tokens_per_s"], default=None)
            entry: dict[str, Any] = {"runs": runs}
            if best is not None:
                hours = FINEMATH_TOKENS / best["tokens_per_s"] / 3600
                entry["projected_hours_100k_finemath_rows"] = round(hours, 2)
                print(f"{name:<8} micro-batch {best['micro_batch']:>2}: "
                      f"{best['tokens_per_s']:>9,} tokens/s, peak "
                      f"{best['peak_memory_gib']} GiB; 100k FineMath rows ~ {hours:.1f} h")
            results["cuda"]["models"][name] = entry
    else:
        print("no CUDA device: GPU rows skipped")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
