"""Metrics on answer positions: logit difference, probability, accuracy, KL, performance %.

All metrics take *answer logits* `(batch, n_answer, vocab)`: the logits at `enc.answer_pos`
(teacher forcing over the answer units), so a 3-digit addition answer is scored digit by digit.
`answer_logits` gathers them from full logits; the ablation engine unembeds only those
positions. Each metric has a per-prompt form (for the prompt browser and gradients) and a mean.

Answers of different token lengths: every metric averages over the slots `enc.mask` marks
real (a prompt's answer may be one token, another's three).

`prob_diff` (Hanna et al.'s greater-than metric): at the first answer slot, the summed
probability of the accepted one-token answers minus that of the rejected ones (years: p(YY > XX)
minus p(YY <= XX)); for a prompt without accepted and rejected one-token sets, p(answer) minus
p(contrast) averaged over the real slots where they differ.

Performance % is DESIGN.md's: `100 * (M - M_empty) / (M_full - M_empty)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.tasks.encode import EncodedPrompts

MetricName = Literal["logit_diff", "prob", "accuracy", "kl", "prob_diff"]
METRICS: tuple[MetricName, ...] = ("logit_diff", "prob", "accuracy", "kl", "prob_diff")


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


def metric_per_prompt(name: MetricName, al: Tensor, enc: EncodedPrompts,
                      reference: Tensor | None = None) -> Tensor:
    """(batch,) values of a named metric on answer logits. Higher is better but for `kl`."""
    if name == "logit_diff":
        return logit_diff_per_prompt(al, enc)
    if name == "prob":
        return prob_per_prompt(al, enc)
    if name == "accuracy":
        return correct_per_prompt(al, enc).float()
    if name == "kl":
        if reference is None:
            raise WorkbenchError("metric kl needs the full model's logits as reference")
        return kl_per_prompt(al, reference, enc)
    if name == "prob_diff":
        return prob_diff_per_prompt(al, enc)
    raise WorkbenchError(f"unknown metric {name!r}: choose one of {', '.join(METRICS)}")


def metric(name: MetricName, al: Tensor, enc: EncodedPrompts,
           reference: Tensor | None = None) -> float:
    return float(metric_per_prompt(name, al, enc, reference).mean())


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
