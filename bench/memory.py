"""Memory and speed at GPT-2 sizes: load time, resident and peak memory, one forward, a toggle,
EAP and ACDC, for random GPT-2-shaped checkpoints (small, medium, large, XL) in float32 and
bfloat16, on the CPU. Run from the repository root:

    python bench/memory.py --shapes small,medium --dtypes float32,bfloat16 [--label after]

1. Checkpoints: `common.gpt2_shaped_checkpoint` (GPT-2's vocabulary, n_positions 64, the digit
   tokenizer), written once under `--workdir` (default /tmp/wb-bench-memory).
2. Each (shape, dtype) runs in a fresh subprocess (`--worker`), through the session as a user
   would: `load DIR dtype=D`, `task addition digits=3 n=32`, then `run eap`. Memory is the
   process's resident set (psutil) after importing torch, after importing the libraries a load
   imports (`rss_import_gb`: transformers, the tokenizer, the plugins; about 0.12 GB of code),
   after load and after EAP, and its peak (`ru_maxrss`, which covers the load); ratios divide
   by the weight bytes (parameters as Hugging Face counts them, tied embeddings once, times the
   dtype's size); the `*_above_import_ratio` figures (above the libraries) are issue 12's.
3. Times: load (wall), engine build (the 2 cached runs), one fused forward
   (`engine.forward.run`, median of 3), a toggle (ablate head L/2.0 then restore, median of the
   ablated calls), `run eap` (FE = seconds / fused forward), and ACDC on the last
   `--acdc-receivers` receivers (FE per tested edge) -- after EAP, so EAP's peak is its own.
4. One torch thread (the machine is shared); large/XL only with `--shapes` naming them, and the
   parent refuses a shape whose estimated peak exceeds the free memory (`free`) minus 2 GB.

Results merge into `bench/results/memory.json` under `--label` (before/after) and print as a
table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import GPT2_SHAPES, gpt2_shaped_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "memory.json"
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from workbench.ablation import Ablation
    from workbench.graph import head
    from workbench.session import Session

    out: dict[str, Any] = {"shape": job["shape"], "dtype": job["dtype"],
                           "rss_torch_gb": rss_gb()}
    # The libraries a load imports (transformers' GPT-2 classes, the tokenizer, the plugin
    # registry): code, not weights, so the ratios are taken above this baseline.
    import transformers  # noqa: F401
    from transformers import AutoTokenizer, GPT2LMHeadModel  # noqa: F401

    import workbench.checkpoint  # noqa: F401
    import workbench.engine.api  # noqa: F401
    from workbench.plugins import load_registry

    load_registry()
    out["rss_import_gb"] = rss_gb()
    session = Session()
    t0 = time.perf_counter()
    load = session.execute(f"load {job['ckpt']} dtype={job['dtype']} device=cpu")
    out["load_s"] = time.perf_counter() - t0
    if not load.ok:
        return {**out, "error": f"load: {load.error}"}
    model = session.state.model
    assert model is not None
    out["n_params"] = model.card.n_params
    weight_gb = model.card.n_params * BYTES[job["dtype"]] / 2**30
    out["weights_gb"] = weight_gb
    out["rss_load_gb"], out["peak_load_gb"] = rss_gb(), peak_gb()
    task = session.execute(f"task addition digits=3 n={job['prompts']}")
    if not task.ok:
        return {**out, "error": f"task: {task.error}"}
    t0 = time.perf_counter()
    engine = session.engine()
    out["build_s"] = time.perf_counter() - t0
    out["pos"] = int(engine.enc.clean.shape[1])
    fwd = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            engine.forward.run(engine.enc.clean, engine.enc.answer_pos)
            fwd.append(time.perf_counter() - t0)
    out["forward_s"] = statistics.median(fwd)
    layer = model.card.n_layers // 2
    toggles = []
    for _ in range(3):
        t0 = time.perf_counter()
        engine.logits([Ablation(head(layer, 0))])
        toggles.append(time.perf_counter() - t0)
        engine.logits([])
    out["toggle_s"] = statistics.median(toggles)
    out["toggle_fe"] = out["toggle_s"] / out["forward_s"]
    out["rss_engine_gb"], out["peak_engine_gb"] = rss_gb(), peak_gb()
    t0 = time.perf_counter()
    eap = session.execute("run eap")
    out["eap_s"] = time.perf_counter() - t0
    if not eap.ok:
        return {**out, "error": f"eap: {eap.error}"}
    out["eap_fe"] = out["eap_s"] / out["forward_s"]
    out["rss_eap_gb"], out["peak_eap_gb"] = rss_gb(), peak_gb()
    out["resident_ratio"] = out["rss_load_gb"] / weight_gb
    out["peak_ratio"] = out["peak_eap_gb"] / weight_gb
    out["resident_above_import_ratio"] = (out["rss_load_gb"] - out["rss_import_gb"]) / weight_gb
    out["peak_above_import_ratio"] = (out["peak_eap_gb"] - out["rss_import_gb"]) / weight_gb
    if job["acdc_receivers"]:
        out.update(acdc_fe(engine, job["acdc_receivers"], out["forward_s"]))
    return out


def acdc_fe(engine: Any, receivers: int, forward_s: float) -> dict[str, Any]:
    from discovery import _SubsetGraph

    from plugins.acdc import Params, acdc

    graph = engine.graph
    engine.graph = _SubsetGraph(graph, receivers)
    try:
        t0 = time.perf_counter()
        _, _, stats = acdc(engine, Params(tau=0.01, metric="kl", mode="resample"), "resample")
        seconds = time.perf_counter() - t0
    finally:
        engine.graph = graph
    return {"acdc_s": seconds, "acdc_tested": stats.tested,
            "acdc_fe_per_tested_edge": seconds / forward_s / max(stats.tested, 1)}


def free_gb() -> float:
    line = subprocess.run(["free", "-b"], capture_output=True, text=True).stdout.splitlines()[1]
    return int(line.split()[6]) / 2**30  # "available"


def estimated_peak_gb(shape: str, dtype: str, ratio: float) -> float:
    n_layer, _, d = GPT2_SHAPES[shape]
    params = 50257 * d + n_layer * 12 * d * d
    return 0.4 + ratio * params * BYTES[dtype] / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="small,medium")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--acdc-receivers", type=int, default=3)
    p.add_argument("--label", default="after")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/wb-bench-memory"))
    p.add_argument("--expect-ratio", type=float, default=3.0,
                   help="peak / weight bytes assumed when checking free memory first")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--worker", default=None)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    rows = results.setdefault(args.label, {})
    for shape in args.shapes.split(","):
        ckpt = gpt2_shaped_checkpoint(args.workdir / shape, shape)
        for dtype in args.dtypes.split(","):
            need, free = estimated_peak_gb(shape, dtype, args.expect_ratio), free_gb()
            if need > free - 2:
                print(f"skip {shape}/{dtype}: needs ~{need:.1f} GB, {free:.1f} GB free",
                      file=sys.stderr)
                continue
            job = {"shape": shape, "dtype": dtype, "ckpt": str(ckpt), "prompts": args.prompts,
                   "acdc_receivers": args.acdc_receivers}
            env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                                      timeout=args.timeout)
                lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                row = json.loads(lines[-1][7:]) if lines else {
                    "shape": shape, "dtype": dtype,
                    "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            except subprocess.TimeoutExpired:
                row = {"shape": shape, "dtype": dtype, "error": f"timeout {args.timeout}s"}
            rows[f"{shape}/{dtype}"] = row
            print(json.dumps(row), file=sys.stderr, flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


def table(results: dict[str, Any]) -> str:
    head = (f"{'label':<7}{'shape/dtype':<18}{'weights':>8}{'import':>7}{'load':>7}"
            f"{'x':>6}{'peak':>7}{'x':>6}{'load s':>8}{'fwd s':>7}{'toggle':>7}{'EAP FE':>7}"
            f"{'ACDC FE/e':>10}")
    lines = [head]
    for label, rows in results.items():
        for key, r in rows.items():
            if "error" in r:
                lines.append(f"{label:<7}{key:<18} error: {r['error']}")
                continue
            lines.append(
                f"{label:<7}{key:<18}{r['weights_gb']:>8.2f}{r['rss_import_gb']:>7.2f}"
                f"{r['rss_load_gb']:>7.2f}{r['resident_ratio']:>6.2f}{r['peak_eap_gb']:>7.2f}"
                f"{r['peak_ratio']:>6.2f}{r['load_s']:>8.1f}{r['forward_s']:>7.2f}"
                f"{r['toggle_fe']:>7.2f}{r['eap_fe']:>7.2f}"
                f"{r.get('acdc_fe_per_tested_edge', float('nan')):>10.3f}")
    lines.append("GB: weights, resident after import / load (x = / weights), peak through EAP; "
                 "toggle in FE; ACDC FE per tested edge")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
