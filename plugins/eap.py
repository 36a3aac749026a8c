"""Edge attribution patching (`run eap`) and its integrated-gradients variant (`run eap_ig`).

EAP (Syed et al. 2023) estimates, for every edge s -> r of the graph (q/k/v split), how much
the metric changes when the edge is ablated, to first order:
    score(s -> r) = -(out_s - abl_s) . dM / d(input of r)
1. The clean and ablated (corrupted / mean / zero) source outputs are already cached by the
   engine (the 2 forward passes of EAP's floor).
2. One plain forward and one backward give dM/d(input of r) for every receiver at once
   (`api.receiver_grads`: each head's q/k/v gradient mapped back through W_Q/W_K/W_V and the
   shared LayerNorm Jacobian; no per-head copies of the residual).
3. One GEMM per receiver group multiplies the stacked deltas (sources x batch*pos*d) with those
   gradients (`api.edge_products`): the scores of all 32,491 edges of GPT-2 small.
It equals the gradient of the edge mask `keep` at keep = 1 (tested), at a fraction of its cost.
EAP-IG (Hanna et al. 2024) averages the gradient along a straight path of the *inputs* from
the ablated to the clean prompt (the `input` node interpolated, `steps` points, midpoint rule),
with the same fixed deltas. Prompts are processed in chunks of `batch_size`, so memory stays
bounded for any number of prompts; scores are summed over chunks (in float32 also for half
precision weights). The chunk is also cut to what fits (`workbench.memory`: one chunk's working
set estimated from shapes, kept under the method budget); a run that cannot fit one prompt is
refused before it starts.

Metrics: the session's unless `metric=NAME`. A metric that is extremal at the clean run (kl,
l2: `Metric.flat_at_clean`) has zero gradient there, so plain EAP would return float noise: it is
refused with a pointer to `side=corrupted` (the gradients taken at the ablated input instead:
the same cost, the linearisation around the other end of the path) or to `eap_ig`.

Cost: EAP 1 forward + 1 backward beyond the engine's 2 cached forwards; EAP-IG `steps` of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workbench import memory
from workbench.engine.api import AblationEngine, EngineAPI, Metric, Mode
from workbench.errors import WorkbenchError
from workbench.plugins import Context, EdgeScores, Technique


@dataclass(frozen=True)
class Params:
    mode: Mode | None = None  # the ablation the scores estimate (default: the session's)
    batch_size: int = 32  # prompts per forward/backward chunk (32 ran fastest on a CPU)
    metric: str | None = None  # default: the session's
    side: Literal["clean", "corrupted"] = "clean"  # where the gradients are taken


def edge_attribution(engine: AblationEngine | EngineAPI, metric: str | Metric, mode: Mode,
                     steps: int = 0, batch_size: int = 32, ctx: Context | None = None,
                     at: float = 1.0) -> Tensor:
    """(n_edges,) estimated metric change when each edge is ablated. steps=0: plain EAP with
    the gradients at input = ablated + at * (clean - ablated) (1: the clean run, 0: the
    ablated input, `side=corrupted`); steps > 0: EAP-IG's midpoint path."""
    api = engine if isinstance(engine, EngineAPI) else EngineAPI.of(engine)
    fn, n = api.metric(metric), api.n_prompts
    w = api.weights
    # float32 sums also for half precision weights
    total = torch.zeros(api.graph.n_edges, device=w.W_E.device,
                        dtype=torch.promote_types(w.dtype, torch.float32))
    alphas = [at] if steps == 0 else [(i + 0.5) / steps for i in range(steps)]
    batch_size = memory.balanced(n, memory.fit_chunk(
        working_bytes(api), 0, batch_size, w.nbytes, w.W_E.device, "run eap",
        "use fewer prompts (task ... n=), a smaller model or dtype=bfloat16"))
    chunks = list(range(0, n, batch_size))
    done, todo = 0, len(chunks) * len(alphas)
    for start in chunks:
        rows = slice(start, start + batch_size)
        deltas = api.source_deltas(mode, rows)
        for alpha in alphas:
            if ctx is not None:
                ctx.check()
                ctx.progress(done / todo, f"gradients {done + 1}/{todo}")
            grads = api.receiver_grads(fn, mode, rows, input_keep=alpha)
            total -= api.edge_products(deltas, grads).to(total.dtype) / n / len(alphas)
            del grads  # its forward's saved tensors, before the next chunk's are made
            done += 1
        del deltas  # likewise: two chunks' deltas never live at once
    memory.trim()
    return total


def working_bytes(api: EngineAPI) -> int:
    """Bytes per prompt of one EAP chunk: the deltas (every source, every position), what the
    forward keeps for its backward (per layer: residual-wide tensors, two d_mlp-wide ones,
    float32 attention scores) and the answer logits with their gradient."""
    w, g = api.weights, api.graph
    p, d, s = api.n_pos, w.d_model, w.W_E.element_size()
    n_answer, vocab = api.enc.answer.shape[1], w.W_E.shape[0]
    deltas = g.n_sources * p * d * s
    graph = w.n_layers * p * ((16 * d + 2 * w.d_mlp) * s + 12 * w.n_heads * p)
    return deltas + 3 * w.n_heads * p * d * s + graph + 12 * n_answer * vocab


def run(ctx: Context, params: Params) -> EdgeScores:
    mode = params.mode or ctx.mode
    fn = gradient_metric(ctx, params.metric, "eap" if params.side == "clean" else "")
    at = 1.0 if params.side == "clean" else 0.0
    scores = edge_attribution(ctx.api, fn, mode, 0, params.batch_size, ctx, at=at)
    side = "" if params.side == "clean" else ", gradients at the ablated input"
    return EdgeScores(f"edge attribution patching{side}", ctx.graph, scores,
                      unit=f"est. change in {fn.name} ({mode})", metric=fn.name)


def gradient_metric(ctx: Context, name: str | None, at_clean: str = "") -> Metric:
    """The metric a gradient method uses, refused when it has no gradient (accuracy) or, for a
    method `at_clean` that differentiates at the clean run, when the gradient vanishes there."""
    fn = ctx.metric_fn(name)
    if not fn.differentiable:
        raise WorkbenchError(f"{fn.name} has no gradient: use metric=logit_diff, prob, kl or l2")
    if at_clean and fn.flat_at_clean:
        raise WorkbenchError(
            f"{at_clean}: {fn.name} is minimal at the clean run, so its gradient there is zero "
            f"and the scores would be noise; use run {at_clean} metric={fn.name} side=corrupted "
            f"(gradients at the ablated input) or run eap_ig metric={fn.name}")
    return fn


TECHNIQUE = Technique(
    name="eap", title="Edge attribution patching", Params=Params, run=run,
    cost="1 forward + 1 backward (plus the engine's 2 cached forwards)",
)
