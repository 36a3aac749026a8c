"""The result of `run feature_attr`: node attributions in the feature basis, which nodes the
hierarchical backward kept, and the edges among the strongest; `select` turns it into a
feature circuit (`graph.Circuit` with positioned feature nodes) like any other circuit.

Invariant: a selected circuit holds only kept nodes, the target, and edges whose two ends
are both in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.errors import WorkbenchError
from workbench.graph import Circuit, Edge, parse_node


@dataclass(frozen=True)
class FeatureGraph:
    title: str
    target: str  # `logits` or a feature at a position (`m1.f5@9`)
    value: float  # the target's value (mean logit difference or mean activation)
    scores: dict[str, float]  # node name -> attribution
    kept: tuple[str, ...]
    edges: dict[str, float]  # "src->dst" -> weight
    rank: dict[str, float]  # what `select` ranks by (sum over prompts of |attribution|)
    qk: tuple[dict[str, Any], ...] = ()  # QK attribution entries (`qk=N`), see attribution.QK
    unit: str = "logit diff"
    kind: str = "feature_graph"
    level: str = "feature"  # the circuit level `select` records (check uses the replacement)

    def summary(self) -> dict[str, Any]:
        top = self.ranked()[:10]
        return {"kind": self.kind, "title": self.title, "unit": self.unit,
                "target": self.target, "value": round(self.value, 6), "n": len(self.scores),
                "kept": len(self.kept), "edges": len(self.edges),
                **({"qk": [[f"{e['head']}@{e['q']}->@{e['k']}", round(e["score"], 4),
                            next(iter(e["query"]), ""), next(iter(e["key"]), "")]
                           for e in self.qk[:5]]} if self.qk else {}),
                "top": [[k, round(v, 6)] for k, v in top]}

    def ranked(self) -> list[tuple[str, float]]:
        """Kept nodes (attribution), largest `rank` first (names break ties)."""
        return sorted(((k, self.scores[k]) for k in self.kept),
                      key=lambda kv: (-self.rank.get(kv[0], abs(kv[1])), kv[0]))

    def select(self, top: int | None = None, threshold: float | None = None,
               name: str = "") -> Circuit:
        """The `top` kept feature and error nodes (or those whose rank >= threshold), the
        target, every input embedding (never ablated, as in node circuits) and the edges
        among them."""
        ranked = [(k, v) for k, v in self.ranked() if k != self.target
                  and not k.startswith("input")]
        if top is not None:
            chosen = ranked[:top]
        elif threshold is not None:
            chosen = [(k, v) for k, v in ranked if self.rank.get(k, abs(v)) >= threshold]
        else:
            raise WorkbenchError("select needs top=K or threshold=T")
        inputs = [(k, v) for k, v in self.ranked() if k.startswith("input")]
        chosen += inputs
        names = {k for k, _ in chosen} | {self.target}
        edges = []
        for key in self.edges:
            src, dst = key.split("->")
            if src in names and dst in names:
                edges.append(Edge(parse_node(src), parse_node(dst)))
        scores = {k: v for k, v in chosen}
        scores.update({k: v for k, v in self.edges.items()
                       if all(part in names for part in k.split("->"))})
        return Circuit(nodes=sorted(names), edges=edges, scores=scores, name=name)
