"""The card of a bundled dictionary set: `workbench/models/NAME/dictionaries/DICTIONARIES.md`.

For each dictionary: what it replaces, its size and sparsity, the command that reproduces it
(recorded in its cfg.json when it was trained) and its L0 / FVU / dead fraction /
replacement performance alone; then the replacement performance with every dictionary in.
All numbers are measured here, on the model's own task's held-out prompts (`n`, seed 1).
Regenerate with `python -m workbench.features.card add3`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from workbench.ablation import AblationEngine
from workbench.features.files import BUNDLED_DIR, resolve
from workbench.features.replacement import DictionarySet
from workbench.features.stats import evaluate
from workbench.graph import write_atomic
from workbench.model import load_model
from workbench.tasks import make_task
from workbench.tasks.encode import encode

CARD = "DICTIONARIES.md"


def write_card(name: str, n: int = 512) -> Path:
    model = load_model(name)
    task, options = model.default_task()
    prompts = make_task(task, **options).prompt_set(n, 1, split="test")
    engine = AblationEngine(model, encode(prompts, model.tokenizer))
    dicts = DictionarySet(tuple(resolve(name)))
    with torch.no_grad():
        together = evaluate(engine, dicts)
        alone = {d.key: evaluate(engine, DictionarySet((d,))) for d in dicts.ordered()}
    opts = " ".join(f"{k}={v}" for k, v in options.items())
    lines = [
        f"# {name}: bundled dictionaries", "",
        f"Sparse dictionaries for `{name}`, in SAELens layout (one folder each: `cfg.json` + "
        "`sae_weights.safetensors`, plus the training log). Attach them with `sae load "
        f"{name}`. SAEs read and write an attention output (`blocks.L.hook_attn_out`); "
        "transcoders read ln2's output (`blocks.L.ln2.hook_normalized`, the folded "
        "LayerNorm of compatibility mode: centred, unit RMS) and write the MLP's output "
        "(`blocks.L.hook_mlp_out`).", "",
        f"Measured on {n} held-out prompts of `task {task} {opts}` (seed 1): L0 = active "
        "features per token, FVU = fraction of variance unexplained, dead = fraction of "
        "features never active on these prompts, replacement = performance % (logit "
        "difference, 0 = the mean-ablated model) with the component(s) replaced and error "
        "terms dropped (kept: 100 by construction).", "",
        "| dictionary | replaces | features | sparsity | L0 | FVU | dead | replacement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in dicts.ordered():
        s = together["sites"][d.key]
        what = f"MLP {d.layer}" if d.transcoder else f"attention output {d.layer}"
        sparse = f"top-{d.k}" if d.sparsity == "topk" else d.sparsity
        lines.append(f"| `{d.key}` | {what} | {d.d_sae} | {sparse} | {s['l0']:.2f} | "
                     f"{s['fvu']:.4f} | {s['dead']:.3f} | {alone[d.key]['perf_drop']:.1f}% |")
    lines += ["", f"All {len(dicts.dictionaries)} together, error terms dropped: "
              f"**{together['perf_drop']:.1f}%** (accuracy {together['acc_drop']:.3f}; the "
              f"model: 100%, accuracy 1.000).", "", "Reproduce (deterministic on CPU with the "
              "same thread count; run from the repository root):", "", "```"]
    lines += [d.meta["command"] for d in dicts.ordered()]
    lines += ["```", ""]
    return write_atomic(BUNDLED_DIR / name / "dictionaries" / CARD, "\n".join(lines).encode())


if __name__ == "__main__":
    torch.set_num_threads(1)
    print(write_card(sys.argv[1] if len(sys.argv) > 1 else "add3"))
