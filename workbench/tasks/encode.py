"""Prompt pairs -> token tensors for one tokenizer, with the tokenization checks.

Decided once, here: every sequence is `BOS + prompt + answer[:-1]` (teacher forcing), built by
concatenating token ids (never by re-tokenizing joined text, so BPE cannot merge across the
prompt/answer boundary). The logits at `answer_pos[b, i]` predict answer unit i. Rows of
different lengths are right-padded; a causal model never looks at the padding.

Invariant: every answer and contrast unit is exactly one token, or encoding fails with a line
naming the unit, the pair and how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.tasks.base import PromptPair, PromptSet


@dataclass(frozen=True)
class EncodedPrompts:
    """Token ids of a prompt set, ready for batched forward passes."""

    clean: Tensor  # (batch, pos) int64
    corrupted: Tensor  # (batch, pos) int64
    answer_pos: Tensor  # (batch, n_answer) int64: logits here predict answer unit i
    answer: Tensor  # (batch, n_answer) int64
    contrast: Tensor  # (batch, n_answer) int64
    # Per pair: the accepted complete answers as id tuples, or None for exact match.
    accepted: tuple[frozenset[tuple[int, ...]] | None, ...]
    lengths: Tensor  # (batch,) unpadded length of each row

    @property
    def n(self) -> int:
        return self.clean.shape[0]

    @property
    def n_answer(self) -> int:
        return self.answer.shape[1]

    def to(self, device: torch.device | str) -> EncodedPrompts:
        return EncodedPrompts(
            self.clean.to(device), self.corrupted.to(device), self.answer_pos.to(device),
            self.answer.to(device), self.contrast.to(device), self.accepted,
            self.lengths.to(device),
        )

    def subset(self, index: slice | list[int]) -> EncodedPrompts:
        """Rows `index` (a slice or a list of row numbers), for chunks and minibatches."""
        if isinstance(index, slice):
            rows, accepted = index, self.accepted[index]
        else:
            rows = torch.tensor(index, dtype=torch.long, device=self.clean.device)
            accepted = tuple(self.accepted[i] for i in index)
        return EncodedPrompts(
            self.clean[rows], self.corrupted[rows], self.answer_pos[rows],
            self.answer[rows], self.contrast[rows], accepted, self.lengths[rows],
        )


def encode(prompts: PromptSet | tuple[PromptPair, ...], tokenizer: Any) -> EncodedPrompts:
    """Tokenize a prompt set; raises `WorkbenchError` on any tokenization problem."""
    pairs = prompts.pairs if isinstance(prompts, PromptSet) else prompts
    if not pairs:
        raise WorkbenchError("the prompt set is empty: generate or load some prompts first")
    n_answer = len(pairs[0].answer)
    bos = _bos_id(tokenizer)
    unit_ids: dict[str, int] = {}

    def unit(text: str, index: int) -> int:
        if text not in unit_ids:
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                pieces = [tokenizer.decode([i]) for i in ids]
                raise WorkbenchError(
                    f"pair {index}: answer unit {text!r} is {len(ids)} tokens {pieces} under "
                    "this tokenizer; every answer digit must be one token (try style=spaced)"
                )
            unit_ids[text] = ids[0]
        return unit_ids[text]

    clean_rows, bad_rows, pos_rows, ans_rows, con_rows, accepted = [], [], [], [], [], []
    for i, pair in enumerate(pairs):
        if len(pair.answer) != n_answer:
            raise WorkbenchError(
                f"pair {i} has {len(pair.answer)} answer tokens but pair 0 has {n_answer}: "
                "a prompt set needs one answer length"
            )
        answer = [unit(u, i) for u in pair.answer]
        contrast = [unit(u, i) for u in pair.contrast]
        clean = [bos, *tokenizer.encode(pair.clean, add_special_tokens=False)]
        bad = [bos, *tokenizer.encode(pair.corrupted, add_special_tokens=False)]
        if len(clean) != len(bad):
            raise WorkbenchError(
                f"pair {i}: clean prompt is {len(clean) - 1} tokens but corrupted is "
                f"{len(bad) - 1}; patching needs equal lengths"
            )
        start = len(clean) - 1
        clean_rows.append(clean + answer[:-1])
        bad_rows.append(bad + answer[:-1])
        pos_rows.append(list(range(start, start + n_answer)))
        ans_rows.append(answer)
        con_rows.append(contrast)
        accepted.append(_accepted_ids(pair, unit, i))
    lengths = [len(r) for r in clean_rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    width = max(lengths)
    return EncodedPrompts(
        clean=_padded(clean_rows, width, pad),
        corrupted=_padded(bad_rows, width, pad),
        answer_pos=torch.tensor(pos_rows),
        answer=torch.tensor(ans_rows),
        contrast=torch.tensor(con_rows),
        accepted=tuple(accepted),
        lengths=torch.tensor(lengths),
    )


def _accepted_ids(pair: PromptPair, unit: Any, index: int) -> frozenset[tuple[int, ...]] | None:
    if not pair.accepted:
        return None
    width = len(pair.answer)
    out = set()
    for text in pair.accepted:
        units = _split_like(text, pair.answer)
        if len(units) != width:
            raise WorkbenchError(f"pair {index}: accepted answer {text!r} has the wrong length")
        out.add(tuple(unit(u, index) for u in units))
    return frozenset(out)


def _split_like(text: str, answer: tuple[str, ...]) -> list[str]:
    """Split an accepted answer string into units of the same widths as `answer`'s units."""
    units, at = [], 0
    for u in answer:
        units.append(text[at: at + len(u)])
        at += len(u)
    return units if at == len(text) else []


def _bos_id(tokenizer: Any) -> int:
    bos = tokenizer.bos_token_id
    if bos is None:
        raise WorkbenchError("the tokenizer has no BOS token; set bos_token in its config")
    return int(bos)


def _padded(rows: list[list[int]], width: int, pad: int) -> Tensor:
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows])
