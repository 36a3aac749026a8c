"""Prompt pairs -> token tensors for one tokenizer, with the tokenization checks.

Decided once, here: every sequence is `BOS + prompt + answer[:-1]` (teacher forcing), built by
concatenating token ids (never by re-tokenizing joined text, so BPE cannot merge across the
prompt/answer boundary). The logits at `answer_pos[b, i]` predict answer unit i. Rows of
different lengths are right-padded; a causal model never looks at the padding.

Answers of different token lengths: a free-text pair (`multi_token`) has its answer units
tokenized as the tokenizer does, each possibly several tokens; `n_answer` is the longest answer
and `answer_mask[b, i]` says whether row b has an answer token i. At masked-out slots the answer
and contrast are the same token and `answer_pos` repeats the row's last answer position, so a
metric that ignores the mask still reads a valid position and a zero logit difference there.
A contrast of another token length is cut or filled with the answer's tokens to line up.

Invariant: every answer and contrast unit of a digit task (not `multi_token`) is exactly one
token, and such a set has one answer length, or encoding fails with a line naming the unit, the
pair and how to fix it.
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
    answer_mask: Tensor | None = None  # (batch, n_answer) bool; None: every slot is real
    # Per pair: the rejected complete answers as id tuples (for prob_diff), or None.
    rejected: tuple[frozenset[tuple[int, ...]] | None, ...] | None = None

    @property
    def mask(self) -> Tensor:
        """(batch, n_answer) bool: which answer slots hold a real answer token."""
        if self.answer_mask is None:
            return torch.ones_like(self.answer, dtype=torch.bool)
        return self.answer_mask

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
            None if self.answer_mask is None else self.answer_mask.to(device), self.rejected,
        )

    def subset(self, index: slice | list[int]) -> EncodedPrompts:
        """Rows `index` (a slice or a list of row numbers), for chunks and minibatches."""
        if isinstance(index, slice):
            rows, accepted = index, self.accepted[index]
            rejected = None if self.rejected is None else self.rejected[index]
        else:
            rows = torch.tensor(index, dtype=torch.long, device=self.clean.device)
            accepted = tuple(self.accepted[i] for i in index)
            rejected = None if self.rejected is None else tuple(self.rejected[i] for i in index)
        return EncodedPrompts(
            self.clean[rows], self.corrupted[rows], self.answer_pos[rows],
            self.answer[rows], self.contrast[rows], accepted, self.lengths[rows],
            None if self.answer_mask is None else self.answer_mask[rows], rejected,
        )


def encode(prompts: PromptSet | tuple[PromptPair, ...], tokenizer: Any) -> EncodedPrompts:
    """Tokenize a prompt set; raises `WorkbenchError` on any tokenization problem."""
    pairs = prompts.pairs if isinstance(prompts, PromptSet) else prompts
    if not pairs:
        raise WorkbenchError("the prompt set is empty: generate or load some prompts first")
    bos = _bos_id(tokenizer)
    cache: dict[str, list[int]] = {}

    def tokens(text: str) -> list[int]:
        if text not in cache:
            cache[text] = list(tokenizer.encode(text, add_special_tokens=False))
        return cache[text]

    def unit(text: str, index: int) -> int:
        ids = tokens(text)
        if len(ids) != 1:
            pieces = [tokenizer.decode([i]) for i in ids]
            raise WorkbenchError(
                f"pair {index}: answer unit {text!r} is {len(ids)} tokens {pieces} under "
                "this tokenizer; every answer digit must be one token (try style=spaced)"
            )
        return ids[0]

    def answer_ids(units: tuple[str, ...], pair: PromptPair, index: int) -> list[int]:
        if pair.multi_token:
            return [i for u in units for i in tokens(u)]
        return [unit(u, index) for u in units]

    clean_rows, bad_rows, ans_rows, con_rows, accepted, rejected = [], [], [], [], [], []
    n_first = None
    for i, pair in enumerate(pairs):
        if not pair.multi_token:
            if n_first is None:
                n_first = (i, len(pair.answer))
            elif len(pair.answer) != n_first[1]:
                raise WorkbenchError(
                    f"pair {i} has {len(pair.answer)} answer tokens but pair {n_first[0]} has "
                    f"{n_first[1]}: a prompt set needs one answer length"
                )
        answer = answer_ids(pair.answer, pair, i)
        if not answer:
            raise WorkbenchError(f"pair {i}: the answer {''.join(pair.answer)!r} is no tokens")
        contrast = answer_ids(pair.contrast, pair, i)
        contrast = (contrast + answer[len(contrast):])[:len(answer)]  # line up with the answer
        clean = [bos, *tokenizer.encode(pair.clean, add_special_tokens=False)]
        bad = [bos, *tokenizer.encode(pair.corrupted, add_special_tokens=False)]
        if len(clean) != len(bad):
            raise WorkbenchError(
                f"pair {i}: clean prompt is {len(clean) - 1} tokens but corrupted is "
                f"{len(bad) - 1}; patching needs equal lengths"
            )
        clean_rows.append(clean + answer[:-1])
        bad_rows.append(bad + answer[:-1])
        ans_rows.append(answer)
        con_rows.append(contrast)
        accepted.append(_complete_ids(pair.accepted, pair, answer_ids, i))
        rejected.append(_complete_ids(pair.rejected, pair, answer_ids, i))
    n_answer = max(len(a) for a in ans_rows)
    pos_rows, mask_rows = [], []
    for row, answer in zip(clean_rows, ans_rows, strict=True):
        start = len(row) - len(answer)
        real = list(range(start, start + len(answer)))
        pos_rows.append(real + [real[-1]] * (n_answer - len(answer)))
        mask_rows.append([True] * len(answer) + [False] * (n_answer - len(answer)))
    lengths = [len(r) for r in clean_rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    width = max(lengths)
    ragged = not all(all(m) for m in mask_rows)
    return EncodedPrompts(
        clean=_padded(clean_rows, width, pad),
        corrupted=_padded(bad_rows, width, pad),
        answer_pos=torch.tensor(pos_rows),
        answer=_padded(ans_rows, n_answer, pad),
        contrast=_padded(con_rows, n_answer, pad),
        accepted=tuple(accepted),
        lengths=torch.tensor(lengths),
        answer_mask=torch.tensor(mask_rows) if ragged else None,
        rejected=tuple(rejected) if any(r is not None for r in rejected) else None,
    )


def _complete_ids(texts: tuple[str, ...], pair: PromptPair, answer_ids: Any, index: int
                  ) -> frozenset[tuple[int, ...]] | None:
    """Accepted (or rejected) complete answers as token-id tuples."""
    if not texts:
        return None
    out = set()
    for text in texts:
        if pair.multi_token:
            out.add(tuple(answer_ids((text,), pair, index)))
            continue
        units = _split_like(text, pair.answer)
        if len(units) != len(pair.answer):
            raise WorkbenchError(f"pair {index}: accepted answer {text!r} has the wrong length")
        out.add(tuple(answer_ids(tuple(units), pair, index)))
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
    """Right-pad rows to `width` (answer and contrast rows get the same pad: they agree at
    masked slots)."""
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows])
