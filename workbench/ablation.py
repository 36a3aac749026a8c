"""The ablation engine: one judge of every circuit, fast enough for live toggling.

1. On a prompt set, run the clean and corrupted prompts once and record every source's output
   (input, heads, MLPs, neurons, residuals). The ablation values of each mode come from them:
   zero; mean (clean run, mean over the prompt set per position); resample (the corrupted run).
2. `logits(ablations)` turns named ablations (heads, head positions, q/k/v inputs, MLPs,
   neurons, logits) into a dense `Patch` and runs the fused forward, restarting from the
   earliest layer whose interventions changed since the last call (a toggle in the last layer
   costs one layer, not a forward).
3. `circuit_logits` runs a circuit by ablating everything outside it, at node level (sources
   outside are replaced) or edge level (edges outside are replaced); `empty_logits` is the
   all-ablated model; `perf` turns a run into performance % (DESIGN.md).

Invariant: the full circuit reproduces the clean logits and the empty circuit the all-ablated
logits, at node and at edge level (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench import memory
from workbench.errors import WorkbenchError
from workbench.forward import MODES, Activations, Forward, Mode, Patch, State, _Mix, wide
from workbench.graph import Circuit, Edge, Graph, Node
from workbench.metrics import Metric, Report, answer_logits, get_metric, performance
from workbench.model import LoadedModel
from workbench.tasks.encode import EncodedPrompts
from workbench.weights import Weights

CHECK_ROWS = 4  # prompts the engine's clean logits are checked on against the model's forward
# Largest max |engine - model| / max |model| (centred answer logits) accepted per dtype: float
# rounding of two different summation orders, measured in tests/test_variants.py and
# bench/memory.py (float32 ~1e-6; bfloat16's 8-bit mantissa ~1e-2 after a few layers).
TOLERANCE: dict[torch.dtype, float] = {torch.float64: 1e-6, torch.float32: 1e-3,
                                       torch.float16: 2e-2, torch.bfloat16: 6e-2}


@dataclass(frozen=True)
class Ablation:
    """Ablate `target` with `mode`'s value: a node (a head, a head's q/k/v input, an MLP, a
    neuron, input or logits; at one position when `pos` is set) or one edge."""

    target: Node | Edge
    mode: Mode = "mean"

    def __str__(self) -> str:
        return f"{self.target} ({self.mode})"


@dataclass(frozen=True)
class Perf:
    """Performance % with the raw metric and accuracy beside it, as `perf` and `check` show."""

    percent: float
    metric_name: str
    metric: float
    metric_full: float
    metric_empty: float
    report: Report


class AblationEngine:
    """Cached clean/corrupted/mean activations of one prompt set on one model."""

    def __init__(self, model: LoadedModel, enc: EncodedPrompts, graph: Graph | None = None
                 ) -> None:
        self.model = model  # for engines on derived prompt sets (EngineAPI.swapped)
        self.weights = model.weights  # shared with the model: one copy of the weights
        self.graph = graph or Graph.from_sizes(self.weights.n_layers, self.weights.n_heads)
        self.forward = Forward(self.weights)
        self.device = self.weights.W_E.device
        self.kw = {"device": self.device, "dtype": self.weights.W_E.dtype}  # for new masks
        self.enc = enc.to(self.device)
        self.n_pos = self.enc.clean.shape[1]
        memory.require(self.cached_bytes(), f"the engine's cached runs of {enc.n} prompts",
                       "use fewer prompts (task ... n=) or dtype=bfloat16", self.device)
        with torch.no_grad():
            self.clean_logits, _, clean = self.forward.run(
                self.enc.clean, self.enc.answer_pos, record=True)
            self.corrupted_logits, _, corrupted = self.forward.run(
                self.enc.corrupted, self.enc.answer_pos, record=True)
        assert clean is not None and corrupted is not None
        self.check_against(model)
        memory.trim()  # the runs' freed temporaries go back to the OS
        self.clean, self.corrupted = clean, corrupted
        self.values: dict[Mode, Activations] = {
            "zero": _zero_values(self.weights, clean),
            "mean": _mean_values(self.weights, clean, self.enc.lengths),
            "resample": corrupted,
        }
        self._last: tuple[list[bytes], State] | None = None
        self._empty: dict[Mode, Tensor] = {}
        self.last_start = 0  # the layer the last `logits` call restarted from (for benches)

    def cached_bytes(self) -> int:
        """What the clean and corrupted recordings (embed, z, mlp_out, resid_pre/mid) hold,
        plus one layer's temporaries of the forward that makes them."""
        w, n, p = self.weights, self.enc.n, self.n_pos
        per_token = w.d_model * (4 * w.n_layers + 2) * w.W_E.element_size()
        layer = (8 * w.d_model + 2 * w.d_mlp) * w.W_E.element_size() + 8 * w.n_heads * p
        return n * p * (2 * per_token + layer)

    def check_against(self, model: LoadedModel) -> float:
        """Compare the clean logits with one forward of the model itself on the first
        `CHECK_ROWS` prompts; past `TOLERANCE` refuse, naming the config fields that make this
        GPT-2 a variant. Returns the relative error."""
        rows = min(CHECK_ROWS, self.enc.n)
        sub = self.enc.subset(slice(0, rows))
        ref = answer_logits(model.logits(sub.clean), sub.to(torch.device("cpu")))
        ours = self.clean_logits[:rows].float().cpu()
        scale = float(ref.abs().max().clamp(min=1e-30))
        error = float((ours - ref).abs().max()) / scale
        self.check_error = error
        tol = TOLERANCE.get(self.weights.dtype, 1e-3)
        if not error <= tol:  # also NaN
            fields = ", ".join(model.variant_fields()) or "no known variant field"
            raise WorkbenchError(
                f"the engine's logits differ from the model's own forward by {error:.1e} "
                f"(relative; tolerance {tol:.0e} in {str(self.weights.dtype)[6:]}) for this "
                f"config ({fields}): it is not supported; nothing was computed")
        return error

    # -- building patches ------------------------------------------------------------------

    def patch(self, ablations: Iterable[Ablation]) -> Patch:
        """Named ablations -> dense keep masks (1 = kept) with each entry's mode."""
        lay = self.graph
        node = torch.ones(lay.n_sources, self.n_pos, **self.kw)
        receiver = torch.ones(lay.n_receivers, self.n_pos, **self.kw)
        node_mode = torch.zeros(node.shape, dtype=torch.long, device=self.device)
        receiver_mode = torch.zeros(receiver.shape, dtype=torch.long, device=self.device)
        neuron = neuron_mode = None
        edge, edge_modes = None, set()
        for ab in ablations:
            if isinstance(ab.target, Edge):
                index = self.graph.index(ab.target)
                if index is None:
                    raise WorkbenchError(f"edge {ab.target} is not in this model's graph")
                if edge is None:
                    edge = torch.ones(lay.n_edges, **self.kw)
                edge[index] = 0.0
                edge_modes.add(ab.mode)
                continue
            n, m = ab.target, MODES.index(ab.mode)
            pos = slice(None) if n.pos is None else self._position(n.pos)
            self.graph.check(n.base())
            if n.kind == "neuron":
                if neuron is None or neuron_mode is None:
                    neuron = torch.ones(lay.n_layers, self.weights.d_mlp, self.n_pos, **self.kw)
                    neuron_mode = torch.zeros(neuron.shape, dtype=torch.long, device=self.device)
                if not 0 <= n.index < self.weights.d_mlp:
                    raise WorkbenchError(f"{n}: MLP {n.layer} has neurons 0-"
                                         f"{self.weights.d_mlp - 1}")
                _ablate(neuron, neuron_mode, (n.layer, n.index, pos), m)
            elif n.kind == "feature":
                raise WorkbenchError(
                    f"{n}: ablate takes heads, MLPs, neurons and edges; features are tested as "
                    f"a circuit: select {n} ... (after sae load), then check c<n>")
            elif n.kind == "logits":
                _ablate(receiver, receiver_mode, (lay.n_receivers - 1, pos), m)
            elif n.port is not None:
                assert n.layer is not None
                port = "qkv".index(n.port)
                _ablate(receiver, receiver_mode, (lay.attn_receiver(n.layer, port, n.index), pos),
                        m)
            else:
                _ablate(node, node_mode, (self._source(n), pos), m)
        if len(edge_modes) > 1:
            raise WorkbenchError("ablated edges must share one mode; restore them and ablate "
                                 "again with one mode=")
        return Patch(node=node, node_mode=node_mode, neuron=neuron, neuron_mode=neuron_mode,
                     receiver=receiver, receiver_mode=receiver_mode, edge=edge,
                     edge_mode=edge_modes.pop() if edge_modes else "mean")

    def _source(self, n: Node) -> int:
        lay = self.graph
        if n.kind == "input":
            return 0
        assert n.layer is not None
        return lay.head_source(n.layer, n.index) if n.kind == "attn" else lay.mlp_source(n.layer)

    def _position(self, pos: int) -> int:
        if not -self.n_pos <= pos < self.n_pos:
            raise WorkbenchError(f"position {pos} is outside the prompts' {self.n_pos} tokens "
                                 f"(use 0..{self.n_pos - 1} or -1..-{self.n_pos})")
        return pos % self.n_pos

    # -- running -----------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, ablations: Sequence[Ablation] = ()) -> Tensor:
        """Answer logits (batch, n_answer, vocab) with `ablations` applied, recomputing only from
        the earliest layer whose interventions changed since the previous call."""
        patch = self.patch(ablations)
        keys = self._layer_keys(patch.mix())
        start = 0
        if self._last is not None:
            old_keys, _ = self._last
            first = next((i for i, (a, b) in enumerate(zip(keys, old_keys, strict=True))
                          if a != b), len(keys))
            start = max(0, first - 1) if first > 0 else 0
            start = min(start, self.weights.n_layers)
        state = self._last[1] if self._last is not None else None
        logits, new_state, _ = self.forward.run(
            self.enc.clean, self.enc.answer_pos, patch, self.values,
            start=start if state is not None else 0, state=state)
        self._last = (keys, new_state)
        self.last_start = start
        return logits

    def _layer_keys(self, patch: _Mix) -> list[bytes]:
        """One key per stage: input, each layer, the logits. Equal keys = same interventions."""
        lay = self.graph
        assert patch.node is not None and patch.receiver is not None
        edge_key = patch.edge_mode.encode() if patch.edge is not None else b"-"
        keys = [_bytes(patch.node[:, 0]) + edge_key]
        for layer in range(lay.n_layers):
            src = lay.head_source(layer, 0)
            rcv = lay.attn_receiver(layer, 0, 0)
            parts = [patch.node[:, src: src + lay.n_heads + 1],
                     patch.receiver[:, rcv: rcv + 3 * lay.n_heads + 1]]
            if patch.neuron is not None and bool(patch.neuron[:, layer].any()):
                parts.append(patch.neuron[:, layer])  # no mask == an all-zero mask
            if patch.edge is not None:
                parts += [lay.attn_keep(patch.edge, layer), lay.mlp_keep(patch.edge, layer)]
            keys.append(b"".join(_bytes(p) for p in parts))
        last = [patch.receiver[:, -1]] + (
            [lay.logits_keep(patch.edge)] if patch.edge is not None else [])
        keys.append(b"".join(_bytes(p) for p in last))
        return keys

    def empty_logits(self, mode: Mode) -> Tensor:
        """Every edge ablated: the logits read the all-ablated residual (cached per mode)."""
        if mode not in self._empty:
            patch = self._logits_receiver(mode)
            with torch.no_grad():
                self._empty[mode] = self.forward.run(
                    self.enc.clean, self.enc.answer_pos, patch, self.values,
                    start=self.weights.n_layers, state=self._final_state())[0]
        return self._empty[mode]

    def _logits_receiver(self, mode: Mode) -> Patch:
        """The logits read the all-ablated residual in `mode`."""
        keep = torch.ones(self.graph.n_receivers, self.n_pos, **self.kw)
        keep[-1] = 0.0
        return Patch(receiver=keep, edge_mode=mode)

    def _final_state(self) -> State:
        return State(resid_pre=list(self.clean.resid_pre), deltas=[])

    def edge_logits(self, keep: Tensor, mode: Mode) -> Tensor:
        """Answer logits with each edge e interpolated: keep[e] = 1 clean, 0 ablated. Keeps the
        autograd graph when `keep` requires grad (edge attribution, learned masks)."""
        if keep.shape != (self.graph.n_edges,):
            raise WorkbenchError(f"edge mask must have {self.graph.n_edges} entries")
        patch = Patch(edge=keep, edge_mode=mode)
        return self.forward.run(self.enc.clean, self.enc.answer_pos, patch, self.values)[0]

    def circuit_logits(self, circuit: Circuit, mode: Mode = "mean", level: str = "node"
                       ) -> Tensor:
        """Run `circuit` with everything outside it ablated, at node or edge level."""
        if level == "edge":
            keep = torch.zeros(self.graph.n_edges, **self.kw)
            for edge in circuit.edges:
                if edge not in self.graph.edge_index:
                    raise WorkbenchError(f"edge {edge} is not in this model's graph")
                keep[self.graph.edge_index[edge]] = 1.0
            with torch.no_grad():
                return self.edge_logits(keep, mode)
        inside = {n.base() for n in circuit.nodes}
        outside = [Ablation(n, mode) for n in self.graph.sources
                   if n not in inside and n.kind != "input"]
        with torch.no_grad():
            return self.forward.run(self.enc.clean, self.enc.answer_pos,
                                    self.patch(outside), self.values)[0]

    def perf(self, logits: Tensor, metric_name: str | Metric, mode: Mode) -> Perf:
        """Performance % of `logits` between the full model (100) and the empty one (0), by a
        built-in metric's name or any `Metric`."""
        fn, ref = get_metric(metric_name), self.clean_logits
        m = fn.mean(logits, self.enc, ref)
        full = fn.mean(self.clean_logits, self.enc, ref)
        empty = fn.mean(self.empty_logits(mode), self.enc, ref)
        return Perf(performance(m, full, empty), fn.name, m, full, empty,
                    Report.of(logits, self.enc))


def _bytes(t: Tensor) -> bytes:
    """A mask's contents as bytes (0/1 masks are exact in float32; numpy has no bfloat16)."""
    return t.detach().to(torch.float32).cpu().numpy().tobytes()


def _ablate(keep: Tensor, mode: Tensor, index: tuple[object, ...], m: int) -> None:
    """Set keep = 0 with mode m at `index`; refuse an entry already ablated in another mode."""
    if bool(((keep[index] == 0) & (mode[index] != m)).any()):
        raise WorkbenchError("a component is ablated twice with different modes; restore it "
                             "first")
    keep[index] = 0.0
    mode[index] = m


def _zero_values(w: Weights, clean: Activations) -> Activations:
    """Zero outputs; the residual keeps only the constant attention biases b_O."""
    b_o = torch.cumsum(w.b_O, 0)  # (n_layers, d_model): sum of b_O up to and including L
    pre = torch.cat([torch.zeros_like(b_o[:1]), b_o])  # (n_layers + 1, d_model)
    one = clean.embed[:1]
    return Activations(
        embed=torch.zeros_like(one), z=torch.zeros_like(clean.z[:, :1]),
        mlp_out=torch.zeros_like(clean.mlp_out[:, :1]),
        post=clean.resid_mid.new_zeros((w.n_layers, 1, one.shape[1], w.d_mlp)),
        resid_pre=pre[:, None, None, :].expand(-1, 1, one.shape[1], -1).clone(),
        resid_mid=b_o[:, None, None, :].expand(-1, 1, one.shape[1], -1).clone(),
    )


def _mean_values(w: Weights, clean: Activations, lengths: Tensor) -> Activations:
    """Mean over the prompt set at each position, counting only rows long enough to have it."""
    n_pos = clean.embed.shape[1]
    acc = wide(clean.embed).dtype  # sums in float32 also for half precision
    valid = (torch.arange(n_pos, device=lengths.device)[None, :] < lengths[:, None]).to(acc)
    count = valid.sum(0).clamp(min=1)  # (pos,)

    def mean(x: Tensor, batch_axis: int) -> Tensor:
        shape = [1] * x.dim()
        shape[batch_axis], shape[batch_axis + 1] = valid.shape
        weight = valid.view(shape) / count.view([1] * (batch_axis + 1) + [n_pos] +
                                                [1] * (x.dim() - batch_axis - 2))
        if batch_axis == 1:  # (layer, batch, ...): one layer at a time bounds the temporary
            return torch.stack([mean(x[i], 0)[0] for i in range(x.shape[0])]).unsqueeze(1)
        return (x.to(acc) * weight).sum(batch_axis, keepdim=True).to(x.dtype)

    return Activations(
        embed=mean(clean.embed, 0), z=mean(clean.z, 1), mlp_out=mean(clean.mlp_out, 1),
        post=torch.stack([mean(clean.post_at(w, i), 0)[0] for i in range(w.n_layers)]).unsqueeze(1),
        resid_pre=mean(clean.resid_pre, 1),
        resid_mid=mean(clean.resid_mid, 1),
    )
