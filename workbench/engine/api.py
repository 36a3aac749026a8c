"""The engine API: the one surface techniques are written against (built-in and third-party).

A technique's `run(ctx, params)` gets it as `ctx.api` (an `EngineAPI` over the session's
ablation engine: one model, one prompt set, the clean/corrupted/mean/zero activations cached).
Everything a technique needs from the engine is here; the forward's internals (patches, restart
states, gradient captures, delta groups) stay behind it, so they can change without breaking
plugins. The index scheme is `api.graph` (`workbench.graph.Graph`): edge `i` of every keep
vector and score tensor is `graph.edge(i)`.

One polarity everywhere: a keep value of 1 keeps an edge as the clean run has it, 0 ablates it
(the receiver reads the source's ablation value instead), values in between interpolate.

1. Runs with ablations: `logits(ablations)` -- named `Ablation`s of nodes (heads, MLPs,
   neurons, q/k/v inputs, input, logits, at a position or all) and edges, each with its mode;
   restarts at the earliest layer that changed since the previous call.
2. Edge keep vectors: `edge_logits(keep, mode, rows=, start_layer=)` -- keep `(n_edges,)` or a
   batch of candidate circuits `(k, n_edges)`; differentiable in `keep`. `start_layer=L`
   reuses the cached clean run below layer L (every edge into layers below L must be kept);
   `edge_runner(mode)` does the same for many calls, holding what they share.
3. Gradients at receiver inputs: `receiver_grads(metric, mode, rows=, input_keep=)` -- one
   forward and one backward give dM/d(input of r) for every receiver r, as `ReceiverGrads`
   blocks in graph order; `source_deltas(mode, rows)` gives out_clean - out_ablated for every
   source, and `edge_products(deltas, grads)` the product delta_s . g_r for every edge
   (edge attribution patching is `-edge_products`).
4. Cached activations by node name: `activation("a3.1" | "m2" | "m2.n7" | "input", run=)`, and
   `residual(layer, run=)` (the residual stream before `layer`; `n_layers` = the final one).
   `residual_logits(layer, resid)` reruns from a residual stream of your own.
5. Scoring: `metric(name)` resolves a metric (built in or the session's), `metric_values` and
   `perf` score answer logits; `swapped()` is the same API on the prompt set with clean and
   corrupted exchanged (clean -> corrupted patching).

Invariant: nothing here changes the engine's caches visibly: every call's result depends only
on its arguments (the restart cache of `logits` is an optimisation, tested to be exact).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from workbench.ablation import Ablation, AblationEngine, Perf
from workbench.errors import WorkbenchError
from workbench.forward import MODES, Activations, Capture, Mode, Patch, State
from workbench.graph import Graph, Node, parse_node
from workbench.metrics import BUILTIN_METRICS, Metric, get_metric
from workbench.tasks.encode import EncodedPrompts
from workbench.weights import Weights, ln

__all__ = ["MODES", "Ablation", "AblationEngine", "EdgeRunner", "EngineAPI", "Metric", "Mode",
           "Perf", "ReceiverGrads", "Run", "Weights", "ln"]

Run = Literal["clean", "corrupted", "mean", "zero"]
Rows = slice | list[int] | None


@dataclass(frozen=True)
class ReceiverGrads:
    """dM/d(input) of `count` consecutive receivers (graph receiver indices `first`...), each
    read from the first `upstream` sources; their edges are `graph.edge_offsets[first]` onwards,
    receiver by receiver. `grad` is (count, batch, pos, d_model)."""

    first: int
    count: int
    upstream: int
    grad: Tensor


class EngineAPI:
    """The engine, as techniques see it. Get one with `ctx.api`, or `EngineAPI.of(engine)` for
    an `AblationEngine` built by hand (tests, benchmarks)."""

    _cache: WeakKeyDictionary[AblationEngine, EngineAPI] = WeakKeyDictionary()

    def __init__(self, engine: AblationEngine, metrics: Mapping[str, Metric] | None = None
                 ) -> None:
        self._engine = engine
        self._metrics = dict(metrics) if metrics is not None else dict(BUILTIN_METRICS)

    @classmethod
    def of(cls, engine: AblationEngine, metrics: Mapping[str, Metric] | None = None
           ) -> EngineAPI:
        """The API of `engine` (one per engine, so cached deltas are shared between calls)."""
        api = cls._cache.get(engine)
        if api is None:
            api = cls._cache[engine] = cls(engine)
        if metrics is not None:
            api._metrics = dict(metrics)
        return api

    # -- what the engine holds ---------------------------------------------------------------

    @property
    def graph(self) -> Graph:
        """The one index scheme: sources, receivers, edges and their indices."""
        return self._engine.graph

    @property
    def weights(self) -> Weights:
        """The folded weights (TransformerLens names: W_Q, W_O, W_U, b_O, ...), read-only."""
        return self._engine.weights

    @property
    def enc(self) -> EncodedPrompts:
        """The encoded prompt set (clean/corrupted tokens, answer positions and tokens)."""
        return self._engine.enc

    @property
    def n_prompts(self) -> int:
        return self._engine.enc.n

    @property
    def n_pos(self) -> int:
        return self._engine.n_pos

    @property
    def kw(self) -> dict[str, object]:
        """`device=` and `dtype=` for tensors the engine reads (keep vectors, masks)."""
        return dict(self._engine.kw)

    @property
    def clean_logits(self) -> Tensor:
        """(batch, n_answer, vocab): the unablated model's answer logits."""
        return self._engine.clean_logits

    @property
    def corrupted_logits(self) -> Tensor:
        return self._engine.corrupted_logits

    # -- 1. runs with named ablations ------------------------------------------------------

    def logits(self, ablations: Sequence[Ablation] = ()) -> Tensor:
        """(batch, n_answer, vocab) answer logits with `ablations` applied."""
        return self._engine.logits(ablations)

    def empty_logits(self, mode: Mode) -> Tensor:
        """Every edge ablated in `mode` (performance 0%)."""
        return self._engine.empty_logits(mode)

    # -- 2. edge keep vectors ------------------------------------------------------------------

    def edge_logits(self, keep: Tensor, mode: Mode, rows: Rows = None, start_layer: int = 0
                    ) -> Tensor:
        """Answer logits with every edge e at keep[e] (1 clean, 0 ablated in `mode`).

        keep (n_edges,) -> (batch, n_answer, vocab); keep (k, n_edges), k candidate circuits
        in one batched forward -> (k, batch, n_answer, vocab). `rows` picks prompts. With
        `start_layer=L` the run restarts at layer L from the cached clean run, which is exact
        only when every edge into layers below L is kept (checked). Differentiable in keep.
        Many restarted calls: use one `edge_runner(mode)`, which keeps the deltas they share."""
        return self.edge_runner(mode, rows).logits(keep, start_layer)

    def edge_runner(self, mode: Mode, rows: Rows = None) -> EdgeRunner:
        """`edge_logits` for many keep vectors in `mode` on the same prompts: the source deltas
        a restart reads are made once and held while the runner lives (drop it to free them)."""
        return EdgeRunner(self, self._engine, mode, rows)

    # -- 3. gradients at receiver inputs -------------------------------------------------------

    def source_deltas(self, mode: Mode, rows: Rows = None) -> Tensor:
        """(n_sources, batch, pos, d_model): each source's clean output minus its ablation
        value, in graph source order."""
        eng = self._engine
        index = _index(rows)
        return eng.clean.rows(index).deltas_from(eng.values[mode].rows(index), eng.weights)

    def receiver_grads(self, metric: str | Metric, mode: Mode, rows: Rows = None,
                       input_keep: float = 1.0) -> Iterator[ReceiverGrads]:
        """dM/d(input of r) for every receiver r, M = the sum over prompts of `metric`, from
        one forward and one backward of a plain run whose `input` node is kept at
        `input_keep` (1: the clean run; 0: the input ablated in `mode`; between: EAP-IG's
        path). Blocks come in graph receiver order, each usable (and freed) before the next."""
        eng, g = self._engine, self.graph
        fn = self.metric(metric)
        sub = self._rows_enc(rows)
        index = _index(rows)
        values = {m: eng.values[m].rows(index) for m in MODES}
        patch = None
        if input_keep != 1.0:
            keep = torch.ones(g.n_sources, sub.clean.shape[1], **eng.kw)
            keep[0] = input_keep
            mode_of = torch.full(keep.shape, MODES.index(mode), dtype=torch.long,
                                 device=keep.device)
            patch = Patch(node=keep, node_mode=mode_of)
        capture = Capture()
        with torch.enable_grad():
            logits = eng.forward.run(sub.clean, sub.answer_pos, patch, values, capture=capture)[0]
            reference = eng.clean_logits if rows is None else eng.clean_logits[index]
            fn.per_prompt(logits, sub, reference).sum().backward()
        n_pos = sub.clean.shape[1]
        for kind, layer, grad in capture.input_grads(eng.weights, sub.answer_pos, n_pos):
            if kind == "attn":  # (3, head, b, p, d): q of every head, then k, then v
                n = 3 * g.n_heads
                yield ReceiverGrads(g.attn_receiver(layer, 0, 0), n, g.up_attn(layer),
                                    grad.view(n, *grad.shape[2:]))
            elif kind == "mlp":
                yield ReceiverGrads(g.mlp_receiver(layer), 1, g.up_mlp(layer), grad[None])
            else:
                yield ReceiverGrads(g.n_receivers - 1, 1, g.n_sources, grad[None])

    def edge_products(self, deltas: Tensor, grads: Iterator[ReceiverGrads]) -> Tensor:
        """(n_edges,): delta_s . g_r for every edge s -> r, in graph edge order; one GEMM per
        block of receivers, each block's gradient used as it arrives."""
        g = self.graph
        flat = deltas.reshape(deltas.shape[0], -1)  # (sources, batch*pos*d)
        out = torch.empty(g.n_edges, dtype=deltas.dtype, device=deltas.device)
        for block in grads:
            at, up, n = g.edge_offsets[block.first], block.upstream, block.count
            torch.matmul(block.grad.reshape(n, -1), flat[:up].T,
                         out=out[at: at + n * up].view(n, up))
        return out

    # -- 4. cached activations -------------------------------------------------------------

    def activation(self, node: Node | str, run: Run = "clean") -> Tensor:
        """A source's cached output on the prompt set: `input` (batch, pos, d_model), a head
        `aL.H` (its write into the residual stream, b_O excluded), an MLP `mL` (b_out
        included), a neuron `mL.nI` (its post-activation, (batch, pos)). `run`: clean,
        corrupted, or the mean / zero ablation values (batch 1)."""
        node = self.graph.check(parse_node(node) if isinstance(node, str) else node)
        acts, w = self._acts(run), self.weights
        if node.port is not None or node.pos is not None:
            raise WorkbenchError(f"activation({node}): name a whole component (no <q|k|v>, @P)")
        if node.kind == "input":
            return acts.embed
        if node.kind == "attn":
            assert node.layer is not None
            return torch.einsum("bpe,ed->bpd", acts.z[node.layer][:, :, node.index],
                                w.W_O[node.layer, node.index])
        if node.kind == "mlp":
            assert node.layer is not None
            return acts.mlp_out[node.layer]
        if node.kind == "neuron":
            assert node.layer is not None
            if not 0 <= node.index < w.d_mlp:
                raise WorkbenchError(f"{node}: MLP {node.layer} has neurons "
                                     f"0-{w.d_mlp - 1}")
            return acts.post_at(w, node.layer)[..., node.index]
        raise WorkbenchError(f"activation({node}): {node.kind} has no cached output")

    def head_outputs(self, layer: int, run: Run = "clean") -> Tensor:
        """(batch, pos, n_heads, d_model): every head of `layer` at once."""
        return self._acts(run).head_out(self.weights, layer)

    def post(self, layer: int, run: Run = "clean") -> Tensor:
        """(batch, pos, d_mlp): every neuron of MLP `layer` after its activation function."""
        return self._acts(run).post_at(self.weights, layer)  # recomputed for full runs

    def residuals(self, run: Run = "clean") -> Tensor:
        """(n_layers + 1, batch, pos, d_model): `residual(L)` for every L at once."""
        return self._acts(run).resid_pre

    def residual(self, layer: int, run: Run = "clean") -> Tensor:
        """(batch, pos, d_model): the residual stream before layer `layer` (`n_layers`: the
        final residual, before the last LayerNorm)."""
        if not 0 <= layer <= self.graph.n_layers:
            raise WorkbenchError(f"residual({layer}): layers are 0..{self.graph.n_layers}")
        return self._acts(run).resid_pre[layer]

    def attention_pattern(self, layer: int, run: Run = "clean", rows: Rows = None) -> Tensor:
        """(batch, head, query, key) float32: layer's attention pattern on the cached run
        (TransformerLens's hook_pattern), recomputed from its residual: no model forward, no
        bridge (a second copy of the weights)."""
        if not 0 <= layer < self.graph.n_layers:
            raise WorkbenchError(f"attention_pattern({layer}): layers are "
                                 f"0..{self.graph.n_layers - 1}")
        resid = self._acts(run).rows(_index(rows)).resid_pre[layer]
        with torch.no_grad():
            return self._engine.forward.pattern(resid, layer)

    def residual_logits(self, layer: int, resid: Tensor) -> Tensor:
        """Answer logits of the clean prompts with the residual stream before `layer` replaced
        by `resid` (batch, pos, d_model) and layers `layer`.. rerun (no ablations)."""
        eng = self._engine
        state = State(resid_pre=[*eng.clean.resid_pre[:layer], resid])
        with torch.no_grad():
            return eng.forward.run(eng.enc.clean, eng.enc.answer_pos, start=layer,
                                   state=state)[0]

    # -- 5. scoring --------------------------------------------------------------------------

    def metric(self, name: str | Metric) -> Metric:
        """A metric by name: the session's own first, then the built-ins."""
        return get_metric(name, self._metrics)

    def metric_values(self, logits: Tensor, metric: str | Metric, rows: Rows = None) -> Tensor:
        """(batch,) per-prompt values of `metric`, or (k, batch) for (k, batch, ...) logits
        (the candidates of one `edge_logits` call), always against the clean run."""
        fn, enc = self.metric(metric), self._rows_enc(rows)
        index = _index(rows)
        clean = self.clean_logits if rows is None else self.clean_logits[index]
        if logits.dim() == 4:
            k = logits.shape[0]
            tiled = _tile(enc, k)
            return fn.per_prompt(logits.flatten(0, 1), tiled, clean.repeat(k, 1, 1)).view(k, -1)
        return fn.per_prompt(logits, enc, clean)

    def perf(self, logits: Tensor, metric: str | Metric, mode: Mode) -> Perf:
        """Performance % of `logits`: 100 = the full model, 0 = everything ablated in `mode`."""
        return self._engine.perf(logits, self.metric(metric), mode)

    def swapped(self) -> EngineAPI:
        """The same model on this prompt set with clean and corrupted exchanged (its clean run
        is the corrupted prompts; its `resample` values are the clean run). Built on each call
        (2 FE) and not kept: drop it when done."""
        enc = self._engine.enc
        swapped = dataclasses.replace(enc, clean=enc.corrupted, corrupted=enc.clean)
        return EngineAPI(AblationEngine(self._engine.model, swapped, self.graph), self._metrics)

    # -- helpers -----------------------------------------------------------------------------

    def _acts(self, run: Run) -> Activations:
        eng = self._engine
        if run == "clean":
            return eng.clean
        if run == "corrupted":
            return eng.corrupted
        if run in ("mean", "zero"):
            return eng.values[run]
        raise WorkbenchError(f"run={run!r}: use clean, corrupted, mean or zero")

    def _rows_enc(self, rows: Rows) -> EncodedPrompts:
        enc = self._engine.enc
        return enc if rows is None else enc.subset(rows)



class EdgeRunner:
    """Edge forwards in one mode on one set of prompts (see `EngineAPI.edge_logits`)."""

    def __init__(self, api: EngineAPI, engine: AblationEngine, mode: Mode, rows: Rows) -> None:
        self.api, self.mode, self.rows = api, mode, rows
        self._engine = engine
        self._index = _index(rows)
        self._enc = engine.enc if rows is None else engine.enc.subset(rows)
        self._values = {m: engine.values[m].rows(self._index) for m in MODES}
        self._groups: list[Tensor] | None = None

    def logits(self, keep: Tensor, start_layer: int = 0) -> Tensor:
        g, eng, enc = self.api.graph, self._engine, self._enc
        if keep.shape[-1] != g.n_edges or keep.dim() not in (1, 2):
            raise WorkbenchError(f"a keep vector has {g.n_edges} entries (one per edge), "
                                 f"optionally batched as (k, {g.n_edges}); got {tuple(keep.shape)}")
        start = max(0, min(int(start_layer), g.n_layers))
        below = g.attn_offset[start] if start < g.n_layers else g.logits_offset
        if start and not bool((keep[..., :below] == 1).all()):
            raise WorkbenchError(f"start_layer={start} needs every edge into layers below "
                                 f"{start} kept; start lower")
        batched = keep.dim() == 2
        k = keep.shape[0] if batched else 1
        state = None
        if start:
            if self._groups is None:
                deltas = self.api.source_deltas(self.mode, self.rows)
                self._groups = _groups(deltas, g.n_heads)
            clean = eng.clean.rows(self._index)
            resid = [clean.resid_pre[i] for i in range(start)]
            resid.append(clean.resid_pre[start].repeat(k, 1, 1))
            state = State(resid_pre=resid, deltas=self._groups[: 1 + 2 * start])
        tokens, answer_pos = enc.clean, enc.answer_pos
        if batched:
            tokens, answer_pos = tokens.repeat(k, 1), answer_pos.repeat(k, 1)
            keep = keep.repeat_interleave(enc.n, dim=0)  # replica-major rows
        logits = eng.forward.run(tokens, answer_pos, Patch(edge=keep, edge_mode=self.mode),
                                 self._values, start=start, state=state)[0]
        return logits.view(k, enc.n, *logits.shape[1:]) if batched else logits


def _index(rows: Rows) -> slice | list[int]:
    return slice(None) if rows is None else rows


def _groups(deltas: Tensor, n_heads: int) -> list[Tensor]:
    n_layers = (deltas.shape[0] - 1) // (n_heads + 1)
    return list(deltas.split([1] + [n_heads, 1] * n_layers))


def _tile(enc: EncodedPrompts, k: int) -> EncodedPrompts:
    """The prompt set k times over, replica-major (the rows of a batched edge forward)."""
    tiled = {f.name: getattr(enc, f.name) for f in dataclasses.fields(enc)}
    for name, value in tiled.items():
        if isinstance(value, Tensor):
            tiled[name] = value.repeat(k, *([1] * (value.dim() - 1)))
        elif isinstance(value, tuple):
            tiled[name] = value * k
    return dataclasses.replace(enc, **tiled)
