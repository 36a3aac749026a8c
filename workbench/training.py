"""Training dynamics of a `workbench train` run: curves, loss shelves, confusion, carries.

Where it sits: reads a run directory (`train_log.jsonl`, `train_config.json`, the final
checkpoint and, with `--save-every`, `checkpoints/step-NNNNNN/`) for `workbench plot-train`,
the TUI's train tab and `load RUN_DIR step=N`. Builds `workbench.figures` data; draws nothing.

1. `read_log` parses the log: per answer digit, the training loss and accuracy every
   `log_every` steps, and the held-out exact match / per-digit accuracy every `eval_every`.
2. `shelves` finds loss plateaus that are later left (a shelf, not the final floor): runs of at
   least `min_points` logged points whose log-loss stays within `tol`, followed by a drop to
   below half the level. `named_level` says when a level sits on log k (log 10: the digit is
   uniform; log 2: a coin flip over the carry).
3. At each saved checkpoint (the final model counts as the last), `dynamics` runs the model on
   held-out problems of the run's task: per answer digit the mean probability of each digit
   given the true digit (the confusion matrix the notes ask for: average probability, not
   argmax counts), and for addition the accuracy split by whether a carry comes into the digit.

Invariant: reading never writes into the run directory; the same run gives the same figures.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.figures import Heat, Lines, Panels

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"step-(\d+)")
_ADDITION = re.compile(r"(\d+)\s*\+\s*(\d+)\s*=")


@dataclass(frozen=True)
class TrainLog:
    steps: tuple[int, ...]
    digit_loss: tuple[tuple[float, ...], ...]  # [digit][i]
    digit_acc: tuple[tuple[float, ...], ...]
    test_steps: tuple[int, ...]
    exact_match: tuple[float, ...]
    test_digit_acc: tuple[tuple[float, ...], ...]  # [digit][i]

    @property
    def n_digits(self) -> int:
        return len(self.digit_loss)


def read_log(run: str | Path) -> TrainLog:
    path = Path(run) / "train_log.jsonl"
    if not path.is_file():
        raise WorkbenchError(f"{run} has no train_log.jsonl: point at a directory written by "
                             "workbench train (e.g. workbench/models/add3)")
    train: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            (test if row["split"] == "test" else train).append(row)
        except (ValueError, KeyError, TypeError) as exc:
            raise WorkbenchError(f"{path}:{n} is not a training log row ({exc})") from None
    if not train:
        raise WorkbenchError(f"{path} has no training rows")
    n_digits = len(train[0]["digit_loss"])

    def cols(rows: list[dict[str, Any]], key: str) -> tuple[tuple[float, ...], ...]:
        return tuple(tuple(float(r[key][d]) for r in rows) for d in range(n_digits))

    return TrainLog(tuple(int(r["step"]) for r in train), cols(train, "digit_loss"),
                    cols(train, "digit_acc"), tuple(int(r["step"]) for r in test),
                    tuple(float(r["exact_match"]) for r in test), cols(test, "digit_acc"))


def checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every saved checkpoint, oldest first; the run directory itself is
    the last (its step is the last logged one)."""
    run = Path(run)
    found = []
    folder = run / CHECKPOINTS
    if folder.is_dir():
        for child in sorted(folder.iterdir()):
            m = _STEP_DIR.fullmatch(child.name)
            if m and (child / "config.json").is_file():
                found.append((int(m.group(1)), child))
    if (run / "config.json").is_file():
        log = read_log(run) if (run / "train_log.jsonl").is_file() else None
        last = max([*(log.steps if log else ()), *(log.test_steps if log else ())], default=0)
        if not found or found[-1][0] < last:
            found.append((last, run))
    return found


def checkpoint_path(run: str | Path, step: int) -> Path:
    """The directory of the checkpoint saved at `step`; a clear error naming the saved ones."""
    saved = checkpoints(run)
    for at, path in saved:
        if at == step:
            return path
    steps = ", ".join(str(s) for s, _ in saved) or "none"
    raise WorkbenchError(f"{run} has no checkpoint at step {step} (saved: {steps}); train with "
                         "workbench train --save-every N to keep checkpoints")


def shelves(xs: tuple[float, ...] | tuple[int, ...], ys: tuple[float, ...], tol: float = 0.12,
            min_points: int = 4) -> list[tuple[float, float, float]]:
    """(x0, x1, level) of each plateau of `ys` that training later leaves (see the module)."""
    logs = [math.log(max(y, 1e-12)) for y in ys]
    out: list[tuple[float, float, float]] = []
    i = 0
    while i < len(ys):
        j = i
        lo = hi = logs[i]
        while j + 1 < len(ys) and max(hi, logs[j + 1]) - min(lo, logs[j + 1]) <= tol:
            j += 1
            lo, hi = min(lo, logs[j]), max(hi, logs[j])
        level = math.exp((lo + hi) / 2)
        later = ys[j + 1:]
        if j - i + 1 >= min_points and later and min(later) < level / 2:
            out.append((float(xs[i]), float(xs[j]), level))
            i = j + 1
        else:
            i += 1
    return out


def named_level(level: float, within: float = 0.04) -> str | None:
    """'log k' when `level` is within `within` (relative) of log k for k in 2..12."""
    for k in range(2, 13):
        if abs(level - math.log(k)) <= within * math.log(k):
            return f"log {k}"
    return None


def curves_figure(log: TrainLog, marks: tuple[float, ...] = ()) -> Panels:
    """Per-digit loss (log scale, shelves marked), per-digit accuracy, held-out accuracy."""
    names = [f"d{d}" for d in range(log.n_digits)]
    found = tuple((names[d], x0, x1, level) for d in range(log.n_digits)
                  for x0, x1, level in shelves(log.steps, log.digit_loss[d]))
    notes = tuple((x0, level, named_level(level) or f"{level:.3g}") for _, x0, _, level in found)
    loss = Lines("training loss per answer digit (shelves dashed)", "step", "cross-entropy",
                 tuple(float(s) for s in log.steps),
                 tuple(zip(names, log.digit_loss, strict=True)), log_y=True, shelves=found,
                 marks=marks, notes=notes)
    acc = Lines("training accuracy per answer digit", "step", "accuracy",
                tuple(float(s) for s in log.steps), tuple(zip(names, log.digit_acc, strict=True)),
                marks=marks)
    held = Lines("held-out accuracy", "step", "accuracy", tuple(float(s) for s in log.test_steps),
                 (*zip(names, log.test_digit_acc, strict=True),
                  ("exact match", log.exact_match)))
    return Panels("training dynamics", (loss, acc, held))


def shelf_lines(log: TrainLog) -> list[str]:
    """One line per shelf, for the TUI and the CLI."""
    out = []
    for d in range(log.n_digits):
        for x0, x1, level in shelves(log.steps, log.digit_loss[d]):
            name = named_level(level)
            out.append(f"d{d}: loss {level:.3f}{f' (~{name})' if name else ''} "
                       f"from step {x0:g} to {x1:g}")
    return out


# -- checkpoints: confusion and carries ---------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    step: int
    confusion: tuple[tuple[tuple[float, ...], ...], ...]  # [digit][true][predicted] mean prob
    carry_acc: tuple[tuple[float, float], ...] | None  # [digit] (no carry in, carry in)


def _carries_in(a: int, b: int, n_answer: int) -> list[int]:
    """Carry into each answer digit, most significant first (the top digit is the carry)."""
    carry, into = 0, []
    for col in range(n_answer):  # units first
        into.append(carry)
        carry = 1 if (a // 10**col) % 10 + (b // 10**col) % 10 + carry >= 10 else 0
    return into[::-1]


@torch.no_grad()
def snapshot(path: Path, step: int, config: dict[str, Any], n: int = 500) -> Snapshot:
    from transformers import GPT2LMHeadModel

    from workbench.metrics import answer_logits
    from workbench.tasks import make_task
    from workbench.tasks.encode import encode
    from workbench.tokenizer import build_tokenizer

    tok = build_tokenizer()
    task = make_task(config["task"], **config.get("task_options", {}))
    pairs = task.pairs(n, seed=int(config.get("seed", 0)) + 1, split="test")
    enc = encode(pairs, tok)
    model = GPT2LMHeadModel.from_pretrained(str(path)).eval()
    probs = answer_logits(model(enc.clean).logits, enc).softmax(-1)  # (n, digits, vocab)
    digit_ids = torch.tensor(tok.convert_tokens_to_ids(list("0123456789")))
    probs = probs[..., digit_ids]  # (n, digits, 10)
    truth = torch.tensor([[int(c) if c.isdigit() else -1 for c in p.answer] for p in pairs])
    confusion = []
    for d in range(truth.shape[1]):
        rows = []
        for t in range(10):
            mask = truth[:, d] == t
            rows.append(tuple(probs[mask, d].mean(0).tolist()) if mask.any()
                        else (math.nan,) * 10)
        confusion.append(tuple(rows))
    carry = None
    parsed = [_ADDITION.match(p.clean) for p in pairs]
    if config["task"] == "addition" and all(parsed):
        right = (probs.argmax(-1) == truth).float()
        into = torch.tensor([_carries_in(int(m.group(1)), int(m.group(2)), truth.shape[1])
                             for m in parsed if m])
        carry = tuple(tuple(float(right[into[:, d] == c, d].mean()) if (into[:, d] == c).any()
                            else math.nan for c in (0, 1)) for d in range(truth.shape[1]))
    return Snapshot(step, tuple(confusion), carry)  # type: ignore[arg-type]


def dynamics(run: str | Path, n: int = 500, limit: int = 4) -> list[Snapshot]:
    """Snapshots at up to `limit` checkpoints (evenly picked, always the first and last)."""
    run = Path(run)
    config = json.loads((run / "train_config.json").read_text())
    saved = checkpoints(run)
    if len(saved) > limit:
        picks = sorted({round(i * (len(saved) - 1) / (limit - 1)) for i in range(limit)})
        saved = [saved[i] for i in picks]
    return [snapshot(path, step, config, n) for step, path in saved]


def dynamics_figure(snaps: list[Snapshot]) -> Panels:
    """Confusion matrices of each answer digit at each snapshot, then carries over steps."""
    parts: list[Heat | Lines] = []
    for snap in snaps:
        for d, matrix in enumerate(snap.confusion):
            parts.append(Heat(f"step {snap.step} · d{d}: mean p(predicted | true)",
                              tuple(str(t) for t in range(10)), tuple(str(p) for p in range(10)),
                              matrix, "probability", False, "predicted", "true",
                              annotate=False, limit=1.0))
    carried = [s for s in snaps if s.carry_acc is not None]
    if carried:
        n_digits = len(carried[0].carry_acc or ())
        series = []
        for d in range(n_digits):
            for c, name in ((0, "no carry in"), (1, "carry in")):
                ys = tuple((s.carry_acc or ())[d][c] for s in carried)
                if any(math.isfinite(y) for y in ys):
                    series.append((f"d{d} {name}", ys))
        parts.append(Lines("held-out accuracy by carry into the digit", "step", "accuracy",
                           tuple(float(s.step) for s in carried), tuple(series)))
    n_digits = max((len(s.confusion) for s in snaps), default=1)
    return Panels("per-digit confusion at saved checkpoints (rows: steps; last: carries)",
                  tuple(parts), ncols=n_digits, panel=(3.4, 3.0))
