"""How good a set of dictionaries is on a prompt set: L0, FVU, dead fraction, and the
replacement performance %.

Replacement performance is the task's performance % (DESIGN.md: 100 = the model, 0 = the
all-ablated model in the engine's `mode`, default mean) of the replacement model with every
dictionary in the set replacing its component at once, error terms dropped (`perf_drop`) or
kept (`perf_keep`, 100 up to rounding when nothing is ablated: a check, not a score).

Invariant: computed on the engine's own prompt set and cached clean run; nothing is trained.
"""

from __future__ import annotations

from typing import Any

import torch

from workbench.ablation import AblationEngine
from workbench.features.replacement import DictionarySet, logits, run


@torch.no_grad()
def evaluate(engine: AblationEngine, dicts: DictionarySet, metric: str = "logit_diff",
             mode: str = "mean") -> dict[str, Any]:
    """{"sites": {key: {l0, fvu, dead}}, perf_drop, perf_keep, acc_drop, acc_keep}."""
    w, enc = engine.weights, engine.enc
    w64 = w
    tr = run(w64, enc.clean, dicts, "keep")
    valid = torch.arange(enc.clean.shape[1], device=enc.clean.device)[None, :] < \
        enc.lengths[:, None]
    sites: dict[str, dict[str, float]] = {}
    for d in dicts.ordered():
        f = tr.feats[d.key][valid]
        err = tr.errors[d.key][valid]
        target = d.decode(f) + err
        var = (target - target.mean(0)).pow(2).sum()
        sites[d.key] = {
            "l0": round(float((f > 0).float().sum(-1).mean()), 4),
            "fvu": round(float(err.pow(2).sum() / var.clamp(min=1e-30)), 6),
            "dead": round(float(((f > 0).sum(0) == 0).float().mean()), 6),
        }
    out: dict[str, Any] = {"sites": sites}
    for error in ("drop", "keep"):
        lg = logits(w, tr if error == "keep" else run(w, enc.clean, dicts, "drop"),
                    enc.answer_pos)
        perf = engine.perf(lg, metric, mode)  # type: ignore[arg-type]
        out[f"perf_{error}"] = round(float(perf.percent), 4)
        out[f"acc_{error}"] = round(float(perf.report.accuracy), 6)
    return out
