"""Activation patching (`run patch`): write one activation of the other run into this one.

1. Pick the direction. `corrupt_to_clean` runs the clean prompts and writes the corrupted run's
   value into one site: the engine's `resample` ablation, which is exactly patching corrupted ->
   clean. `clean_to_corrupt` (TransformerLens's convention) runs the corrupted prompts and writes
   the clean value in, through a second engine on the swapped prompt set (its `resample` value
   is the clean run).
2. Enumerate the sites (`site`, `by_position`); each is an intervention the engine already has:
   - `resid`: resid_pre of layer L (at position p): the base run's cached residual before L,
     with the other run's value written in, and layers L.. rerun from there (L = 0: the `input`
     node, which nothing precedes). Not node replacement of everything upstream at p: that
     would also change what earlier heads read at p, and so their outputs at other positions;
   - `attn_out`: every head of layer L (at p); `mlp_out`: MLP L (at p); `head_out`: head aL.H;
   - `head_q|k|v`: the receiver aL.H<q|k|v> reads the other run's residual. q, k and v are
     per-position functions of it (LayerNorm included), so this is patching hook_q/k/v;
   - `head_pattern`: both the q and the k input at every position, which gives the other run's
     pattern exactly. Not offered by position: a destination row of the pattern depends on the
     keys at every source position, which feed the other rows too, so no input swap isolates it.
3. Run the sites deepest layer first, so each engine call restarts at the site's own layer.
4. Score each run with the metric M (the session's unless `metric=NAME`) and normalise:
   `(M_patched - M_base) / (M_other - M_base)`. 0 = no effect; 1 = the site alone carries the
   whole clean/corrupted difference (the patched run scores like the run the value came from).

Results: heads or MLPs at all positions -> `NodeScores` (per head / per MLP); heads by position
-> `Table` heads x positions; resid and attn_out, and mlp_out by position -> `Table` layers x
positions (one column `all` at all positions; resid there is trivially the other run).
`by_position` defaults to true for the layer sites and false for heads. The run uses the full
model: the session's current ablations are not applied.

Cost in forward-pass equivalents (FE): a run at layer L costs (n_layers - L) / n_layers FE, so
a sweep of s sites per layer costs about s * (n_layers + 1) / 2 FE, times n_pos by position
(`head_out` by position on GPT-2 small, 12 tokens: 12 * 6.5 * 12 = about 940 FE).
Each run also unembeds the answer positions (~0.1 FE on GPT-2 small at 12 tokens, where the
50k vocabulary is a tenth of a forward). `clean_to_corrupt` adds 2 FE for the swapped engine's
two recorded runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workbench.engine.api import Ablation, EngineAPI, Metric
from workbench.errors import WorkbenchError
from workbench.graph import INPUT, Node, Port, head, mlp
from workbench.plugins import Context, NodeScores, Table, Technique
from workbench.positions import position_labels

Direction = Literal["corrupt_to_clean", "clean_to_corrupt"]
Site = Literal["resid", "attn_out", "mlp_out", "head_out", "head_q", "head_k", "head_v",
               "head_pattern"]
HEAD_SITES: tuple[Site, ...] = ("head_out", "head_q", "head_k", "head_v", "head_pattern")
PORTS_OF: dict[str, tuple[Port | None, ...]] = {  # which inputs of the head a site swaps
    "head_out": (None,), "head_q": ("q",), "head_k": ("k",), "head_v": ("v",),
    "head_pattern": ("q", "k")}
MIN_GAP = 1e-6  # |M_other - M_base| below this: nothing to normalise by


@dataclass(frozen=True)
class Params:
    site: Site = "resid"
    direction: Direction = "corrupt_to_clean"
    by_position: bool | None = None  # None: true for resid/attn_out/mlp_out, false for heads
    metric: str | None = None  # default: the session's


# -- the two runs and the metric -----------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """The engine whose clean run is the base run, and the metric of both unpatched runs."""

    api: EngineAPI
    base: float  # M of the run patched into
    other: float  # M of the run the patched values come from
    metric: Metric  # M

    def normalise(self, patched: Tensor) -> Tensor:
        gap = self.other - self.base
        if abs(gap) < MIN_GAP:
            raise WorkbenchError(
                f"the clean and corrupted runs score the same ({self.base:.6g}) under this "
                "metric, so there is no effect to normalise by; try another metric or corruption")
        return (patched - self.base) / gap


def baseline(ctx: Context, direction: Direction, fn: Metric | None = None) -> Baseline:
    """`corrupt_to_clean`: the session's engine. `clean_to_corrupt`: an engine on the swapped
    prompt set (2 FE), whose clean run is the corrupted prompts and `resample` the clean run."""
    api = ctx.api
    if direction == "clean_to_corrupt":
        api = api.swapped()
    elif direction != "corrupt_to_clean":
        raise WorkbenchError(f"direction={direction!r}: use corrupt_to_clean or clean_to_corrupt")
    fn = fn or ctx.metric_fn()
    return Baseline(api, score(ctx, api.clean_logits, fn), score(ctx, api.corrupted_logits, fn),
                    fn)


def score(ctx: Context, logits: Tensor, fn: Metric | None = None) -> float:
    """The metric (default: the session's) of answer logits, always against the clean prompts'
    answers (the swapped engine keeps them) and the clean run's logits (kl, l2)."""
    return float(ctx.api.metric_values(logits, fn or ctx.metric_fn()).mean())


# -- which runs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Run:
    """One patched run: cell (row, col) of the result, the site's layer, and what to patch."""

    row: int
    col: int
    layer: int
    targets: tuple[Node, ...] = ()  # engine ablations (resample), or
    resid_pos: int | None = None  # with resid: the position (None = all)
    resid: bool = False


@dataclass(frozen=True)
class Sweep:
    """The raw metric of every patched run, laid out as the result will be."""

    site: Site
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    patched: Tensor  # (rows, cols): M of each patched run
    baseline: Baseline


def _plan(site: Site, by_position: bool, n_layers: int, n_heads: int, n_pos: int
          ) -> tuple[tuple[str, ...], list[_Run]]:
    """Row labels and the runs, deepest layer first (stable within a layer)."""
    positions: list[int | None] = list(range(n_pos)) if by_position else [None]
    runs: list[_Run] = []
    if site in HEAD_SITES:
        heads = [head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
        rows = tuple(str(n) for n in heads)
        ports = PORTS_OF[site]
        for i, n in enumerate(heads):
            for j, p in enumerate(positions):
                targets = tuple(n.with_port(port).at(p) for port in ports)
                runs.append(_Run(i, j, n.layer or 0, targets))
    elif site == "resid":
        rows = tuple(f"resid_pre {layer}" for layer in range(n_layers))
        runs = [_Run(layer, j, layer, resid_pos=p, resid=True)
                for layer in range(n_layers) for j, p in enumerate(positions)]
    elif site == "attn_out":
        rows = tuple(f"attn_out {layer}" for layer in range(n_layers))
        runs = [_Run(layer, j, layer, tuple(head(layer, h, pos=p) for h in range(n_heads)))
                for layer in range(n_layers) for j, p in enumerate(positions)]
    elif site == "mlp_out":
        rows = tuple(str(mlp(layer)) for layer in range(n_layers))
        runs = [_Run(layer, j, layer, (mlp(layer, p),))
                for layer in range(n_layers) for j, p in enumerate(positions)]
    else:
        raise WorkbenchError(f"site={site!r}: use one of resid, attn_out, mlp_out, "
                             + ", ".join(HEAD_SITES))
    runs.sort(key=lambda r: -r.layer)
    return rows, runs


# -- running ---------------------------------------------------------------------------------


def _resid_logits(api: EngineAPI, layer: int, pos: int | None) -> Tensor:
    """Answer logits with resid_pre[layer] (at `pos`) taken from the engine's resample run."""
    if layer == 0:  # resid_pre[0] is the input node's output: nothing upstream to keep
        return api.logits([Ablation(INPUT.at(pos), "resample")])
    other = api.residual(layer, "corrupted")  # (batch, pos, d)
    if pos is None:
        patched = other
    else:
        patched = api.residual(layer, "clean").clone()
        patched[:, pos] = other[:, pos]
    return api.residual_logits(layer, patched)


def sweep(ctx: Context, params: Params) -> Sweep:
    """Run every patch of `params` and return the raw metrics (`run` normalises them)."""
    site = params.site
    by_position = params.by_position if params.by_position is not None \
        else site not in HEAD_SITES
    if site == "head_pattern" and by_position:
        raise WorkbenchError("site=head_pattern is patched at all positions only (one row of a "
                             "pattern cannot be swapped through q/k inputs); use by_position="
                             "false, or head_q by position")
    base = baseline(ctx, params.direction, ctx.metric_fn(params.metric))
    api, g = base.api, ctx.graph
    rows, runs = _plan(site, by_position, g.n_layers, g.n_heads, api.n_pos)
    cols = position_labels(ctx.model.tokenizer, ctx.api.enc) if by_position else ("all",)
    patched = torch.full((len(rows), len(cols)), float("nan"))
    with torch.no_grad():
        for i, r in enumerate(runs):
            ctx.check()
            ctx.progress(i / len(runs), f"patch {site}: {rows[r.row]} @ {cols[r.col]}")
            if r.resid:
                logits = _resid_logits(api, r.layer, r.resid_pos)
            else:
                logits = api.logits([Ablation(t, "resample") for t in r.targets])
            patched[r.row, r.col] = score(ctx, logits, base.metric)
    ctx.progress(1.0, f"patch {site}: done")
    return Sweep(site, rows, cols, patched, base)


def run(ctx: Context, params: Params) -> NodeScores | Table:
    result = sweep(ctx, params)
    effect = result.baseline.normalise(result.patched)  # (rows, cols)
    what = {"resid": "residual stream (resid_pre)", "attn_out": "attention layer outputs",
            "mlp_out": "MLP outputs", "head_out": "head outputs", "head_q": "head queries",
            "head_k": "head keys", "head_v": "head values", "head_pattern": "head patterns"}
    title = f"activation patching of {what[result.site]}, {params.direction.replace('_', ' ')}"
    unit = "normalised effect"
    nodes = result.site in HEAD_SITES or result.site == "mlp_out"
    if nodes and result.cols == ("all",):
        return NodeScores(title=title, scores=dict(zip(result.rows, effect[:, 0].tolist(),
                                                       strict=True)),
                          unit=unit, extra={"metric_base": result.baseline.base,
                                            "metric_other": result.baseline.other},
                          metric=result.baseline.metric.name)
    return Table(title=title, rows=result.rows, cols=result.cols, values=effect, unit=unit,
                 metric=result.baseline.metric.name)


TECHNIQUE = Technique(
    name="patch", title="Activation patching", Params=Params, run=run,
    cost="s * (n_layers + 1) / 2 FE for s sites per layer (times n_pos by position); "
         "+2 FE for clean_to_corrupt",
)
