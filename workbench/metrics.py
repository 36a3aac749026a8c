"""Metrics on answer positions, the one metric contract every method uses, performance %.

A metric is a `Metric`: a name, a function `fn(logits, enc, clean_logits) -> (batch,)` giving one
value per prompt, and a declared direction (`higher` or `lower` is better). `logits` and
`clean_logits` are *answer logits* `(batch, n_answer, vocab)`: the logits at `enc.answer_pos`
(teacher forcing over the answer units, so a 3-digit answer is scored digit by digit) of the run
being scored and of the unablated model on the same prompts. `answer_logits` gathers them from
full logits; the ablation engine unembeds only those positions.

Answers of different token lengths: every metric averages over the slots `enc.mask` marks
real (a prompt's answer may be one token, another's three).

`prob_diff` (Hanna et al.'s greater-than metric): at the first answer slot, the summed
probability of the accepted one-token answers minus that of the rejected ones (years: p(YY > XX)
minus p(YY <= XX)); for a prompt without accepted and rejected one-token sets, p(answer) minus
p(contrast) averaged over the real slots where they differ.


Built in (`BUILTIN_METRICS`): `logit_diff`, `prob`, `accuracy` (not differentiable), `kl`
(KL(clean || run), lower is better) and `l2` (ACDC's metric: squared Euclidean distance of the
answer logits to the clean model's, lower is better). `l2` compares logits *centred over the
vocabulary*: the engine's logits come from weights folded as TransformerLens's compatibility
mode folds them (unembedding centred), which differ from raw Hugging Face logits by a constant
per position; centring both sides makes l2 the same for either. `kl` and `l2` are minimal at the
clean run, so their gradient vanishes there (`flat_at_clean`): gradient methods say so.
A plain two-argument function `fn(logits, enc)` (the old contract) is wrapped by `as_metric`.

Performance % is DESIGN.md's: `100 * (M - M_empty) / (M_full - M_empty)` (either direction).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.tasks.encode import EncodedPrompts

MetricName = str  # a registered metric: built in or given to the session
Direction = Literal["higher", "lower"]
MetricFn = Callable[[Tensor, EncodedPrompts, Tensor], Tensor]


def answer_logits(logits: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch, pos, vocab) -> (batch, n_answer, vocab) at the answer positions."""
    index = enc.answer_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


def logit_diff_per_prompt(al: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch,) mean over real answer slots where answer != contrast of logit(ans) - logit(con).

    Positions where the contrast equals the answer carry no signal and are left out; a prompt
    with no such position scores 0.
    """
    ans = al.gather(-1, enc.answer.unsqueeze(-1)).squeeze(-1)
    con = al.gather(-1, enc.contrast.unsqueeze(-1)).squeeze(-1)
    mask = ((enc.answer != enc.contrast) & enc.mask).to(al.dtype)
    return ((ans - con) * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def _masked_mean(values: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch, n_answer) -> (batch,) mean over the real answer slots."""
    mask = enc.mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def prob_per_prompt(al: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch,) mean probability of the answer token over real answer slots."""
    probs = al.float().softmax(-1)
    return _masked_mean(probs.gather(-1, enc.answer.unsqueeze(-1)).squeeze(-1), enc)


def kl_per_prompt(al: Tensor, reference: Tensor, enc: EncodedPrompts | None = None) -> Tensor:
    """(batch,) KL(reference || al) averaged over real answer slots (both answer logits)."""
    log_p = reference.float().log_softmax(-1)
    log_q = al.float().log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl.mean(-1) if enc is None else _masked_mean(kl, enc)


def correct_per_prompt(al: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch,) bool: exact match on the real slots, or the prediction is among the pair's
    accepted answers."""
    pred = al.argmax(-1)
    mask = enc.mask
    exact = ((pred == enc.answer) | ~mask).all(-1)
    if all(a is None for a in enc.accepted):
        return exact
    rows, widths = pred.tolist(), mask.sum(-1).tolist()
    return torch.tensor(
        [bool(e) if acc is None else tuple(r[:w]) in acc
         for e, r, w, acc in zip(exact.tolist(), rows, widths, enc.accepted, strict=True)],
        device=pred.device,
    )


def per_digit_accuracy(al: Tensor, enc: EncodedPrompts) -> list[float]:
    """Fraction correct at each answer slot (teacher forced), over the prompts that have it."""
    mask = enc.mask.float()
    hit = (al.argmax(-1) == enc.answer).float() * mask
    return (hit.sum(0) / mask.sum(0).clamp(min=1)).tolist()


def _one_token_sets(enc: EncodedPrompts) -> tuple[Tensor, Tensor, Tensor] | None:
    """(rows, token ids, signs) of every accepted (+1) and rejected (-1) one-token answer of the
    prompts that have both sets of one-token answers; None when no prompt has them."""
    if enc.rejected is None:
        return None
    rows, ids, signs = [], [], []
    for b, (acc, rej) in enumerate(zip(enc.accepted, enc.rejected, strict=True)):
        if acc is None or rej is None or any(len(t) != 1 for t in acc | rej):
            continue
        for sign, group in ((1.0, acc), (-1.0, rej)):
            for (token,) in group:
                rows.append(b)
                ids.append(token)
                signs.append(sign)
    if not rows:
        return None
    device = enc.answer.device
    return (torch.tensor(rows, device=device), torch.tensor(ids, device=device),
            torch.tensor(signs, device=device))


def prob_diff_per_prompt(al: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch,) p(accepted) - p(rejected) at the first answer slot (years: sum of p(YY > XX)
    minus sum of p(YY <= XX)); else p(answer) - p(contrast) over the real slots that differ."""
    probs = al.float().softmax(-1)
    ans = probs.gather(-1, enc.answer.unsqueeze(-1)).squeeze(-1)
    con = probs.gather(-1, enc.contrast.unsqueeze(-1)).squeeze(-1)
    mask = ((enc.answer != enc.contrast) & enc.mask).float()
    out = ((ans - con) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    sets = _one_token_sets(enc)
    if sets is not None:
        rows, ids, signs = sets
        first = probs[:, 0]
        summed = torch.zeros_like(out).index_add_(0, rows, first[rows, ids] * signs)
        has = torch.zeros_like(out, dtype=torch.bool)
        has[rows] = True
        out = torch.where(has, summed, out)
    return out


def wide(t: Tensor) -> Tensor:
    """`t` in float32 or wider (half precision accumulates in float32; float64 stays)."""
    return t if t.dtype == torch.float64 else t.float()


def l2_per_prompt(al: Tensor, reference: Tensor, enc: EncodedPrompts | None = None) -> Tensor:
    """(batch,) squared L2 distance between the vocabulary-centred answer logits and the
    reference's, summed over the vocabulary and averaged over (real) answer positions."""
    a, r = wide(al), wide(reference)
    diff = (a - a.mean(-1, keepdim=True)) - (r - r.mean(-1, keepdim=True))
    dist = diff.pow(2).sum(-1)
    return dist.mean(-1) if enc is None else _masked_mean(dist, enc)


@dataclass(frozen=True)
class Metric:
    """A named metric: `fn(logits, enc, clean_logits)` -> one value per prompt, (batch,).

    `direction` says which way is better; `flat_at_clean` that the metric is extremal at the
    clean run (its gradient there is zero: plain EAP cannot use it); `differentiable` false for
    metrics with no useful gradient (accuracy)."""

    name: str
    fn: MetricFn
    direction: Direction = "higher"
    flat_at_clean: bool = False
    differentiable: bool = True
    needs_clean: bool = True  # reads clean_logits (built-ins that do not may be given None)
    about: str = ""

    def per_prompt(self, al: Tensor, enc: EncodedPrompts, clean: Tensor | None) -> Tensor:
        """(batch,) values; a function returning another shape is a one-line error."""
        if clean is None:
            if self.needs_clean:
                raise WorkbenchError(
                    f"metric {self.name} needs the full model's logits as reference")
            clean = al  # not read
        out = self.fn(al, enc, clean)
        if not isinstance(out, Tensor) or tuple(out.shape) != (al.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise WorkbenchError(
                f"metric {self.name} returned {shape}: a metric gives one value per prompt, "
                f"a tensor of shape ({al.shape[0]},)")
        return out

    def mean(self, al: Tensor, enc: EncodedPrompts, clean: Tensor | None) -> float:
        return float(wide(self.per_prompt(al, enc, clean)).mean())

    def worse_by(self, before: float, after: float) -> float:
        """How much worse `after` is than `before` (negative: it improved)."""
        return before - after if self.direction == "higher" else after - before

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower is."""
        return 1.0 if self.direction == "higher" else -1.0


def _takes_clean(fn: Callable[..., Any]) -> bool:
    """Whether `fn` accepts a third positional argument (clean logits)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(k in positional for k in kinds) >= 3


def as_metric(name: str, fn: Metric | Callable[..., Tensor],
              direction: Direction = "higher") -> Metric:
    """A `Metric` named `name` from a Metric, a `fn(logits, enc, clean_logits)` or an old-style
    `fn(logits, enc)`; plain functions are `higher is better` unless `direction` says not."""
    if isinstance(fn, Metric):
        return fn if fn.name == name else replace(fn, name=name)
    if not callable(fn):
        raise WorkbenchError(f"metric {name!r} is a {type(fn).__name__}, not a function "
                             "fn(logits, enc[, clean_logits]) or a Metric")
    if direction not in ("higher", "lower"):
        raise WorkbenchError(f"metric {name!r}: direction must be 'higher' or 'lower'")
    if _takes_clean(fn):
        return Metric(name, fn, direction, about="custom")
    two: Callable[[Tensor, EncodedPrompts], Tensor] = fn

    def wrapped(al: Tensor, enc: EncodedPrompts, clean: Tensor) -> Tensor:
        return two(al, enc)

    return Metric(name, wrapped, direction, about="custom")


BUILTIN_METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("logit_diff", lambda al, enc, clean: logit_diff_per_prompt(al, enc),
           needs_clean=False, about="logit of the answer minus the contrast"),
    Metric("prob", lambda al, enc, clean: prob_per_prompt(al, enc), needs_clean=False,
           about="probability of the answer"),
    Metric("accuracy", lambda al, enc, clean: correct_per_prompt(al, enc).float(),
           differentiable=False, needs_clean=False,
           about="exact match (or an accepted answer)"),
    Metric("kl", lambda al, enc, clean: kl_per_prompt(al, clean, enc), direction="lower",
           flat_at_clean=True, about="KL(clean model || this run)"),
    Metric("l2", lambda al, enc, clean: l2_per_prompt(al, clean, enc), direction="lower",
           flat_at_clean=True,
           about="squared L2 distance of the centred answer logits to the clean model's"),
    Metric("prob_diff", lambda al, enc, clean: prob_diff_per_prompt(al, enc), needs_clean=False,
           about="p(accepted answers) - p(rejected) (years: p(YY > XX) - p(YY <= XX))"),
)}
METRICS: tuple[MetricName, ...] = tuple(BUILTIN_METRICS)


def get_metric(name: str | Metric, extra: Mapping[str, Metric] | None = None) -> Metric:
    """The metric called `name`: the session's own (`extra`) first, then the built-ins."""
    if isinstance(name, Metric):
        return name
    found = (extra or {}).get(name) or BUILTIN_METRICS.get(name)
    if found is None:
        known = [*BUILTIN_METRICS, *(k for k in (extra or {}) if k not in BUILTIN_METRICS)]
        raise WorkbenchError(f"unknown metric {name!r}: choose one of {', '.join(known)}")
    return found


def metric_per_prompt(name: str | Metric, al: Tensor, enc: EncodedPrompts,
                      reference: Tensor | None = None) -> Tensor:
    """(batch,) values of a metric (a built-in name or a `Metric`) on answer logits;
    `reference` is the clean model's answer logits (needed by kl, l2 and most custom metrics).
    logit_diff, prob and accuracy do not read it."""
    return get_metric(name).per_prompt(al, enc, reference)


def metric(name: str | Metric, al: Tensor, enc: EncodedPrompts,
           reference: Tensor | None = None) -> float:
    return float(wide(metric_per_prompt(name, al, enc, reference)).mean())


def performance(m: float, m_full: float, m_empty: float) -> float:
    """Performance % of DESIGN.md: 100 = the full model, 0 = everything ablated."""
    denom = m_full - m_empty
    if abs(denom) < 1e-12:
        return float("nan")
    return 100.0 * (m - m_empty) / denom


@dataclass(frozen=True)
class Report:
    """Every metric of one run, as `eval --json`, `perf` and the TUI show them."""

    n: int
    logit_diff: float
    prob: float
    accuracy: float
    per_digit_accuracy: list[float]
    prob_diff: float = float("nan")

    @classmethod
    def of(cls, al: Tensor, enc: EncodedPrompts) -> Report:
        """From answer logits (batch, n_answer, vocab)."""
        return cls(
            n=enc.n,
            logit_diff=metric("logit_diff", al, enc),
            prob=metric("prob", al, enc),
            accuracy=metric("accuracy", al, enc),
            per_digit_accuracy=per_digit_accuracy(al, enc),
            prob_diff=metric("prob_diff", al, enc),
        )
