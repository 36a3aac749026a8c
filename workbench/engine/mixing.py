"""Edge mixing: what a receiver reads when edges into it are (partly) ablated.

Receiver r reads `resid - sum_s (1 - keep[s, r]) * (out_s - abl_s)`. The deltas out_s - abl_s
of one run are collected per source group (input; each layer's heads; its MLP) in a `State`,
which also lets a later run restart at layer L from what an earlier run computed below L.
1. One keep vector for every row: the deltas are also copied into one contiguous buffer as they
   are made, so each receiver group's upstream sources are a prefix view of it and the mix is
   one GEMM (`_dense_mix`); under autograd `_FlatMix` routes the gradient to the per-group
   deltas while reading the buffer.
2. One keep vector per row (ACDC's candidate circuits): `_mix` multiplies each group with its
   rows' coefficients; groups shared below a restart broadcast over the replicas.

Invariant: keep = 1 leaves what a receiver reads unchanged; keep = 0 replaces every upstream
source's share by its ablation value (tested through the forward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class State:
    """What a later run needs to restart at layer L: residuals and edge deltas before L.

    With one keep vector for every row, the deltas are also copied (detached) into one
    contiguous buffer `flat` as they are made, so that each receiver's upstream sources are a
    view of it: one GEMM per receiver group with no per-layer concatenation (which would copy
    O(layers^2) residuals per run and keep them all for the backward).
    """

    resid_pre: list[Tensor] = field(default_factory=list)  # resid_pre[L] for computed layers
    deltas: list[Tensor] = field(default_factory=list)  # per source group (n, batch, pos, d)
    flat: Tensor | None = None  # (n_sources, batch, pos, d): `deltas` in one buffer

    def add_delta(self, delta: Tensor, n_sources: int, flat: bool) -> None:
        at = sum(d.shape[0] for d in self.deltas)
        self.deltas.append(delta)
        if not flat:
            return
        if self.flat is None:
            self.flat = delta.new_empty((n_sources, *delta.shape[1:]))
        self.flat[at: at + delta.shape[0]].copy_(delta.detach())

    def restart(self, layer: int, n_sources: int, flat: bool) -> State:
        """A new state sharing everything before `layer`. With `flat`, the buffer rows before
        it are copied (the new run writes the rows after them)."""
        new = State(resid_pre=self.resid_pre[:layer], deltas=self.deltas[: 1 + 2 * layer])
        if flat and new.deltas:
            n = sum(d.shape[0] for d in new.deltas)
            new.flat = new.deltas[0].new_empty((n_sources, *new.deltas[0].shape[1:]))
            done = self.flat[:n] if self.flat is not None else torch.cat(new.deltas)
            new.flat[:n].copy_(done.detach())
        return new


def edge_input(x: Tensor, edge: Tensor | None, state: State,
               block: Callable[[Tensor], Tensor]) -> Tensor:
    """What a receiver reads: `x` minus each ablated edge's share. `edge` is the keep vector
    (n_edges,) or one per row (rows, n_edges); `block` cuts this receiver group's coefficients
    out of it."""
    if edge is None:
        return x
    coef = block(edge) - 1  # minus the ablated share (negated here, not in the sum)
    if edge.dim() == 2:
        mix = _mix(state.deltas, coef)
        return mix.add_(x) if mix.shape == x.shape and not mix.requires_grad else x + mix
    assert state.flat is not None
    n_up = coef.shape[0]
    live = _upstream(state.deltas, n_up)
    prefix = state.flat[:n_up]
    if torch.is_grad_enabled() and (coef.requires_grad or any(d.requires_grad for d in live)):
        return x + _FlatMix.apply(coef, prefix, *live)
    return x + _dense_mix(prefix, coef)


def minus(live: Tensor, ablated: Tensor) -> Tensor:
    """live - ablated, where `live` may hold K replicas of the prompts (ACDC's candidates)
    stacked replica-major and `ablated` one copy (or a broadcastable batch of 1)."""
    rows, b = live.shape[0], ablated.shape[0]
    if rows == b or b == 1:
        return live - ablated
    return (live.view(rows // b, b, *live.shape[1:]) - ablated).flatten(0, 1)


def _mix(deltas: list[Tensor], coef: Tensor) -> Tensor:
    """sum over upstream sources s of coef[r, s, ...] * delta_s, each row r with its own
    coefficients (ACDC's candidates): (R, n_upstream, *extra) -> (*extra, R, pos, d).

    deltas: per-group tensors (n_g, batch, pos, d) in source order; a group whose batch is
    smaller than R (shared below the restart) broadcasts over the R // batch replicas. Each
    group's batched product is added, in whatever layout it comes out, into one buffer in the
    receiver-major layout (the add does the transpose; no separate permuted copies).
    """
    n_up, extra = coef.shape[1], coef.shape[2:]
    axes = "xyz"[: len(extra)]
    out, at = None, 0
    for d in deltas:
        n = d.shape[0]
        if at >= n_up:
            break
        c = coef[:, at: at + n]
        at += n
        if not c.requires_grad and not bool(c.any()):
            continue
        k, b = coef.shape[0] // d.shape[1], d.shape[1]
        term = torch.einsum(f"nbpd,kbn{axes}->{axes}kbpd", d, c.view(k, b, *c.shape[1:]))
        if out is None:
            out = d.new_empty((*extra, coef.shape[0], *d.shape[2:]))
            out.view(*extra, k, b, *d.shape[2:]).copy_(term)
        else:
            out.view(*extra, k, b, *d.shape[2:]).add_(term)
    if out is None:
        return torch.zeros((), dtype=coef.dtype, device=coef.device)
    return out


def _upstream(groups: list[Tensor], n_up: int) -> list[Tensor]:
    """The groups holding the first n_up sources (receivers read whole groups)."""
    taken, at = [], 0
    for g in groups:
        if at >= n_up:
            break
        taken.append(g)
        at += g.shape[0]
    assert at == n_up, "a receiver's upstream sources end inside a group"
    return taken


class _FlatMix(torch.autograd.Function):
    """`_dense_mix(prefix, coef)` whose gradient goes to the per-group deltas (`groups`, the
    tensors autograd knows) while the product reads their contiguous copy `prefix`. The copy
    is kept as a plain attribute, not saved: later layers write rows after the prefix into
    the same buffer, which must not count as modifying it."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, coef: Tensor, prefix: Tensor,  # type: ignore[override]
                *groups: Tensor) -> Tensor:
        ctx.prefix = prefix  # type: ignore[attr-defined]
        ctx.sizes = [g.shape[0] for g in groups]  # type: ignore[attr-defined]
        ctx.save_for_backward(coef)
        return _dense_mix(prefix, coef)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor  # type: ignore[override]
                 ) -> tuple[Tensor | None, ...]:
        (coef,) = ctx.saved_tensors  # type: ignore[attr-defined]
        prefix: Tensor = ctx.prefix  # type: ignore[attr-defined]
        n = prefix.shape[0]
        g = grad.reshape(-1, prefix[0].numel())  # (prod(extra), batch*pos*d)
        need = ctx.needs_input_grad  # type: ignore[attr-defined]
        grad_coef = (prefix.reshape(n, -1) @ g.T).view(coef.shape) if need[0] else None
        grad_groups: list[Tensor | None] = [None] * len(ctx.sizes)  # type: ignore[attr-defined]
        if any(need[2:]):
            c = coef.reshape(n, -1)
            full = (c @ g if c.shape[1] > 1 else c * g).view(prefix.shape)  # K=1: no GEMM
            grad_groups = list(full.split(ctx.sizes))  # type: ignore[attr-defined]
        return (grad_coef, None, *grad_groups)


def _dense_mix(deltas: Tensor, coef: Tensor) -> Tensor:
    """One GEMM: (n, batch, pos, d) and (n, *extra) -> (*extra, batch, pos, d).

    (extra, n) @ (n, batch*pos*d) reads the deltas in place (no permuted copy) and writes the
    receiver-major layout the per-head inputs use.
    """
    n, b, p, d = deltas.shape
    out = coef.reshape(n, -1).T @ deltas.reshape(n, b * p * d)  # (prod(extra), b*p*d)
    return out.view(*coef.shape[1:], b, p, d)
