"""Edge attribution patching (`run eap`) and its integrated-gradients variant (`run eap_ig`).

EAP (Syed et al. 2023) estimates, for every edge s -> r of the graph (q/k/v split), how much
the metric changes when the edge is ablated, to first order:
    score(s -> r) = -(out_s - abl_s) . dM / d(input of r)
1. The clean and ablated (corrupted / mean / zero) source outputs are already cached by the
   engine (the 2 forward passes of EAP's floor).
2. One forward with a zero-valued probe on every edge (`Patch.probe`): receiver r reads
   `+ sum_s probe[s, r] * (out_s - abl_s)`, which changes nothing.
3. One backward: the gradient w.r.t. the probe is `(out_s - abl_s) . dM/d(input of r)` for
   all 32,491 edges of GPT-2 small at once; the score is its negative.
EAP-IG (Hanna et al. 2024) averages the gradient along a straight path of the *inputs* from
the ablated to the clean prompt (the `input` node interpolated, `steps` points, midpoint rule),
with the same fixed deltas. Prompts are processed in chunks of `batch_size`, so memory stays
bounded for any number of prompts; scores are summed over chunks.

Cost: EAP 1 forward + 1 backward beyond the engine's 2 cached forwards; EAP-IG `steps` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.ablation import AblationEngine
from workbench.errors import WorkbenchError
from workbench.forward import MODES, Mode, Patch
from workbench.metrics import metric_per_prompt
from workbench.plugins import Context, EdgeScores, Technique


@dataclass(frozen=True)
class Params:
    mode: Mode | None = None  # the ablation the scores estimate (default: the session's)
    batch_size: int = 64  # prompts per forward/backward chunk


def edge_attribution(engine: AblationEngine, metric: str, mode: Mode, steps: int = 0,
                     batch_size: int = 64, ctx: Context | None = None) -> Tensor:
    """(n_edges,) estimated metric change when each edge is ablated. steps=0: plain EAP."""
    lay, enc = engine.forward.layout, engine.enc
    total = torch.zeros(lay.n_edges, **engine.kw)
    alphas = [1.0] if steps == 0 else [(i + 0.5) / steps for i in range(steps)]
    chunks = list(range(0, enc.n, batch_size))
    done, todo = 0, len(chunks) * len(alphas)
    for start in chunks:
        rows = slice(start, start + batch_size)
        sub = enc.subset(rows)
        values = {m: engine.values[m].rows(rows) for m in MODES}
        deltas = engine.clean.rows(rows).deltas_from(values[mode], engine.weights)
        reference = engine.clean_logits[rows]
        for alpha in alphas:
            if ctx is not None:
                ctx.check()
                ctx.progress(done / todo, f"gradients {done + 1}/{todo}")
            probe = torch.zeros(lay.n_edges, **engine.kw, requires_grad=True)
            node = None
            if alpha < 1.0:  # the input moves along the path from ablated to clean
                node = torch.zeros(len(MODES), lay.n_sources, sub.clean.shape[1],
                                   **engine.kw)
                node[MODES.index(mode), 0] = 1.0 - alpha
            patch = Patch(node=node, probe=probe, probe_deltas=tuple(deltas))
            with torch.enable_grad():
                logits = engine.forward.run(sub.clean, sub.answer_pos, patch, values)[0]
                value = metric_per_prompt(metric, logits, sub, reference)  # type: ignore[arg-type]
                value.sum().backward()
            assert probe.grad is not None
            total -= probe.grad / enc.n / len(alphas)
            done += 1
    return total


def run(ctx: Context, params: Params) -> EdgeScores:
    mode = params.mode or ctx.mode
    scores = edge_attribution(ctx.engine, metric_name(ctx), mode, 0, params.batch_size, ctx)
    return EdgeScores("edge attribution patching", ctx.graph, scores,
                      unit=f"est. change in {ctx.metric} ({mode})")


def metric_name(ctx: Context) -> str:
    if ctx.metric == "accuracy":
        raise WorkbenchError("accuracy has no gradient: use metric logit_diff, prob or kl")
    return ctx.metric


TECHNIQUE = Technique(
    name="eap", title="Edge attribution patching", Params=Params, run=run,
    cost="1 forward + 1 backward (plus the engine's 2 cached forwards)",
)
