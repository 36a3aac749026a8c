"""Fine-tune a GPT-2-family checkpoint on text, nanoGPT-style (`workbench finetune`).

1. Resolve the model (bundled name, directory, or cached hub name), choose the tokenizer and
   check it fits the model's vocabulary; tokenize the sampled rows into token files (`data`).
2. Load the model in float32 (from `OUT/checkpoint/` when resuming) and build AdamW with
   decoupled weight decay on 2-D parameters only (matmul weights and embeddings; biases and
   LayerNorm gains are not decayed), fused on CUDA.
3. Each step: learning rate from linear warmup then cosine decay to `min_lr`; `grad_accum`
   micro-batches of windows, each loss divided by `grad_accum` before `backward`; clip the
   global gradient norm; `optimizer.step()`. bfloat16 autocast and `torch.compile` on CUDA only.
4. Every `eval_every` steps (and at the first and last step): held-out loss on the first
   `eval_batches` validation micro-batches, and teacher-forced exact match on 2-digit spaced
   multiplication prompts (` 1 2 * 3 4 =`), skipped with one note when the tokenizer cannot
   make each answer digit one token.
5. Every `save_every` steps, at the end and on Ctrl-C: a resumable checkpoint (`checkpoint`);
   at the end, the model, tokenizer, config and card in `OUT/` itself, ready for `load_model`.

Invariant: a step either completes (weights, optimizer, data position and RNG all advance) or,
when interrupted, leaves everything as it was before it; checkpoints are taken between steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workbench.errors import WorkbenchError
from workbench.finetune import checkpoint as ckpt
from workbench.finetune.codec import Codec, check_vocab, choose_codec
from workbench.finetune.config import FinetuneConfig
from workbench.finetune.data import Batches, TokenSplits, eval_batches, n_windows, prepare
from workbench.finetune.export import export
from workbench.finetune.rows import parse_source
from workbench.finetune.tracking import Tracker
from workbench.metrics import answer_logits, correct_per_prompt
from workbench.model import SUPPORTED_MODEL_TYPES, resolve
from workbench.tasks import make_task
from workbench.tasks.encode import EncodedPrompts, encode

log = logging.getLogger(__name__)

TASK = ("multiplication", {"digits": 2, "style": "spaced"})


@dataclass(frozen=True)
class FinetuneResult:
    step: int
    max_steps: int
    tokens: int
    seconds: float
    train_loss: float | None
    val_loss: float | None
    task_accuracy: float | None
    interrupted: bool
    out: Path


def finetune(cfg: FinetuneConfig, encoding: Any = None,
             on_log: Callable[[dict[str, Any]], None] | None = None) -> FinetuneResult:
    """Run (or resume) fine-tuning; `encoding` overrides the tokenizer with a tiktoken one."""
    out = Path(cfg.out)
    parse_source(cfg.data)  # a missing file fails here, before any model loads
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device, amp = placement(cfg.device, cfg.dtype, cfg.compile)
    model_dir, label = resolve(cfg.model, cfg.download)
    config = _model_config(model_dir, label, cfg.block_size)
    codec = choose_codec(cfg.tokenizer, model_dir, label, config.vocab_size, encoding)
    check_vocab(codec, config.vocab_size, label)
    state = _resume_state(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(out, on_log, state.step if state else None)
    try:
        data = prepare(cfg, codec, out / "data", tracker.emit)
        return _train(cfg, out, model_dir if state is None else out / ckpt.CHECKPOINT_DIR,
                      codec, data, state, tracker, device, amp)
    except torch.cuda.OutOfMemoryError:
        raise WorkbenchError(
            f"out of GPU memory at --micro-batch {cfg.micro_batch} --block-size "
            f"{cfg.block_size}: try --micro-batch {max(1, cfg.micro_batch // 2)} --grad-accum "
            f"{cfg.grad_accum * 2} (same tokens per step; --resume continues from the last "
            "checkpoint)") from None
    finally:
        tracker.close()


def placement(device: str, dtype: str, compile: bool) -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None). CPU trains in float32, eager."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise WorkbenchError("--device cuda but no CUDA device is visible; use --device cpu")
        torch.set_float32_matmul_precision("high")  # TF32 matmuls, as nanoGPT
        bf16 = dtype == "bfloat16" or dtype == "auto" and torch.cuda.is_bf16_supported()
        return torch.device(name), torch.bfloat16 if bf16 else None
    if name != "cpu":
        raise WorkbenchError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    if dtype == "bfloat16":
        raise WorkbenchError("--dtype bfloat16 is for CUDA; the CPU trains in float32")
    if compile:
        raise WorkbenchError("--compile needs a CUDA device; the CPU trains eagerly")
    return torch.device("cpu"), None


def _model_config(model_dir: Path, label: str, block_size: int) -> Any:
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise WorkbenchError(f"{model_dir} has no config.json: is it a Hugging Face checkpoint?")
    config = AutoConfig.from_pretrained(str(model_dir))
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise WorkbenchError(f"{label}: architecture {config.model_type!r} is not supported; "
                             "fine-tune a GPT-2-family checkpoint")
    if block_size > config.n_positions:
        raise WorkbenchError(f"--block-size {block_size} exceeds {label}'s context of "
                             f"{config.n_positions} positions")
    return config


def _resume_state(cfg: FinetuneConfig, out: Path) -> ckpt.RunState | None:
    directory = out / ckpt.CHECKPOINT_DIR
    if not cfg.resume:
        if (directory / "state.json").is_file():
            raise WorkbenchError(f"{out} already holds a run; pass --resume to continue it or "
                                 "choose another --out")
        return None
    state = ckpt.read_state(directory)
    mismatch = cfg.resume_mismatch(state.config)
    if mismatch:
        raise WorkbenchError(f"cannot resume exactly: {mismatch}")
    return state


def load_for_training(directory: Path, dropout: float, device: torch.device) -> Any:
    """A float32 `GPT2LMHeadModel` from a checkpoint directory, with our dropout, on `device`."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        str(directory), dtype=torch.float32, resid_pdrop=dropout, embd_pdrop=dropout,
        attn_pdrop=dropout)
    return model.to(device)


def make_optimizer(model: torch.nn.Module, cfg: FinetuneConfig, device: torch.device
                   ) -> torch.optim.AdamW:
    """AdamW as nanoGPT: decay 2-D parameters (weights, embeddings), not biases or gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda")


def lr_at(step: int, cfg: FinetuneConfig, max_steps: int) -> float:
    """Learning rate of (0-based) step `step`: linear warmup, then cosine decay to `min_lr`."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if step >= max_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup) / max(1, max_steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def train_step(model: Any, optimizer: torch.optim.Optimizer, batches: Batches,
               cfg: FinetuneConfig, device: torch.device, amp: torch.dtype | None
               ) -> tuple[float, float]:
    """One optimizer step over `grad_accum` micro-batches -> (mean loss, gradient norm)."""
    loss = accumulate(model, batches, cfg, device, amp)
    return loss, update(optimizer, cfg)


def accumulate(model: Any, batches: Batches, cfg: FinetuneConfig, device: torch.device,
               amp: torch.dtype | None) -> float:
    """Forward and backward over `grad_accum` micro-batches -> their mean loss. The weights
    and optimizer do not change here; only gradients and the data position do."""
    total = torch.zeros((), device=device)
    for _ in range(cfg.grad_accum):
        x, y = (t.to(device, non_blocking=True) for t in batches.next())
        with _autocast(device, amp):
            loss = lm_loss(model, x, y)
        (loss / cfg.grad_accum).backward()
        total += loss.detach()
    return (total / cfg.grad_accum).item()


def update(optimizer: torch.optim.Optimizer, cfg: FinetuneConfig) -> float:
    """Clip the global gradient norm, step, clear the gradients -> the norm before clipping."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    limit = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def lm_loss(model: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; x, y (batch, block_size)."""
    logits = model(input_ids=x, use_cache=False).logits  # (batch, block_size, vocab)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


def _autocast(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def _advice(cfg: FinetuneConfig, data: TokenSplits) -> str:
    """What to change when the training split is too small, from the rows actually read."""
    read = data.meta.get("train_rows", 0) + data.meta.get("val_rows", 0)
    fix = "lower --block-size or --micro-batch"
    if read < cfg.rows:  # the data ran out before --rows: raising it cannot help
        return f"the data has only {read:,} rows (--rows {cfg.rows:,}): give more text, or {fix}"
    return f"raise --rows (now {cfg.rows:,}), or {fix}"


def _train(cfg: FinetuneConfig, out: Path, weights: Path, codec: Codec, data: TokenSplits,
           state: ckpt.RunState | None, tracker: Tracker, device: torch.device,
           amp: torch.dtype | None) -> FinetuneResult:
    torch.manual_seed(cfg.seed)
    model = load_for_training(weights, cfg.dropout, device)
    optimizer = make_optimizer(model, cfg, device)
    batches = Batches(data.train, cfg.block_size, cfg.micro_batch, cfg.seed, _advice(cfg, data))
    step, tokens = 0, 0
    if state is not None:
        ckpt.restore(out / ckpt.CHECKPOINT_DIR, optimizer)
        batches.seek(state.epoch, state.cursor)
        step, tokens = state.step, state.tokens
    max_steps = cfg.max_steps or batches.steps_per_epoch(cfg.grad_accum)
    prompts = _task_prompts(codec, cfg.task_n, tracker)
    train_model = torch.compile(model) if cfg.compile else model
    if cfg.wandb:
        tracker.start_wandb(cfg.to_json(), out, cfg.wandb_project,
                            state.wandb_id if state else None)
    tracker.emit({"kind": "start", "step": step, "max_steps": max_steps,
                  "tokens_per_step": cfg.tokens_per_step, "resumed": state is not None,
                  "train_tokens": len(data.train), "val_tokens": len(data.val),
                  "device": str(device), "autocast": str(amp).removeprefix("torch.")})

    saved = -1

    def save() -> None:
        nonlocal saved
        if saved == step:
            return
        saved = step
        ckpt.save(out / ckpt.CHECKPOINT_DIR, model, optimizer, ckpt.RunState(
            step, *batches.position, tokens, tracker.wandb_id, cfg.to_json()), codec.save)
        tracker.emit({"kind": "checkpoint", "step": step,
                      "path": str(out / ckpt.CHECKPOINT_DIR)})

    start = time.perf_counter()
    train_loss = val_loss = accuracy = None
    interrupted, phase = False, "idle"
    if state is None:
        val_loss, accuracy = _evaluate(model, data, prompts, cfg, device, amp, step, tracker)
    with _stop_on_sigint() as stop:
        try:
            mark_tokens, clock = tokens, 0.0
            while step < max_steps and not stop.requested:
                before = batches.position
                lr = lr_at(step, cfg, max_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0 = time.perf_counter()
                phase = "accumulate"
                train_loss = accumulate(train_model, batches, cfg, device, amp)
                phase = "update"
                norm = update(optimizer, cfg)
                phase = "idle"
                step, tokens = step + 1, tokens + cfg.tokens_per_step
                clock += time.perf_counter() - t0
                if step % cfg.log_every == 0 or step == max_steps:
                    tracker.emit({"kind": "train", "step": step, "max_steps": max_steps,
                                  "loss": train_loss, "lr": lr, "grad_norm": norm,
                                  "tokens": tokens,
                                  "tokens_per_s": (tokens - mark_tokens) / max(clock, 1e-9),
                                  "seconds": round(time.perf_counter() - start, 3)})
                    mark_tokens, clock = tokens, 0.0
                if step % cfg.eval_every == 0 or step == max_steps:
                    val_loss, accuracy = _evaluate(model, data, prompts, cfg, device, amp, step,
                                                   tracker)
                if step % cfg.save_every == 0 and step < max_steps:
                    save()
            interrupted = stop.requested and step < max_steps
        except KeyboardInterrupt:
            if phase == "update":  # the weights may be half-updated: keep the last checkpoint
                tracker.emit({"kind": "note", "step": step, "message": "interrupted inside an "
                              "optimizer update; the last saved checkpoint stands"})
                raise
            if phase == "accumulate":  # nothing but gradients and data position moved
                batches.seek(*before)
                optimizer.zero_grad(set_to_none=True)
            model.train()
            interrupted = True
    save()
    if interrupted:
        tracker.emit({"kind": "note", "step": step, "message": f"interrupted at step {step}; "
                      "continue with the same command plus --resume"})
    else:
        export(out, model, codec, cfg, step, tokens, val_loss, accuracy, data)
    seconds = time.perf_counter() - start
    tracker.emit({"kind": "end", "step": step, "tokens": tokens, "seconds": round(seconds, 3),
                  "interrupted": interrupted})
    return FinetuneResult(step, max_steps, tokens, seconds, train_loss, val_loss, accuracy,
                          interrupted, out)


@contextlib.contextmanager
def _stop_on_sigint() -> Iterator[Any]:
    """The first Ctrl-C asks the loop to stop after the current step; a second one raises
    KeyboardInterrupt at once. Off the main thread, Ctrl-C raises as usual."""

    class Stop:
        requested = False

    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _task_prompts(codec: Codec, n: int, tracker: Tracker) -> EncodedPrompts | None:
    """Held-out multiplication prompts, or None (with one note) when they cannot be encoded."""
    name, options = TASK
    try:
        pairs = make_task(name, **options).pairs(n, seed=0, split="test")
        return encode(pairs, codec.task_tokenizer())
    except WorkbenchError as exc:
        tracker.emit({"kind": "note", "message": f"skipping the {name} accuracy: {exc}"})
        return None


@torch.no_grad()
def _evaluate(model: Any, data: TokenSplits, prompts: EncodedPrompts | None,
              cfg: FinetuneConfig, device: torch.device, amp: torch.dtype | None, step: int,
              tracker: Tracker) -> tuple[float | None, float | None]:
    """Held-out loss and task exact match; emits an `eval` row."""
    model.eval()
    val_loss = None
    if n_windows(data.val, cfg.block_size) > 0:
        losses, counts = [], []
        for x, y in eval_batches(data.val, cfg.block_size, cfg.micro_batch, cfg.eval_batches):
            with _autocast(device, amp):
                losses.append(lm_loss(model, x.to(device), y.to(device)).item())
            counts.append(x.shape[0])
        val_loss = sum(v * c for v, c in zip(losses, counts, strict=True)) / sum(counts)
    accuracy, per_digit = None, None
    if prompts is not None:
        correct, digits = [], []
        for i in range(0, prompts.n, 256):
            part = prompts.subset(slice(i, i + 256)).to(device)
            with _autocast(device, amp):
                al = answer_logits(model(input_ids=part.clean, use_cache=False).logits.float(),
                                   part)  # (batch, n_answer, vocab)
            correct.append(correct_per_prompt(al, part).float().cpu())
            digits.append((al.argmax(-1) == part.answer).float().cpu())
        accuracy = torch.cat(correct).mean().item()
        per_digit = [round(v, 4) for v in torch.cat(digits).mean(0).tolist()]
    model.train()
    tracker.emit({"kind": "eval", "step": step, "val_loss": val_loss, "task_accuracy": accuracy,
                  "task_per_digit": per_digit})
    return val_loss, accuracy
