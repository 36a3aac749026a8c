"""Sampled rows -> token files -> training windows in a seeded, resumable order.

1. `prepare` tokenizes the sampled rows (`rows.sample`) into two flat token files under
   `OUT/data/` (`train.bin`, `val.bin`; uint16 when ids fit, like nanoGPT), each document
   preceded by the end-of-text token, and writes `meta.json` last; a later run (or a resume)
   with the same data arguments reuses the files instead of streaming again.
2. A window is `block_size + 1` consecutive tokens starting at a multiple of `block_size`
   (inputs are its first `block_size` tokens, targets its last: every token is a target once).
3. `Batches` walks the training windows in `randperm` order seeded by `(seed, epoch)`; its
   position `(epoch, cursor)` is all a checkpoint needs to continue the same order exactly.

Invariant: the order of windows is a pure function of the token file, `seed`, `block_size` and
`micro_batch`; nothing else (no global RNG) touches it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workbench.errors import WorkbenchError
from workbench.finetune.codec import Codec
from workbench.finetune.config import FinetuneConfig
from workbench.finetune.rows import parse_source, sample

DATA_VERSION = 2  # 2: the default held-out split is 1% of the rows read, not of --rows
CHUNK_ROWS = 512


@dataclass(frozen=True)
class TokenSplits:
    """The memory-mapped token streams of a run and the facts about them."""

    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]


def data_key(cfg: FinetuneConfig, codec: Codec) -> dict[str, Any]:
    """What the token files depend on; a cache whose meta matches this is reused."""
    key: dict[str, Any] = {
        "version": DATA_VERSION, "data": cfg.data, "rows": cfg.rows, "eval_rows": cfg.held_out_rows,
        "seed": cfg.seed, "text_field": cfg.text_field, "shuffle_buffer": cfg.shuffle_buffer,
        "tokenizer": codec.name, "n_vocab": codec.n_vocab, "eot": codec.eot,
    }
    source = parse_source(cfg.data)
    if source.kind != "hub":
        stat = Path(source.name).stat()
        key["file_size"], key["file_mtime_ns"] = stat.st_size, stat.st_mtime_ns
    return key


def prepare(cfg: FinetuneConfig, codec: Codec, directory: Path,
            emit: Callable[[dict[str, Any]], None]) -> TokenSplits:
    """Token files for the run, reused when `meta.json` matches, else written afresh."""
    key = data_key(cfg, codec)
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in key} == key:
            emit({"kind": "note", "message": f"reusing tokenized data in {directory}"})
            return _open(directory, meta)
        meta_path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if codec.n_vocab <= 1 << 16 else np.uint32
    source = parse_source(cfg.data)
    counts = {"train": [0, 0], "val": [0, 0]}  # split -> [rows, tokens]
    files = {s: (directory / f"{s}.bin.tmp").open("wb") for s in counts}
    try:
        for chunk in _chunks(sample(source, cfg.rows, cfg.held_out_rows, cfg.seed, cfg.text_field,
                                    cfg.shuffle_buffer)):
            ids = codec.encode_batch([text for _, text in chunk])
            for (split, _), doc in zip(chunk, ids, strict=True):
                row = np.asarray([codec.eot, *doc], dtype=dtype)
                files[split].write(row.tobytes())
                counts[split][0] += 1
                counts[split][1] += len(row)
            emit({"kind": "data", "rows": counts["train"][0] + counts["val"][0],
                  "of": cfg.rows, "tokens": counts["train"][1] + counts["val"][1]})
    finally:
        for f in files.values():
            f.close()
    for split in counts:
        os.replace(directory / f"{split}.bin.tmp", directory / f"{split}.bin")
    meta = {**key, "dtype": np.dtype(dtype).name, "source": source.describe(),
            "train_rows": counts["train"][0], "train_tokens": counts["train"][1],
            "val_rows": counts["val"][0], "val_tokens": counts["val"][1]}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return _open(directory, meta)


def _chunks(items: Iterator[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _open(directory: Path, meta: dict[str, Any]) -> TokenSplits:
    def load(split: str) -> np.ndarray:
        path = directory / f"{split}.bin"
        if not path.is_file() or path.stat().st_size == 0:
            return np.zeros(0, dtype=meta["dtype"])
        return np.memmap(path, dtype=meta["dtype"], mode="r")

    return TokenSplits(load("train"), load("val"), meta)


def n_windows(tokens: np.ndarray, block_size: int) -> int:
    return max(0, (len(tokens) - 1) // block_size)


def window_batch(tokens: np.ndarray, starts: list[int], block_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows `starts` -> inputs and targets, each (batch, block_size) int64."""
    rows = np.stack([tokens[i * block_size: i * block_size + block_size + 1] for i in starts])
    t = torch.from_numpy(rows.astype(np.int64))  # (batch, block_size + 1)
    return t[:, :-1], t[:, 1:]


class Batches:
    """Training micro-batches in a seeded random window order, epoch after epoch; resumable."""

    def __init__(self, tokens: np.ndarray, block_size: int, micro_batch: int, seed: int,
                 advice: str = "raise --rows, or lower --block-size or --micro-batch") -> None:
        self.tokens, self.block_size, self.micro_batch, self.seed = (
            tokens, block_size, micro_batch, seed)
        self.n_windows = n_windows(tokens, block_size)
        if self.n_windows < micro_batch:
            raise WorkbenchError(
                f"the training split has {len(tokens)} tokens, {self.n_windows} windows of "
                f"{block_size + 1}; need at least --micro-batch {micro_batch}: {advice}")
        self.seek(0, 0)

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, cursor): windows of `epoch`'s order before `cursor` have been served."""
        return self.epoch, self.cursor

    def seek(self, epoch: int, cursor: int) -> None:
        self.epoch, self.cursor = epoch, cursor
        self._order = self._permutation(epoch)

    def steps_per_epoch(self, grad_accum: int) -> int:
        return -(-self.n_windows // (self.micro_batch * grad_accum))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch: inputs and targets, each (micro_batch, block_size)."""
        starts: list[int] = []
        while len(starts) < self.micro_batch:
            if self.cursor == self.n_windows:
                self.seek(self.epoch + 1, 0)
            take = min(self.micro_batch - len(starts), self.n_windows - self.cursor)
            starts += self._order[self.cursor: self.cursor + take].tolist()
            self.cursor += take
        return window_batch(self.tokens, starts, self.block_size)

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_windows, generator=generator)


def eval_batches(tokens: np.ndarray, block_size: int, micro_batch: int, n_batches: int
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n_batches` micro-batches of held-out windows, in order (the same each time)."""
    total = min(n_windows(tokens, block_size), n_batches * micro_batch)
    for start in range(0, total, micro_batch):
        yield window_batch(tokens, list(range(start, min(start + micro_batch, total))),
                           block_size)
