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

Cost: EAP 1 forward + 1 backward beyond the engine's 2 cached forwards; EAP-IG `steps` of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench import memory
from workbench.ablation import AblationEngine
from workbench.errors import WorkbenchError
from workbench.forward import MODES, Capture, Layout, Mode, Patch
from workbench.metrics import metric_per_prompt
from workbench.plugins import Context, EdgeScores, Technique


@dataclass(frozen=True)
class Params:
    mode: Mode | None = None  # the ablation the scores estimate (default: the session's)
    batch_size: int = 32  # prompts per forward/backward chunk (32 ran fastest on a CPU)


def edge_attribution(engine: AblationEngine, metric: str, mode: Mode, steps: int = 0,
                     batch_size: int = 32, ctx: Context | None = None) -> Tensor:
    """(n_edges,) estimated metric change when each edge is ablated. steps=0: plain EAP."""
    lay, enc, w = engine.forward.layout, engine.enc, engine.weights
    total = torch.zeros(lay.n_edges, device=engine.device,
                        dtype=torch.promote_types(w.dtype, torch.float32))
    alphas = [1.0] if steps == 0 else [(i + 0.5) / steps for i in range(steps)]
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
                value = metric_per_prompt(metric, logits, sub, reference)  # type: ignore[arg-type]
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
    w, lay = engine.weights, engine.forward.layout
    p, d, s = engine.n_pos, w.d_model, w.W_E.element_size()
    n_answer, vocab = engine.enc.answer.shape[1], w.W_E.shape[0]
    deltas = lay.n_sources * p * d * s
    graph = w.n_layers * p * ((16 * d + 2 * w.d_mlp) * s + 12 * w.n_heads * p)
    return deltas + 3 * w.n_heads * p * d * s + graph + 12 * n_answer * vocab


def _scores(lay: Layout, deltas: Tensor, grads: Iterator[tuple[str, int, Tensor]]) -> Tensor:
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
