"""Addition and multiplication of fixed-width numbers: `123+456=` -> `0579`.

Operands and answers are zero-padded to a fixed width so every prompt of a set has the same
length and each position has one role (operand-1 digit k, answer digit k). The answer has
`digits + 1` digits for addition and `2 * digits` for multiplication, most significant first.

Corruptions (the corrupted prompt keeps the clean prompt's length):
- `random_operands`: both operands drawn afresh (a resample baseline);
- `random_digit`: one operand digit replaced by a different digit;
- `repeated_digits`: each operand becomes its first digit repeated (`111+444=`);
- `shuffled_operands`: the operand digits shuffled across both operands.
The contrast at each answer position is the corrupted problem's answer digit there.

`style=text` renders a problem as GPT-2 reads it: "12*34=" -> "408", no zero padding, operands
of exactly `digits` digits, the answer free text (BPE may make it several tokens, scored token
by token under teacher forcing). Its corrupted prompt is redrawn until it has the clean prompt's
GPT-2 token length, so patching lines up position by position.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from workbench.errors import WorkbenchError
from workbench.tasks.base import PromptPair, Task

CORRUPTIONS = ("random_operands", "random_digit", "repeated_digits", "shuffled_operands")


@dataclass(frozen=True)
class _Binary(Task):
    digits: int = 3
    symbol: ClassVar[str] = "+"
    symbols: ClassVar[str | None] = "+="
    op: ClassVar[Callable[[int, int], int]] = operator.add
    corruptions: ClassVar[tuple[str, ...]] = CORRUPTIONS

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 9:
            raise WorkbenchError(f"digits={self.digits} is out of range: use 1 to 9")

    @property
    def answer_width(self) -> int:
        raise NotImplementedError

    def text(self, a: int, b: int) -> str:
        if self.style == "text":
            return f"{a}{self.symbol}{b}="
        w = self.digits
        return f"{a:0{w}d}{self.symbol}{b:0{w}d}="

    def answer(self, a: int, b: int) -> str:
        if self.style == "text":
            return str(self.op(a, b))
        return f"{self.op(a, b):0{self.answer_width}d}"

    def _pair(self, rng: random.Random, corrupt: str) -> tuple[PromptPair, tuple[int, ...]]:
        low, top = (10 ** (self.digits - 1) if self.style == "text" and self.digits > 1 else 0,
                    10**self.digits)
        a, b = rng.randrange(low, top), rng.randrange(low, top)
        ca, cb = self._corrupt(rng, a, b, corrupt)
        if self.style == "text":
            from workbench.bpe import gpt2_encoding

            n_tokens = len(gpt2_encoding().encode_ordinary(self.text(a, b)))
            for _ in range(100):
                if len(gpt2_encoding().encode_ordinary(self.text(ca, cb))) == n_tokens:
                    break
                ca, cb = self._corrupt(rng, a, b, corrupt)
            else:
                ca, cb = a, b  # no same-length corruption exists: the pair carries no signal
        pair = PromptPair(
            clean=self.render(self.text(a, b)),
            corrupted=self.render(self.text(ca, cb)),
            answer=self.units(self.answer(a, b)),
            contrast=self.units(self.answer(ca, cb)),
            multi_token=self.style == "text",
        )
        return pair, (a, b)

    def _corrupt(self, rng: random.Random, a: int, b: int, corrupt: str) -> tuple[int, int]:
        w, top = self.digits, 10**self.digits
        if corrupt == "random_operands":
            low = 10 ** (w - 1) if self.style == "text" and w > 1 else 0
            return rng.randrange(low, top), rng.randrange(low, top)
        chars = list(f"{a:0{w}d}{b:0{w}d}")
        if corrupt == "random_digit":
            i = rng.randrange(len(chars))
            chars[i] = rng.choice([d for d in "0123456789" if d != chars[i]])
        elif corrupt == "repeated_digits":
            chars = [chars[0]] * w + [chars[w]] * w
        elif corrupt == "shuffled_operands":
            rng.shuffle(chars)
        text = "".join(chars)
        return int(text[:w]), int(text[w:])


@dataclass(frozen=True)
class Addition(_Binary):
    """n-digit addition; answer has n + 1 digits (the leading one is the final carry)."""

    name: ClassVar[str] = "addition"

    @property
    def answer_width(self) -> int:
        return self.digits + 1


@dataclass(frozen=True)
class Multiplication(_Binary):
    """n-digit x n-digit multiplication; answer has 2n digits."""

    name: ClassVar[str] = "multiplication"
    symbol: ClassVar[str] = "*"
    symbols: ClassVar[str | None] = "*="
    op: ClassVar[Callable[[int, int], int]] = operator.mul
    digits: int = 2

    @property
    def answer_width(self) -> int:
        return 2 * self.digits
