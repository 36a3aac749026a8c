"""The replacement model: the folded forward with attached dictionaries in place of the
components they replace, feature ablations, and a record of everything attribution needs.

Where it sits: `sae load` attaches a `DictionarySet`; `check` on a feature circuit,
`train-sae`'s replacement performance, `feature_info` and `feature_attr` run through here.

1. Layer L's attention output is replaced by its SAE's reconstruction (key `aL`), MLP L by its
   transcoder (`mL`, reading ln2's output) or its output by an `mlp_out` SAE (also `mL`).
2. Each replaced site adds an error term: `keep` adds the clean run's error (so with no
   ablations the run reproduces the clean model exactly), `drop` adds nothing.
3. A feature ablation replaces feature activations (and error terms: column `d_sae` of a
   site's keep mask is its error node) by zero or by their mean over the prompt set at each
   position, where `keep` is 0.

Invariant: `run(error="keep")` with no ablations equals the engine's clean logits (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.features.dictionary import Dictionary
from workbench.weights import Weights, ln

ErrorMode = Literal["keep", "drop"]


@dataclass(frozen=True)
class DictionarySet:
    """The dictionaries attached to one model, keyed `a1`, `m0` (one per site at most)."""

    dictionaries: tuple[Dictionary, ...] = ()

    def __post_init__(self) -> None:
        keys = [d.key for d in self.dictionaries]
        dup = next((k for k in keys if keys.count(k) > 1), None)
        if dup is not None:
            raise WorkbenchError(f"two dictionaries for {dup}: load one per site (a transcoder "
                                 "and an mlp_out SAE on one MLP are the same site)")

    def __bool__(self) -> bool:
        return bool(self.dictionaries)

    def get(self, key: str) -> Dictionary | None:
        return next((d for d in self.dictionaries if d.key == key), None)

    def keys(self) -> list[str]:
        return [d.key for d in self.ordered()]

    def ordered(self) -> list[Dictionary]:
        """In the order the forward meets them: a0, m0, a1, m1, ..."""
        return sorted(self.dictionaries, key=lambda d: (d.layer, d.key[0] != "a"))

    def with_(self, new: Iterable[Dictionary]) -> DictionarySet:
        """This set with `new` added; a new dictionary replaces the one on its site."""
        new = list(new)
        keys = {d.key for d in new}
        return DictionarySet(tuple(d for d in self.dictionaries if d.key not in keys)
                             + tuple(new))

    def check(self, w: Weights) -> None:
        """Refuse dictionaries that do not fit this model."""
        d_model = w.W_E.shape[1]
        for d in self.dictionaries:
            if d.layer >= w.n_layers:
                raise WorkbenchError(f"{d.key}: the model has layers 0..{w.n_layers - 1}")
            if d.d_in != d_model or d.d_out != d_model:
                raise WorkbenchError(f"{d.key}: dictionary reads {d.d_in} and writes {d.d_out} "
                                     f"dimensions, the model's d_model is {d_model}")
            if d.site == "resid_pre":
                raise WorkbenchError(f"r{d.layer}: resid_pre SAEs train and load, but the "
                                     "replacement model takes attn_out SAEs and transcoders")


@dataclass
class Trace:
    """What one replacement run saw, per layer (batch, pos, ...); lists are indexed by layer.
    Entries for a site without a dictionary are None."""

    embed: Tensor
    resid_pre: list[Tensor] = field(default_factory=list)
    pattern: list[Tensor] = field(default_factory=list)  # (batch, head, q, k)
    attn_true: list[Tensor] = field(default_factory=list)  # the heads' output, b_O included
    resid_mid: list[Tensor] = field(default_factory=list)
    mlp_in: list[Tensor] = field(default_factory=list)  # ln2's output
    mlp_out: list[Tensor] = field(default_factory=list)  # what the MLP (or replacement) wrote
    feats: dict[str, Tensor] = field(default_factory=dict)  # key -> (batch, pos, d_sae)
    errors: dict[str, Tensor] = field(default_factory=dict)  # key -> (batch, pos, d)
    final: Tensor | None = None  # (batch, pos, d) final residual


def attention(w: Weights, layer: int, resid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(pattern (b, head, q, k), v (b, pos, head, e), output (b, pos, d) with b_O)."""
    h = ln(resid, w.eps)
    q = torch.einsum("bpd,hde->bphe", h, w.W_Q[layer]) + w.b_Q[layer]
    k = torch.einsum("bpd,hde->bphe", h, w.W_K[layer]) + w.b_K[layer]
    v = torch.einsum("bpd,hde->bphe", h, w.W_V[layer]) + w.b_V[layer]
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / w.d_head**0.5
    n = q.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=resid.device).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
    out = torch.einsum("bqhe,hed->bqd", z, w.W_O[layer]) + w.b_O[layer]
    return pattern, v, out


def mlp(w: Weights, layer: int, h: Tensor) -> Tensor:
    return w.act(h @ w.W_in[layer] + w.b_in[layer]) @ w.W_out[layer] + w.b_out[layer]


@dataclass(frozen=True)
class FeatureAblation:
    """Per site key: `keep` (pos, d_sae + 1) in [0, 1] (the last column is the error node);
    where it is 0 a feature takes `feats[key]` (pos, d_sae) and the error `errors[key]`
    (pos, d)."""

    keep: Mapping[str, Tensor]
    feats: Mapping[str, Tensor]
    errors: Mapping[str, Tensor]


def run(w: Weights, tokens: Tensor, dicts: DictionarySet, error: ErrorMode = "keep",
        clean_errors: Mapping[str, Tensor] | None = None,
        ablation: FeatureAblation | None = None) -> Trace:
    """The replacement model's forward. With `error="keep"` the error terms are
    `clean_errors` (a clean trace's `errors`) or, when not given, computed in this run (then
    the run reproduces the original model exactly); `drop` leaves them out."""
    resid = w.W_E[tokens] + w.W_pos[: tokens.shape[1]]
    tr = Trace(embed=resid)

    def replace(key: str, d: Dictionary, x: Tensor, target: Callable[[], Tensor]) -> Tensor:
        f = d.encode(x)
        if error == "drop":
            err = torch.zeros_like(x[..., : d.d_out]) if d.d_out == x.shape[-1] else \
                x.new_zeros((*x.shape[:-1], d.d_out))
        elif clean_errors is not None:
            err = clean_errors[key]
        else:
            err = target() - d.decode(f)
        if ablation is not None and key in ablation.keep:
            keep = ablation.keep[key].to(f.dtype)
            f = f * keep[:, :-1] + (1 - keep[:, :-1]) * ablation.feats[key]
            err = err * keep[:, -1:] + (1 - keep[:, -1:]) * ablation.errors[key]
        tr.feats[key], tr.errors[key] = f, err
        return d.decode(f) + err

    for layer in range(w.n_layers):
        tr.resid_pre.append(resid)
        pattern, _, attn = attention(w, layer, resid)
        tr.pattern.append(pattern)
        tr.attn_true.append(attn)
        d = dicts.get(f"a{layer}")
        if d is not None:
            attn = replace(f"a{layer}", d, attn, lambda a=attn: a)
        mid = resid + attn
        tr.resid_mid.append(mid)
        h = ln(mid, w.eps)
        tr.mlp_in.append(h)
        d = dicts.get(f"m{layer}")
        if d is None:
            out = mlp(w, layer, h)
        elif d.transcoder:
            out = replace(f"m{layer}", d, mid if d.pre_ln else h,
                          lambda L=layer, x=h: mlp(w, L, x))
        else:
            true = mlp(w, layer, h)
            out = replace(f"m{layer}", d, true, lambda t=true: t)
        tr.mlp_out.append(out)
        resid = mid + out
    tr.final = resid
    return tr


def logits(w: Weights, tr: Trace, answer_pos: Tensor) -> Tensor:
    """Answer logits (batch, n_answer, vocab) of a trace."""
    assert tr.final is not None
    x = tr.final.gather(1, answer_pos.unsqueeze(-1).expand(-1, -1, tr.final.shape[-1]))
    return ln(x, w.eps) @ w.W_U + w.b_U


def position_means(x: Tensor, lengths: Tensor) -> Tensor:
    """(batch, pos, ...) -> (pos, ...): the mean over the rows long enough to have each
    position (the engine's mean-ablation convention)."""
    n_pos = x.shape[1]
    valid = (torch.arange(n_pos, device=lengths.device)[None, :] < lengths[:, None])
    weight = valid.to(x.dtype) / valid.sum(0).clamp(min=1).to(x.dtype)
    return torch.einsum("bp,bp...->p...", weight, x)


def ablation_values(tr: Trace, lengths: Tensor, mode: str) -> tuple[dict[str, Tensor],
                                                                     dict[str, Tensor]]:
    """(feature values, error values) per site for `mode` zero or mean (of the clean trace)."""
    if mode not in ("zero", "mean"):
        raise WorkbenchError(f"feature circuits ablate with mode=zero or mode=mean, not {mode}")
    feats, errors = {}, {}
    for key, f in tr.feats.items():
        if mode == "zero":
            feats[key] = torch.zeros_like(f[0])
            errors[key] = torch.zeros_like(tr.errors[key][0])
        else:
            feats[key] = position_means(f, lengths)
            errors[key] = position_means(tr.errors[key], lengths)
    return feats, errors
