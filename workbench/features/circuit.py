"""`check` for feature circuits: the replacement model with every feature and error node
outside the circuit ablated (zero, or its mean over the prompt set at that position).

A feature circuit names features at positions (`m0.f12@3`; without `@P`, every position),
error nodes (`m0.f{d_sae}@3`), `input@P` and the target; input is never ablated, sites
without a dictionary run as in the model. Performance % is DESIGN.md's with 100 = the model
(the replacement with error terms kept and nothing ablated reproduces it) and 0 = the empty
feature circuit (every feature and error node ablated).

Invariant: `circuit_logits` equals `replacement.run` with the same ablation built by hand
(tested); the full circuit gives 100 %.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.ablation import AblationEngine, Perf
from workbench.errors import WorkbenchError
from workbench.features.replacement import (
    DictionarySet,
    FeatureAblation,
    Trace,
    ablation_values,
    logits,
    run,
)
from workbench.graph import Circuit
from workbench.metrics import Metric, Report, get_metric, metric, performance


def keep_masks(circuit: Circuit | None, dicts: DictionarySet, n_pos: int,
               device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Per site (pos, d_sae + 1): 1 where the circuit has the node (None: nothing kept)."""
    masks = {d.key: torch.zeros(n_pos, d.d_sae + 1, device=device) for d in dicts.ordered()}
    for node in circuit.nodes if circuit is not None else ():
        if node.kind != "feature":
            continue
        key = f"{node.site}{node.layer}"
        if key not in masks:
            raise WorkbenchError(f"{node}: no dictionary on {key} is attached (sae load it)")
        d = dicts.get(key)
        assert d is not None
        if node.index > d.d_sae:
            raise WorkbenchError(f"{node}: {key} has features 0..{d.d_sae - 1} (and error "
                                 f"node {d.d_sae})")
        if node.pos is not None and not -n_pos <= node.pos < n_pos:
            raise WorkbenchError(f"{node}: positions are 0..{n_pos - 1}")
        pos = slice(None) if node.pos is None else node.pos % n_pos
        masks[key][pos, node.index] = 1.0
    return masks


class FeatureChecker:
    """The clean replacement trace and ablation values of one engine and dictionary set."""

    def __init__(self, engine: AblationEngine, dicts: DictionarySet) -> None:
        if not dicts:
            raise WorkbenchError("a feature circuit needs its dictionaries: sae load them first")
        dicts.check(engine.weights)
        self.engine, self.dicts = engine, dicts
        with torch.no_grad():
            self.clean: Trace = run(engine.weights, engine.enc.clean, dicts, "keep")
        self._values: dict[str, tuple[dict[str, Tensor], dict[str, Tensor]]] = {}
        self._empty: dict[str, Tensor] = {}  # mode -> logits of the empty feature circuit

    def values(self, mode: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if mode not in self._values:
            self._values[mode] = ablation_values(self.clean, self.engine.enc.lengths, mode)
        return self._values[mode]

    @torch.no_grad()
    def circuit_logits(self, circuit: Circuit | None, mode: str = "mean") -> Tensor:
        """Answer logits with everything outside `circuit` ablated (None: all ablated)."""
        feats, errors = self.values(mode)
        keep = keep_masks(circuit, self.dicts, self.engine.n_pos, self.engine.device)
        ablation = FeatureAblation(keep, feats, errors)
        tr = run(self.engine.weights, self.engine.enc.clean, self.dicts, "keep",
                 clean_errors=self.clean.errors, ablation=ablation)
        return logits(self.engine.weights, tr, self.engine.enc.answer_pos)

    def perf(self, circuit: Circuit, metric_name: str | Metric, mode: str = "mean") -> Perf:
        eng = self.engine
        ref = eng.clean_logits
        fn = get_metric(metric_name)
        lg = self.circuit_logits(circuit, mode)
        m = metric(fn, lg, eng.enc, ref)
        full = metric(fn, eng.clean_logits, eng.enc, ref)
        if mode not in self._empty:
            self._empty[mode] = self.circuit_logits(None, mode)
        empty = metric(fn, self._empty[mode], eng.enc, ref)
        return Perf(performance(m, full, empty), fn.name, m, full, empty,
                    Report.of(lg, eng.enc))
