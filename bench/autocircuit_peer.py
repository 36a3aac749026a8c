"""The auto-circuit peer of `bench/discovery.py`: the same measurements with auto-circuit.

Runs in its own virtual environment (auto-circuit needs TransformerLens 1.x/2.x; the workbench
uses 4.x, so it stays out of the project's dependencies). Setup, CPU only, nothing from the hub:

    python3 -m venv /tmp/ac-venv
    /tmp/ac-venv/bin/pip install torch==2.13.0           # the local CPU wheel, first
    /tmp/ac-venv/bin/pip install auto-circuit==1.0.1 "transformer-lens>=2.0,<3" \\
        torch==2.13.0 pyarrow==21.0.0
    # resolves transformer-lens 2.18.0, transformers 4.57.6, numpy 1.26.4; pyarrow is pinned
    # because TL 2.x needs numpy<2 and the newest pyarrow (pulled by datasets) needs numpy>=2.

Then, after `bench/discovery.py` wrote the checkpoint and the token ids (it also calls this
script itself when /tmp/ac-venv exists):

    /tmp/ac-venv/bin/python bench/autocircuit_peer.py --ckpt DIR --prompts 32 [--model NAME]

1. The model: the checkpoint's `GPT2LMHeadModel` converted offline with TransformerLens'
   `convert_gpt2_weights` into a `HookedTransformer` built from a hand-made config, processed as
   auto-circuit's `load_tl_model` does (fold LN, centre writing weights and unembedding, fold
   value biases), with its edge flags on (attn result, split q/k/v input, hook_mlp_in), then
   `patchable_model(factorized=True, slice_output="last_seq", separate_qkv=True)`.
2. The prompts: the token ids of `inputs_<N>.json` (written by discovery.py), one batch;
   answers / wrong answers are the last-position answer and contrast digits.
3. Each method in a fresh subprocess (peak `ru_maxrss` per method): EAP =
   `mask_gradient_prune_scores(grad_function="logit", answer_function="avg_diff",
   mask_val=0.0)`, EAP-IG = the same with `integrated_grad_samples=--ig-steps` (auto-circuit
   interpolates every edge mask from 0 to 1 at steps + 1 points; ours moves the input), both
   with RESAMPLE ablation; ACDC = `acdc_prune_scores` at one tau (1e-3) with its edge loop
   cut after `--acdc-edges` edges (0 = all) to time the cost per tested edge.
4. FE = seconds / one plain `HookedTransformer` forward of the same batch in the same process
   (edge flags off); also timed: the patchable model unpatched and plain `transformers`.

Writes the `<model>` entry of `bench/results/autocircuit.json`, and the EAP / EAP-IG scores in
the workbench's edge order (names mapped: `Resid Start`->`input`, `A3.0`->`a3.0`, `MLP 3`->`m3`,
`A9.1.Q`->`a9.1<q>`, `Resid End`->`logits`) to `--scores` (safetensors).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import median_seconds, rss_mb

THREADS = 2
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TAU = 1e-3


# -- model and data ----------------------------------------------------------------------------


def hooked_transformer(ckpt: str) -> tuple[Any, Any]:
    """(HookedTransformer, the HF model) from a local GPT-2 checkpoint, offline."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(ckpt).eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head,
        d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, n_ctx=c.n_positions,
        act_fn=c.activation_function, normalization_type="LN", eps=c.layer_norm_epsilon,
        positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=False, device="cpu")
    model = HookedTransformer(cfg)
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=True,
                                      center_writing_weights=True, center_unembed=True,
                                      fold_value_biases=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    return model, hf


def make_patchable(model: Any) -> Any:
    """auto-circuit's `load_tl_model` flags, then its patchable wrapper (edge level, q/k/v)."""
    from auto_circuit.utils.graph_utils import patchable_model

    model.cfg.use_attn_result = True
    model.cfg.use_attn_in = True
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True
    return patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True,
                           device=torch.device("cpu"))


def dataloader(inputs: dict[str, Any]) -> Any:
    from auto_circuit.data import PromptDataLoader, PromptDataset

    clean, corrupt = torch.tensor(inputs["clean"]), torch.tensor(inputs["corrupted"])
    answers = list(torch.tensor(inputs["answer"]))
    wrong = list(torch.tensor(inputs["contrast"]))
    ds = PromptDataset(clean, corrupt, answers, wrong)
    return PromptDataLoader(ds, seq_len=None, diverge_idx=0, batch_size=len(ds), shuffle=False)


def our_name(name: str) -> str:
    """auto-circuit node name -> the workbench's (`A9.1.Q` -> `a9.1<q>`, `MLP 3` -> `m3`)."""
    if name == "Resid Start":
        return "input"
    if name == "Resid End":
        return "logits"
    if m := re.fullmatch(r"MLP (\d+)", name):
        return f"m{m[1]}"
    if m := re.fullmatch(r"A(\d+)\.(\d+)(?:\.([QKV]))?", name):
        return f"a{m[1]}.{m[2]}" + (f"<{m[3].lower()}>" if m[3] else "")
    raise ValueError(f"unexpected auto-circuit node name {name!r}")


def scores_in_our_order(model: Any, prune_scores: dict[str, torch.Tensor],
                        edges: list[str]) -> torch.Tensor:
    index = {name: i for i, name in enumerate(edges)}
    out = torch.full((len(edges),), float("nan"))
    for edge in model.edges:
        name = f"{our_name(edge.src.name)}->{our_name(edge.dest.name)}"
        out[index[name]] = float(prune_scores[edge.dest.module_name][edge.patch_idx])
    if len(model.edges) != len(edges) or bool(out.isnan().any()):
        raise SystemExit(f"edge sets differ: auto-circuit {len(model.edges)}, ours {len(edges)}")
    return out


# -- worker ------------------------------------------------------------------------------------


def worker(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(THREADS)
    inputs = json.loads(Path(job["inputs"]).read_text())
    t0 = time.perf_counter()
    model, hf = hooked_transformer(inputs["ckpt"])
    out: dict[str, Any] = {"method": job["method"], "prompts": inputs["n"],
                           "pos": inputs["pos"], "load_s": time.perf_counter() - t0,
                           "load_avg_start": os.getloadavg()[0]}
    tokens = torch.tensor(inputs["clean"])
    repeats = job["repeats"]
    with torch.inference_mode():
        out["tl_plain_s"], out["tl_plain_cpu_s"] = median_seconds(lambda: model(tokens),
                                                                  repeats)
        if job["method"] == "baseline":
            out["transformers_s"], out["transformers_cpu_s"] = _time_hf(hf, tokens, repeats)
    del hf
    gc.collect()
    t0 = time.perf_counter()
    patchable = make_patchable(model)
    out["wrap_s"] = time.perf_counter() - t0
    out["n_edges"] = len(patchable.edges)
    loader = dataloader(inputs)
    if job["method"] == "baseline":
        from auto_circuit.utils.tensor_ops import batch_avg_answer_diff

        with torch.inference_mode():
            out["patchable_s"], out["patchable_cpu_s"] = median_seconds(
                lambda: patchable(tokens), repeats)
            batch = next(iter(loader))
            out["clean_metric"] = float(batch_avg_answer_diff(
                patchable(batch.clean)[patchable.out_slice], batch))
        out["rss_setup_mb"] = out["peak_rss_mb"] = rss_mb()
        return out
    out["rss_before_method_mb"] = rss_mb()
    if job["warmup"]:  # a reduced run first, as discovery.py does for ours
        t0 = time.perf_counter()
        run_method({**job, "save": None, "ig_steps": 1, "acdc_edges": 10}, patchable, loader,
                   inputs)
        out["warmup_s"] = time.perf_counter() - t0
    out["rss_setup_mb"] = rss_mb()
    walls, cpus = [], []
    for _ in range(job["runs"]):
        t0, c0 = time.perf_counter(), time.process_time()
        extra = run_method(job, patchable, loader, inputs)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out["method_s"], out["method_cpu_s"] = statistics.median(walls), statistics.median(cpus)
    out["runs_s"] = walls
    out["peak_rss_mb"] = rss_mb()
    out["load_avg_end"] = os.getloadavg()[0]
    out["fe"] = out["method_s"] / out["tl_plain_s"]
    out["fe_cpu"] = out["method_cpu_s"] / out["tl_plain_cpu_s"]
    out.update(extra)
    if extra.get("tested"):
        out["fe_per_tested_edge"] = extra["edge_loop_s"] / extra["tested"] / out["tl_plain_s"]
        out["fe_cpu_per_tested_edge"] = (extra["edge_loop_cpu_s"] / extra["tested"]
                                         / out["tl_plain_cpu_s"])
    return out


def _time_hf(hf: Any, tokens: torch.Tensor, repeats: int) -> tuple[float, float]:
    return median_seconds(lambda: hf(tokens).logits, repeats)


def run_method(job: dict[str, Any], model: Any, loader: Any, inputs: dict[str, Any]
               ) -> dict[str, Any]:
    from auto_circuit.types import AblationType

    method = job["method"]
    if method in ("eap", "eap_ig"):
        from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores

        steps = job["ig_steps"] if method == "eap_ig" else None
        scores = mask_gradient_prune_scores(
            model, loader, None, grad_function="logit", answer_function="avg_diff",
            mask_val=None if steps else 0.0, integrated_grad_samples=steps,
            ablation_type=AblationType.RESAMPLE, clean_corrupt="corrupt")
        ordered = scores_in_our_order(model, scores, inputs["edges"])
        if steps:  # auto-circuit sums the steps + 1 gradients; ours averages
            ordered = ordered / (steps + 1)
        if job["save"]:
            from safetensors.torch import save_file

            save_file({method: ordered.contiguous()}, job["save"])
        return {"passes": (steps or 0) + 1, "integrated_grad_samples": steps}
    if method == "acdc":
        import auto_circuit.prune_algos.ACDC as acdc_module

        counter = _EdgeLoop(job["acdc_edges"])
        acdc_module.tqdm = counter  # the edge loop, cut after N edges and timed
        t0 = time.perf_counter()
        acdc_module.acdc_prune_scores(model, loader, None, tao_exps=[-3], tao_bases=[1])
        return {"tau": TAU, "tested": counter.count, "setup_s": counter.first - t0,
                "edge_loop_s": counter.end - counter.first,
                "edge_loop_cpu_s": counter.end_cpu - counter.first_cpu,
                "edges_limit": job["acdc_edges"] or "all"}
    raise SystemExit(f"unknown method {method}")


class _EdgeLoop:
    """Stands in for auto-circuit's tqdm in ACDC: passes the tau list through, and yields at most
    `limit` edges of the edge loop while timing it."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0
        self.first = self.end = self.first_cpu = self.end_cpu = 0.0

    def __call__(self, items: Any) -> Any:
        items = list(items)
        if items and not isinstance(items[0], float | int):
            return _Iter(self._edges(items))
        return _Iter(iter(items))

    def _edges(self, edges: list[Any]) -> Any:
        self.first, self.first_cpu = time.perf_counter(), time.process_time()
        for i, edge in enumerate(edges):
            if self.limit and i >= self.limit:
                break
            yield edge
            self.count += 1
        self.end, self.end_cpu = time.perf_counter(), time.process_time()


class _Iter:
    def __init__(self, it: Any) -> None:
        self.it = it

    def __iter__(self) -> Any:
        return self.it

    def set_description_str(self, *args: Any, **kwargs: Any) -> None:
        pass


# -- parent ------------------------------------------------------------------------------------


def run_worker(job: dict[str, Any], timeout: int) -> dict[str, Any]:
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "OMP_NUM_THREADS": str(THREADS),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"method": job["method"], "error": f"timeout {timeout}s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])
        return {"method": job["method"], "error": f"exit {proc.returncode}: {tail[-1]}",
                "stderr_tail": tail[-15:]}
    return json.loads(lines[-1][len("RESULT "):])


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("auto-circuit", "transformer-lens", "transformers", "torch",
                                    "numpy", "pyarrow")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="the checkpoint directory discovery.py used (required)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--inputs", help="token ids from discovery.py (default: "
                   "$TMPDIR/wb-discovery/<model>/inputs_<N>.json)")
    p.add_argument("--model", help="label (default: the inputs file's)")
    p.add_argument("--methods", default="eap,eap_ig,acdc")
    p.add_argument("--ig-steps", type=int, default=5)
    p.add_argument("--acdc-edges", type=int, default=0, help="ACDC: test the first N edges")
    p.add_argument("--repeats", type=int, default=3, help="baseline forwards (median)")
    p.add_argument("--runs", type=int, default=1, help="timed runs per method (median)")
    p.add_argument("--cold", action="store_true", help="no reduced warm-up run first (for "
                   "large models, where one-time costs are noise)")
    p.add_argument("--timeout", type=int, default=600, help="seconds per worker")
    p.add_argument("--scores", help="safetensors output (default bench/results/"
                   "autocircuit_scores_<model>_<N>.safetensors)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if not args.ckpt:
        p.error("--ckpt is required")
    work = Path(tempfile.gettempdir()) / "wb-discovery"
    inputs_path = Path(args.inputs) if args.inputs else next(
        (f for f in sorted(work.glob(f"*/inputs_{args.prompts}.json"))
         if json.loads(f.read_text())["ckpt"] == str(Path(args.ckpt).resolve())), None)
    if inputs_path is None or not inputs_path.is_file():
        raise SystemExit("no token-id file: run bench/discovery.py first or pass --inputs")
    inputs = json.loads(inputs_path.read_text())
    if Path(inputs["ckpt"]).resolve() != Path(args.ckpt).resolve():
        raise SystemExit(f"{inputs_path} was written for {inputs['ckpt']}, not {args.ckpt}")
    label = args.model or inputs["model"]
    scores_path = Path(args.scores) if args.scores else (
        RESULTS / f"autocircuit_scores_{label}_{inputs['n']}.safetensors")
    started, load_start = time.strftime("%Y-%m-%d %H:%M:%S"), os.getloadavg()
    base = {"inputs": str(inputs_path), "repeats": args.repeats, "runs": args.runs,
            "warmup": not args.cold,
            "ig_steps": args.ig_steps, "acdc_edges": args.acdc_edges}
    print("auto-circuit: baseline ...", file=sys.stderr, flush=True)
    baseline = run_worker({**base, "method": "baseline"}, args.timeout)
    print(f"  {json.dumps(baseline)[:300]}", file=sys.stderr, flush=True)
    methods: dict[str, Any] = {}
    parts: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in [m for m in args.methods.split(",") if m]:
            print(f"auto-circuit: {m} ...", file=sys.stderr, flush=True)
            save = str(Path(tmp) / f"{m}.safetensors")
            methods[m] = run_worker({**base, "method": m, "save": save}, args.timeout)
            print(f"  {json.dumps(methods[m])[:300]}", file=sys.stderr, flush=True)
            if Path(save).is_file():
                from safetensors.torch import load_file

                parts.update(load_file(save))
    if parts:
        from safetensors.torch import save_file

        scores_path.parent.mkdir(parents=True, exist_ok=True)
        save_file(parts, str(scores_path))
    entry = {"date": started, "threads": THREADS, "python": platform.python_version(),
             "versions": versions(), "ckpt": str(Path(args.ckpt).resolve()),
             "load_average_at_start": [round(x, 2) for x in load_start],
             "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
             "setting": {"prompts": inputs["n"], "pos": inputs["pos"], "metric":
                         "logit avg_diff at the last position", "ablation": "RESAMPLE",
                         "ig_samples": args.ig_steps, "acdc_tau": TAU,
                         "acdc_edges": args.acdc_edges or "all"},
             "baseline": baseline, "methods": methods,
             "scores": str(scores_path) if parts else None}
    path = RESULTS / "autocircuit.json"
    everything = json.loads(path.read_text()) if path.is_file() else {}
    old = everything.get(label, {})
    if old.get("setting", {}).get("prompts") == inputs["n"]:  # keep methods not re-run now
        entry["methods"] = {**old.get("methods", {}), **methods}
    everything[label] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(everything, indent=2) + "\n")
    print(f"auto-circuit on {label}: baseline TL forward "
          f"{baseline.get('tl_plain_s', float('nan')) * 1000:.1f} ms")
    for m, r in methods.items():
        if "error" in r:
            print(f"  {m:<8} failed: {r['error']}")
        else:
            edge = (f", {r['tested']} edges: {r['fe_per_tested_edge']:.2f} FE/edge"
                    if r.get("tested") else "")
            print(f"  {m:<8} {r['method_s']:.2f} s = {r['fe']:.1f} FE (cpu {r['fe_cpu']:.1f}), "
                  f"peak {r['peak_rss_mb']:.0f} MB{edge}")


if __name__ == "__main__":
    main()
