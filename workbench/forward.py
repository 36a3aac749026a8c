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
(`Capture`): that is how edge attribution patching scores every edge.

Masks carry a leading mode axis (zero, mean, resample) so one forward mixes modes. The run can
start at any layer from a cached `State`, which is how a toggle recomputes only from the
earliest changed layer. Only answer positions are unembedded.

Invariant: with an empty `Patch` the logits equal the bridge's (tested); `edge` keep = 1
reproduces the clean run and keep = 0 the all-ablated run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from workbench.weights import Weights, ln

Mode = Literal["zero", "mean", "resample"]
MODES: tuple[Mode, ...] = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Activations:
    """Per-source outputs of one run; batch may be 1 (zero and mean values broadcast)."""

    embed: Tensor  # (batch, pos, d_model): the `input` node's output
    z: Tensor  # (n_layers, batch, pos, n_heads, d_head)
    mlp_out: Tensor  # (n_layers, batch, pos, d_model), b_out included
    post: Tensor  # (n_layers, batch, pos, d_mlp)
    resid_pre: Tensor  # (n_layers + 1, batch, pos, d_model); the last is the final residual
    resid_mid: Tensor  # (n_layers, batch, pos, d_model)

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
                           self.post[:, index], self.resid_pre[:, index],
                           self.resid_mid[:, index])

    def deltas_from(self, ablated: Activations, w: Weights) -> Tensor:
        """(n_sources, batch, pos, d): this run's source outputs minus `ablated`'s, in graph
        order (input; each layer's heads; its MLP). W_O is linear, so each head's delta is
        (z - z_ablated) @ W_O; `groups` splits the result into `State.deltas` groups."""
        n_layers, batch, n_pos, n_heads, _ = self.z.shape
        d = self.embed.shape[-1]
        out = torch.empty(1 + n_layers * (n_heads + 1), batch, n_pos, d,
                          dtype=self.embed.dtype, device=self.embed.device)
        out[0] = self.embed - ablated.embed
        for layer in range(n_layers):
            at = 1 + layer * (n_heads + 1)
            dz = self.z[layer] - ablated.z[layer]  # (batch, pos, head, d_head)
            out[at: at + n_heads] = torch.einsum("bphe,hed->hbpd", dz, w.W_O[layer])
            out[at + n_heads] = self.mlp_out[layer] - ablated.mlp_out[layer]
        return out

    @staticmethod
    def groups(deltas: Tensor, n_heads: int) -> list[Tensor]:
        """Dense deltas -> per-group views (input, then each layer's heads and MLP)."""
        n_layers = (deltas.shape[0] - 1) // (n_heads + 1)
        return list(deltas.split([1] + [n_heads, 1] * n_layers))


@dataclass(frozen=True)
class Patch:
    """Dense interventions for one forward. Node/neuron/receiver masks: 1 = ablated."""

    node: Tensor | None = None  # (n_modes, n_sources, pos)
    neuron: Tensor | None = None  # (n_modes, n_layers, d_mlp, pos)
    receiver: Tensor | None = None  # (n_modes, n_receivers, pos)
    edge: Tensor | None = None  # (n_edges,) or (batch, n_edges) keep; 0 = ablated (edge_mode)
    edge_mode: Mode = "mean"


@dataclass
class State:
    """What a later run needs to restart at layer L: residuals and edge deltas before L."""

    resid_pre: list[Tensor] = field(default_factory=list)  # resid_pre[L] for computed layers
    deltas: list[Tensor] = field(default_factory=list)  # per source group (n, batch, pos, d)


@dataclass
class Capture:
    """Tensors `run` keeps so that one backward gives the gradient at every receiver's input.

    Every receiver of a layer reads the same residual in a plain run, so instead of giving each
    head its own copy of the input (and LayerNorm), the run keeps each head's q, k, v and each
    LayerNorm output; `input_grads` maps their gradients back through W_Q/W_K/W_V and the
    LayerNorm Jacobian, which is shared by all copies.
    """

    attn_in: list[Tensor] = field(default_factory=list)  # per layer (batch, pos, d)
    qkv: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list)  # (b, p, head, e)
    mlp_in: list[Tensor] = field(default_factory=list)  # per layer (batch, pos, d)
    mlp_ln: list[Tensor] = field(default_factory=list)
    final_in: Tensor | None = None  # (batch, n_answer, d) at the answer positions
    final_ln: Tensor | None = None

    def input_grads(self, w: Weights, answer_pos: Tensor, n_pos: int
                    ) -> Iterator[tuple[str, int, Tensor]]:
        """After backward, one receiver group at a time (so each can be used and freed):
        ("attn", L, d/d(input) of layer L's q/k/v receivers (batch, pos, 3, head, d)),
        ("mlp", L, (batch, pos, d)), and last ("logits", -1, (batch, pos, d))."""
        for layer, (q, k, v) in enumerate(self.qkv):
            g = torch.stack([
                torch.einsum("bphe,hde->bphd", t.grad, m[layer])  # type: ignore[arg-type]
                for t, m in ((q, w.W_Q), (k, w.W_K), (v, w.W_V))], dim=2)
            yield "attn", layer, ln_backward(self.attn_in[layer][:, :, None, None, :], g, w.eps)
            yield "mlp", layer, ln_backward(self.mlp_in[layer], self.mlp_ln[layer].grad,  # type: ignore[arg-type]
                                            w.eps)
        assert self.final_in is not None and self.final_ln is not None
        g_final = ln_backward(self.final_in, self.final_ln.grad, w.eps)  # type: ignore[arg-type]
        logits = torch.zeros(g_final.shape[0], n_pos, g_final.shape[-1], dtype=g_final.dtype,
                             device=g_final.device)
        logits.scatter_add_(1, answer_pos.unsqueeze(-1).expand_as(g_final), g_final)
        yield "logits", -1, logits


def ln_backward(x: Tensor, g: Tensor, eps: float) -> Tensor:
    """Gradient at the input of the folded LayerNorm `ln` at x, given the gradient g at its
    output: (g - mean(g) - y * mean(g * y)) / scale, with y = ln(x). `x` may broadcast
    against `g` (one residual read by every head); the big temporaries are made in place."""
    c = x - x.mean(-1, keepdim=True)
    scale = (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    y = c / scale
    kappa = torch.einsum("...d,...d->...", g, y).unsqueeze(-1)
    out = g - g.mean(-1, keepdim=True)
    out.addcmul_(y, kappa, value=-1.0 / g.shape[-1])
    return out.div_(scale)


def _keep(t: Tensor, capture: Capture | None) -> Tensor:
    if capture is not None and t.requires_grad:
        t.retain_grad()
    return t


def embed(w: Weights, tokens: Tensor) -> Tensor:
    """(batch, pos) -> (batch, pos, d_model): token plus position embedding."""
    return w.W_E[tokens] + w.W_pos[: tokens.shape[1]]


class Layout:
    """Index arithmetic of the head-level graph (kept equal to `workbench.graph.Graph`).

    Sources: input, then per layer its heads then its MLP. Receivers: per layer the q inputs of
    its heads, then k, then v, then its MLP; finally logits. Edges are listed receiver by
    receiver; each receiver reads from a prefix of the sources.
    """

    def __init__(self, n_layers: int, n_heads: int) -> None:
        self.n_layers, self.n_heads = n_layers, n_heads
        self.n_sources = 1 + n_layers * (n_heads + 1)
        self.n_receivers = n_layers * (3 * n_heads + 1) + 1
        self.attn_offset, self.mlp_offset = [], []
        at = 0
        for layer in range(n_layers):
            self.attn_offset.append(at)
            at += 3 * n_heads * self.up_attn(layer)
            self.mlp_offset.append(at)
            at += self.up_mlp(layer)
        self.logits_offset = at
        self.n_edges = at + self.n_sources

    def up_attn(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1)

    def up_mlp(self, layer: int) -> int:
        return self.up_attn(layer) + self.n_heads

    def head_source(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_source(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def attn_receiver(self, layer: int, port: int, head: int) -> int:
        return layer * (3 * self.n_heads + 1) + port * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    def attn_keep(self, keep: Tensor, layer: int) -> Tensor:
        """(..., n_edges) -> (..., n_upstream, 3, n_heads): the edges into layer's q/k/v."""
        n, h = self.up_attn(layer), self.n_heads
        block = keep[..., self.attn_offset[layer]: self.attn_offset[layer] + 3 * h * n]
        return block.unflatten(-1, (3, h, n)).movedim(-1, -3)

    def mlp_keep(self, keep: Tensor, layer: int) -> Tensor:
        """(..., n_edges) -> (..., n_upstream): the edges into layer's MLP."""
        return keep[..., self.mlp_offset[layer]: self.mlp_offset[layer] + self.up_mlp(layer)]

    def logits_keep(self, keep: Tensor) -> Tensor:
        return keep[..., self.logits_offset:]


class Forward:
    """The fused forward over folded weights, for one prompt set's tokens."""

    def __init__(self, w: Weights) -> None:
        self.w = w
        self.layout = Layout(w.n_layers, w.n_heads)

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
        w, lay, patch = self.w, self.layout, patch or Patch()
        values = values or {}
        edge = patch.edge
        edge_abl = values.get(patch.edge_mode) if edge is not None else None
        if edge is not None and edge_abl is None:
            raise ValueError(f"edge patch needs the {patch.edge_mode} values")
        new = State()
        if start == 0:
            resid = embed(w, tokens)
            if patch.node is not None:
                resid = self._replace(resid, patch.node[:, 0], values, lambda a: a.embed)
            if edge_abl is not None:
                new.deltas.append(_minus(resid, edge_abl.embed).unsqueeze(0))
            if capture is not None:  # a leaf, so that the run builds a graph to differentiate
                resid = resid.detach().requires_grad_(True)
            embed_out = resid
        else:
            assert state is not None and len(state.resid_pre) > start
            resid = state.resid_pre[start]
            new.deltas = state.deltas[: 1 + 2 * start]
            embed_out = None
        new.resid_pre = (state.resid_pre[:start] if start else [])
        recorded: dict[str, list[Tensor]] = {k: [] for k in ("z", "mlp_out", "post", "mid")}
        for layer in range(start, w.n_layers):
            new.resid_pre.append(resid)
            x = self._attn_inputs(resid, layer, patch, values, new.deltas)
            if capture is not None:
                capture.attn_in.append(x)
            z = self._attention(x, layer, capture)  # (batch, pos, head, d_head)
            heads = torch.einsum("bphe,hed->bphd", z, w.W_O[layer])
            if patch.node is not None:
                src = lay.head_source(layer, 0)
                mask = patch.node[:, src: src + w.n_heads]  # (modes, head, pos)
                heads = self._replace(heads, mask.transpose(1, 2), values,
                                      lambda a, L=layer: a.head_out(w, L))
            if edge_abl is not None:
                d = _minus(heads, edge_abl.head_out(w, layer))
                new.deltas.append(d.permute(2, 0, 1, 3))
            mid = resid + heads.sum(2) + w.b_O[layer]
            x = self._receiver_input(mid, lay.mlp_receiver(layer), patch, values, "mid", layer)
            x = self._edge_input(x, patch, new.deltas, lambda k, L=layer: lay.mlp_keep(k, L))
            h = ln(x, w.eps)
            if capture is not None:
                capture.mlp_in.append(x)
                capture.mlp_ln.append(_keep(h, capture))
            post = w.act(h @ w.W_in[layer] + w.b_in[layer])
            if patch.neuron is not None:
                post = self._replace(post, patch.neuron[:, layer].transpose(1, 2), values,
                                     lambda a, L=layer: a.post[L])
            out = post @ w.W_out[layer] + w.b_out[layer]
            if patch.node is not None:
                out = self._replace(out, patch.node[:, lay.mlp_source(layer)], values,
                                    lambda a, L=layer: a.mlp_out[L])
            if edge_abl is not None:
                new.deltas.append(_minus(out, edge_abl.mlp_out[layer]).unsqueeze(0))
            if record:
                for key, val in (("z", z), ("mlp_out", out), ("post", post), ("mid", mid)):
                    recorded[key].append(val)
            resid = mid + out
        new.resid_pre.append(resid)
        x = self._receiver_input(resid, lay.n_receivers - 1, patch, values, "final", 0)
        x = self._edge_input(x, patch, new.deltas, lay.logits_keep)
        x = x.gather(1, answer_pos.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        h = ln(x, w.eps)
        if capture is not None:
            capture.final_in, capture.final_ln = x, _keep(h, capture)
        logits = h @ w.W_U + w.b_U
        acts = None
        if record:
            assert start == 0 and embed_out is not None
            acts = Activations(
                embed=embed_out, z=torch.stack(recorded["z"]),
                mlp_out=torch.stack(recorded["mlp_out"]), post=torch.stack(recorded["post"]),
                resid_pre=torch.stack(new.resid_pre), resid_mid=torch.stack(recorded["mid"]),
            )
        return logits, new, acts

    # -- pieces -------------------------------------------------------------------------

    def _attn_inputs(self, resid: Tensor, layer: int, patch: Patch,
                     values: dict[Mode, Activations], deltas: list[Tensor]) -> Tensor:
        """(batch, pos, d) shared input, or (batch, pos, 3, head, d) per q/k/v and head."""
        lay, h = self.layout, self.w.n_heads
        first = lay.attn_receiver(layer, 0, 0)
        recv = patch.receiver[:, first: first + 3 * h] if patch.receiver is not None else None
        has_recv = recv is not None and bool(recv.any())
        if patch.edge is None and not has_recv:
            return resid
        x = resid[:, :, None, None, :].expand(-1, -1, 3, h, -1)
        x = self._edge_input(x, patch, deltas, lambda k: lay.attn_keep(k, layer))
        if has_recv:
            assert recv is not None
            r = recv.view(recv.shape[0], 3, h, -1).permute(0, 3, 1, 2)  # (modes, pos, 3, head)
            ablated = torch.zeros_like(x)
            for m, mode in enumerate(MODES):
                if recv[m].any():
                    ablated = ablated + r[m, None, :, :, :, None] * values[mode].resid_pre[
                        layer][:, :, None, None, :]
            x = x * (1 - r.sum(0))[None, :, :, :, None] + ablated
        return x

    @staticmethod
    def _edge_input(x: Tensor, patch: Patch, deltas: list[Tensor],
                    block: Callable[[Tensor], Tensor]) -> Tensor:
        """What a receiver reads: `x` minus each ablated edge's share.
        `block` cuts this receiver group's coefficients out of an (..., n_edges) vector."""
        if patch.edge is not None:
            x = x - _mix(deltas, 1 - block(patch.edge), rows=patch.edge.dim() == 2)
        return x

    def _receiver_input(self, resid: Tensor, receiver: int, patch: Patch,
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
        if x.dim() == 3:  # one shared input
            h = ln(x, w.eps)
            q = torch.einsum("bpd,hde->bphe", h, w.W_Q[layer])
            k = torch.einsum("bpd,hde->bphe", h, w.W_K[layer])
            v = torch.einsum("bpd,hde->bphe", h, w.W_V[layer])
            if capture is not None:
                capture.qkv.append((_keep(q, capture), _keep(k, capture), _keep(v, capture)))
        else:  # (batch, pos, 3, head, d): each head reads its own q, k, v input
            h = ln(x, w.eps)
            q = torch.einsum("bphd,hde->bphe", h[:, :, 0], w.W_Q[layer])
            k = torch.einsum("bphd,hde->bphe", h[:, :, 1], w.W_K[layer])
            v = torch.einsum("bphd,hde->bphe", h[:, :, 2], w.W_V[layer])
        q, k, v = q + w.b_Q[layer], k + w.b_K[layer], v + w.b_V[layer]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / w.d_head**0.5
        n = x.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        return torch.einsum("bhqk,bkhe->bqhe", pattern, v)

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


def _minus(live: Tensor, ablated: Tensor) -> Tensor:
    """live - ablated, where `live` may hold K replicas of the prompts (ACDC's candidates)
    stacked replica-major and `ablated` one copy (or a broadcastable batch of 1)."""
    rows, b = live.shape[0], ablated.shape[0]
    if rows == b or b == 1:
        return live - ablated
    return (live.view(rows // b, b, *live.shape[1:]) - ablated).flatten(0, 1)


def _mix(deltas: list[Tensor], coef: Tensor, rows: bool) -> Tensor:
    """sum over upstream sources s of coef[s, ...] * delta_s.

    deltas: per-group tensors (n_g, batch, pos, d) in source order. coef: (n_upstream, ...),
    or with `rows` (R, n_upstream, ...) giving each row its own coefficients (ACDC's
    candidates), where a group whose batch is smaller than R (shared below the restart)
    broadcasts over the R // batch replicas.
    """
    if not rows:
        n_up = coef.shape[0]
        return _dense_mix(_prefix(deltas, n_up)[:n_up], coef)
    total, at = None, 0
    n_up = coef.shape[1]
    extra = "".join("xyz"[i] for i in range(coef.dim() - 2))
    for d in deltas:
        n = d.shape[0]
        if at >= n_up:
            break
        c = coef[:, at: at + n]
        at += n
        if not c.requires_grad and not bool(c.any()):
            continue
        if c.shape[0] == d.shape[1]:
            term = torch.einsum(f"nbpd,bn{extra}->bp{extra}d", d, c)
        else:  # shared group: (R, ...) = (K replicas x batch)
            k = c.shape[0] // d.shape[1]
            c = c.view(k, d.shape[1], *c.shape[1:])
            term = torch.einsum(f"nbpd,kbn{extra}->kbp{extra}d", d, c).flatten(0, 1)
        total = term if total is None else total + term
    if total is None:
        return torch.zeros((), dtype=coef.dtype, device=coef.device)
    return total


def _prefix(groups: list[Tensor], n_up: int) -> Tensor:
    """The first n_up sources of per-group deltas as one contiguous tensor."""
    taken, at = [], 0
    for g in groups:
        if at >= n_up:
            break
        taken.append(g)
        at += g.shape[0]
    return taken[0] if len(taken) == 1 else torch.cat(taken)


def _dense_mix(deltas: Tensor, coef: Tensor) -> Tensor:
    """One GEMM: (n, batch, pos, d) and (n, *extra) -> (batch, pos, *extra, d).

    (extra, n) @ (n, batch*pos*d) reads the deltas in place (no permuted copy); the result is
    viewed back with the receiver axes before d.
    """
    n, b, p, d = deltas.shape
    extra = coef.shape[1:]
    out = coef.reshape(n, -1).T @ deltas.reshape(n, b * p * d)  # (prod(extra), b*p*d)
    out = out.view(*extra, b, p, d)
    return out.movedim(tuple(range(len(extra))), tuple(range(2, 2 + len(extra))))
