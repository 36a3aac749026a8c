"""The one settings object of `workbench finetune`, and the command-line flags derived from it.

Every field is a flag (`micro_batch` -> `--micro-batch`) with its default and help text kept
here, so the CLI, the saved `finetune_config.json`, the model card's reproduce command and the
resume check all read the same definitions.

Invariant: the fields in `RESUME_FIXED` decide the data order and the shape of every step; a
resumed run must repeat them (others, such as `max_steps` or `eval_every`, may change).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.errors import WorkbenchError

TokenizerChoice = Literal["auto", "tiktoken", "checkpoint"]
DtypeChoice = Literal["auto", "float32", "bfloat16"]

# Changing any of these between a run and its resumption would change the data or the steps
# (micro_batch and grad_accum only through their product; see `resume_mismatch`).
RESUME_FIXED = ("model", "data", "rows", "text_field", "eval_rows", "shuffle_buffer",
                "tokenizer", "block_size", "micro_batch", "grad_accum", "seed", "dropout")


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides a fine-tuning run (with the torch thread count on CPU)."""

    model: str = field(metadata={"help": "gpt2, gpt2-xl, another cached hub name or a directory"})
    data: str = field(metadata={"help": "NAME[:CONFIG] on the hub (streamed), FILE.jsonl or "
                                        "FILE.parquet"})
    out: str = field(metadata={"help": "output directory (checkpoint, log, data cache)"})
    rows: int = _f(100_000, "rows sampled from the data (held-out rows included)")
    text_field: str = _f("text", "the column holding the text")
    eval_rows: int | None = _f(None, "rows held out for validation loss (default: 1%% of "
                                     "the rows read, at most 1000)")
    shuffle_buffer: int = _f(10_000, "shuffle buffer of a streamed hub dataset")
    tokenizer: TokenizerChoice = _f("auto", "auto: tiktoken's GPT-2 encoding for GPT-2 "
                                            "checkpoints, else the checkpoint's own tokenizer")
    block_size: int = _f(1024, "tokens per training window")
    micro_batch: int = _f(4, "windows per forward pass (lower it when out of GPU memory)")
    grad_accum: int = _f(16, "micro-batches per optimizer step")
    max_steps: int | None = _f(None, "optimizer steps (default: one pass over the data)")
    lr: float = _f(6e-5, "peak learning rate")
    min_lr: float = _f(6e-6, "learning rate at the end of the cosine decay")
    warmup: int = _f(100, "linear warmup steps")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay on 2-D parameters")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0: off)")
    dropout: float = _f(0.0, "dropout for fine-tuning (nanoGPT's default: 0)")
    eval_every: int = _f(250, "steps between evaluations")
    eval_batches: int = _f(20, "held-out micro-batches per validation loss")
    task_n: int = _f(512, "multiplication prompts per task-accuracy evaluation")
    log_every: int = _f(1, "steps between training-loss log rows")
    save_every: int = _f(500, "steps between resumable checkpoints")
    seed: int = _f(0, "seed of the sample, the data order and the model's RNG")
    device: str = _f("auto", "auto, cpu or cuda[:N]")
    dtype: DtypeChoice = _f("auto", "auto: bfloat16 autocast on CUDA, float32 on CPU")
    compile: bool = _f(False, "torch.compile the model (CUDA only)")
    threads: int | None = _f(None, "torch CPU threads (default: torch's choice)")
    download: bool = _f(False, "allow downloading the model from the hub")
    resume: bool = _f(False, "continue the run saved in --out")
    wandb: bool = _f(True, "log to Weights & Biases (offline unless you configured wandb)")
    wandb_project: str = _f("circuit-workbench", "wandb project name")

    def __post_init__(self) -> None:
        positive = ("rows", "block_size", "micro_batch", "grad_accum", "eval_every",
                    "eval_batches", "task_n", "log_every", "save_every", "shuffle_buffer")
        for name in positive:
            if getattr(self, name) < 1:
                raise WorkbenchError(f"--{_flag(name)} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise WorkbenchError("--max-steps must be at least 1")
        if self.eval_rows is not None and not 0 <= self.eval_rows < self.rows:
            raise WorkbenchError(f"--eval-rows {self.eval_rows} must be below --rows {self.rows}")
        if not 0 <= self.min_lr <= self.lr:
            raise WorkbenchError(f"--min-lr {self.min_lr} must be between 0 and --lr {self.lr}")
        if self.warmup < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise WorkbenchError("--warmup, --weight-decay and --grad-clip cannot be negative")
        if not 0 <= self.dropout < 1:
            raise WorkbenchError("--dropout must be in [0, 1)")

    @property
    def held_out_rows(self) -> int | None:
        """`eval_rows`, or None: then 1% of the rows actually read is held out, at most 1000
        (`rows.held_out`), so a small file is not all held out."""
        return self.eval_rows

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.block_size

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resume_mismatch(self, saved: dict[str, Any]) -> str | None:
        """The first `RESUME_FIXED` field whose saved value differs from ours, described.
        `micro_batch` and `grad_accum` may change together (after running out of memory) as
        long as their product, the windows per step, stays the same: the order is unchanged."""
        windows = saved.get("micro_batch", 0) * saved.get("grad_accum", 0)
        if windows != self.micro_batch * self.grad_accum:
            return (f"--micro-batch x --grad-accum was {saved.get('micro_batch')} x "
                    f"{saved.get('grad_accum')} in the saved run but is {self.micro_batch} x "
                    f"{self.grad_accum} now; keep the product")
        for name in RESUME_FIXED:
            if name in ("micro_batch", "grad_accum"):
                continue
            if saved.get(name) != getattr(self, name):
                return (f"--{_flag(name)} was {saved.get(name)!r} in the saved run but is "
                        f"{getattr(self, name)!r} now")
        return None


def _flag(name: str) -> str:
    return name.replace("_", "-")


REQUIRED = ("model", "data", "out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `FinetuneConfig` field; booleans are switches (`--no-wandb` for wandb)."""
    hints = typing.get_type_hints(FinetuneConfig)
    for f in dataclasses.fields(FinetuneConfig):
        help_text = f.metadata["help"]
        hint = hints[f.name]
        if f.name in REQUIRED:
            parser.add_argument(f"--{_flag(f.name)}", required=True, help=help_text)
        elif hint is bool:
            if f.default:
                parser.add_argument(f"--no-{_flag(f.name)}", dest=f.name, action="store_false",
                                    help=f"turn off: {help_text}")
            else:
                parser.add_argument(f"--{_flag(f.name)}", action="store_true", help=help_text)
        elif typing.get_origin(hint) is Literal:
            parser.add_argument(f"--{_flag(f.name)}", choices=typing.get_args(hint),
                                default=f.default, help=help_text)
        else:
            kind = next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))
            shown = "" if f.default is None else f" (default: {f.default})"
            parser.add_argument(f"--{_flag(f.name)}", type=kind, default=f.default,
                                help=help_text + shown)


def from_args(args: argparse.Namespace) -> FinetuneConfig:
    return FinetuneConfig(**{f.name: getattr(args, f.name)
                             for f in dataclasses.fields(FinetuneConfig)})


def command_line(cfg: FinetuneConfig) -> str:
    """The `workbench finetune` command that repeats `cfg` (flags that differ from defaults)."""
    words = ["workbench", "finetune"]
    for f in dataclasses.fields(FinetuneConfig):
        value = getattr(cfg, f.name)
        if f.name in ("resume",):
            continue
        if f.name in REQUIRED:
            words += [f"--{_flag(f.name)}", str(value)]
        elif value != f.default:
            if isinstance(value, bool):
                words.append(f"--{_flag(f.name)}" if value else f"--no-{_flag(f.name)}")
            else:
                words += [f"--{_flag(f.name)}", str(value)]
    return shlex.join(words)
