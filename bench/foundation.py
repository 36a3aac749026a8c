"""Foundation benchmarks: training the default model, loading it, and forward latency.

Measures, on the CPU with a fixed torch thread count:
1. (`--train` only, about 2 minutes) `workbench train` on the add3 recipe
   (`workbench/models/add3/train_config.json`) until held-out exact match first reaches 0.99,
   checked every 100 steps: steps and seconds. Training pins its own thread count (the recipe's).
2. Load time of the default model, `load_model("add3")`: median of 5 after one untimed load that
   pays the imports.
3. Forward latency of `LoadedModel.logits` on 256 encoded 3-digit addition prompts: median of
   `--repeats` runs after `--warmups`, for add3 and for a randomly initialised GPT-2-small-shaped
   checkpoint (12 layers, 12 heads, d_model 768, vocab 50257; saved with the digit tokenizer,
   whose ids are all < 51). Plain `transformers` on the same weights is timed beside it, so the
   bridge's overhead is visible.

Prints a table and writes `bench/results/foundation.json`. Run from the repository root:
`python bench/foundation.py [--train] [--repeats 20] [--small-repeats N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import gpt2_small_checkpoint, timed  # noqa: E402

THREADS = 2
torch.set_num_threads(THREADS)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "foundation.json"
N_PROMPTS = 256


def bench_train() -> dict[str, Any]:
    from workbench.train import TrainConfig, train

    recipe = json.loads((ROOT / "workbench/models/add3/train_config.json").read_text())
    cfg = TrainConfig(**{**recipe, "target": 0.99, "eval_every": 100})

    def progress(row: dict[str, Any]) -> None:
        if row["split"] == "test":
            print(f"  step {row['step']}: held-out exact match {row['exact_match']:.4f}",
                  file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        result = train(cfg, Path(tmp) / "add3", on_log=progress)
    torch.set_num_threads(THREADS)  # train() pinned the recipe's thread count
    return {"recipe": "add3", "train_threads": cfg.threads, "target": cfg.target,
            "eval_every": cfg.eval_every, "steps_to_target": result.steps_to_target,
            "seconds": round(result.seconds, 2),
            "held_out_accuracy": result.held_out_accuracy}


def bench_load(repeats: int = 5) -> dict[str, Any]:
    from workbench.model import load_model

    load_model("add3", device="cpu")  # pays the imports and first-use costs
    times = timed(lambda: load_model("add3", device="cpu"), repeats, warmups=0)
    return {"model": "add3", "repeats": repeats, "median_s": statistics.median(times),
            "min_s": min(times)}




def bench_forward(label: str, source: str, repeats: int, warmups: int) -> dict[str, Any]:
    from transformers import GPT2LMHeadModel

    from workbench.model import load_model
    from workbench.tasks import make_task
    from workbench.tasks.encode import encode

    model = load_model(source, device="cpu")
    enc = encode(make_task("addition", digits=3).prompt_set(N_PROMPTS, seed=0, split="test"),
                 model.tokenizer)
    tokens = enc.clean  # (batch, pos)
    bridge = timed(lambda: model.logits(tokens), repeats, warmups)
    hf = GPT2LMHeadModel.from_pretrained(str(model_dir(source))).eval()

    def plain() -> None:
        with torch.no_grad():
            hf(tokens).logits.float()

    raw = timed(plain, repeats, warmups)
    return {"model": label, "n_params": hf.num_parameters(), "batch": tokens.shape[0],
            "pos": tokens.shape[1], "repeats": repeats, "warmups": warmups,
            "bridge_median_ms": 1000 * statistics.median(bridge),
            "transformers_median_ms": 1000 * statistics.median(raw)}


def model_dir(source: str) -> Path:
    from workbench.model import resolve

    return resolve(source)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", action="store_true", help="also time training (~2 min)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--small-repeats", type=int, default=None,
                        help="repeats for GPT-2-small (default: --repeats; ~15 s each here)")
    parser.add_argument("--small-warmups", type=int, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results: dict[str, Any] = {
        "threads": THREADS, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if args.train:
        results["train"] = bench_train()
    elif "train" in previous:
        results["train"] = {**previous["train"], "from_previous_run": previous.get("date")}
    results["load"] = bench_load()
    results["forward"] = [bench_forward("add3", "add3", args.repeats, args.warmups)]
    with tempfile.TemporaryDirectory() as tmp:
        small = gpt2_small_checkpoint(Path(tmp) / "gpt2-small-random")
        results["forward"].append(bench_forward(
            "gpt2-small (random)", str(small), args.small_repeats or args.repeats,
            args.warmups if args.small_warmups is None else args.small_warmups))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def report(results: dict[str, Any]) -> str:
    lines = [f"torch {results['torch']}, {results['threads']} threads, "
             f"{results['cpus']} CPUs, load average at start {results['load_average_at_start']}"]
    train = results.get("train")
    if train:
        old = f" (from the run of {train['from_previous_run']})" if "from_previous_run" in \
            train else ""
        lines.append(f"train add3 to {train['target']}: {train['steps_to_target']} steps, "
                     f"{train['seconds']:.1f} s, {train['train_threads']} thread(s){old}")
    load = results["load"]
    lines.append(f"load add3: median {1000 * load['median_s']:.0f} ms of {load['repeats']}")
    lines.append(f"{'forward, 256 prompts':<24}{'params':>12}{'shape':>10}"
                 f"{'bridge ms':>12}{'hf ms':>10}{'runs':>6}")
    for row in results["forward"]:
        lines.append(f"{row['model']:<24}{row['n_params']:>12,}"
                     f"{str(row['batch']) + 'x' + str(row['pos']):>10}"
                     f"{row['bridge_median_ms']:>12.1f}{row['transformers_median_ms']:>10.1f}"
                     f"{row['repeats']:>6}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
