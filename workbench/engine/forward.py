"""One fused forward pass with every intervention the engine needs, and no hooks.

The residual stream is a sum of source outputs (`input`, each head, each MLP) plus constant
biases (b_O). An intervention changes what a source writes or what a receiver reads:

1. node: a source's output (at chosen positions) is replaced by its ablation value;
2. neuron: an MLP neuron's activation is replaced by its ablation value;
3. receiver: a head's q/k/v input (or an MLP's input, or the logits' input) is replaced by the
   ablated residual, i.e. every edge into it is ablated;
4. edge: receiver r reads `resid - sum_s (1 - keep[s, r]) * (out_s - abl_s)`: each edge's
   share of the clean output is interpolated with its ablation value. `keep` may require grad:
   its gradient at keep = 1 is exactly edge attribution patching's score. `edge` may hold
   one keep vector per row: ACDC evaluates many candidate circuits in one batched forward.
A plain run can also keep what one backward needs for the gradient at every receiver's input
(`engine.gradients.Capture`): that is how edge attribution patching scores every edge. The
edge mixing itself (restart states, delta buffers, the mixing GEMMs and their backward) lives
in `engine.mixing`; techniques use none of this directly, only `engine.api`.

Every mask of a `Patch` is a keep mask (1 = kept, 0 = ablated, the one polarity of the API) with
a mode per entry; `Patch.mix` turns them into per-mode weights (a leading mode axis: zero, mean,
resample) so one forward mixes modes. The run can
start at any layer from a cached `State`, which is how a toggle recomputes only from the
earliest changed layer. Only answer positions are unembedded.

Invariant: with an empty `Patch` the logits equal the bridge's (tested); `edge` keep = 1
reproduces the clean run and keep = 0 the all-ablated run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workbench.engine.gradients import Capture, keep_grad
from workbench.engine.mixing import State, edge_input, minus
from workbench.graph import Graph
from workbench.weights import Weights, embed, ln

Mode = Literal["zero", "mean", "resample"]
MODES: tuple[Mode, ...] = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Activations:
    """Per-source outputs of one run; batch may be 1 (zero and mean values broadcast).

    The MLP activations (`post`, d_mlp wide: half of a run's memory if kept) are stored only
    for batch-1 values (zero, mean); for a recorded run `post_at` recomputes a layer's from
    its cached MLP input `resid_mid`, with the run's own operations.
    """

    embed: Tensor  # (batch, pos, d_model): the `input` node's output
    z: Tensor  # (n_layers, batch, pos, n_heads, d_head)
    mlp_out: Tensor  # (n_layers, batch, pos, d_model), b_out included
    post: Tensor | None  # (n_layers, batch, pos, d_mlp), or None: see `post_at`
    resid_pre: Tensor  # (n_layers + 1, batch, pos, d_model); the last is the final residual
    resid_mid: Tensor  # (n_layers, batch, pos, d_model)

    def post_at(self, w: Weights, layer: int) -> Tensor:
        """(batch, pos, d_mlp): layer's MLP activations in this run."""
        if self.post is not None:
            return self.post[layer]
        return w.act(ln(self.resid_mid[layer], w.eps) @ w.W_in[layer] + w.b_in[layer])

    def head_out(self, w: Weights, layer: int) -> Tensor:
        """(batch, pos, n_heads, d_model): each head's write into the residual stream."""
        return torch.einsum("bphe,hed->bphd", self.z[layer], w.W_O[layer])

    def rows(self, index: slice | list[int] | Tensor) -> Activations:
        """The prompts `index` (values with batch 1 broadcast and are returned as they are)."""
        if self.embed.shape[0] == 1:
            return self
        if not isinstance(index, slice):
            index = torch.tensor(index, dtype=torch.long, device=self.embed.device)
        return Activations(self.embed[index], self.z[:, index], self.mlp_out[:, index],
                           None if self.post is None else self.post[:, index],
                           self.resid_pre[:, index], self.resid_mid[:, index])

    def deltas_from(self, ablated: Activations, w: Weights) -> Tensor:
        """(n_sources, batch, pos, d): this run's source outputs minus `ablated`'s, in graph
        order (input; each layer's heads; its MLP). W_O is linear, so each head's delta is
        (z - z_ablated) @ W_O; `groups` splits the result into `State.deltas` groups."""
        n_layers, batch, n_pos, n_heads, _ = self.z.shape
        d = self.embed.shape[-1]
        out = torch.empty(1 + n_layers * (n_heads + 1), batch, n_pos, d,
                          dtype=self.embed.dtype, device=self.embed.device)
        torch.sub(self.embed, ablated.embed, out=out[0])
        for layer in range(n_layers):
            at = 1 + layer * (n_heads + 1)
            dz = (self.z[layer] - ablated.z[layer]).permute(2, 0, 1, 3)  # (head, b, pos, e)
            torch.bmm(dz.reshape(n_heads, batch * n_pos, -1), w.W_O[layer],
                      out=out[at: at + n_heads].view(n_heads, batch * n_pos, d))
            torch.sub(self.mlp_out[layer], ablated.mlp_out[layer], out=out[at + n_heads])
        return out

    @staticmethod
    def groups(deltas: Tensor, n_heads: int) -> list[Tensor]:
        """Dense deltas -> per-group views (input, then each layer's heads and MLP)."""
        n_layers = (deltas.shape[0] - 1) // (n_heads + 1)
        return list(deltas.split([1] + [n_heads, 1] * n_layers))


@dataclass(frozen=True)
class Patch:
    """Dense interventions for one forward, all in one polarity: 1 = kept (as the run has it),
    0 = ablated (replaced by the value of its mode), values in between interpolate.

    Each mask has a matching `*_mode` tensor of indices into MODES saying which ablation value
    an entry takes where it is not kept (None: `edge_mode` for every entry), so one forward can
    mix modes (`ablate a0.1 mode=zero` beside mean-ablated heads).
    """

    node: Tensor | None = None  # (n_sources, pos) keep of each source's output
    node_mode: Tensor | None = None  # (n_sources, pos) long
    neuron: Tensor | None = None  # (n_layers, d_mlp, pos) keep of each MLP neuron
    neuron_mode: Tensor | None = None
    receiver: Tensor | None = None  # (n_receivers, pos) keep of each receiver's whole input
    receiver_mode: Tensor | None = None
    edge: Tensor | None = None  # (n_edges,) or (batch, n_edges) keep of each edge
    edge_mode: Mode = "mean"

    def mix(self) -> _Mix:
        """The per-mode ablation weights the forward applies: (1 - keep) for the entry's mode,
        0 for the others."""
        default = MODES.index(self.edge_mode)

        def weights(keep: Tensor | None, mode: Tensor | None) -> Tensor | None:
            if keep is None:
                return None
            gone = 1 - keep
            index = mode if mode is not None else torch.full(
                keep.shape, default, dtype=torch.long, device=keep.device)
            modes = torch.arange(len(MODES), device=keep.device).view(-1, *[1] * keep.dim())
            return (index.unsqueeze(0) == modes).to(gone.dtype) * gone.unsqueeze(0)

        return _Mix(weights(self.node, self.node_mode), weights(self.neuron, self.neuron_mode),
                    weights(self.receiver, self.receiver_mode), self.edge, self.edge_mode)


@dataclass(frozen=True)
class _Mix:
    """`Patch.mix()`: per-mode ablation weights, each (n_modes, ...) -- the forward's working
    form (a leading mode axis, weight of each mode's value); `edge` stays a keep vector."""

    node: Tensor | None = None  # (n_modes, n_sources, pos)
    neuron: Tensor | None = None  # (n_modes, n_layers, d_mlp, pos)
    receiver: Tensor | None = None  # (n_modes, n_receivers, pos)
    edge: Tensor | None = None
    edge_mode: Mode = "mean"


def wide(t: Tensor) -> Tensor:
    """`t` in float32 when it is in half precision (sums that need float32's range/precision)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class Forward:
    """The fused forward over folded weights, for one prompt set's tokens."""

    def __init__(self, w: Weights) -> None:
        self.w = w
        self.graph = Graph.from_sizes(w.n_layers, w.n_heads)  # the one index scheme

    @property
    def layout(self) -> Graph:
        """The graph's index arithmetic (old name of `graph`)."""
        return self.graph

    def run(self, tokens: Tensor, answer_pos: Tensor, patch: Patch | None = None,
            values: dict[Mode, Activations] | None = None, start: int = 0,
            state: State | None = None, record: bool = False, capture: Capture | None = None,
            ) -> tuple[Tensor, State, Activations | None]:
        """Answer logits (batch, n_answer, vocab), the state to restart from, and (if
        `record`) every source's output of this run.

        `start > 0` needs `state` from an earlier run whose interventions before `start`
        were the same. `capture` (plain runs with shared inputs) keeps what receiver gradients
        need.
        """
        w, lay, patch = self.w, self.graph, (patch or Patch()).mix()
        values = values or {}
        edge = patch.edge
        edge_abl = values.get(patch.edge_mode) if edge is not None else None
        if edge is not None and edge_abl is None:
            raise ValueError(f"edge patch needs the {patch.edge_mode} values")
        flat = edge is not None and edge.dim() == 1  # one keep vector: deltas in one buffer
        if start == 0:
            new = State()
            resid = embed(w, tokens)
            if patch.node is not None:
                resid = self._replace(resid, patch.node[:, 0], values, lambda a: a.embed)
            if edge_abl is not None:
                new.add_delta(minus(resid, edge_abl.embed).unsqueeze(0), lay.n_sources, flat)
            if capture is not None:  # a leaf, so that the run builds a graph to differentiate
                resid = resid.detach().requires_grad_(True)
            embed_out = resid
        else:
            assert state is not None and len(state.resid_pre) > start
            resid = state.resid_pre[start]
            new = state.restart(start, lay.n_sources, flat)
            embed_out = None
        rec = _Recording(w, resid) if record else None
        for layer in range(start, w.n_layers):
            if rec is not None:  # written into the recording once, the state holds views
                resid = rec.put("resid_pre", layer, resid)
            new.resid_pre.append(resid)
            x = self._attn_inputs(resid, layer, patch, values, new)
            if capture is not None:
                capture.attn_in.append(x)
            z = self._attention(x, layer, capture)  # (batch, pos, head, d_head)
            mid = resid + self._attn_out(z, layer, patch, values, new, edge_abl, flat)
            x = self._receiver_input(mid, lay.mlp_receiver(layer), patch, values, "mid", layer)
            x = self._edge_input(x, patch, new, lambda k, L=layer: lay.mlp_keep(k, L))
            h = ln(x, w.eps)
            if capture is not None:
                capture.mlp_in.append(x)
                capture.mlp_ln.append(keep_grad(h, capture))
            post = w.act(h @ w.W_in[layer] + w.b_in[layer])
            if patch.neuron is not None:
                post = self._replace(post, patch.neuron[:, layer].transpose(1, 2), values,
                                     lambda a, L=layer: a.post_at(w, L))
            out = post @ w.W_out[layer] + w.b_out[layer]
            if patch.node is not None:
                out = self._replace(out, patch.node[:, lay.mlp_source(layer)], values,
                                    lambda a, L=layer: a.mlp_out[L])
            if edge_abl is not None:
                new.add_delta(minus(out, edge_abl.mlp_out[layer]).unsqueeze(0),
                              lay.n_sources, flat)
            if rec is not None:
                rec.put("z", layer, z)
                rec.put("mlp_out", layer, out)
                rec.put("resid_mid", layer, mid)
            resid = mid + out
        if rec is not None:
            resid = rec.put("resid_pre", w.n_layers, resid)
        new.resid_pre.append(resid)
        x = self._receiver_input(resid, lay.n_receivers - 1, patch, values, "final", 0)
        x = self._edge_input(x, patch, new, lay.logits_keep)
        x = x.gather(1, answer_pos.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        h = ln(x, w.eps)
        if capture is not None:
            capture.final_in, capture.final_ln = x, keep_grad(h, capture)
        logits = w.unembed(h)  # float32 in every dtype
        acts = None
        if rec is not None:
            assert start == 0 and embed_out is not None
            acts = Activations(embed=embed_out, post=None, **rec.buffers)
        return logits, new, acts

    # -- pieces -------------------------------------------------------------------------

    def _attn_out(self, z: Tensor, layer: int, patch: _Mix, values: dict[Mode, Activations],
                  new: State, edge_abl: Activations | None, flat: bool) -> Tensor:
        """(batch, pos, d): what the layer's heads write (b_O included), as one GEMM.

        Per-head outputs are made only when a head is replaced (its change is added to the
        GEMM's result, exactly 0 where nothing is replaced, so untouched positions stay
        bit-identical to the clean run) or when edge deltas are needed."""
        w, lay = self.w, self.graph
        b, p, h, e = z.shape
        out = z.reshape(b, p, h * e) @ w.W_O[layer].reshape(h * e, -1) + w.b_O[layer]
        src = lay.head_source(layer, 0)
        mask = patch.node[:, src: src + h] if patch.node is not None else None  # (modes, head, pos)
        replaced = mask is not None and bool(mask.any())
        if not replaced and edge_abl is None:
            return out
        heads = torch.einsum("bphe,hed->bphd", z, w.W_O[layer])
        if replaced:
            assert mask is not None
            kept = self._replace(heads, mask.transpose(1, 2), values,
                                 lambda a, L=layer: a.head_out(w, L))
            out = out + (kept - heads).sum(2)
            heads = kept
        if edge_abl is not None:
            d = minus(heads, edge_abl.head_out(w, layer))
            new.add_delta(d.permute(2, 0, 1, 3), lay.n_sources, flat)
        return out

    def _attn_inputs(self, resid: Tensor, layer: int, patch: _Mix,
                     values: dict[Mode, Activations], state: State) -> Tensor:
        """(batch, pos, d) shared input, or (3, head, batch, pos, d) per q/k/v and head (the
        layout the edge mixing GEMM writes and the q/k/v batched product reads, no copies)."""
        lay, h = self.graph, self.w.n_heads
        first = lay.attn_receiver(layer, 0, 0)
        recv = patch.receiver[:, first: first + 3 * h] if patch.receiver is not None else None
        has_recv = recv is not None and bool(recv.any())
        if patch.edge is None and not has_recv:
            return resid
        x = resid.expand(3, h, *resid.shape)
        x = self._edge_input(x, patch, state, lambda k: lay.attn_keep(k, layer))
        if has_recv:
            assert recv is not None
            r = recv.view(recv.shape[0], 3, h, 1, -1, 1)  # (modes, 3, head, 1, pos, 1)
            x = x * (1 - r.sum(0))
            for m, mode in enumerate(MODES):
                if recv[m].any():
                    x = x + r[m] * values[mode].resid_pre[layer]
        return x

    @staticmethod
    def _edge_input(x: Tensor, patch: _Mix, state: State,
                    block: Callable[[Tensor], Tensor]) -> Tensor:
        """What a receiver reads: `x` minus each ablated edge's share (`mixing.edge_input`)."""
        return edge_input(x, patch.edge, state, block)

    def _receiver_input(self, resid: Tensor, receiver: int, patch: _Mix,
                        values: dict[Mode, Activations], where: str, layer: int) -> Tensor:
        """Replace an MLP's or the logits' input by the ablated residual where masked."""
        if patch.receiver is None or not bool(patch.receiver[:, receiver].any()):
            return resid
        r = patch.receiver[:, receiver]  # (modes, pos)
        out = resid * (1 - r.sum(0))[None, :, None]
        for m, mode in enumerate(MODES):
            if r[m].any():
                act = values[mode]
                abl = act.resid_mid[layer] if where == "mid" else act.resid_pre[-1]
                out = out + r[m][None, :, None] * abl
        return out

    def _attention(self, x: Tensor, layer: int, capture: Capture | None = None) -> Tensor:
        w = self.w
        if x.dim() == 3:  # one shared input: q, k, v in one GEMM (Hugging Face's c_attn)
            raw = ln(x, w.eps) @ w.W_QKV[layer]  # (batch, pos, 3 * head * e)
            if capture is not None:
                capture.qkv.append(keep_grad(raw, capture))
            qkv = (raw + w.b_QKV[layer]).unflatten(-1, (3, w.n_heads, w.d_head))
            q, k, v = qkv.unbind(2)  # (b, p, h, e)
        else:  # (3, head, batch, pos, d): each head reads its own q, k, v input
            t, h, b, p, d = x.shape
            qkv = torch.matmul(ln(x, w.eps).view(t, h, b * p, d), w.qkv_mats(layer))
            q, k, v = qkv.view(t, h, b, p, -1).permute(0, 2, 3, 1, 4).unbind(0)  # (b, p, h, e)
            q, k, v = q + w.b_Q[layer], k + w.b_K[layer], v + w.b_V[layer]
        pattern = self._softmax(q, k, layer).to(v.dtype)
        return torch.einsum("bhqk,bkhe->bqhe", pattern, v)

    def pattern(self, resid: Tensor, layer: int) -> Tensor:
        """(batch, head, query, key) float32: layer's attention pattern in a plain run whose
        residual before `layer` is `resid` (batch, pos, d) -- TransformerLens's hook_pattern."""
        w = self.w
        raw = ln(resid, w.eps) @ w.W_QKV[layer]
        q, k, _ = (raw + w.b_QKV[layer]).unflatten(-1, (3, w.n_heads, w.d_head)).unbind(2)
        return self._softmax(q, k, layer)

    def _softmax(self, q: Tensor, k: Tensor, layer: int) -> Tensor:
        """(batch, head, q, k) pattern from q, k (batch, pos, head, e): scores and softmax in
        float32 in every dtype (reorder_and_upcast_attn's rule)."""
        w = self.w
        scores = torch.einsum("bqhe,bkhe->bhqk", wide(q), wide(k)) * w.attn_scale[layer]
        if w.causal:
            n = q.shape[1]
            causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        return scores.softmax(-1)

    @staticmethod
    def _replace(out: Tensor, mask: Tensor, values: dict[Mode, Activations], pick: object
                 ) -> Tensor:
        """out * (1 - sum_m mask_m) + sum_m mask_m * value_m. `mask` is (modes, pos, ...)
        shaped like `out` without batch and the last axis."""
        if not bool(mask.any()):
            return out
        mask = mask.to(out.dtype)
        # Heads and whole nodes have a trailing d_model axis the mask lacks; neurons do not.
        trailing = mask.dim() < out.dim()

        def lift(t: Tensor) -> Tensor:
            return t.unsqueeze(0).unsqueeze(-1) if trailing else t.unsqueeze(0)

        result = out * lift(1 - mask.sum(0))
        for m, mode in enumerate(MODES):
            if mask[m].any():
                value = pick(values[mode])  # type: ignore[operator]
                result = result + lift(mask[m]) * value
        return result


class _Recording:
    """The buffers a recorded run writes each layer's outputs into (no per-layer list and
    final stack: that would hold every activation twice at the end of the run)."""

    def __init__(self, w: Weights, resid: Tensor) -> None:
        L, (b, p, d) = w.n_layers, resid.shape

        def new(*shape: int) -> Tensor:
            return resid.new_empty(shape)

        self.buffers = {"z": new(L, b, p, w.n_heads, w.d_head), "mlp_out": new(L, b, p, d),
                        "resid_pre": new(L + 1, b, p, d), "resid_mid": new(L, b, p, d)}

    def put(self, key: str, layer: int, value: Tensor) -> Tensor:
        slot = self.buffers[key][layer]
        slot.copy_(value.detach())
        return slot


