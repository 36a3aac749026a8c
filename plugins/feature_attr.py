"""Feature-basis attribution (`run feature_attr`): which features, error terms and input
embeddings drive a target, with attention patterns frozen (Ge et al. 2024).

Needs dictionaries attached (`sae load add3`): a transcoder for every MLP; attention SAEs
where loaded (an attention layer without one passes its frozen-pattern output straight on).
The target is `target=metric` (the logit difference, averaged like the metric) or a feature
at a position (`target=m1.f5@-1`). `threshold=` (absolute, in the target's units) or `top=`
(per backward step) detach weak nodes during the backward -- hierarchical attribution;
`edges=N` computes the direct edges into the N strongest kept features and the target.
`qk=N` also attributes the attention scores of the N pattern entries of each layer that
carry most of the target (through the query side and the key side). `rank=mass` (default)
ranks nodes by the sum over prompts of |attribution| (a node that matters in some prompts
counts even where signs cancel); `rank=sum` by |attribution|.
The result selects into a feature circuit (`select rN top=20`) that `check` runs in the
replacement model. Cost: one replacement forward (~1 FE) plus one linear backward per
writer and one per edge node, each far cheaper than a forward.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import WorkbenchError
from workbench.features.attribution import attribute, parse_target
from workbench.features.replacement import run as replacement_run
from workbench.features.result import FeatureGraph
from workbench.plugins import Context, Technique


@dataclass(frozen=True)
class Params:
    target: str = "metric"  # metric, or a feature at a position like m1.f5@-1
    threshold: float = 0.0  # detach nodes whose |attribution| is below this (0: none)
    top: int = 0  # keep at most this many nodes per backward step (0: no cap)
    edges: int = 30  # direct edges into this many strongest kept features (and the target)
    rank: str = "mass"  # mass (sum over prompts of |attribution|) or sum (|attribution|)
    qk: int = 0  # also attribute the scores of this many strongest pattern entries per layer

    def __post_init__(self) -> None:
        if self.threshold < 0 or self.top < 0 or self.edges < 0 or self.qk < 0:
            raise ValueError("threshold, top, edges and qk must be >= 0")
        if self.rank not in ("mass", "sum"):
            raise ValueError(f"rank={self.rank}: choose mass or sum")


def run(ctx: Context, params: Params) -> FeatureGraph:
    dicts = ctx.dictionaries
    if not dicts:
        raise WorkbenchError("feature_attr needs dictionaries: sae load add3 (or a folder) "
                             "first")
    w, enc = ctx.api.weights, ctx.api.enc
    dicts.check(w)
    target = parse_target(params.target, dicts, enc.clean.shape[1])
    ctx.progress(0.0, "replacement forward")
    import torch

    with torch.no_grad():
        tr = replacement_run(w, enc.clean, dicts, "keep")
        ctx.check()
        ctx.progress(0.3, "hierarchical backward")
        att = attribute(w, tr, dicts, enc, target, threshold=params.threshold,
                        top=params.top or None, edge_nodes=params.edges, rank=params.rank,
                        qk=params.qk)
    ctx.progress(1.0, "done")
    what = "the logit difference" if target.key is None else target.name()
    return FeatureGraph(
        title=f"feature attribution to {what}", target=target.name(), value=att.value,
        scores=att.scores, kept=tuple(sorted(att.kept)),
        edges={f"{s}->{t}": v for (s, t), v in sorted(att.edges.items())}, rank=att.mass,
        qk=tuple({"head": p.head, "q": p.q, "k": p.k, "weight": p.weight, "score": p.score,
                  "query": p.query, "key": p.key} for p in att.qk),
        unit="logit diff" if target.key is None else "activation")


TECHNIQUE = Technique(
    name="feature_attr", title="Feature attribution (hierarchical, frozen attention)",
    Params=Params, run=run,
    cost="~1 FE (one replacement forward) + linear backward steps",
)
