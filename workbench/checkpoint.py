"""A GPT-2 checkpoint read once into stacked buffers, folded in place, and wrapped as a model.

1. `read_tensors` streams a checkpoint's tensors one at a time: safetensors by plain reads
   (no memory map, so no page of the file stays counted as resident), `.bin` through
   `torch.load(mmap=True)`, a user's model through its state dict.
2. `Stacked.fill` copies each tensor into one buffer per kind with the layers stacked
   (`c_attn` (n_layers, d_model, 3 d_model), ...) in the model's dtype, so the weights exist
   once; peak memory while loading is that copy plus one tensor.
3. `Stacked.fold` rewrites the buffers so that the same function is computed with every
   LayerNorm before a block reduced to centring and scaling (TransformerLens's fold_ln),
   value biases moved into the attention output bias (fold_value_biases), and the weights that
   write to the residual stream centred (center_writing_weights; every reader normalises, so
   nothing downstream changes). The embedding stays as it is, because it is also the tied
   unembedding: the final LayerNorm's gain is applied to the residual instead of being folded
   into a second vocabulary-sized matrix. Arithmetic in float64, one layer at a time.
4. `Stacked.hf_model` builds a `GPT2LMHeadModel` on the meta device and points every
   parameter at a view of the buffers (eager attention, so the config's causality and
   `reorder_and_upcast_attn` are honoured): the reference forward that the engine is checked
   against, holding no weights of its own.

Invariant: the returned model computes the checkpoint's function (up to float rounding), and
the engine's `Weights` are views of the same storage.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from workbench.errors import WorkbenchError

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F64": torch.float64}
SKIPPED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old checkpoints
PER_LAYER = {  # checkpoint name below h.L. -> buffer
    "ln_1.weight": "ln_1_w", "ln_1.bias": "ln_1_b", "ln_2.weight": "ln_2_w",
    "ln_2.bias": "ln_2_b", "attn.c_attn.weight": "c_attn_w", "attn.c_attn.bias": "c_attn_b",
    "attn.c_proj.weight": "attn_proj_w", "attn.c_proj.bias": "attn_proj_b",
    "mlp.c_fc.weight": "c_fc_w", "mlp.c_fc.bias": "c_fc_b", "mlp.c_proj.weight": "mlp_proj_w",
    "mlp.c_proj.bias": "mlp_proj_b",
}
GLOBAL = {"wte.weight": "wte", "wpe.weight": "wpe", "ln_f.weight": "ln_f_w",
          "ln_f.bias": "ln_f_b"}


def read_tensors(files: list[Path]) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) for every tensor of the weight files, one at a time, on the CPU."""
    for path in files:
        if path.suffix == ".safetensors":
            yield from _read_safetensors(path)
        else:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            yield from state.items()
            del state


def _read_safetensors(path: Path) -> Iterator[tuple[str, Tensor]]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                                 key=lambda kv: kv[1]["data_offsets"][0]):
            dtype = SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise WorkbenchError(f"{path}: tensor {name} has dtype {info['dtype']}; "
                                     "only float checkpoints load")
            start, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=dtype)
            f.seek(base + start)
            if t.numel():
                f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy()))  # type: ignore[attr-defined]
            if t.numel() * t.element_size() != end - start:
                raise WorkbenchError(f"{path}: tensor {name} has the wrong size; copy it again")
            yield name, t


@dataclass
class Stacked:
    """The one copy of a GPT-2's weights, in Hugging Face's layout with the layers stacked."""

    config: Any  # transformers.GPT2Config
    wte: Tensor  # (d_vocab, d_model): embedding and (tied) unembedding
    wpe: Tensor  # (n_ctx, d_model)
    lm_head: Tensor | None  # (d_vocab, d_model) when the unembedding is not tied
    ln_f_w: Tensor  # (d_model,)
    ln_f_b: Tensor
    ln_1_w: Tensor  # (n_layers, d_model); ones/zeros once folded
    ln_1_b: Tensor
    ln_2_w: Tensor
    ln_2_b: Tensor
    c_attn_w: Tensor  # (n_layers, d_model, 3 d_model): q, k, v, each head-major
    c_attn_b: Tensor  # (n_layers, 3 d_model)
    attn_proj_w: Tensor  # (n_layers, d_model, d_model): rows head-major
    attn_proj_b: Tensor  # (n_layers, d_model)
    c_fc_w: Tensor  # (n_layers, d_model, d_mlp)
    c_fc_b: Tensor
    mlp_proj_w: Tensor  # (n_layers, d_mlp, d_model)
    mlp_proj_b: Tensor
    folded: bool = False

    @classmethod
    def empty(cls, config: Any, dtype: torch.dtype, device: str | torch.device) -> Stacked:
        L, d = config.n_layer, config.n_embd
        m = config.n_inner if config.n_inner is not None else 4 * d
        tied = bool(getattr(config, "tie_word_embeddings", True))

        def new(*shape: int) -> Tensor:
            return torch.empty(shape, dtype=dtype, device=device)

        return cls(config=config, wte=new(config.vocab_size, d), wpe=new(config.n_positions, d),
                   lm_head=None if tied else new(config.vocab_size, d),
                   ln_f_w=new(d), ln_f_b=new(d), ln_1_w=new(L, d), ln_1_b=new(L, d),
                   ln_2_w=new(L, d), ln_2_b=new(L, d), c_attn_w=new(L, d, 3 * d),
                   c_attn_b=new(L, 3 * d), attn_proj_w=new(L, d, d), attn_proj_b=new(L, d),
                   c_fc_w=new(L, d, m), c_fc_b=new(L, m), mlp_proj_w=new(L, m, d),
                   mlp_proj_b=new(L, d))

    def fill(self, tensors: Iterator[tuple[str, Tensor]], label: str) -> None:
        """Copy every named tensor into its place; every place must be filled exactly once."""
        L = self.config.n_layer
        todo = {f"h.{i}.{k}" for i in range(L) for k in PER_LAYER} | set(GLOBAL)
        if self.lm_head is not None:
            todo.add("lm_head.weight")
        for raw, t in tensors:
            name = raw.removeprefix("transformer.")
            if name.endswith(SKIPPED) or (name == "lm_head.weight" and self.lm_head is None):
                continue
            dest = self._place(name)
            if dest is None:
                raise WorkbenchError(f"{label}: unexpected tensor {raw!r} for a GPT-2 "
                                     "(cross-attention or another architecture?)")
            if tuple(dest.shape) != tuple(t.shape):
                raise WorkbenchError(f"{label}: tensor {raw} has shape {tuple(t.shape)}, the "
                                     f"config says {tuple(dest.shape)}")
            with torch.no_grad():
                dest.copy_(t)
            todo.discard(name)
        if todo:
            raise WorkbenchError(f"{label}: the checkpoint lacks {sorted(todo)[0]} "
                                 f"({len(todo)} tensors missing); copy the whole checkpoint")

    def _place(self, name: str) -> Tensor | None:
        if name in GLOBAL:
            return getattr(self, GLOBAL[name])  # type: ignore[no-any-return]
        if name == "lm_head.weight":
            return self.lm_head
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[0] == "h" and parts[1].isdigit() and parts[2] in PER_LAYER:
            layer = int(parts[1])
            if layer < self.config.n_layer:
                return getattr(self, PER_LAYER[parts[2]])[layer]  # type: ignore[no-any-return]
        return None

    @torch.no_grad()
    def fold(self) -> None:
        """Fold ln_1/ln_2 into the reading weights, value biases into the output bias, and
        centre the writing weights, in place (float64 arithmetic, one layer at a time)."""
        assert not self.folded
        d = self.config.n_embd
        for i in range(self.config.n_layer):
            g, b = self.ln_1_w[i].double(), self.ln_1_b[i].double()
            w, bias = self.c_attn_w[i].double(), self.c_attn_b[i].double()
            bias = bias + b @ w
            w = g[:, None] * w
            b_v = bias[2 * d:].clone()
            bias[2 * d:] = 0.0
            self.c_attn_w[i].copy_(w)
            self.c_attn_b[i].copy_(bias)
            wo, bo = self.attn_proj_w[i].double(), self.attn_proj_b[i].double()
            bo = bo + b_v @ wo  # softmax rows sum to 1: each head's b_V reaches the output
            self.attn_proj_w[i].copy_(wo - wo.mean(-1, keepdim=True))
            self.attn_proj_b[i].copy_(bo - bo.mean())
            g, b = self.ln_2_w[i].double(), self.ln_2_b[i].double()
            w, bias = self.c_fc_w[i].double(), self.c_fc_b[i].double()
            self.c_fc_b[i].copy_(bias + b @ w)
            self.c_fc_w[i].copy_(g[:, None] * w)
            wo, bo = self.mlp_proj_w[i].double(), self.mlp_proj_b[i].double()
            self.mlp_proj_w[i].copy_(wo - wo.mean(-1, keepdim=True))
            self.mlp_proj_b[i].copy_(bo - bo.mean())
        for t in (self.ln_1_w, self.ln_2_w):
            t.fill_(1.0)
        for t in (self.ln_1_b, self.ln_2_b):
            t.zero_()
        self.wpe.sub_(self.wpe.double().mean(-1, keepdim=True).to(self.wpe.dtype))
        self.folded = True

    @property
    def unembedding(self) -> Tensor:
        """(d_vocab, d_model): the rows the final residual is multiplied with."""
        return self.wte if self.lm_head is None else self.lm_head

    @torch.no_grad()
    def unembed_bias(self, chunk: int = 8192) -> Tensor:
        """(d_vocab,): ln_f's bias through the unembedding, centred over the vocabulary, in
        float32 (float64 for a float64 model); row chunks, no wide copy of the matrix."""
        u = self.unembedding
        out = torch.cat([u[i: i + chunk].double() @ self.ln_f_b.double()
                         for i in range(0, u.shape[0], chunk)])
        wide = torch.float64 if u.dtype == torch.float64 else torch.float32
        return (out - out.mean()).to(wide)

    def hf_model(self) -> Any:
        """A `GPT2LMHeadModel` (eager attention, eval mode, no grad) whose parameters are views
        of these buffers."""
        from transformers import GPT2LMHeadModel

        config = self.config
        config._attn_implementation = "eager"
        with torch.device("meta"):
            model = GPT2LMHeadModel(config)

        def param(t: Tensor) -> nn.Parameter:
            return nn.Parameter(t, requires_grad=False)

        tr = model.transformer
        tr.wte.weight = param(self.wte)
        tr.wpe.weight = param(self.wpe)
        tr.ln_f.weight, tr.ln_f.bias = param(self.ln_f_w), param(self.ln_f_b)
        model.lm_head.weight = tr.wte.weight if self.lm_head is None else param(self.lm_head)
        for i, block in enumerate(tr.h):
            block.ln_1.weight, block.ln_1.bias = param(self.ln_1_w[i]), param(self.ln_1_b[i])
            block.ln_2.weight, block.ln_2.bias = param(self.ln_2_w[i]), param(self.ln_2_b[i])
            block.attn.c_attn.weight = param(self.c_attn_w[i])
            block.attn.c_attn.bias = param(self.c_attn_b[i])
            block.attn.c_proj.weight = param(self.attn_proj_w[i])
            block.attn.c_proj.bias = param(self.attn_proj_b[i])
            block.mlp.c_fc.weight = param(self.c_fc_w[i])
            block.mlp.c_fc.bias = param(self.c_fc_b[i])
            block.mlp.c_proj.weight = param(self.mlp_proj_w[i])
            block.mlp.c_proj.bias = param(self.mlp_proj_b[i])
        left = [n for n, p in model.named_parameters() if p.is_meta]
        left += [n for n, b in model.named_buffers() if b.is_meta]
        if left:
            raise WorkbenchError(f"this GPT-2 variant has weights the loader does not know "
                                 f"({left[0]}); it is not supported yet")
        return model.eval()
