"""Discovery benchmarks: wall time, forward-pass equivalents (FE) and peak memory per method.

For `add3` (bundled) or a random GPT-2-small-sized checkpoint (12 layers, 12 heads, d_model
768, vocab 50257, n_positions 64, the digit tokenizer: 32,491 edges), on the CPU with 2 torch
threads. Run from the repository root:

    python bench/discovery.py --model add3|gpt2-small --prompts 32 --methods eap,eap_ig,acdc,mask

1. Prompts: `make_task("addition", digits=3).prompt_set(N, seed=1)`, teacher forced (12 tokens);
   for gpt2-small left-padded with the pad token to `--pad` (16) tokens, like the peers' 16-token
   prompts. The metric is the logit difference (answer minus contrast digit) at the LAST
   position only, and the ablation is resample (the corrupted prompt): auto-circuit's setting
   (`last_seq` output slice, `avg_diff`, RESAMPLE), so both tools compute the same quantity.
   The token ids and our edge names go to `WORKDIR/<model>/inputs_<N>.json` for the peer.
2. Every method runs in a fresh subprocess (`--worker`), so `ru_maxrss` (the peak resident
   memory; `tracemalloc` does not see torch) belongs to that method alone. A worker loads the
   model, times the baselines (median of `--repeats`: one plain fused forward
   `engine.forward.run(enc.clean, enc.answer_pos)` and one bridge forward `model.logits`),
   builds the `AblationEngine` (the 2 cached clean/corrupted forwards, timed apart as
   "build"), then runs the method through the plugin functions: `edge_attribution` (eap,
   eap_ig with `--ig-steps`), `acdc()` (FE per tested edge from `AcdcStats`; on gpt2-small
   only the last `--acdc-receivers` receivers in ACDC order -- logits, m11, a11.*<v>... --
   are visited, the full run takes hours on this CPU; job `acdc_l11` visits the `--acdc-l11`
   receivers before logits, skipping logits so that their edges are all tested at layer 11),
   `plugins.mask.run` (`--mask-steps`).
   FE = method seconds / fused forward seconds; "FE bridge" divides by the bridge forward.
3. A `baseline` job times plain `transformers` beside the fused and bridge forwards (the
   yardstick shared with the peer, whose own process times the same `transformers` forward).
4. `--big 128` adds EAP on 128 prompts with its peak memory: `eap@128` in the plugin's chunks
   of `--batch-size` (32) prompts, `eap@128x1` in one batch of 128 (as the peers ran it).
5. With the peer environment (`--peer`, default /tmp/ac-venv/bin/python when it exists) it runs
   `bench/autocircuit_peer.py` on the same checkpoint and token ids, then compares: times, FE,
   and the EAP / EAP-IG scores (Pearson, Spearman, top-k overlap of |score|, sign).

Prints tables and updates `bench/results/discovery.json` (one entry per model; scores of our
EAP/EAP-IG in `bench/results/workbench_scores_<model>_<N>.safetensors`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import gpt2_small_checkpoint, median_seconds, rss_mb  # noqa: E402

THREADS = 2
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEER_SCRIPT = ROOT / "bench" / "autocircuit_peer.py"
DEFAULT_PEER = Path("/tmp/ac-venv/bin/python")
MODE = "resample"
METRIC = "logit_diff"


# -- inputs (parent) ---------------------------------------------------------------------------


def write_inputs(path: Path, model: str, ckpt: Path, n: int, pad: int) -> None:
    """Token ids, last-position answer/contrast ids and our edge names, for both tools."""
    from workbench.graph import Graph
    from workbench.tasks import make_task
    from workbench.tasks.encode import encode
    from workbench.tokenizer import build_tokenizer

    tok = build_tokenizer()
    enc = encode(make_task("addition", digits=3).prompt_set(n, seed=1), tok)
    if len(set(enc.lengths.tolist())) != 1:
        raise SystemExit("prompts of different lengths: the last-position metric needs one")
    width = enc.clean.shape[1]
    fill = max(0, pad - width)  # left padding: the last position still predicts the last digit

    def padded(t: torch.Tensor) -> list[list[int]]:
        return torch.cat([torch.full((t.shape[0], fill), tok.pad_token_id), t], 1).tolist()

    config = json.loads((ckpt / "config.json").read_text())
    graph = Graph.from_sizes(config["n_layer"], config["n_head"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "model": model, "ckpt": str(ckpt), "n": n, "pos": width + fill,
        "clean": padded(enc.clean), "corrupted": padded(enc.corrupted),
        "answer": enc.answer[:, -1:].tolist(), "contrast": enc.contrast[:, -1:].tolist(),
        "edges": [str(e) for e in graph.edges],
    }))


# -- worker: one method in its own process -----------------------------------------------------


def load_encoded(inputs: dict[str, Any]) -> Any:
    from workbench.tasks.encode import EncodedPrompts

    clean = torch.tensor(inputs["clean"])
    n, pos = clean.shape
    return EncodedPrompts(
        clean=clean, corrupted=torch.tensor(inputs["corrupted"]),
        answer_pos=torch.full((n, 1), pos - 1), answer=torch.tensor(inputs["answer"]),
        contrast=torch.tensor(inputs["contrast"]), accepted=(None,) * n,
        lengths=torch.full((n,), pos))


class _SubsetGraph:
    """The model's graph with ACDC visiting only its first `n` receivers (ACDC goes backwards:
    logits, m11, a11.11<v>, ...); `skip_logits` starts after logits, whose edges then count as
    kept, so every visited receiver's edges are tested (restarting at its layer)."""

    def __init__(self, graph: Any, n: int, skip_logits: bool = False) -> None:
        self._graph = graph
        end = len(graph.receivers) - (1 if skip_logits else 0)
        self.receivers = graph.receivers[end - n: end]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._graph, name)


def worker(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    from transformers.utils import logging as hf_logging

    from workbench.ablation import AblationEngine
    from workbench.model import load_model

    hf_logging.disable_progress_bar()
    inputs = json.loads(Path(job["inputs"]).read_text())
    t0 = time.perf_counter()
    model = load_model(inputs["ckpt"], device="cpu")
    load_s = time.perf_counter() - t0
    enc = load_encoded(inputs)
    out: dict[str, Any] = {"job": job["name"], "method": job["method"], "prompts": enc.n,
                           "pos": enc.clean.shape[1], "load_s": load_s,
                           "load_avg_start": os.getloadavg()[0]}
    t0 = time.perf_counter()
    engine = AblationEngine(model, enc)
    out["build_s"] = time.perf_counter() - t0
    repeats = job["repeats"]
    with torch.no_grad():
        out["fused_s"], out["fused_cpu_s"] = median_seconds(
            lambda: engine.forward.run(engine.enc.clean, engine.enc.answer_pos), repeats)
        out["bridge_s"], out["bridge_cpu_s"] = median_seconds(
            lambda: model.logits(enc.clean), repeats)
    if job["method"] == "baseline":
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(inputs["ckpt"]).eval()
        with torch.no_grad():
            out["transformers_s"], out["transformers_cpu_s"] = median_seconds(
                lambda: hf(enc.clean).logits, repeats)
        out["clean_metric"] = _metric(engine.clean_logits, enc)
        out["rss_setup_mb"] = out["peak_rss_mb"] = rss_mb()
        return out
    out["rss_before_method_mb"] = rss_mb()
    if job["warmup"]:  # a reduced run first: one-time costs (autograd, allocator) stay out
        t0 = time.perf_counter()
        run_method(warmup_job(job), model, engine, enc)
        out["warmup_s"] = time.perf_counter() - t0
    out["rss_setup_mb"] = rss_mb()
    walls, cpus = [], []
    for _ in range(job["runs"]):  # the median of `runs` (tiny models: milliseconds, noisy)
        t0, c0 = time.perf_counter(), time.process_time()
        extra = run_method(job, model, engine, enc)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out["method_s"], out["method_cpu_s"] = statistics.median(walls), statistics.median(cpus)
    out["runs_s"] = walls
    out["peak_rss_mb"] = rss_mb()
    out["load_avg_end"] = os.getloadavg()[0]
    out["fe"] = out["method_s"] / out["fused_s"]
    out["fe_bridge"] = out["method_s"] / out["bridge_s"]
    out["fe_cpu"] = out["method_cpu_s"] / out["fused_cpu_s"]
    out["fe_bridge_cpu"] = out["method_cpu_s"] / out["bridge_cpu_s"]
    out["fe_with_build"] = (out["method_s"] + out["build_s"]) / out["fused_s"]
    out.update(extra)
    if "tested" in extra and extra["tested"]:
        out["fe_per_tested_edge"] = out["fe"] / extra["tested"]
    return out


def warmup_job(job: dict[str, Any]) -> dict[str, Any]:
    """The same method on the same engine, smaller: EAP itself, EAP-IG with 1 step, ACDC on
    the last 2 receivers, 1 mask step; nothing saved."""
    return {**job, "save": None, "ig_steps": 1, "mask_steps": 1, "acdc_receivers": 2,
            "acdc_skip_logits": False}


def _metric(logits: torch.Tensor, enc: Any) -> float:
    from workbench.metrics import metric

    return metric(METRIC, logits, enc)


def run_method(job: dict[str, Any], model: Any, engine: Any, enc: Any) -> dict[str, Any]:
    method = job["method"]
    if method in ("eap", "eap_ig"):
        from plugins.eap import edge_attribution

        steps = job["ig_steps"] if method == "eap_ig" else 0
        scores = edge_attribution(engine, METRIC, MODE, steps, job["batch_size"])
        if job.get("save"):  # the last run's (all runs give the same scores)
            from safetensors.torch import save_file

            save_file({"scores": scores.contiguous()}, job["save"])
        return {"steps": steps, "passes": max(steps, 1), "batch_size": job["batch_size"]}
    if method == "acdc":
        from plugins.acdc import Params, acdc

        graph, last = engine.graph, job["acdc_receivers"]
        if last:
            engine.graph = _SubsetGraph(graph, last, job.get("acdc_skip_logits", False))
        try:
            params = Params(tau=job["tau"], metric="kl", mode=MODE)
            keep, _, stats = acdc(engine, params, MODE)
            visited = [str(r) for r in list(reversed(engine.graph.receivers))]
        finally:
            engine.graph = graph
        return {"tau": job["tau"], "receivers": len(visited),
                "receivers_visited": visited[:4] + (["..."] if len(visited) > 4 else []),
                "tested": stats.tested, "forwards": stats.forwards,
                "layers_run": stats.layers_run,
                "ideal_fe_per_tested_edge": stats.layers_run / max(stats.tested, 1),
                "kept_edges": int(keep.sum())}
    if method == "mask":
        from plugins.mask import Params, run
        from workbench.plugins import Context
        from workbench.tasks import make_task

        prompts = make_task("addition", digits=3).prompt_set(enc.n, seed=1)
        ctx = Context(model=model, prompts=prompts, enc=engine.enc, metric=METRIC, mode=MODE,
                      graph=engine.graph, engine=engine)
        result = run(ctx, Params(steps=job["mask_steps"], batch_size=job["batch_size"],
                                 mode=MODE))
        return {"steps": job["mask_steps"], "batch_size": job["batch_size"],
                "kept_edges": len(result.parts[0][1].circuit.edges)}
    raise SystemExit(f"unknown method {method}")


# -- parent: jobs, peer, comparison ------------------------------------------------------------


def run_worker(job: dict[str, Any], timeout: int) -> dict[str, Any]:
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": str(THREADS)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"job": job["name"], "method": job["method"], "error": f"timeout {timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])
        return {"job": job["name"], "method": job["method"],
                "error": f"exit {proc.returncode}: {tail[-1]}", "stderr_tail": tail[-15:]}
    row = json.loads(lines[-1][len("RESULT "):])
    row["process_s"] = time.perf_counter() - t0
    return row


def jobs_for(args: argparse.Namespace, inputs: dict[int, Path], scores: Path) -> list[dict]:
    small = args.model == "gpt2-small"
    base = {"repeats": args.repeats, "runs": args.runs, "warmup": warm(args),
            "batch_size": args.batch_size, "ig_steps": args.ig_steps, "tau": args.tau,
            "mask_steps": args.mask_steps,
            "acdc_receivers": args.acdc_receivers if small else 0}
    jobs = [{**base, "name": "baseline", "method": "baseline",
             "inputs": str(inputs[args.prompts])}] if args.methods and not args.no_baseline \
        else []
    for m in args.methods:
        save = str(scores).replace(".safetensors", f"_{m}.safetensors") if m in (
            "eap", "eap_ig") else None
        jobs.append({**base, "name": m, "method": m, "inputs": str(inputs[args.prompts]),
                     "save": save})
    if small and "acdc" in args.methods and args.acdc_l11:
        jobs.append({**base, "name": "acdc_l11", "method": "acdc",
                     "inputs": str(inputs[args.prompts]), "acdc_receivers": args.acdc_l11,
                     "acdc_skip_logits": True})
    if args.big:  # in the plugin's chunks (batch_size), and in one batch like the peers
        for name, batch in ((f"eap@{args.big}", args.batch_size), (f"eap@{args.big}x1", args.big)):
            jobs.append({**base, "name": name, "method": "eap", "warmup": False, "runs": 1,
                         "inputs": str(inputs[args.big]), "batch_size": batch})
    return jobs


def warm(args: argparse.Namespace) -> bool:
    return args.warmup == "yes" or (args.warmup == "auto" and args.model == "add3")


def compare_scores(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, Any]:
    """Pearson and Spearman of the signed scores (theirs sign-aligned), and top-k overlap."""
    sign = 1.0 if float((ours * theirs).sum()) >= 0 else -1.0
    a, b = ours.double(), sign * theirs.double()

    def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
        x, y = x - x.mean(), y - y.mean()
        return float((x * y).sum() / (x.norm() * y.norm()).clamp(min=1e-300))

    def ranks(x: torch.Tensor) -> torch.Tensor:  # average ranks of ties
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(len(x), dtype=x.dtype)
        uniq, inverse = torch.unique(x, return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inverse, r)
        counts = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inverse, torch.ones_like(r))
        return (sums / counts)[inverse]

    overlap = {}
    for k in (10, 100, 1000):
        if k <= len(a):
            top_a = set(a.abs().topk(k).indices.tolist())
            top_b = set(b.abs().topk(k).indices.tolist())
            overlap[str(k)] = len(top_a & top_b) / k
    rel = float((a - b).norm() / a.norm().clamp(min=1e-300))
    return {"sign_of_theirs": "same" if sign > 0 else "opposite (their mask 1 = ablated)",
            "pearson": pearson(a, b), "spearman": pearson(ranks(a), ranks(b)),
            "spearman_abs": pearson(ranks(a.abs()), ranks(b.abs())),
            "topk_overlap": overlap, "relative_l2_difference": rel,
            "max_abs_ours": float(a.abs().max()), "max_abs_theirs": float(b.abs().max())}


def run_peer(args: argparse.Namespace, ckpt: Path, inputs: Path, out: Path) -> dict[str, Any]:
    peer = Path(args.peer)
    methods = ",".join(m for m in args.methods if m in ("eap", "eap_ig", "acdc"))
    cmd = [str(peer), str(PEER_SCRIPT), "--ckpt", str(ckpt), "--prompts", str(args.prompts),
           "--inputs", str(inputs), "--model", args.model, "--methods", methods,
           "--ig-steps", str(args.ig_steps), "--repeats", str(args.repeats),
           "--runs", str(args.runs),
           "--acdc-edges", str(args.peer_acdc_edges if args.model == "gpt2-small" else 0),
           "--timeout", str(args.timeout), "--scores", str(out)] + (
               [] if warm(args) else ["--cold"])
    print("peer:", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ""})
    path = RESULTS / "autocircuit.json"
    if proc.returncode != 0 or not path.is_file():
        return {"error": f"peer exited {proc.returncode}"}
    return json.loads(path.read_text()).get(args.model, {})


def table(rows: list[dict[str, Any]], peer: dict[str, Any] | None) -> str:
    lines = [f"{'job':<10}{'n':>4}{'pos':>4}{'method s':>10}{'build s':>9}{'FE':>8}"
             f"{'FE brdg':>8}{'FE tf':>7}{'peak MB':>9}  notes"]
    base = next((r for r in rows if r.get("method") == "baseline" and "error" not in r), {})
    tf = base.get("transformers_s")
    for r in rows:
        if "error" in r:
            lines.append(f"{r['job']:<10} failed: {r['error']}")
            continue
        if r["method"] == "baseline":
            lines.append(f"{'baseline':<10}{r['prompts']:>4}{r['pos']:>4}  fused fwd "
                         f"{r['fused_s'] * 1000:.1f} ms, bridge {r['bridge_s'] * 1000:.1f} ms,"
                         f" transformers {r['transformers_s'] * 1000:.1f} ms; peak "
                         f"{r['peak_rss_mb']:.0f} MB (setup only)")
            continue
        fe_tf = f"{r['method_s'] / tf:>7.1f}" if tf and r["prompts"] == base["prompts"] else \
            f"{'':>7}"
        note = ""
        if r["method"] == "acdc":
            note = (f"{r['tested']} tested / {r['receivers']} receivers, "
                    f"{r['fe_per_tested_edge']:.3f} FE/edge (ideal "
                    f"{r['ideal_fe_per_tested_edge']:.3f}), {r['forwards']} batched fwds")
        elif r["method"] == "mask":
            note = f"{r['steps']} steps: {r['fe'] / r['steps']:.2f} FE/step"
        elif r["method"] in ("eap", "eap_ig"):
            note = f"{r['passes']} fwd+bwd, batch {r['batch_size']}"
        lines.append(f"{r['job']:<10}{r['prompts']:>4}{r['pos']:>4}{r['method_s']:>10.2f}"
                     f"{r['build_s']:>9.2f}{r['fe']:>8.2f}{r['fe_bridge']:>8.2f}{fe_tf}"
                     f"{r['peak_rss_mb']:>9.0f}  {note}")
    lines.append("FE = method s / one fused forward (same process, same batch); FE brdg: / one "
                 "bridge forward; FE tf: / plain transformers (baseline job). build = the "
                 "engine's 2 cached forwards, not in method s. peak = ru_maxrss of the process "
                 "(model and engine included).")
    if peer and "methods" in peer:
        lines.append("")
        lines.append("auto-circuit (same checkpoint, token ids, metric, resample ablation):")
        pb = peer.get("baseline", {})
        lines.append(f"  baseline: HookedTransformer fwd {pb.get('tl_plain_s', 0) * 1000:.1f} "
                     f"ms, patchable unpatched {pb.get('patchable_s', 0) * 1000:.1f} ms, "
                     f"transformers {pb.get('transformers_s', 0) * 1000:.1f} ms")
        for m, r in peer["methods"].items():
            if "error" in r:
                lines.append(f"  {m:<8} failed: {r['error']}")
                continue
            ours = next((o for o in rows if o.get("job") == m and "error" not in o), None)
            extra = speed = ""
            if m == "acdc":
                extra = (f", {r['tested']} edges tested: {r['fe_per_tested_edge']:.2f} "
                         f"FE/edge (cpu {r['fe_cpu_per_tested_edge']:.2f})")
                mine = [o for o in rows if o.get("method") == "acdc" and "error" not in o]
                speed = "; ours " + ", ".join(
                    f"{o['job']} {o['fe_per_tested_edge']:.3f}" for o in mine) + " FE/edge"
            elif ours and tf and pb.get("transformers_s"):
                speed = (f"; ours {ours['fe']:.1f} FE; both / plain transformers: ours "
                         f"{ours['method_s'] / tf:.1f} vs theirs "
                         f"{r['method_s'] / pb['transformers_s']:.1f}")
            lines.append(f"  {m:<8} {r['method_s']:.2f} s, {r['fe']:.1f} FE (vs their TL fwd), "
                         f"peak {r['peak_rss_mb']:.0f} MB{extra}{speed}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("add3", "gpt2-small"), default="add3")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--methods", default="eap,eap_ig,acdc,mask")
    p.add_argument("--big", type=int, default=0, help="also EAP on this many prompts, 1 batch")
    p.add_argument("--pad", type=int, default=None, help="left-pad prompts to this many tokens "
                   "(default 16 for gpt2-small, none for add3)")
    p.add_argument("--repeats", type=int, help="baseline forwards, median (default: 20 on "
                   "add3, 3 on gpt2-small)")
    p.add_argument("--runs", type=int, help="timed runs of each method, median (default: 5 on "
                   "add3, 1 on gpt2-small)")
    p.add_argument("--warmup", choices=("auto", "yes", "no"), default="auto",
                   help="a reduced run of each method before the timed one, so one-time costs "
                   "(autograd start, allocator) are not counted; auto = add3 only (on "
                   "gpt2-small they are noise and a warm-up would double the run)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ig-steps", type=int, default=5)
    p.add_argument("--tau", type=float, default=0.001)
    p.add_argument("--acdc-receivers", type=int, default=3,
                   help="gpt2-small: ACDC visits only the last N receivers (logits, m11, ...)")
    p.add_argument("--acdc-l11", type=int, default=2, help="gpt2-small: also an ACDC job on the "
                   "N receivers before logits (m11, a11.11<v>, ...), logits skipped so their "
                   "edges are all tested at layer 11 (0: no such job)")
    p.add_argument("--peer-acdc-edges", type=int, default=20,
                   help="gpt2-small: auto-circuit's ACDC tests its first N edges")
    p.add_argument("--mask-steps", type=int, default=10)
    p.add_argument("--peer", default=str(DEFAULT_PEER) if DEFAULT_PEER.exists() else "",
                   help="python of the auto-circuit venv ('' to skip)")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline job (keeps the "
                   "last one in discovery.json)")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "wb-discovery"))
    p.add_argument("--timeout", type=int, default=600, help="seconds per worker")
    p.add_argument("--report", action="store_true", help="only print the tables of the last "
                   "results (discovery.json, autocircuit.json)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if str(ROOT) not in sys.path:  # `python bench/discovery.py` from anywhere
        sys.path.insert(0, str(ROOT))
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.report:
        report(json.loads((RESULTS / "discovery.json").read_text())[args.model])
        return
    args.methods = [m for m in args.methods.split(",") if m]
    small = args.model == "gpt2-small"
    args.repeats = args.repeats or (3 if small else 20)
    args.runs = args.runs or (1 if small else 5)
    work = Path(args.workdir) / args.model
    if args.model == "gpt2-small":
        ckpt = work / "ckpt"
        if not (ckpt / "config.json").exists():  # reuse the checkpoint between runs
            gpt2_small_checkpoint(ckpt)
    else:
        from workbench.model import BUNDLED_DIR

        ckpt = BUNDLED_DIR / "add3"
    pad = args.pad if args.pad is not None else (16 if args.model == "gpt2-small" else 0)
    inputs = {}
    for n in {args.prompts, args.big} - {0}:
        inputs[n] = work / f"inputs_{n}.json"
        write_inputs(inputs[n], args.model, ckpt, n, pad)
    RESULTS.mkdir(parents=True, exist_ok=True)
    scores = RESULTS / f"workbench_scores_{args.model}_{args.prompts}.safetensors"
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    load_start = os.getloadavg()
    rows = []
    for job in jobs_for(args, inputs, scores):
        print(f"running {job['name']} ...", file=sys.stderr, flush=True)
        rows.append({**run_worker(job, args.timeout), "date": time.strftime("%Y-%m-%d %H:%M"),
                     "setting": {k: job[k] for k in ("repeats", "runs", "warmup", "batch_size",
                                                     "ig_steps", "tau", "acdc_receivers",
                                                     "mask_steps")}})
        print(f"  {json.dumps(rows[-1])[:300]}", file=sys.stderr, flush=True)
    peer: dict[str, Any] = {}
    comparison: dict[str, Any] = {}
    peer_scores = RESULTS / f"autocircuit_scores_{args.model}_{args.prompts}.safetensors"
    if args.peer:
        peer = run_peer(args, ckpt, inputs[args.prompts], peer_scores)
    if peer_scores.is_file():  # from this run, or an earlier one on the same weights and ids
        from safetensors.torch import load_file

        theirs = load_file(str(peer_scores))
        for m in ("eap", "eap_ig"):
            mine = Path(str(scores).replace(".safetensors", f"_{m}.safetensors"))
            if m in theirs and mine.is_file() and m in args.methods:
                comparison[m] = compare_scores(load_file(str(mine))["scores"], theirs[m])
    result = {
        "model": args.model, "threads": THREADS, "torch": torch.__version__,
        "python": platform.python_version(), "cpus": os.cpu_count(), "date": started,
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "setting": {"prompts": args.prompts, "pad_to": pad, "metric": f"{METRIC} at the last "
                    "position", "mode": MODE, "ig_steps": args.ig_steps, "tau": args.tau,
                    "acdc_receivers": args.acdc_receivers if args.model == "gpt2-small"
                    else "all", "mask_steps": args.mask_steps, "batch_size": args.batch_size},
        "rows": rows, "peer": peer, "score_comparison": comparison,
    }
    path = RESULTS / "discovery.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    old = everything.get(args.model, {})
    if old.get("setting", {}).get("prompts") == args.prompts:  # keep jobs not re-run now
        again = {r["job"] for r in rows}
        rows[:0] = [r for r in old.get("rows", []) if r["job"] not in again]
        result["rows"] = rows
        result["peer"] = peer or old.get("peer", {})
        result["score_comparison"] = {**old.get("score_comparison", {}), **comparison}
    everything[args.model] = result
    path.write_text(json.dumps(everything, indent=2) + "\n")
    report(everything[args.model])


def report(result: dict[str, Any]) -> None:
    """Print one model's tables from its discovery.json entry (and autocircuit.json)."""
    peer = result.get("peer") or {}
    path = RESULTS / "autocircuit.json"
    if not peer and path.is_file():  # the peer ran on its own (same weights and token ids)
        peer = json.loads(path.read_text()).get(result["model"], {})
    print(f"{result['model']}: torch {result['torch']}, {result['threads']} threads, load "
          f"average {result['load_average_at_start']} at the start of the last run")
    print(table(result["rows"], peer))
    for m, c in result.get("score_comparison", {}).items():
        print(f"{m} scores vs auto-circuit: pearson {c['pearson']:.4f}, spearman "
              f"{c['spearman']:.4f} (|score| {c['spearman_abs']:.4f}), top-k overlap "
              f"{c['topk_overlap']}, sign {c['sign_of_theirs']}, rel. L2 diff "
              f"{c['relative_l2_difference']:.2e}")


if __name__ == "__main__":
    main()
