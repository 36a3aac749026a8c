"""Tasks in natural language, as GPT-2 circuit studies write them: years, counting, ioi.

- `years` (greater-than, Hanna et al. 2023): "The {noun} lasted from the year {CC}{XX} to the
  year {CC}" -> any YY > XX. Their noun list and their filter: centuries 11..17, XX in 02..98
  such that " {CC}{XX}" is the two GPT-2 tokens [" CC", "XX"] (the first and last such year of
  each century dropped). The answer is one two-digit token; every YY > XX is accepted, every
  YY <= XX rejected (for `prob_diff`); the teacher-forced answer is one YY > XX drawn at random
  and the contrast one YY <= XX. Corruptions: `01` (XX -> 01, their baseline), `random_year`
  (another XX of the same century), `century` (same XX, another century).
- `counting` (sequence continuation, seed notes 001): `kind=numbers` "3, 4, 5, 6," -> " 7",
  `words` "three four five six" -> " seven", `months` "January, February, March," -> " April",
  `days`; `direction=down` counts backwards; months and days wrap around. The contrast is the
  last term repeated. Corruptions: `repeat_all` (every term the first), `random_term` (one term
  replaced by another of the same GPT-2 token length), `shuffled`.
- `ioi` (Wang et al. 2022): "When Mary and John went to the store, John gave a drink to" ->
  " Mary" (ABBA) or the BABA order; names that are one GPT-2 token; answer the indirect
  object, contrast the subject. Corruptions: `abc` (the second subject mention replaced by a
  third name), `names` (all names replaced by other names).

Invariant: every answer is free text (`multi_token=True`): encode may split it into several
tokens. Corruptions keep the clean prompt's GPT-2 token length (checked with the installed GPT-2
BPE), so patching lines up position by position for GPT-2 and for bpe-numbers.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import ClassVar, Literal

from workbench.errors import WorkbenchError
from workbench.tasks.base import PromptPair, Task

TextStyle = Literal["text"]  # these tasks are natural language: no digit styles

# Hanna et al. (2023)'s nouns (every " noun" is one GPT-2 token).
NOUNS = (
    "abduction", "accord", "affair", "agreement", "appraisal", "assaults", "assessment",
    "attack", "attempts", "campaign", "captivity", "case", "challenge", "chaos", "clash",
    "collaboration", "coma", "competition", "confrontation", "consequence", "conspiracy",
    "construction", "consultation", "contact", "contract", "convention", "cooperation",
    "custody", "deal", "decline", "decrease", "demonstrations", "development", "disagreement",
    "disorder", "dispute", "domination", "dynasty", "effect", "effort", "employment",
    "endeavor", "engagement", "epidemic", "evaluation", "exchange", "existence", "expansion",
    "expedition", "experiments", "fall", "fame", "flights", "friendship", "growth", "hardship",
    "hostility", "illness", "impact", "imprisonment", "improvement", "incarceration",
    "increase", "insurgency", "invasion", "investigation", "journey", "kingdom", "marriage",
    "modernization", "negotiation", "notoriety", "obstruction", "operation", "order",
    "outbreak", "outcome", "overhaul", "patrols", "pilgrimage", "plague", "plan", "practice",
    "process", "program", "progress", "project", "pursuit", "quest", "raids", "reforms",
    "reign", "relationship", "retaliation", "riot", "rise", "rivalry", "romance", "rule",
    "sanctions", "shift", "siege", "slump", "stature", "stint", "strikes", "study", "test",
    "testing", "tests", "therapy", "tour", "tradition", "treaty", "trial", "trip",
    "unemployment", "voyage", "warfare", "work",
)
CENTURIES = tuple(range(11, 18))
YEAR_TEMPLATE = "The {noun} lasted from the year {cc}{xx} to the year {cc}"


def _gpt2() -> object:
    from workbench.bpe import gpt2_encoding

    return gpt2_encoding()


def gpt2_len(text: str) -> int:
    """Number of GPT-2 tokens of `text` (no BOS)."""
    return len(_gpt2().encode_ordinary(text))  # type: ignore[attr-defined]


@functools.cache
def valid_years() -> dict[int, tuple[int, ...]]:
    """Century -> the XX values Hanna et al. keep: " CCXX" is [" CC", "XX"] under GPT-2."""
    enc = _gpt2()
    out = {}
    for cc in CENTURIES:
        good = []
        for xx in range(2, 99):
            ids = enc.encode_ordinary(f" {cc}{xx:02d}")  # type: ignore[attr-defined]
            if ids == [*enc.encode_ordinary(f" {cc}"), *enc.encode_ordinary(f"{xx:02d}")]:  # type: ignore[attr-defined]
                good.append(xx)
        out[cc] = tuple(good[1:-1])
    return out


@dataclass(frozen=True)
class Years(Task):
    """Greater-than in Hanna et al.'s template; `century=0` draws from all of 11..17."""

    name: ClassVar[str] = "years"
    style: TextStyle = "text"  # type: ignore[assignment]
    corruptions: ClassVar[tuple[str, ...]] = ("01", "random_year", "century")
    century: int = 0

    def __post_init__(self) -> None:
        if self.century != 0 and self.century not in CENTURIES:
            raise WorkbenchError(f"years century={self.century} is out of range: use 11 to 17 "
                                 "(or 0 for all)")

    def _pair(self, rng: random.Random, corrupt: str) -> tuple[PromptPair, tuple[int, ...]]:
        years = valid_years()
        cc = self.century or rng.choice(CENTURIES)
        xx = rng.choice(years[cc])
        noun = rng.choice(NOUNS)
        bad_cc, bad_xx = cc, 1
        if corrupt == "random_year":
            bad_xx = rng.choice([x for x in years[cc] if x != xx])
        elif corrupt == "century":
            bad_cc = rng.choice([c for c in CENTURIES if c != cc and xx in years[c]] or [cc])
            bad_xx = xx
        yy = rng.randrange(xx + 1, 100)
        low = rng.randrange(0, xx + 1)
        pair = PromptPair(
            clean=YEAR_TEMPLATE.format(noun=noun, cc=cc, xx=f"{xx:02d}"),
            corrupted=YEAR_TEMPLATE.format(noun=noun, cc=bad_cc, xx=f"{bad_xx:02d}"),
            answer=(f"{yy:02d}",), contrast=(f"{low:02d}",),
            accepted=tuple(f"{y:02d}" for y in range(xx + 1, 100)),
            rejected=tuple(f"{y:02d}" for y in range(0, xx + 1)),
            multi_token=True,
        )
        return pair, (cc, xx)  # the problem is the start year; held out across all nouns


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
Kind = Literal["numbers", "words", "months", "days"]
Direction = Literal["up", "down"]


@dataclass(frozen=True)
class Counting(Task):
    """Sequence continuation in text; `length=0` draws 3 to 6 shown terms per prompt."""

    name: ClassVar[str] = "counting"
    style: TextStyle = "text"  # type: ignore[assignment]
    corruptions: ClassVar[tuple[str, ...]] = ("repeat_all", "random_term", "shuffled")
    kind: Kind = "numbers"
    direction: Direction = "up"
    length: int = 0

    def __post_init__(self) -> None:
        if self.length != 0 and not 2 <= self.length <= 8:
            raise WorkbenchError(f"counting length={self.length} is out of range: use 2 to 8 "
                                 "(or 0 for 3 to 6 at random)")

    @property
    def terms(self) -> tuple[str, ...]:
        if self.kind == "numbers":
            return tuple(str(i) for i in range(1, 100))
        return {"words": NUMBER_WORDS, "months": MONTHS, "days": DAYS}[self.kind]

    @property
    def cyclic(self) -> bool:
        return self.kind in ("months", "days")

    def text(self, terms: list[str]) -> str:
        if self.kind == "words":
            return " ".join(terms)
        return "".join(f"{t}, " for t in terms).rstrip(" ")

    def _pair(self, rng: random.Random, corrupt: str) -> tuple[PromptPair, tuple[int, ...]]:
        vocab = self.terms
        n = self.length or rng.randint(3, 6)
        step = 1 if self.direction == "up" else -1
        if self.cyclic:
            start = rng.randrange(len(vocab))
            index = [(start + step * i) % len(vocab) for i in range(n + 1)]
        else:
            first = rng.randrange(len(vocab) - n) if step == 1 else rng.randrange(n, len(vocab))
            start = first
            index = [first + step * i for i in range(n + 1)]
        shown, nxt = [vocab[i] for i in index[:n]], vocab[index[n]]
        bad = list(shown)
        if corrupt == "repeat_all":
            bad = [shown[0]] * n
        elif corrupt == "shuffled":
            length = gpt2_len(self.text(shown))
            for _ in range(50):
                rng.shuffle(bad)
                if bad != shown and gpt2_len(self.text(bad)) == length:
                    break
            else:  # swap the last two terms: both carry a leading space, so the length holds
                bad = [*shown[:-2], shown[-1], shown[-2]]
        else:
            slot, length = rng.randrange(n), gpt2_len(self.text(shown))
            same = [t for t in vocab if t != shown[slot] and gpt2_len(
                self.text([*shown[:slot], t, *shown[slot + 1:]])) == length]
            bad[slot] = rng.choice(same) if same else shown[slot]
        pair = PromptPair(
            clean=self.text(shown), corrupted=self.text(bad),
            answer=(" " + nxt,), contrast=(" " + shown[-1],), multi_token=True,
        )
        return pair, (start, n)


# Wang et al. (2022)-style templates: [A] and [B] introduced, [S] repeated, answer [IO].
IOI_TEMPLATES = (
    "When {a} and {b} went to the store, {s} gave a drink to",
    "When {a} and {b} went to the park, {s} gave a ball to",
    "Then, {a} and {b} had a long argument, and afterwards {s} said to",
    "After {a} and {b} went to the office, {s} gave a book to",
    "While {a} and {b} were working at the school, {s} gave a ring to",
    "Friends {a} and {b} found a bone at the garden. {s} gave it to",
    "When {a} and {b} got a snack at the house, {s} decided to give it to",
    "The local big shop, {a} and {b} went to. {s} gave a kiss to",
)
NAMES = ("Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Chris",
         "Anne", "Kate", "Alex", "Ben", "Emma", "Jack", "Lisa", "Mark", "Rose", "Sam", "Sarah",
         "Peter", "David", "Michael", "George", "Jane", "Laura", "Steve", "Ryan", "Luke",
         "Adam", "Eric", "Brian", "Kevin", "Scott", "Joe", "Ann", "Tim", "Matt", "Mike")
Order = Literal["mixed", "ABBA", "BABA"]


@functools.cache
def ioi_names() -> tuple[str, ...]:
    """The names whose " Name" is one GPT-2 token."""
    return tuple(n for n in NAMES if gpt2_len(" " + n) == 1)


@dataclass(frozen=True)
class IOI(Task):
    """Indirect object identification; `template=-1` draws among all templates."""

    name: ClassVar[str] = "ioi"
    style: TextStyle = "text"  # type: ignore[assignment]
    corruptions: ClassVar[tuple[str, ...]] = ("abc", "names")
    order: Order = "mixed"
    template: int = -1

    def __post_init__(self) -> None:
        if not -1 <= self.template < len(IOI_TEMPLATES):
            raise WorkbenchError(f"ioi template={self.template} is out of range: use 0 to "
                                 f"{len(IOI_TEMPLATES) - 1} (or -1 for all)")

    def _pair(self, rng: random.Random, corrupt: str) -> tuple[PromptPair, tuple[int, ...]]:
        names = ioi_names()
        t = self.template if self.template >= 0 else rng.randrange(len(IOI_TEMPLATES))
        template = IOI_TEMPLATES[t]
        io, s, c, d, e = rng.sample(names, 5)
        order = self.order if self.order != "mixed" else rng.choice(("ABBA", "BABA"))
        a, b = (io, s) if order == "ABBA" else (s, io)
        clean = template.format(a=a, b=b, s=s)
        if corrupt == "abc":
            bad = template.format(a=a, b=b, s=c)
        else:
            ca, cb = (d, e) if order == "ABBA" else (e, d)
            bad = template.format(a=ca, b=cb, s=e)
        pair = PromptPair(clean=clean, corrupted=bad, answer=(" " + io,), contrast=(" " + s,),
                          multi_token=True)
        return pair, (t, names.index(io), names.index(s))
