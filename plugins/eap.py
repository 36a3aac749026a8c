"""Edge attribution patching (`run eap`) and its integrated-gradients variant (`run eap_ig`).

EAP (Syed et al. 2023) estimates, for every edge s -> r of the graph (q/k/v split), how much
the metric changes when the edge is ablated, to first order:
    score(s -> r) = -(out_s - abl_s) . dM / d(input of r)
1. The clean and ablated (corrupted / mean / zero) source outputs are already cached by the
   engine (the 2 forward passes of EAP's floor).
2. One plain forward and one backward give dM/d(input of r) for every receiver at once
   (`forward.Capture`: each head's q/k/v gradient mapped back through W_Q/W_K/W_V and the
   shared LayerNorm Jacobian; no per-head copies of the residual).
3. One GEMM per receiver group multiplies the stacked deltas (sources x batch*pos*d) with those
   gradients: the scores of all 32,491 edges of GPT-2 small.
It equals the gradient of the edge mask `keep` at keep = 1 (tested), at a fraction of its cost.
EAP-IG (Hanna et al. 2024) averages the gradient along a straight path of the *inputs* from
the ablated to the clean prompt (the `input` node interpolated, `steps` points, midpoint rule),
with the same fixed deltas. Prompts are processed in chunks of `batch_size`, so memory stays
bounded for any number of prompts; scores are summed over chunks (in float32 also for half
precision weights). The chunk is also cut to what fits (`workbench.memory`: the working set of
one chunk estimated from shapes, kept under the method budget), and a run that cannot fit even
one prompt is refused before it starts.

Metrics: the session's unless `metric=NAME`. A metric that is extremal at the clean run (kl,
l2: `Metric.flat_at_clean`) has zero gradient there, so plain EAP would return float noise: it is
refused with a pointer to `side=corrupted` (the gradients taken at the ablated input instead:
the same cost, the linearisation around the other end of the path) or to `eap_ig`.

Cost: EAP 1 forward + 1 backward beyond the engine's 2 cached forwards; EAP-IG `steps` of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workbench import memory
from workbench.ablation import AblationEngine
from workbench.errors import WorkbenchError
from workbench.forward import MODES, Capture, Mode, Patch
from workbench.graph import Graph
from workbench.metrics import Metric, get_metric
from workbench.plugins import Context, EdgeScores, Technique


@dataclass(frozen=True)
class Params:
    mode: Mode | None = None  # the ablation the scores estimate (default: the session's)
    batch_size: int = 32  # prompts per forward/backward chunk (32 ran fastest on a CPU)
    metric: str | None = None  # default: the session's
    side: Literal["clean", "corrupted"] = "clean"  # where the gradients are taken


def edge_attribution(engine: AblationEngine, metric: str | Metric, mode: Mode, steps: int = 0,
                     batch_size: int = 32, ctx: Context | None = None, at: float = 1.0
                     ) -> Tensor:
    """(n_edges,) estimated metric change when each edge is ablated. steps=0: plain EAP with
    the gradients at input = ablated + at * (clean - ablated) (1: the clean run, 0: the
    ablated input, `side=corrupted`); steps > 0: EAP-IG's midpoint path."""
    lay, enc, w = engine.graph, engine.enc, engine.weights
    fn = get_metric(metric)
    total = torch.zeros(lay.n_edges, device=engine.device,
                        dtype=torch.promote_types(w.dtype, torch.float32))
    alphas = [at] if steps == 0 else [(i + 0.5) / steps for i in range(steps)]
    batch_size = memory.fit_chunk(
        working_bytes(engine), 0, batch_size, w.nbytes, engine.device, "run eap",
        "use fewer prompts (task ... n=), a smaller model or dtype=bfloat16")
    chunks = list(range(0, enc.n, batch_size))
    done, todo = 0, len(chunks) * len(alphas)
    for start in chunks:
        rows = slice(start, start + batch_size)
        sub = enc.subset(rows)
        n_pos = sub.clean.shape[1]
        values = {m: engine.values[m].rows(rows) for m in MODES}
        deltas = engine.clean.rows(rows).deltas_from(values[mode], w)
        for alpha in alphas:
            if ctx is not None:
                ctx.check()
                ctx.progress(done / todo, f"gradients {done + 1}/{todo}")
            node = None
            if alpha < 1.0:  # the input moves along the path from ablated to clean
                node = torch.zeros(len(MODES), lay.n_sources, n_pos, **engine.kw)
                node[MODES.index(mode), 0] = 1.0 - alpha
            capture = Capture()
            with torch.enable_grad():
                logits = engine.forward.run(sub.clean, sub.answer_pos, Patch(node=node), values,
                                            capture=capture)[0]
                reference = engine.clean_logits[rows]
                value = fn.per_prompt(logits, sub, reference)
                value.sum().backward()
            grads = capture.input_grads(w, sub.answer_pos, n_pos)
            total -= _scores(lay, deltas, grads).to(total.dtype) / enc.n / len(alphas)
            done += 1
    memory.trim()
    return total


def working_bytes(engine: AblationEngine) -> int:
    """Bytes per prompt of one EAP chunk: the deltas (every source, every position), what the
    forward keeps for its backward (per layer: residual-wide tensors, two d_mlp-wide ones,
    float32 attention scores) and the answer logits with their gradient."""
    w, lay = engine.weights, engine.graph
    p, d, s = engine.n_pos, w.d_model, w.W_E.element_size()
    n_answer, vocab = engine.enc.answer.shape[1], w.W_E.shape[0]
    deltas = lay.n_sources * p * d * s
    graph = w.n_layers * p * ((16 * d + 2 * w.d_mlp) * s + 12 * w.n_heads * p)
    return deltas + 3 * w.n_heads * p * d * s + graph + 12 * n_answer * vocab


def _scores(lay: Graph, deltas: Tensor, grads: Iterator[tuple[str, int, Tensor]]) -> Tensor:
    """delta_s . g_r for every edge, laid out in graph edge order: one GEMM per receiver
    group, each group's gradient used as soon as it is made."""
    n = deltas.shape[0]
    flat = deltas.reshape(n, -1)  # (sources, batch*pos*d)
    out = torch.empty(lay.n_edges, dtype=deltas.dtype, device=deltas.device)
    for kind, layer, g in grads:
        if kind == "attn":  # edge order: port, head, source
            up, at, n = lay.up_attn(layer), lay.attn_offset[layer], 3 * lay.n_heads
            torch.matmul(g.view(n, -1), flat[:up].T, out=out[at: at + n * up].view(n, up))
        elif kind == "mlp":
            up, at = lay.up_mlp(layer), lay.mlp_offset[layer]
            out[at: at + up] = flat[:up] @ g.reshape(-1)
        else:
            out[lay.logits_offset:] = flat @ g.reshape(-1)
    return out


def run(ctx: Context, params: Params) -> EdgeScores:
    mode = params.mode or ctx.mode
    fn = gradient_metric(ctx, params.metric, "eap" if params.side == "clean" else "")
    at = 1.0 if params.side == "clean" else 0.0
    scores = edge_attribution(ctx.engine, fn, mode, 0, params.batch_size, ctx, at=at)
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
