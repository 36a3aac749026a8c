"""The `workbench` command: open a model, `eval`, `train` (and later verbs as they land).

Every `WorkbenchError` ends the command with its one line on stderr and exit status 2; nothing
here computes anything itself, it parses flags and calls the core.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError

VERBS = ("eval", "train", "replay", "open", "finetune", "train-sae")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("WORKBENCH_LOG", "WARNING"))
    verb = args[0] if args and args[0] in VERBS else "open"
    if args and args[0] == verb:
        args = args[1:]
    handlers: dict[str, Callable[[list[str]], int]] = {
        "open": cmd_open, "eval": cmd_eval, "train": cmd_train, "replay": cmd_replay,
        "finetune": cmd_finetune, "train-sae": cmd_train_sae,
    }
    try:
        return handlers[verb](args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def key_values(items: Sequence[str]) -> dict[str, str]:
    """`key=value` words -> dict; anything else is a clear error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WorkbenchError(f"expected key=value, got {item!r}")
        out[key] = value
    return out


def _split_run_options(options: dict[str, str]) -> tuple[int, int, str | None, dict[str, str]]:
    n = int(options.pop("n", "256"))
    seed = int(options.pop("seed", "0"))
    corrupt = options.pop("corrupt", None)
    return n, seed, corrupt, options


def evaluate(model: Any, task_name: str, options: dict[str, str]) -> dict[str, Any]:
    """Metrics of a loaded model on a generated prompt set, as `eval --json` prints them."""
    from workbench.metrics import Report, answer_logits
    from workbench.tasks import make_task
    from workbench.tasks.encode import encode

    n, seed, corrupt, task_options = _split_run_options(dict(options))
    task = make_task(task_name, **task_options)
    enc = encode(task.prompt_set(n, seed, corrupt, split="test"), model.tokenizer)
    report = Report.of(answer_logits(model.logits(enc.clean), enc), enc)
    typed = {k: getattr(task, k) for k in task_options}  # as the task read them
    return {"model": model.identity.source, "identity": model.identity.sha256,
            "task": task_name, "options": typed, **asdict(report)}


def cmd_eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="workbench eval", description="metrics on a task")
    p.add_argument("--model", default="add3")
    p.add_argument("--task", default=None, help="default: the task the model was trained on")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.add_argument("options", nargs="*", help="task options and n=, seed=, corrupt=")
    args = p.parse_args(argv)
    from workbench.model import load_model

    model = load_model(args.model, device=args.device)
    task, defaults = model.default_task()
    options = {**({k: str(v) for k, v in defaults.items()} if args.task is None else {}),
               **key_values(args.options)}
    result = evaluate(model, args.task or task, options)
    if args.json:
        print(json.dumps(result))
    else:
        digits = " ".join(f"{a:.3f}" for a in result["per_digit_accuracy"])
        print(f"{result['model']} on {result['task']} (n={result['n']}): accuracy "
              f"{result['accuracy']:.4f}, per digit [{digits}], logit diff "
              f"{result['logit_diff']:.3f}, answer prob {result['prob']:.3f}")
    return 0


def cmd_open(argv: list[str]) -> int:
    """Open the TUI on a model; `--session PATH` names the log (an existing one is resumed)."""
    p = argparse.ArgumentParser(prog="workbench", description="Circuit Workbench")
    p.add_argument("model", nargs="?", default=None, help="default: add3, or the session's")
    p.add_argument("--session", type=Path, default=None,
                   help="session log (default: a new timestamped file in the data directory)")
    p.add_argument("--device", default="auto")
    p.add_argument("--download", action="store_true", help="allow fetching a hub model")
    args = p.parse_args(argv)
    from workbench.sessionlog import default_session_path
    from workbench.tui.app import run_app

    path = args.session if args.session is not None else default_session_path()
    return run_app(args.model, path, device=args.device, download=args.download)


def cmd_train(argv: list[str]) -> int:
    from workbench.train import TrainConfig, command_line, train, write_card

    p = argparse.ArgumentParser(prog="workbench train", description="train a toy model")
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", default=None, help="model card title (default: the folder name)")
    p.add_argument("options", nargs="*", help="task options, e.g. digits=3")
    defaults = TrainConfig(task="addition")
    for field in ("seed", "steps", "batch", "n_layer", "d_model", "n_head", "warmup",
                  "log_every", "eval_every", "eval_n", "threads"):
        p.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(defaults, field))
    for field in ("lr", "weight_decay"):
        p.add_argument(f"--{field.replace('_', '-')}", type=float,
                       default=getattr(defaults, field))
    p.add_argument("--target", type=float, default=None,
                   help="stop once held-out exact match reaches this")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop at this step but keep the --steps-long schedule")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    args = p.parse_args(argv)
    from workbench.tasks import TASKS, make_task

    task_options: dict[str, Any] = dict(key_values(args.options))
    task = make_task(args.task, **task_options)  # validates options, coerces types
    task_options = {k: getattr(task, k) for k in task_options}
    if args.task not in TASKS:
        raise WorkbenchError(f"unknown task {args.task!r}")
    cfg = TrainConfig(task=args.task, task_options=task_options, **{
        f: getattr(args, f) for f in ("seed", "steps", "batch", "n_layer", "d_model", "n_head",
                                      "lr", "weight_decay", "warmup", "log_every",
                                      "eval_every", "eval_n", "target", "threads",
                                      "stop_at", "save_every")})

    def show(row: dict[str, Any]) -> None:
        if row["split"] == "test":
            print(f"step {row['step']:>6}  held-out exact match {row['exact_match']:.4f}  "
                  f"per digit {row['digit_acc']}", flush=True)
        else:
            print(f"step {row['step']:>6}  loss {row['loss']:.4f}  digit loss "
                  f"{row['digit_loss']}", flush=True)

    result = train(cfg, args.out, on_log=show)
    write_card(args.out, cfg, result, command_line(cfg, args.out), args.name)
    print(f"saved {args.out}: held-out exact match {result.held_out_accuracy:.4f} after "
          f"{result.steps} steps ({result.seconds:.0f} s)")
    return 0


def cmd_replay(argv: list[str]) -> int:
    """Re-execute a session file or script headless; exit 1 on a failure or digest change."""
    p = argparse.ArgumentParser(prog="workbench replay", description="replay a session")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per command")
    p.add_argument("--keep-going", action="store_true", help="do not stop at a failure")
    p.add_argument("--log", type=Path, default=None, help="also record the replay here")
    args = p.parse_args(argv)
    from workbench.replay import replay

    def show(outcome: Any) -> None:
        if args.json:
            print(json.dumps(outcome.to_json()), flush=True)
        elif outcome.ok:
            print(f"[{outcome.n}] {outcome.cmd}: {_brief(outcome.out)}", flush=True)
        else:
            print(f"[{outcome.n}] {outcome.cmd}: error: {outcome.error}", flush=True)

    report = replay(args.file, keep_going=args.keep_going, log_to=args.log, on_outcome=show)
    for m in report.mismatches:
        print(f"digest differs at command {m.n} ({m.cmd}): recorded {m.recorded}, "
              f"now {m.now}", file=sys.stderr)
    for f in report.failures:
        print(f"command {f.n} failed: {f.cmd}: {f.error}", file=sys.stderr)
    return 0 if report.ok or (args.keep_going and not report.mismatches) else 1


def _brief(out: dict[str, Any]) -> str:
    """One line for a command's outcome in text mode."""
    if "percent" in out:
        pct = "n/a" if out["percent"] is None else f"{out['percent']:.1f}%"
        return (f"performance {pct}, {out['metric_name']} {out['metric']}, accuracy "
                f"{out['accuracy']}")
    if "path" in out:  # export, save
        return f"wrote {out['path']}"
    if "id" in out:
        return f"-> {out['id']}" + (f" ({out['title']})" if "title" in out else "")
    if "text" in out:
        return "\n" + out["text"]
    return json.dumps(out)[:200]


def cmd_finetune(argv: list[str]) -> int:
    """Fine-tune a GPT-2-family checkpoint on text, with a progress bar; Ctrl-C saves."""
    from rich import progress as rp

    from workbench.finetune import config as ft_config
    from workbench.finetune import finetune

    p = argparse.ArgumentParser(prog="workbench finetune",
                                description="fine-tune a GPT-2-family model on text")
    ft_config.add_arguments(p)
    cfg = ft_config.from_args(p.parse_args(argv))
    progress = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(bar_width=24),
                           rp.MofNCompleteColumn(), rp.TextColumn("{task.fields[info]}"),
                           rp.TimeElapsedColumn(), rp.TextColumn("eta"), rp.TimeRemainingColumn())
    tasks: dict[str, Any] = {}

    def show(row: dict[str, Any]) -> None:
        kind = row["kind"]
        if kind == "data":
            if "data" not in tasks:
                tasks["data"] = progress.add_task("tokenizing", total=row["of"], info="")
            progress.update(tasks["data"], completed=row["rows"], info=f"{row['tokens']:,} tok")
        elif kind == "start":
            tasks["train"] = progress.add_task("training", total=row["max_steps"],
                                               completed=row["step"], info="")
        elif kind == "train":
            progress.update(tasks["train"], completed=row["step"], info=(
                f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s"))
        elif kind == "eval":
            val = "n/a" if row["val_loss"] is None else f"{row['val_loss']:.4f}"
            acc = "n/a" if row["task_accuracy"] is None else f"{row['task_accuracy']:.4f}"
            progress.console.print(f"step {row['step']:>6}  val loss {val}  "
                                   f"multiplication exact match {acc}")
        elif kind == "checkpoint":
            progress.console.print(f"step {row['step']:>6}  checkpoint saved to {row['path']}")
        elif kind == "note":
            progress.console.print(row["message"])

    with progress:
        result = finetune(cfg, on_log=show)
    if result.interrupted:
        print(f"stopped at step {result.step}/{result.max_steps}; resume with the same command "
              "plus --resume")
        return 130
    print(f"saved {result.out}: {result.step} steps, {result.tokens:,} tokens, val loss "
          f"{'n/a' if result.val_loss is None else f'{result.val_loss:.4f}'}, multiplication "
          f"exact match {'n/a' if result.task_accuracy is None else f'{result.task_accuracy:.4f}'}"
          f" ({result.seconds:.0f} s)")
    return 0


def cmd_train_sae(argv: list[str]) -> int:
    """Train an SAE (attn_out|mlp_out|resid_pre) or an MLP transcoder; Ctrl-C saves."""
    from rich import progress as rp

    from workbench.features.train import SaeConfig, command_line, train_sae

    defaults = SaeConfig()
    p = argparse.ArgumentParser(prog="workbench train-sae",
                                description="train a sparse dictionary on a model's activations")
    p.add_argument("--model", default=defaults.model)
    p.add_argument("--site", required=True, help="attn_out | mlp_out | resid_pre | mlp")
    p.add_argument("--layer", type=int, required=True)
    p.add_argument("--transcoder", action="store_true", help="with --site mlp: MLP in -> out")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--task", default=None, help="default: the model's own task")
    p.add_argument("--text", default=None, help="a text file to stream instead of a task")
    p.add_argument("--sparsity", default=defaults.sparsity, help="topk | relu (L1) | jumprelu")
    for name in ("d_sae", "k", "steps", "batch", "seed", "resample_every", "eval_every",
                 "eval_n", "threads"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("l1", "lr"):
        p.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    p.add_argument("--wandb", action="store_true", help="log to wandb (offline unless set up)")
    p.add_argument("options", nargs="*", help="task options, e.g. digits=3")
    args = p.parse_args(argv)
    cfg = SaeConfig(model=args.model, site=args.site, layer=args.layer,
                    transcoder=args.transcoder, task=args.task,
                    task_options=dict(key_values(args.options)), text=args.text,
                    sparsity=args.sparsity, **{n: getattr(args, n) for n in (
                        "d_sae", "k", "steps", "batch", "seed", "resample_every",
                        "eval_every", "eval_n", "threads", "l1", "lr")})
    cfg.check()
    progress = rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(bar_width=24),
                           rp.MofNCompleteColumn(), rp.TextColumn("{task.fields[info]}"),
                           rp.TimeElapsedColumn())
    bar = progress.add_task(f"train-sae {cfg.site} {cfg.layer}", total=cfg.steps, info="")

    def show(row: dict[str, Any]) -> None:
        if row["kind"] == "train":
            progress.update(bar, completed=row["step"],
                            info=f"FVU {row['fvu']:.4f}  L0 {row['l0']:.1f}")
        elif row["kind"] == "eval":
            progress.console.print(
                f"step {row['step']:>6}  L0 {row['l0']:.2f}  FVU {row['fvu']:.4f}  dead "
                f"{row['dead']:.3f}  replacement {row['perf_drop']:.1f}% (error dropped), "
                f"{row['perf_keep']:.1f}% (kept)")
        elif row["kind"] == "resample":
            progress.console.print(f"step {row['step']:>6}  resampled {row['dead']} dead")

    with progress:
        result = train_sae(cfg, args.out, on_log=show, wandb=args.wandb)
    s = result.stats
    print(f"saved {args.out} (SAELens layout): L0 {s['l0']:.2f}, FVU {s['fvu']:.4f}, dead "
          f"{s['dead']:.3f}, replacement {s['perf_drop']:.1f}% after {result.steps} steps "
          f"({result.seconds:.0f} s)")
    if result.interrupted:
        print(f"interrupted; reproduce the full run with: {command_line(cfg, args.out)}")
        return 130
    return 0
