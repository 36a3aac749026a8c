"""Folded weights of a GPT-2-family model, as the fused forward reads them.

Two sources: `from_stacked` makes views of the loader's buffers (`workbench.checkpoint`: the
one copy of the weights, shared with the reference `GPT2LMHeadModel`), `from_bridge` copies a
TransformerBridge in compatibility mode (models a user wraps). Either way every LayerNorm
before a block is plain centring and normalising (`ln`), value biases sit in b_O and the
writing weights are centred. Shapes use TransformerLens names: `W_Q` (layer, head, d_model,
d_head) is a view of the fused `W_QKV` (layer, d_model, 3 * head * d_head), Hugging Face's
layout. The unembedding is `unembed`: the normalised final residual times ln_f's gain `g_U`,
times the embedding (tied) or lm_head rows, plus `b_U`, centred over the vocabulary -- so no
second vocabulary-sized matrix exists; `W_U` materialises one on request.

What the config says about the forward is read from the model, not assumed: the attention
scale per layer (`scaling` of each HF attention module: 1/sqrt(d_head) or 1 with
`scale_attn_weights`, over layer + 1 with `scale_attn_by_inverse_layer_idx`), causality
(`config.is_causal`), the LayerNorm epsilon and the activation.

Invariant: the fused forward over these weights reproduces the model's logits up to a
per-position constant; `AblationEngine` checks it on every prompt set it is built for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.errors import WorkbenchError

HALF = (torch.float16, torch.bfloat16)
FAST_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    # torch's fused kernels for the functions Hugging Face writes out (equal to ~1e-7)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The MLP activation `name` as Hugging Face computes it (`ACT2FN`), fused where torch has
    the same function; activations with their own parameters are refused."""
    if name in FAST_ACTIVATIONS:
        return FAST_ACTIVATIONS[name]
    from transformers.activations import ACT2FN

    if name not in ACT2FN:
        raise WorkbenchError(f"activation_function {name!r} is not one transformers knows")
    fn = ACT2FN[name]
    if isinstance(fn, torch.nn.Module) and any(True for _ in fn.parameters()):
        raise WorkbenchError(f"activation_function {name!r} has learned parameters; "
                             "the engine does not support it")
    return fn  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Weights:
    W_E: Tensor  # (d_vocab, d_model): token embedding as stored (`embed` centres its rows)
    W_pos: Tensor  # (n_ctx, d_model), centred
    W_QKV: Tensor  # (n_layers, d_model, 3 * n_heads * d_head): q, k, v blocks, head-major
    b_QKV: Tensor  # (n_layers, 3 * n_heads * d_head); the v part is 0 (folded into b_O)
    W_O: Tensor  # (n_layers, n_heads, d_head, d_model)
    b_O: Tensor  # (n_layers, d_model)
    W_in: Tensor  # (n_layers, d_model, d_mlp)
    b_in: Tensor  # (n_layers, d_mlp)
    W_out: Tensor  # (n_layers, d_mlp, d_model)
    b_out: Tensor  # (n_layers, d_model)
    W_unembed: Tensor  # (d_vocab, d_model): W_E when tied
    g_U: Tensor | None  # (d_model,): ln_f's gain (None: already in W_unembed)
    b_U: Tensor  # (d_vocab,) centred; float32 for half precision weights
    n_heads: int
    eps: float
    act_fn: str
    attn_scale: tuple[float, ...]  # per layer: multiplies q . k
    causal: bool = True

    @property
    def n_layers(self) -> int:
        return self.W_QKV.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_QKV.shape[1]

    @property
    def d_head(self) -> int:
        return self.W_QKV.shape[2] // (3 * self.n_heads)

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[2]

    @property
    def dtype(self) -> torch.dtype:
        return self.W_QKV.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of the weight tensors (shared storage, e.g. a tied unembedding, once)."""
        seen: dict[int, int] = {}
        for f in dataclasses.fields(self):
            t = getattr(self, f.name)
            if isinstance(t, Tensor):
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    def _split(self, t: Tensor, port: int) -> Tensor:
        return t.unflatten(-1, (3, self.n_heads, self.d_head)).select(-3, port)

    @property
    def W_Q(self) -> Tensor:  # (n_layers, n_heads, d_model, d_head), a view
        return self._split(self.W_QKV, 0).permute(0, 2, 1, 3)

    @property
    def W_K(self) -> Tensor:
        return self._split(self.W_QKV, 1).permute(0, 2, 1, 3)

    @property
    def W_V(self) -> Tensor:
        return self._split(self.W_QKV, 2).permute(0, 2, 1, 3)

    @property
    def b_Q(self) -> Tensor:  # (n_layers, n_heads, d_head)
        return self._split(self.b_QKV, 0)

    @property
    def b_K(self) -> Tensor:
        return self._split(self.b_QKV, 1)

    @property
    def b_V(self) -> Tensor:
        return self._split(self.b_QKV, 2)

    def qkv_mats(self, layer: int) -> Tensor:
        """(3, n_heads, d_model, d_head): layer's W_Q, W_K, W_V as one view."""
        return self.W_QKV[layer].unflatten(-1, (3, self.n_heads, self.d_head)).permute(1, 2, 0, 3)

    @property
    def W_U(self) -> Tensor:
        """(d_model, d_vocab): the folded, centred unembedding, materialised on each call (a
        vocabulary-sized matrix: prefer `unembed` or `unembed_dirs`)."""
        u = self.W_unembed - self.W_unembed.mean(0)
        return (u * self.g_U).T if self.g_U is not None else u.T

    def unembed_dirs(self, ids: Tensor) -> Tensor:
        """(*ids.shape, d_model): the columns `W_U[:, ids]`, without making W_U."""
        u = self.W_unembed[ids] - self.W_unembed.mean(0)
        return u * self.g_U if self.g_U is not None else u

    def unembed(self, h: Tensor) -> Tensor:
        """(..., d_model) normalised final residual -> (..., d_vocab) logits (float32 for half
        precision), centred over the vocabulary (TransformerLens's centred unembedding)."""
        if self.g_U is not None:
            h = h * self.g_U
        out = h @ self.W_unembed.T
        out = (out.float() if out.dtype in HALF else out) + self.b_U
        return out - out.mean(-1, keepdim=True)

    def act(self, x: Tensor) -> Tensor:
        return activation(self.act_fn)(x)

    @classmethod
    def from_stacked(cls, s: Any, hf: Any) -> Weights:
        """Views of a folded `checkpoint.Stacked`; scale and causality from the HF model `hf`
        built on the same buffers."""
        assert s.folded
        cfg = s.config
        L, H = cfg.n_layer, cfg.n_head
        e = cfg.n_embd // H
        activation(cfg.activation_function)  # refuse an unknown one now
        return cls(
            W_E=s.wte, W_pos=s.wpe, W_QKV=s.c_attn_w, b_QKV=s.c_attn_b,
            W_O=s.attn_proj_w.view(L, H, e, cfg.n_embd), b_O=s.attn_proj_b,
            W_in=s.c_fc_w, b_in=s.c_fc_b, W_out=s.mlp_proj_w, b_out=s.mlp_proj_b,
            W_unembed=s.unembedding, g_U=s.ln_f_w, b_U=s.unembed_bias(), n_heads=H,
            eps=float(cfg.layer_norm_epsilon), act_fn=cfg.activation_function,
            attn_scale=tuple(float(block.attn.scaling) for block in hf.transformer.h),
            causal=bool(getattr(cfg, "is_causal", True)),
        )

    @classmethod
    def from_bridge(cls, bridge: Any) -> Weights:
        """Copy the stacked, folded weights of a bridge in compatibility mode."""
        cfg = bridge.cfg
        activation(cfg.act_fn)
        if cfg.positional_embedding_type != "standard":
            raise WorkbenchError("the engine needs learned absolute position embeddings (GPT-2)")
        with torch.no_grad():
            W_QKV = torch.stack([bridge.W_Q, bridge.W_K, bridge.W_V], 2)  # (L, H, 3, d, e)
            W_QKV = W_QKV.permute(0, 3, 2, 1, 4).flatten(2).contiguous()  # (L, d, 3 H e)
            b_QKV = torch.stack([bridge.b_Q, bridge.b_K, bridge.b_V], 1).flatten(1).clone()
            copy = {n: getattr(bridge, n).detach().clone()
                    for n in ("W_E", "W_pos", "W_O", "b_O", "W_in", "b_in", "W_out", "b_out")}
            W_U = bridge.W_U.detach().clone()
        L, d_head = cfg.n_layers, cfg.d_head
        base = 1.0 / (cfg.attn_scale if cfg.attn_scale > 0 else d_head**0.5)
        scale = base if cfg.use_attn_scale else 1.0
        scales = tuple(scale / (i + 1) if cfg.scale_attn_by_inverse_layer_idx else scale
                       for i in range(L))
        return cls(**copy, W_QKV=W_QKV, b_QKV=b_QKV, W_unembed=W_U.T, g_U=None,
                   b_U=bridge.b_U.detach().clone(), n_heads=cfg.n_heads,
                   eps=float(cfg.eps), act_fn=cfg.act_fn, attn_scale=scales)


def embed(w: Weights, tokens: Tensor) -> Tensor:
    """(batch, pos) -> (batch, pos, d_model): token plus position embedding, centred (the
    `input` node's output, as TransformerLens's centred W_E gives it)."""
    rows = w.W_E[tokens]
    return rows - rows.mean(-1, keepdim=True) + w.W_pos[: tokens.shape[1]]


def ln(x: Tensor, eps: float) -> Tensor:
    """LayerNorm with its affine part folded away: centre, then scale to unit RMS (torch's
    fused kernel: one pass forward and backward, statistics in float32 also for half
    precision inputs, also over every head's copy of an input)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)
