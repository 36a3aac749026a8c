"""Learned edge masks (`run mask`): gradient descent on per-edge interpolation coefficients.

Edge pruning / subnetwork probing as in shared/seeds/004: every edge s -> r gets a coefficient
`keep = sigmoid(theta / temperature)` that interpolates what r reads from s between the clean
and the ablated (corrupted / mean / zero) output.
1. Start with every edge nearly kept (theta = `init`).
2. Each step, on a minibatch of prompts: one forward through the fused engine with the
   interpolated edges and one backward. The loss is the faithfulness loss (how much worse the
   metric is than the clean model's, in its declared direction: KL or l2 to the clean model
   as they are, a drop in logit difference) plus `sparsity` x the expected number of kept edges.
   The metric is the session's unless `metric=NAME`; it needs a gradient (not accuracy).
   With `target_edges`, the sparsity weight is adjusted each step (dual ascent) to steer the
   expected edge count towards the target.
3. The circuit is the edges with keep > 0.5, or the `target_edges` largest coefficients.
One step costs one forward and one backward of the whole model, independent of the number of
layers (the seed note's O(layers) forwards are not needed: every receiver reads its own
interpolated input inside one pass). A minibatch whose working set would not fit the memory
budget (`workbench.memory`, estimated from shapes before the run) is split into chunks whose
gradients are accumulated before the step: the same update, in less memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch

from workbench import memory
from workbench.engine.api import EngineAPI, Mode
from workbench.errors import WorkbenchError
from workbench.graph import Circuit
from workbench.plugins import CircuitResult, Composite, Context, Curve, EdgeScores, Technique
from workbench.ranges import Range


@dataclass(frozen=True)
class Params:
    steps: Annotated[int, Range(1, 1_000_000)] = 200
    lr: float = 0.1
    sparsity: float = 0.01  # weight of the expected-edge-count penalty (per 1,000 edges)
    target_edges: int | None = None
    metric: str | None = None  # the faithfulness metric (default: the session's)
    mode: Mode | None = None
    batch_size: Annotated[int, Range(1, 1 << 16)] = 64
    init: float = 3.0  # initial theta: sigmoid(3) = 0.95 kept
    temperature: float = 1.0
    seed: int = 0


def run(ctx: Context, params: Params) -> Composite:
    if params.steps < 1 or params.batch_size < 1:
        raise WorkbenchError("mask needs steps >= 1 and batch_size >= 1")
    api, mode = ctx.api, params.mode or ctx.mode
    fn = api.metric(params.metric or ctx.metric)
    if not fn.differentiable:
        raise WorkbenchError(f"mask trains by gradient and {fn.name} has none: use "
                             "metric=kl, l2, logit_diff or prob")
    n_edges, n = api.graph.n_edges, api.n_prompts
    torch.manual_seed(params.seed)
    # The parameters and Adam's moments stay in float32 in every dtype: in float16 the
    # squared gradients underflow and Adam's steps blow up (edges dropped for no reason).
    kw = api.kw
    theta = torch.full((n_edges,), params.init, device=kw["device"], dtype=torch.float32,  # type: ignore[arg-type]
                       requires_grad=True)
    opt = torch.optim.Adam([theta], lr=params.lr)
    weight = params.sparsity / 1000.0
    order = torch.randperm(n).tolist()
    chunk = memory.balanced(min(n, params.batch_size), memory.fit_chunk(
        working_bytes(api), 0, params.batch_size, api.weights.nbytes,
        api.weights.W_E.device, "run mask",
        "use fewer prompts (task ... n=), a smaller model or dtype=bfloat16"))
    losses, counts = [], []
    for step in range(params.steps):
        ctx.check()
        if step % 10 == 0:
            ctx.progress(step / params.steps, f"mask step {step}/{params.steps}")
        start = (step * params.batch_size) % n
        index = order[slice(start, min(n, start + params.batch_size))]
        opt.zero_grad()
        faith = torch.zeros((), device=theta.device)
        for part in (index[i: i + chunk] for i in range(0, len(index), chunk)):
            with torch.enable_grad():  # the faithfulness loss, its gradient summed over chunks
                keep = torch.sigmoid(theta / params.temperature)
                logits = api.edge_logits(keep.to(kw["dtype"]), mode, rows=part)  # type: ignore[arg-type]
                now = api.metric_values(logits, fn, rows=part).sum()
                full = api.metric_values(api.clean_logits[part], fn, rows=part).sum()
                part_faith = (full - now if fn.direction == "higher" else now - full) / len(index)
                part_faith.backward()
            faith += part_faith.detach()
        with torch.enable_grad():
            keep = torch.sigmoid(theta / params.temperature)
            expected = keep.sum()
            (weight * expected).backward()
        opt.step()
        if params.target_edges is not None:  # dual ascent on the sparsity weight
            gap = (float(expected.detach()) - params.target_edges) / max(params.target_edges, 1)
            weight = max(0.0, weight * (1.0 + 0.1 * gap) + 1e-6 * gap)
        losses.append(float(faith.detach()))
        counts.append(float(expected.detach()))
    keep = torch.sigmoid(theta.detach() / params.temperature)
    if params.target_edges is not None:
        chosen = keep.argsort(descending=True)[: params.target_edges].tolist()
    else:
        chosen = (keep > 0.5).nonzero().flatten().tolist()
    edges = [ctx.graph.edges[i] for i in chosen]
    circuit = Circuit.from_edges(edges, scores={str(ctx.graph.edges[i]): float(keep[i])
                                                for i in chosen})
    title = f"learned edge mask ({fn.name}, {mode}): {len(edges)} edges"
    steps = tuple(float(i) for i in range(params.steps))
    return Composite(title, (
        ("circuit", CircuitResult(title, circuit, metric=fn.name)),
        ("keep", EdgeScores("learned keep coefficients", ctx.graph, keep, unit="keep")),
        ("training", Curve("mask training", "step", steps,
                           {"faithfulness loss": tuple(losses),
                            "expected edges": tuple(counts)}, metric=fn.name)),
    ), metric=fn.name)


def working_bytes(api: EngineAPI) -> int:
    """Bytes per prompt of one edge-masked forward kept for its backward: every source's delta,
    each layer's per-receiver q/k/v inputs and their LayerNorms (3 x heads residual-wide
    tensors, twice), EAP's per-layer terms and the answer logits with their gradient."""
    w, g = api.weights, api.graph
    p, d, s = api.n_pos, w.d_model, w.W_E.element_size()
    n_answer, vocab = api.enc.answer.shape[1], w.W_E.shape[0]
    per_layer = (6 * w.n_heads * d + 16 * d + 2 * w.d_mlp) * s + 12 * w.n_heads * p
    return g.n_sources * p * d * s + w.n_layers * p * per_layer + 12 * n_answer * vocab


TECHNIQUE = Technique(
    name="mask", title="Learned edge masks (edge pruning)", Params=Params, run=run,
    cost="steps x (1 forward + 1 backward) on batch_size prompts",
    estimate=lambda ctx, p: 2 + 2 * p.steps * min(p.batch_size, len(ctx.prompts))
    / max(1, len(ctx.prompts)),
)
