"""Prompt pairs, prompt sets and the task interface every generator implements.

A task turns a seed into a `PromptSet`: clean prompt, corrupted prompt (same token length, a
named corruption), the answer as a sequence of units scored one by one under teacher forcing
(digits, most significant first), and one contrast unit per answer unit. A digit task's units
are one token each; a text task (`multi_token=True`: "The war lasted ... 17" -> "32", IOI names,
"12*34=" -> "408") gives free text that the tokenizer may split into several tokens. Prompt sets
round-trip through JSON Lines; a bad line is reported with its number and reason.

Invariant: a `PromptPair` is plain text only; turning it into token ids (and checking that every
answer unit of a digit task is one token) happens in `workbench.tasks.encode`, against a
concrete tokenizer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from workbench.errors import WorkbenchError

Style = Literal["digits", "spaced", "text"]
Split = Literal["train", "test", "all"]


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted example. `answer` and `contrast` have one entry per scored position."""

    clean: str
    corrupted: str
    answer: tuple[str, ...]
    contrast: tuple[str, ...]
    # Complete answers also counted correct (greater-than); empty means only `answer`.
    accepted: tuple[str, ...] = ()
    # Complete answers that are wrong, for `prob_diff` (greater-than: every YY <= XX).
    rejected: tuple[str, ...] = ()
    # Free text: each unit is tokenized as the tokenizer does and may be several tokens.
    multi_token: bool = False

    def __post_init__(self) -> None:
        if not self.answer:
            raise WorkbenchError("a prompt pair needs at least one answer token")
        if len(self.contrast) != len(self.answer):
            raise WorkbenchError(
                f"contrast has {len(self.contrast)} entries but answer has {len(self.answer)}: "
                "give one contrast token per answer token"
            )

    def accepts(self, predicted: Sequence[str]) -> bool:
        """Whether a predicted answer (one unit per position) counts as correct."""
        text = "".join(predicted)
        return text in self.accepted if self.accepted else tuple(predicted) == self.answer


@dataclass(frozen=True)
class PromptSet:
    """A named list of prompt pairs plus the recipe that made it (for the session log)."""

    name: str
    pairs: tuple[PromptPair, ...]
    recipe: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)

    def save_jsonl(self, path: Path) -> None:
        """One JSON object per pair; `recipe` is not stored (the file is the recipe)."""
        lines = [json.dumps(dataclasses.asdict(p)) for p in self.pairs]
        Path(path).write_text("\n".join(lines) + "\n")

    @classmethod
    def load_jsonl(cls, path: Path) -> PromptSet:
        path = Path(path)
        if not path.is_file():
            raise WorkbenchError(f"prompt file {path} does not exist: check the path")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise WorkbenchError(f"{path} is not UTF-8 text (byte {exc.start} cannot be read): "
                                 "give a JSONL file of prompt pairs") from None
        except OSError as exc:
            raise WorkbenchError(f"cannot read {path}: {exc.strerror or exc}") from None
        pairs = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                pairs.append(_pair_from_line(line, path, number))
        if not pairs:
            raise WorkbenchError(f"{path} holds no prompt pairs: add one JSON object per line")
        return cls(name=path.stem, pairs=tuple(pairs), recipe={"file": str(path)})


def _pair_from_line(line: str, path: Path, number: int) -> PromptPair:
    where = f"{path}:{number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise WorkbenchError(f"{where}: not valid JSON ({exc.msg}); fix that line") from None
    if not isinstance(obj, dict):
        raise WorkbenchError(f"{where}: expected a JSON object with clean, corrupted, answer")
    missing = [k for k in ("clean", "corrupted", "answer") if k not in obj]
    if missing:
        raise WorkbenchError(f"{where}: missing field(s) {', '.join(missing)}")
    multi_token = isinstance(obj["answer"], str) or bool(obj.get("multi_token", False))
    answer = _units(obj["answer"], where, "answer")
    contrast = _units(obj.get("contrast", obj["answer"]), where, "contrast")
    if not isinstance(obj["clean"], str) or not isinstance(obj["corrupted"], str):
        raise WorkbenchError(f"{where}: clean and corrupted must be strings")
    try:
        return PromptPair(
            clean=obj["clean"],
            corrupted=obj["corrupted"],
            answer=answer,
            contrast=contrast,
            accepted=tuple(obj.get("accepted", ())),
            rejected=tuple(obj.get("rejected", ())),
            multi_token=multi_token,
        )
    except WorkbenchError as exc:
        raise WorkbenchError(f"{where}: {exc}") from None


def _units(value: Any, where: str, name: str) -> tuple[str, ...]:
    """A list of units, or a string: free text, one unit the tokenizer may split into several
    tokens (" Mary", "408", "0579" all work with any tokenizer)."""
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise WorkbenchError(f"{where}: {name} must be a string or a list of strings")


@dataclass(frozen=True)
class Task:
    """Base of every task generator: options are dataclass fields (coerced from key=value).

    Subclasses set `name`, `corruptions` and implement `_pair(rng, corrupt)`. `_key` gives the
    operands that decide the held-out split, so train and test never share a problem.
    """

    name: ClassVar[str] = ""
    corruptions: ClassVar[tuple[str, ...]] = ()
    symbols: ClassVar[str | None] = None  # the characters besides digits (None: free text)
    style: Style = "digits"

    def alphabet(self) -> frozenset[str] | None:
        """Every character this task's prompts and answers use, or None for free text; a
        prompt file for the task is checked against it."""
        if self.symbols is None:
            return None
        return frozenset("0123456789 " + self.symbols)

    def pairs(self, n: int, seed: int = 0, corrupt: str | None = None, split: Split = "all"
              ) -> tuple[PromptPair, ...]:
        corrupt = corrupt or self.corruptions[0]
        if corrupt not in self.corruptions:
            raise WorkbenchError(
                f"task {self.name} has no corruption {corrupt!r}; choose one of "
                + ", ".join(self.corruptions)
            )
        rng = random.Random(seed)
        out: list[PromptPair] = []
        for _ in range(n * 50):
            if len(out) == n:
                break
            pair, key = self._pair(rng, corrupt)
            if split == "all" or _in_test(key) == (split == "test"):
                out.append(pair)
        if len(out) < n:
            raise WorkbenchError(f"task {self.name} could not generate {n} distinct-enough pairs")
        return tuple(out)

    def prompt_set(self, n: int = 256, seed: int = 0, corrupt: str | None = None,
                   split: Split = "all") -> PromptSet:
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        recipe = {"task": self.name, "n": n, "seed": seed, "corrupt": corrupt or
                  self.corruptions[0], "split": split, **options}
        return PromptSet(self.name, self.pairs(n, seed, corrupt, split), recipe)

    def _pair(self, rng: random.Random, corrupt: str) -> tuple[PromptPair, tuple[int, ...]]:
        raise NotImplementedError

    def render(self, text: str) -> str:
        """Digits and text styles keep characters as they are; spaced puts one space before each
        digit and symbol, which makes every digit a single token for GPT-2's BPE."""
        if self.style in ("digits", "text"):
            return text
        return "".join(" " + ch for ch in text)

    def units(self, text: str) -> tuple[str, ...]:
        """Answer units: one per digit, or the whole answer as free text (style=text)."""
        if self.style == "text":
            return (text,)
        return tuple(ch if self.style == "digits" else " " + ch for ch in text)


TEST_FRACTION = 10  # one problem in ten is held out of training


def _in_test(key: tuple[int, ...]) -> bool:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return digest[0] % TEST_FRACTION == 0
