"""EAP with integrated gradients (`run eap_ig`, Hanna et al. 2024): see `plugins.eap`.

1. Move the `input` node along a straight path from its ablated to its clean value (`steps`
   points, midpoint rule); everything downstream is recomputed at each point.
2. At each point, one forward and one backward give dM/d(input of r) for every receiver
   (`api.receiver_grads`); `(clean_s - abl_s) . dM/d(input of r)` for every edge, averaged.
3. The score is the negative average: the estimated metric change when the edge is ablated.

Cost: `steps` x (1 forward + 1 backward), prompts in chunks of `batch_size`.
"""

from __future__ import annotations

from dataclasses import dataclass

from plugins.eap import edge_attribution, gradient_metric
from workbench.engine.api import Mode
from workbench.errors import WorkbenchError
from workbench.plugins import Context, EdgeScores, Technique


@dataclass(frozen=True)
class Params:
    mode: Mode | None = None
    steps: int = 5
    batch_size: int = 32
    metric: str | None = None  # default: the session's


def run(ctx: Context, params: Params) -> EdgeScores:
    if params.steps < 1:
        raise WorkbenchError("eap_ig needs steps >= 1")
    mode = params.mode or ctx.mode
    fn = gradient_metric(ctx, params.metric)  # the midpoint path never reaches the clean run
    scores = edge_attribution(ctx.api, fn, mode, params.steps, params.batch_size, ctx)
    return EdgeScores(f"EAP-IG ({params.steps} steps)", ctx.graph, scores,
                      unit=f"est. change in {fn.name} ({mode})", metric=fn.name)


TECHNIQUE = Technique(
    name="eap_ig", title="Edge attribution patching with integrated gradients", Params=Params,
    run=run, cost="steps x (1 forward + 1 backward)", estimate=lambda ctx, p: 2 + 2 * p.steps,
)
