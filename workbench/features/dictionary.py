"""A sparse dictionary: an SAE on one site or a transcoder that replaces one MLP.

Where it sits: `workbench.features` trains, saves and loads these; the replacement model and
`feature_attr` read them. A dictionary reads `d_in`-vectors at its input site and writes
`d_out`-vectors at its output site:

    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc      (d_sae,)
    f   = sparsify(pre)        relu | jumprelu (pre * [pre > threshold]) | topk (k largest, relu)
    out = f @ W_dec + b_dec

Activation spaces (the engine runs the folded model of compatibility mode, `weights.py`):
- `attn_out` L: what layer L's heads write, b_O included (`blocks.L.hook_attn_out`);
- `mlp_out` L: what MLP L writes, b_out included (`blocks.L.hook_mlp_out`);
- `resid_pre` L: the residual before layer L (`blocks.L.hook_resid_pre`);
- `mlp` L (transcoder): input = ln2's output with the affine part folded into W_in, i.e.
  `blocks.L.ln2.hook_normalized` of a processed HookedTransformer (centred, unit RMS); output
  = `mlp_out` L.
Compatibility mode also centres the writing weights, so every written vector (attn_out,
mlp_out, the residual) has mean 0 over d_model. Files trained on a processed model
(TransformerLens's default `from_pretrained`) mean the same here; files trained on an
unprocessed model see uncentred vectors -- their decoders are centred on load (exact for what
they write), their encoders see centred inputs (the loader records `centred_on_load`).

Invariant: `f == pre * active(f)` for every sparsity (the active set is where f != 0), so with
the active set frozen a dictionary is linear in its input -- what attribution relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.errors import WorkbenchError

SiteName = Literal["attn_out", "mlp_out", "resid_pre", "mlp"]
SITES: tuple[SiteName, ...] = ("attn_out", "mlp_out", "resid_pre", "mlp")
Sparsity = Literal["relu", "jumprelu", "topk"]
SPARSITIES: tuple[Sparsity, ...] = ("relu", "jumprelu", "topk")
NODE_SITE = {"attn_out": "a", "mlp": "m", "mlp_out": "m"}  # feature names a9.f1 / m9.f1


@dataclass(frozen=True, eq=False)
class Dictionary:
    """Weights and identity of one dictionary (`site` `mlp` = a transcoder)."""

    site: SiteName
    layer: int
    W_enc: Tensor  # (d_in, d_sae)
    b_enc: Tensor  # (d_sae,)
    W_dec: Tensor  # (d_sae, d_out)
    b_dec: Tensor  # (d_out,)
    sparsity: Sparsity = "relu"
    k: int | None = None  # topk
    threshold: Tensor | None = None  # jumprelu (d_sae,)
    apply_b_dec_to_input: bool = False  # SAE only: subtract b_dec before encoding
    pre_ln: bool = False  # transcoder reads resid_mid (hook_mlp_in) instead of ln2's output
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        d_in, d_sae = self.W_enc.shape
        problems = []
        if self.site not in SITES:
            problems.append(f"site {self.site!r} is not one of {', '.join(SITES)}")
        if self.sparsity not in SPARSITIES:
            problems.append(f"sparsity {self.sparsity!r} is not one of {', '.join(SPARSITIES)}")
        if self.b_enc.shape != (d_sae,) or self.W_dec.shape[0] != d_sae:
            problems.append(f"b_enc {tuple(self.b_enc.shape)} / W_dec "
                            f"{tuple(self.W_dec.shape)} do not match W_enc {(d_in, d_sae)}")
        if self.b_dec.shape != (self.W_dec.shape[1],):
            problems.append(f"b_dec {tuple(self.b_dec.shape)} does not match W_dec")
        if self.sparsity == "topk" and not (self.k and 0 < self.k <= d_sae):
            problems.append(f"topk needs 0 < k <= d_sae, got k={self.k}")
        if self.sparsity == "jumprelu" and (self.threshold is None
                                            or self.threshold.shape != (d_sae,)):
            problems.append("jumprelu needs a threshold per feature")
        if self.apply_b_dec_to_input and d_in != self.d_out:
            problems.append("apply_b_dec_to_input needs d_in == d_out")
        if self.layer < 0:
            problems.append(f"layer {self.layer} is negative")
        if problems:
            raise WorkbenchError(f"bad dictionary for {self.site} {self.layer}: {problems[0]}")

    def same_as(self, other: Dictionary) -> bool:
        """Equal site, settings and tensors (bit for bit); `meta` is not compared."""
        for name in self.__dataclass_fields__:
            a, b = getattr(self, name), getattr(other, name)
            if name == "meta":
                continue
            if isinstance(a, Tensor) or isinstance(b, Tensor):
                if not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype
                        and a.shape == b.shape and bool(torch.equal(a, b))):
                    return False
            elif a != b:
                return False
        return True

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def d_out(self) -> int:
        return self.W_dec.shape[1]

    @property
    def transcoder(self) -> bool:
        return self.site == "mlp"

    @property
    def key(self) -> str:
        """`a1` for the SAE on layer 1's attention output, `m0` for MLP 0's transcoder (or
        mlp_out SAE), `r2` for a resid_pre SAE: the prefix of its feature names."""
        return f"{NODE_SITE.get(self.site, 'r')}{self.layer}"

    def describe(self) -> str:
        kind = "transcoder" if self.transcoder else f"SAE on {self.site}"
        sparse = f"top{self.k}" if self.sparsity == "topk" else self.sparsity
        return f"{self.key}: {kind} {self.layer}, {self.d_sae} features ({sparse})"

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> Dictionary:
        def cast(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype=dtype, device=device)

        return replace(self, W_enc=cast(self.W_enc), b_enc=cast(self.b_enc),  # type: ignore[arg-type]
                       W_dec=cast(self.W_dec), b_dec=cast(self.b_dec),  # type: ignore[arg-type]
                       threshold=cast(self.threshold))

    # -- the computation --------------------------------------------------------------------

    def pre(self, x: Tensor) -> Tensor:
        """(..., d_in) -> (..., d_sae) pre-activations."""
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def sparsify(self, pre: Tensor) -> Tensor:
        if self.sparsity == "relu":
            return torch.relu(pre)
        if self.sparsity == "jumprelu":
            assert self.threshold is not None
            return pre * (pre > self.threshold).to(pre.dtype) * (pre > 0).to(pre.dtype)
        assert self.k is not None
        top = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def encode(self, x: Tensor) -> Tensor:
        return self.sparsify(self.pre(x))

    def decode(self, f: Tensor) -> Tensor:
        return f @ self.W_dec + self.b_dec

    def __call__(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))
