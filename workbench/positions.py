"""Positions of an encoded prompt set: display labels and the roles of arithmetic prompts.

Results laid out by token position (logit lens, attention patterns, per-position ablation) label
their columns here, from the tokens themselves: `3:'+'` where every prompt has the same token at
position 3, `1:*` where the prompts differ there; a position whose logits predict answer unit i
in every prompt also gets ` >a{i}` (`8:'=' >a0`).

Arithmetic roles are read from the prompt text, prompt by prompt: the digit tokens right before
the first operator (`+ - * x /`) are operand 1, those between the operator and `=` operand 2;
answer unit i of an n-unit answer has place value n - 1 - i (units = 0).

Invariant: labels and roles are computed from `EncodedPrompts` (BOS included), so position p
here is position p in every activation tensor of the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from workbench.tasks.encode import EncodedPrompts

OPERATORS = ("+", "-", "*", "x", "/")


def token_texts(tokenizer: Any, tokens: Tensor) -> list[list[str]]:
    """(batch, pos) ids -> the decoded text of each token."""
    vocab = {i: tokenizer.decode([i]) for i in set(tokens.flatten().tolist())}
    return [[vocab[t] for t in row] for row in tokens.tolist()]


def position_labels(tokenizer: Any, enc: EncodedPrompts) -> tuple[str, ...]:
    """One label per position of the padded prompt width (see the module docstring)."""
    texts = token_texts(tokenizer, enc.clean)
    lengths = enc.lengths.tolist()
    labels = []
    for p in range(enc.clean.shape[1]):
        seen = {row[p] for row, n in zip(texts, lengths, strict=True) if p < n}
        label = f"{p}:{next(iter(seen))!r}" if len(seen) == 1 else f"{p}:*"
        hits = (enc.answer_pos == p)  # (batch, n_answer)
        if bool(hits.any(-1).all()):
            unit = hits.float().argmax(-1)
            if bool((unit == unit[0]).all()):
                label += f" >a{int(unit[0])}"
        labels.append(label)
    return tuple(labels)


@dataclass(frozen=True)
class Roles:
    """Boolean position masks of arithmetic prompts (batch rows as in `EncodedPrompts`)."""

    operand1: Tensor  # (batch, pos) digit tokens of the first operand
    operand2: Tensor  # (batch, pos) digit tokens of the second operand
    place: Tensor  # (batch, n_answer, pos): operand digits of answer unit i's place value

    @property
    def found(self) -> Tensor:
        """(batch,) rows where both operands were found."""
        return self.operand1.any(-1) & self.operand2.any(-1)


def arithmetic_roles(tokenizer: Any, enc: EncodedPrompts) -> Roles:
    """Operand and place-value positions of each prompt; rows without `a OP b =` get no roles."""
    batch, n_pos = enc.clean.shape
    n_ans = enc.n_answer
    op1 = torch.zeros(batch, n_pos, dtype=torch.bool)
    op2 = torch.zeros_like(op1)
    place = torch.zeros(batch, n_ans, n_pos, dtype=torch.bool)
    texts = token_texts(tokenizer, enc.clean)
    for b, (row, first_answer) in enumerate(zip(texts, enc.answer_pos[:, 0].tolist(),
                                                strict=True)):
        words = [t.strip() for t in row[1: first_answer + 1]]  # skip BOS; prompt tokens only
        found = _operands(words)
        if found is None:
            continue
        a, c = found  # index lists into `words`; position = index + 1
        op1[b, [i + 1 for i in a]] = True
        op2[b, [i + 1 for i in c]] = True
        for operand in (a, c):
            if not all(len(words[i]) == 1 for i in operand):
                continue  # multi-digit tokens have no single place value
            for i in range(n_ans):
                value = n_ans - 1 - i  # place value of answer unit i
                if value < len(operand):
                    place[b, i, operand[len(operand) - 1 - value] + 1] = True
    return Roles(op1.to(enc.clean.device), op2.to(enc.clean.device),
                 place.to(enc.clean.device))


def _operands(words: list[str]) -> tuple[list[int], list[int]] | None:
    """Indices of operand-1 and operand-2 digit tokens in `words`, or None."""
    op = next((i for i, w in enumerate(words) if w in OPERATORS), None)
    if op is None:
        return None
    eq = next((i for i in range(op + 1, len(words)) if words[i] == "="), None)
    if eq is None:
        return None
    first = []
    i = op - 1
    while i >= 0 and words[i].isdigit():
        first.insert(0, i)
        i -= 1
    second = [i for i in range(op + 1, eq) if words[i].isdigit()]
    return (first, second) if first and second else None
