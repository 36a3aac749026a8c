"""Sequence continuation and greater-than: the numeric tasks of GPT-2 circuit studies.

Sequence continuation: `12,13,14,15,` -> `16` (increasing numbers of fixed width, step 1).
The contrast is the last term repeated (copying instead of incrementing).
Corruptions: `repeated_digits` (every term is the first term: `12,12,12,12,`), `random_digit`
(one digit of one term changed), `shuffled_operands` (the terms in random order).

Greater-than (Hanna et al. 2023, with digits): `1732>17` reads "from 1732 to 17__"; the answer
is a year YY greater than 32. Any YY > XX counts as correct (`accepted`); the teacher-forced
answer is one such YY drawn at random and the contrast one YY <= XX. Corruption `zero_start`
(the standard "01" baseline) or `random_digit`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from workbench.errors import WorkbenchError
from workbench.tasks.base import PromptPair, Task


@dataclass(frozen=True)
class SequenceContinuation(Task):
    name: ClassVar[str] = "sequence"
    symbols: ClassVar[str | None] = ","
    corruptions: ClassVar[tuple[str, ...]] = ("repeated_digits", "random_digit",
                                              "shuffled_operands")
    width: int = 1
    length: int = 4

    def __post_init__(self) -> None:
        if not 1 <= self.width <= 4 or not 2 <= self.length <= 12:
            raise WorkbenchError("sequence needs width 1..4 and length 2..12")

    def _text(self, terms: list[int]) -> str:
        return "".join(f"{t:0{self.width}d}," for t in terms)

    def _pair(self, rng: random.Random, corrupt: str) -> tuple[PromptPair, tuple[int, ...]]:
        top = 10**self.width
        start = rng.randrange(top - self.length)
        terms = list(range(start, start + self.length))
        if corrupt == "repeated_digits":
            bad = [start] * self.length
        elif corrupt == "shuffled_operands":
            bad = terms[:]
            while bad == terms:
                rng.shuffle(bad)
        else:
            text = list(self._text(terms))
            digit_slots = [i for i, ch in enumerate(text) if ch.isdigit()]
            i = rng.choice(digit_slots)
            text[i] = rng.choice([d for d in "0123456789" if d != text[i]])
            bad = [int(t) for t in "".join(text).rstrip(",").split(",")]
        nxt = start + self.length
        pair = PromptPair(
            clean=self.render(self._text(terms)),
            corrupted=self.render(self._text(bad)),
            answer=self.units(f"{nxt:0{self.width}d}"),
            contrast=self.units(f"{nxt - 1:0{self.width}d}"),
            multi_token=self.style == "text",
        )
        return pair, (start,)


@dataclass(frozen=True)
class GreaterThan(Task):
    name: ClassVar[str] = "greater_than"
    symbols: ClassVar[str | None] = ">"
    corruptions: ClassVar[tuple[str, ...]] = ("zero_start", "random_digit")
    century: int = 17

    def _pair(self, rng: random.Random, corrupt: str) -> tuple[PromptPair, tuple[int, ...]]:
        xx = rng.randrange(2, 98)
        if corrupt == "zero_start":
            bad = 1
        else:
            bad = xx
            while bad == xx or bad < 1:
                tens, ones = divmod(xx, 10)
                bad = tens * 10 + rng.randrange(10) if rng.random() < 0.5 else \
                    rng.randrange(10) * 10 + ones
        yy = rng.randrange(xx + 1, 100)
        low = rng.randrange(0, xx + 1)
        c = f"{self.century:02d}"
        pair = PromptPair(
            clean=self.render(f"{c}{xx:02d}>{c}"),
            corrupted=self.render(f"{c}{bad:02d}>{c}"),
            answer=self.units(f"{yy:02d}"),
            contrast=self.units(f"{low:02d}"),
            accepted=tuple("".join(self.units(f"{y:02d}")) for y in range(xx + 1, 100)),
            rejected=tuple("".join(self.units(f"{y:02d}")) for y in range(0, xx + 1)),
            multi_token=self.style == "text",
        )
        return pair, (xx,)  # the problem is the start year; any YY > XX answers it
