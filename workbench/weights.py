"""Folded weights of a GPT-2-family model, read once from the TransformerBridge.

In compatibility mode the bridge folds each LayerNorm's scale and bias into the weights that
read from it, so every LayerNorm becomes plain centring and normalising (`ln` below). The
stacked weights use TransformerLens names and shapes unchanged (`W_Q`: layer, head, d_model,
d_head). The fused forward in `workbench.forward` runs on these tensors; a test checks that it
reproduces the bridge's own logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.errors import WorkbenchError

ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


@dataclass(frozen=True)
class Weights:
    W_E: Tensor  # (d_vocab, d_model)
    W_pos: Tensor  # (n_ctx, d_model)
    W_Q: Tensor  # (n_layers, n_heads, d_model, d_head)
    W_K: Tensor
    W_V: Tensor
    b_Q: Tensor  # (n_layers, n_heads, d_head)
    b_K: Tensor
    b_V: Tensor
    W_O: Tensor  # (n_layers, n_heads, d_head, d_model)
    b_O: Tensor  # (n_layers, d_model)
    W_in: Tensor  # (n_layers, d_model, d_mlp)
    b_in: Tensor  # (n_layers, d_mlp)
    W_out: Tensor  # (n_layers, d_mlp, d_model)
    b_out: Tensor  # (n_layers, d_model)
    W_U: Tensor  # (d_model, d_vocab)
    b_U: Tensor  # (d_vocab,)
    eps: float
    act_fn: str

    @property
    def n_layers(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[1]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[3]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[2]

    def act(self, x: Tensor) -> Tensor:
        return ACTIVATIONS[self.act_fn](x)

    @classmethod
    def from_bridge(cls, bridge: Any) -> Weights:
        """Read the stacked, folded weights of a bridge in compatibility mode."""
        cfg = bridge.cfg
        if cfg.act_fn not in ACTIVATIONS:
            raise WorkbenchError(f"activation {cfg.act_fn!r} is not supported by the engine")
        if cfg.positional_embedding_type != "standard":
            raise WorkbenchError("the engine needs learned absolute position embeddings (GPT-2)")
        names = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V", "W_O", "b_O",
                 "W_in", "b_in", "W_out", "b_out", "W_U", "b_U")
        with torch.no_grad():
            tensors = {n: getattr(bridge, n).detach().clone() for n in names}
        return cls(**tensors, eps=float(cfg.eps), act_fn=cfg.act_fn)


def ln(x: Tensor, eps: float) -> Tensor:
    """LayerNorm with its affine part folded away: centre, then scale to unit RMS (torch's
    fused kernel: one pass forward and backward, also over every head's copy of an input)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)
