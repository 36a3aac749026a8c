"""Hand-written gradients at every receiver's input, from one plain forward and one backward.

In a plain run every receiver of a layer reads the same residual, so instead of giving each head
its own copy of its input (and LayerNorm), the forward keeps (`Capture`) each layer's shared
input, the q/k/v products and each LayerNorm output; after one backward `Capture.input_grads`
maps their gradients back through W_Q/W_K/W_V and the LayerNorm Jacobian shared by all copies
(`_qkv_input_grads` in head space, `ln_backward` for MLP and logits inputs).

Invariant: equal to autograd through per-receiver input copies (tested in tests/test_engine.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from workbench.weights import Weights


@dataclass
class Capture:
    """Tensors `run` keeps so that one backward gives the gradient at every receiver's input.

    Every receiver of a layer reads the same residual in a plain run, so instead of giving each
    head its own copy of the input (and LayerNorm), the run keeps each head's q, k, v and each
    LayerNorm output; `input_grads` maps their gradients back through W_Q/W_K/W_V and the
    LayerNorm Jacobian, which is shared by all copies.
    """

    attn_in: list[Tensor] = field(default_factory=list)  # per layer (batch, pos, d)
    qkv: list[Tensor] = field(default_factory=list)  # per layer (batch, pos, 3 * head * e)
    mlp_in: list[Tensor] = field(default_factory=list)  # per layer (batch, pos, d)
    mlp_ln: list[Tensor] = field(default_factory=list)
    final_in: Tensor | None = None  # (batch, n_answer, d) at the answer positions
    final_ln: Tensor | None = None

    @torch.no_grad()
    def input_grads(self, w: Weights, answer_pos: Tensor, n_pos: int
                    ) -> Iterator[tuple[str, int, Tensor]]:
        """After backward, one receiver group at a time (so each can be used and freed):
        ("attn", L, d/d(input) of layer L's q/k/v receivers (3, head, batch, pos, d)),
        ("mlp", L, (batch, pos, d)), and last ("logits", -1, (batch, pos, d))."""
        for layer, qkv in enumerate(self.qkv):
            yield "attn", layer, _qkv_input_grads(w, layer, self.attn_in[layer], qkv)
            yield "mlp", layer, ln_backward(self.mlp_in[layer].detach(),
                                            self.mlp_ln[layer].grad, w.eps)  # type: ignore[arg-type]
        assert self.final_in is not None and self.final_ln is not None
        g_final = ln_backward(self.final_in.detach(), self.final_ln.grad, w.eps)  # type: ignore[arg-type]
        logits = torch.zeros(g_final.shape[0], n_pos, g_final.shape[-1], dtype=g_final.dtype,
                             device=g_final.device)
        logits.scatter_add_(1, answer_pos.unsqueeze(-1).expand_as(g_final), g_final)
        yield "logits", -1, logits


def _qkv_input_grads(w: Weights, layer: int, x: Tensor, qkv: Tensor) -> Tensor:
    """(3, head, batch, pos, d): the gradient at each head's q/k/v input, from the gradient
    at the fused q, k, v product (before the biases; batch, pos, 3 * head * e) and the shared
    input x (batch, pos, d).

    It is `ln_backward(x, g_r @ W_r.T)` for every receiver r, done mostly in head space: the
    LayerNorm Jacobian (I - 1 1^T / D - y y^T / D) / scale needs, per receiver, only the scalars
    mean(g) = (sum_d W_r) . g_r / D and mean(g * y) = (y @ W_r) . g_r / D, and y @ W_r is the
    captured q/k/v itself. So the one big product (3 * head GEMMs) is followed by two in-place
    passes instead of a LayerNorm backward over every head's copy.
    """
    x = x.detach()
    h, e = w.n_heads, w.d_head
    b, p = x.shape[:2]
    c = x - x.mean(-1, keepdim=True)
    scale = (c.pow(2).mean(-1, keepdim=True) + w.eps).sqrt()  # (b, p, 1)
    y = c.div_(scale)
    n_model = x.shape[-1]
    assert qkv.grad is not None

    def head_major(t: Tensor) -> Tensor:  # (b, p, 3 h e) -> (3 h, b*p, e)
        return t.view(b * p, 3 * h, e).transpose(0, 1)

    # (3, head, b*p, e): head-space gradients divided by the scale, receiver-major
    g = head_major(qkv.grad / scale).contiguous()
    raw = head_major(qkv.detach())
    # (3h, e, d): each receiver's W_r^T, a view of the fused (d, 3 h e) weight (no copy)
    mats_t = w.W_QKV[layer].T.unflatten(0, (3 * h, e))
    mean_g = torch.einsum("rne,re->rn", g, mats_t.sum(2)).div_(n_model)  # (3h, b*p)
    mean_gy = torch.einsum("rne,rne->rn", g, raw).div_(n_model)
    out = torch.bmm(g, mats_t)  # (3h, b*p, d)
    out.sub_(mean_g.unsqueeze(-1))
    out.addcmul_(mean_gy.unsqueeze(-1), y.view(1, b * p, n_model), value=-1.0)
    return out.view(3, h, b, p, n_model)


def ln_backward(x: Tensor, g: Tensor, eps: float) -> Tensor:
    """Gradient at the input of the folded LayerNorm `ln` at x, given the gradient g at its
    output: (g - mean(g) - y * mean(g * y)) / scale, with y = ln(x) (MLP and logits inputs;
    the heads' inputs use `_qkv_input_grads`)."""
    c = x - x.mean(-1, keepdim=True)
    scale = (c.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    y = c / scale
    kappa = torch.einsum("...d,...d->...", g, y).unsqueeze(-1)
    out = g - g.mean(-1, keepdim=True)
    out.addcmul_(y, kappa, value=-1.0 / g.shape[-1])
    return out.div_(scale)


def keep_grad(t: Tensor, capture: Capture | None) -> Tensor:
    """Mark `t` to keep its gradient when a capture is on."""
    if capture is not None and t.requires_grad:
        t.retain_grad()
    return t
