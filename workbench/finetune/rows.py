"""Where fine-tuning text comes from: a hub dataset streamed with `datasets`, or a local file.

`sample(source, ...)` yields `(split, text)` for a random sample of `rows` rows, `eval_rows` of
them with split "val" and the rest "train" (`eval_rows=None`: 1% of the rows actually read, at
most 1000, so a file smaller than `--rows` is not held out whole):
1. a hub dataset (`NAME[:CONFIG]`) is streamed (`load_dataset(..., streaming=True)`), shuffled
   with a seeded buffer (`.shuffle(seed, buffer_size)`: shard order plus a buffer, the usual
   approximation of a random sample of a stream) and cut with `.take(rows)`; the first
   `eval_rows` rows are held out;
2. a local `.jsonl` (one JSON object per line) or `.parquet` file is counted, `rows` row numbers
   are drawn with the seed, and `eval_rows` of those are held out; the file is read in order.

Invariant: every user mistake (missing file, unknown dataset or config, no such column, a bad
line) raises `WorkbenchError` with one line, and the same arguments give the same rows.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.errors import WorkbenchError

Split = Literal["train", "val"]
LOCAL_SUFFIXES = (".jsonl", ".parquet")
# A --data value ending like this is meant as a file, never a hub name.
FILE_SUFFIXES = (*LOCAL_SUFFIXES, ".json", ".txt", ".csv", ".gz", ".arrow")


@dataclass(frozen=True)
class Source:
    """A parsed `--data` value."""

    kind: Literal["hub", "jsonl", "parquet"]
    name: str  # hub dataset name, or the file path
    config: str | None = None

    def describe(self) -> str:
        return f"{self.name}:{self.config}" if self.config else self.name


def parse_source(spec: str) -> Source:
    """`NAME[:CONFIG]` for the hub; a path ending in .jsonl or .parquet for a local file."""
    path = Path(spec).expanduser()
    looks_local = path.suffix in FILE_SUFFIXES or spec.startswith((".", "/", "~"))
    if looks_local or path.exists():
        if not path.is_file():
            raise WorkbenchError(f"data file {spec} does not exist: check the path")
        if path.suffix not in LOCAL_SUFFIXES:
            raise WorkbenchError(f"data file {spec}: use a .jsonl or .parquet file")
        return Source("jsonl" if path.suffix == ".jsonl" else "parquet", str(path))
    name, _, config = spec.partition(":")
    if not name:
        raise WorkbenchError(f"--data {spec!r}: give NAME[:CONFIG] or a data file")
    return Source("hub", name, config or None)


def held_out(n_rows: int) -> int:
    """The default validation rows for `n_rows` rows read: 1%, at most 1000."""
    return min(1000, n_rows // 100)


def sample(source: Source, rows: int, eval_rows: int | None, seed: int, text_field: str,
           shuffle_buffer: int) -> Iterator[tuple[Split, str]]:
    """(split, text) for each sampled row, in a fixed order for fixed arguments."""
    if source.kind == "hub":
        yield from _hub(source, rows, eval_rows, seed, text_field, shuffle_buffer)
    else:
        yield from _local(source, rows, eval_rows, seed, text_field)


# --- hub ----------------------------------------------------------------------------------


def _hub(source: Source, rows: int, eval_rows: int | None, seed: int, text_field: str,
         shuffle_buffer: int) -> Iterator[tuple[Split, str]]:
    stream = _open_stream(source)
    features = getattr(stream, "features", None)
    if features is not None and text_field not in features:
        raise _no_column(source.describe(), text_field, list(features))
    stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer).take(rows)
    for i, row in enumerate(_guarded(stream, source)):
        # Without --eval-rows the stream's length is unknown: every 100th row is held out
        # (1% of what is read, at most 1000), never the first thousand of a short stream.
        val = i < eval_rows if eval_rows is not None else i % 100 == 99 and i < 100_000
        yield ("val" if val else "train"), _text(row, text_field, source.describe(),
                                                 f"row {i}")


def _open_stream(source: Source) -> Any:
    import datasets
    from datasets.exceptions import DataFilesNotFoundError, DatasetNotFoundError

    try:
        return datasets.load_dataset(source.name, source.config, split="train", streaming=True)
    except (DatasetNotFoundError, DataFilesNotFoundError, FileNotFoundError):
        raise WorkbenchError(
            f"unknown dataset {source.name!r} (not on the hub, or not reachable offline): "
            "check the name, or give a .jsonl/.parquet file") from None
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "config" in first.lower():
            raise WorkbenchError(f"dataset {source.name}: {first}; use --data NAME:CONFIG "
                                 "with one of its configs") from None
        raise WorkbenchError(f"dataset {source.describe()}: {first}") from None
    except ConnectionError as exc:
        raise WorkbenchError(f"could not reach the hub for {source.name}: {exc}".splitlines()[0]
                             ) from None


def _guarded(stream: Any, source: Source) -> Iterator[dict[str, Any]]:
    """Rows of a stream, with network failures mid-stream turned into one line."""
    try:
        yield from stream
    except (ConnectionError, OSError) as exc:
        raise WorkbenchError(f"streaming {source.describe()} failed: {exc}".splitlines()[0]
                             ) from None


# --- local files --------------------------------------------------------------------------


def _local(source: Source, rows: int, eval_rows: int | None, seed: int, text_field: str
           ) -> Iterator[tuple[Split, str]]:
    path = Path(source.name)
    reader = _jsonl_rows if source.kind == "jsonl" else _parquet_rows
    total = _count(path, source.kind, text_field)
    if total == 0:
        raise WorkbenchError(f"{path} holds no rows")
    chosen = sorted(random.Random(seed).sample(range(total), min(rows, total)))
    n_val = held_out(len(chosen)) if eval_rows is None else eval_rows
    if n_val >= len(chosen):
        raise WorkbenchError(f"--eval-rows {n_val} holds out every row: {path} has "
                             f"{total:,} rows; lower --eval-rows or give more data")
    val_rows = set(random.Random(seed + 1).sample(chosen, n_val))
    wanted = set(chosen)
    for index, where, row in reader(path, text_field):
        if index in wanted:
            yield ("val" if index in val_rows else "train"), _text(row, text_field, str(path),
                                                                     where)


def _count(path: Path, kind: str, text_field: str) -> int:
    if kind == "parquet":
        return _parquet_file(path, text_field).metadata.num_rows
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


def _jsonl_rows(path: Path, text_field: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    index = 0
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkbenchError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise WorkbenchError(f"{path}:{number}: expected a JSON object with a "
                                     f"{text_field!r} field")
            yield index, where, row
            index += 1


def _parquet_file(path: Path, text_field: str) -> Any:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        raise WorkbenchError(f"{path} is not a readable parquet file ({type(exc).__name__})"
                             ) from None
    names = file.schema_arrow.names
    if text_field not in names:
        raise _no_column(str(path), text_field, names)
    return file


def _parquet_rows(path: Path, text_field: str) -> Iterator[tuple[int, str, dict[str, Any]]]:
    file = _parquet_file(path, text_field)
    index = 0
    for batch in file.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield index, f"row {index}", {text_field: value}
            index += 1


# --- shared -------------------------------------------------------------------------------


def _text(row: dict[str, Any], text_field: str, where: str, position: str) -> str:
    if text_field not in row:
        raise _no_column(f"{where} ({position})", text_field, list(row))
    value = row[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise WorkbenchError(f"{where} ({position}): {text_field!r} is a "
                             f"{type(value).__name__}, not text")
    return value


def _no_column(where: str, text_field: str, columns: list[str]) -> WorkbenchError:
    shown = ", ".join(columns) if columns else "none"
    return WorkbenchError(f"{where} has no column {text_field!r}; columns: {shown} "
                          "(choose one with --text-field)")
