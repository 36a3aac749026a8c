"""Metrics on answer positions: logit difference, probability, accuracy, KL, performance %.

All metrics take *answer logits* `(batch, n_answer, vocab)`: the logits at `enc.answer_pos`
(teacher forcing over the answer units), so a 3-digit addition answer is scored digit by digit.
`answer_logits` gathers them from full logits; the ablation engine unembeds only those
positions. Each metric has a per-prompt form (for the prompt browser and gradients) and a mean.

Performance % is DESIGN.md's: `100 * (M - M_empty) / (M_full - M_empty)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.tasks.encode import EncodedPrompts

MetricName = Literal["logit_diff", "prob", "accuracy", "kl"]
METRICS: tuple[MetricName, ...] = ("logit_diff", "prob", "accuracy", "kl")


def answer_logits(logits: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch, pos, vocab) -> (batch, n_answer, vocab) at the answer positions."""
    index = enc.answer_pos.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


def logit_diff_per_prompt(al: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch,) mean over answer positions where answer != contrast of logit(ans) - logit(con).

    Positions where the contrast equals the answer carry no signal and are left out; a prompt
    with no such position scores 0.
    """
    ans = al.gather(-1, enc.answer.unsqueeze(-1)).squeeze(-1)
    con = al.gather(-1, enc.contrast.unsqueeze(-1)).squeeze(-1)
    mask = (enc.answer != enc.contrast).to(al.dtype)
    return ((ans - con) * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def prob_per_prompt(al: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch,) mean probability of the answer unit over answer positions."""
    probs = al.float().softmax(-1)
    return probs.gather(-1, enc.answer.unsqueeze(-1)).squeeze(-1).mean(-1)


def kl_per_prompt(al: Tensor, reference: Tensor) -> Tensor:
    """(batch,) KL(reference || al) averaged over answer positions (both answer logits)."""
    log_p = reference.float().log_softmax(-1)
    log_q = al.float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


def correct_per_prompt(al: Tensor, enc: EncodedPrompts) -> Tensor:
    """(batch,) bool: exact match, or the prediction is among the pair's accepted answers."""
    pred = al.argmax(-1)
    exact = (pred == enc.answer).all(-1)
    if all(a is None for a in enc.accepted):
        return exact
    rows = pred.tolist()
    return torch.tensor(
        [bool(e) if acc is None else tuple(r) in acc
         for e, r, acc in zip(exact.tolist(), rows, enc.accepted, strict=True)],
        device=pred.device,
    )


def per_digit_accuracy(al: Tensor, enc: EncodedPrompts) -> list[float]:
    """Fraction correct at each answer position (teacher forced)."""
    return (al.argmax(-1) == enc.answer).float().mean(0).tolist()


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
        return kl_per_prompt(al, reference)
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

    @classmethod
    def of(cls, al: Tensor, enc: EncodedPrompts) -> Report:
        """From answer logits (batch, n_answer, vocab)."""
        return cls(
            n=enc.n,
            logit_diff=metric("logit_diff", al, enc),
            prob=metric("prob", al, enc),
            accuracy=metric("accuracy", al, enc),
            per_digit_accuracy=per_digit_accuracy(al, enc),
        )
