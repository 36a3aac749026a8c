"""Live toggle latency: ablate (or restore) one head, then the new performance % on 256 prompts.

This is what a click on the head grid costs. Measured on the CPU with 2 torch threads, for the
bundled `add3` and for a randomly initialised GPT-2-small-sized checkpoint (12 layers, 12 heads,
d_model 768, vocab 50257, n_positions 64; saved with the digit tokenizer, whose ids are < 51):

1. Baselines, in the same process: one plain fused forward of the prompts,
   `engine.forward.run(enc.clean, enc.answer_pos)`, and one bridge forward, `model.logits`
   (medians). FE (forward-pass equivalents) = toggle seconds / the fused forward's seconds;
   FE vs bridge divides by the bridge forward instead.
2. Engine toggles: a seeded random head is ablated, then restored, alternately; each toggle is
   timed as `engine.perf(engine.logits(ablations), "logit_diff", "mean")`, i.e. the forward
   (recomputed from the earliest changed layer, `engine.last_start`) plus performance %.
   "ideal FE" is the share of layers a toggle reruns, (n_layers - start) / n_layers.
3. Session toggles, the same through `Session.execute("ablate aL.H")` / `"restore aL.H"`
   (the command path the TUI and replay use), after a warm-up `perf` that builds its engine.

Reports median ms, median and mean FE (the target: mean FE < 1 thanks to recompute-from-layer).
Torch runs 2 threads with OMP_WAIT_POLICY=PASSIVE unless the environment sets it. Prints a
table and writes `bench/results/toggle.json`. Run from the repository root:
`python bench/toggle.py [--toggles 20] [--small-toggles 8] [--repeats 5]`.
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

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine a spinning thread
# waits for a descheduled peer and a 100 ms forward swings to 2 s. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from common import gpt2_small_checkpoint, timed  # noqa: E402

THREADS = 2
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "toggle.json"
N_PROMPTS = 256
SEED = 0






def toggles(n_layers: int, n_heads: int, n: int, seed: int) -> list[tuple[int, int, bool]]:
    """(layer, head, ablate?) for `n` toggles: ablate a random head, restore it, repeat."""
    rng = random.Random(seed)
    out: list[tuple[int, int, bool]] = []
    while len(out) < n:
        layer, head = rng.randrange(n_layers), rng.randrange(n_heads)
        out += [(layer, head, True), (layer, head, False)]
    return out[:n]


def summary(seconds: list[float], fused_s: float, bridge_s: float) -> dict[str, Any]:
    fe = [s / fused_s for s in seconds]
    return {"n": len(seconds), "median_ms": 1000 * statistics.median(seconds),
            "median_fe": statistics.median(fe), "mean_fe": statistics.fmean(fe),
            "median_fe_vs_bridge": statistics.median(seconds) / bridge_s,
            "mean_fe_vs_bridge": statistics.fmean(seconds) / bridge_s,
            "seconds": [round(s, 5) for s in seconds]}


def bench_model(label: str, source: str, n_toggles: int, repeats: int) -> dict[str, Any]:
    from workbench.ablation import Ablation, AblationEngine
    from workbench.graph import head
    from workbench.model import load_model
    from workbench.tasks import make_task
    from workbench.tasks.encode import encode

    model = load_model(source, device="cpu")
    prompts = make_task("addition", digits=3).prompt_set(N_PROMPTS, seed=1, split="test")
    enc = encode(prompts, model.tokenizer)
    start = time.perf_counter()
    engine = AblationEngine(model, enc)
    build_s = time.perf_counter() - start
    n_layers, n_heads = engine.weights.n_layers, engine.weights.n_heads

    forward, tokens, answer_pos = engine.forward, engine.enc.clean, engine.enc.answer_pos
    with torch.no_grad():
        fused = timed(lambda: forward.run(tokens, answer_pos), repeats)
    bridge = timed(lambda: model.logits(enc.clean), repeats)
    fused_s, bridge_s = statistics.median(fused), statistics.median(bridge)

    plan = toggles(n_layers, n_heads, n_toggles, SEED)
    engine.perf(engine.logits([]), "logit_diff", "mean")  # warm, and the restart state
    seconds, starts, percents = [], [], []
    for layer, h, ablate in plan:
        ablations = [Ablation(head(layer, h), "mean")] if ablate else []
        t0 = time.perf_counter()
        perf = engine.perf(engine.logits(ablations), "logit_diff", "mean")
        seconds.append(time.perf_counter() - t0)
        starts.append(engine.last_start)
        percents.append(perf.percent)
    row: dict[str, Any] = {
        "model": label, "n_layers": n_layers, "n_heads": n_heads, "batch": enc.n,
        "pos": engine.n_pos, "engine_build_s": round(build_s, 3),
        "fused_forward_ms": 1000 * fused_s, "bridge_forward_ms": 1000 * bridge_s,
        "repeats": repeats,
        "engine": {**summary(seconds, fused_s, bridge_s),
                   "ideal_mean_fe": statistics.fmean((n_layers - s) / n_layers for s in starts),
                   "starts": starts, "percent": [round(p, 3) for p in percents],
                   "toggles": [f"{'ablate' if a else 'restore'} a{L}.{H}" for L, H, a in plan]},
    }
    del engine  # the session builds its own: don't hold two activation caches
    row["session"] = bench_session(model, plan, fused_s, bridge_s)
    return row


def bench_session(model: Any, plan: list[tuple[int, int, bool]], fused_s: float,
                  bridge_s: float) -> dict[str, Any]:
    """The same toggles through the command path; reports an error instead of failing."""
    try:
        from workbench.session import Session

        session = Session(model=model)
        for line in (f"task addition digits=3 n={N_PROMPTS} seed=1", "perf"):
            outcome = session.execute(line)
            if not outcome.ok:
                return {"error": f"{line}: {outcome.error}"}
        seconds, percents = [], []
        for layer, h, ablate in plan:
            line = f"{'ablate' if ablate else 'restore'} a{layer}.{h}"
            t0 = time.perf_counter()
            outcome = session.execute(line)
            seconds.append(time.perf_counter() - t0)
            if not outcome.ok:
                return {"error": f"{line}: {outcome.error}"}
            percents.append(outcome.out.get("percent"))
        return {**summary(seconds, fused_s, bridge_s), "percent": percents}
    except Exception as exc:  # a benchmark reports what broke and carries on
        return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}


def report(results: dict[str, Any]) -> str:
    lines = [f"torch {results['torch']}, {results['threads']} threads "
             f"(OMP_WAIT_POLICY={results['omp_wait_policy']}), {results['cpus']} CPUs, "
             f"load average at start {results['load_average_at_start']}; "
             f"{N_PROMPTS} prompts, toggle = ablate/restore one head + performance %"]
    head = (f"{'model':<21}{'path':<9}{'toggles':>8}{'median ms':>11}{'med FE':>8}"
            f"{'mean FE':>9}{'ideal FE':>9}{'FE vs bridge':>13}")
    lines.append(head)
    for row in results["models"]:
        lines.append(f"{row['model']:<21}{'fused fwd':<9}{row['repeats']:>8}"
                     f"{row['fused_forward_ms']:>11.1f}{1.0:>8.2f}{1.0:>9.2f}{'':>9}"
                     f"{row['fused_forward_ms'] / row['bridge_forward_ms']:>13.2f}")
        lines.append(f"{'':<21}{'bridge':<9}{row['repeats']:>8}"
                     f"{row['bridge_forward_ms']:>11.1f}"
                     f"{row['bridge_forward_ms'] / row['fused_forward_ms']:>8.2f}"
                     f"{'':>9}{'':>9}{1.0:>13.2f}")
        for path in ("engine", "session"):
            r = row[path]
            if "error" in r:
                lines.append(f"{'':<21}{path:<9}  failed: {r['error']}")
                continue
            ideal = f"{r['ideal_mean_fe']:>9.2f}" if "ideal_mean_fe" in r else f"{'':>9}"
            lines.append(f"{'':<21}{path:<9}{r['n']:>8}{r['median_ms']:>11.1f}"
                         f"{r['median_fe']:>8.2f}{r['mean_fe']:>9.2f}{ideal}"
                         f"{r['median_fe_vs_bridge']:>6.2f} (mean {r['mean_fe_vs_bridge']:.2f})")
    lines.append("FE = seconds / one plain fused forward of the same prompts (same process); "
                 "FE vs bridge: / one bridge forward (model.logits). ideal FE: share of layers "
                 "rerun.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toggles", type=int, default=20, help="toggles on add3")
    parser.add_argument("--small-toggles", type=int, default=8, help="toggles on GPT-2-small")
    parser.add_argument("--repeats", type=int, default=5, help="baseline forwards (add3)")
    parser.add_argument("--small-repeats", type=int, default=3)
    parser.add_argument("--skip-small", action="store_true", help="add3 only (quick check)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    results: dict[str, Any] = {
        "threads": THREADS, "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "n_prompts": N_PROMPTS, "seed": SEED,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "models": [bench_model("add3", "add3", args.toggles, args.repeats)],
    }
    print(report(results), file=sys.stderr, flush=True)  # progress: GPT-2-small takes minutes
    if not args.skip_small:
        with tempfile.TemporaryDirectory() as tmp:
            small = gpt2_small_checkpoint(Path(tmp) / "gpt2-small-random")
            results["models"].append(bench_model("gpt2-small (random)", str(small),
                                                 args.small_toggles, args.small_repeats))
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(report(results))
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
