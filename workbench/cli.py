"""The `workbench` command: open a model (the TUI), or run one subcommand (`SUBCOMMANDS`).

Every `WorkbenchError` ends the command with its one line on stderr and exit status 2; any other
exception (a bug) prints one line naming a crash report file, exit status 3. Nothing here
computes anything itself: it parses flags and calls the core.

To add a subcommand: write `cmd_NAME(argv) -> int` building its parser with `_parser(...)` (which
adds the settings flags and help for every flag), and add one `Subcommand` row to `SUBCOMMANDS`;
`workbench --help` lists it from there. Other modules may add rows with `register`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench.commands import DTYPES
from workbench.errors import WorkbenchError, crash_report


@dataclass(frozen=True)
class Subcommand:
    """One `workbench NAME ...` subcommand: its handler and the line `--help` shows for it."""

    name: str
    summary: str
    run: Callable[[list[str]], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register(name: str, summary: str, run: Callable[[list[str]], int]) -> None:
    """Add a subcommand (`workbench NAME`); the name must be new."""
    if name in SUBCOMMANDS:
        raise ValueError(f"subcommand {name} is registered twice")
    SUBCOMMANDS[name] = Subcommand(name, summary, run)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verb = args[0] if args and args[0] in SUBCOMMANDS else "open"
    if args and args[0] == verb:
        args = args[1:]
    try:
        return SUBCOMMANDS[verb].run(args)
    except WorkbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a path the user gave that cannot be read or written
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot use{where}: {exc.strerror or exc}; check the path and its "
              "permissions", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: one line and a crash report, never a traceback
        print(f"error: {crash_report(exc, 'workbench ' + ' '.join(args)[:500])}",
              file=sys.stderr)
        return 3


def _subcommand_list() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    rows = [f"  {name:<{width}}  {sub.summary}" for name, sub in SUBCOMMANDS.items()
            if name != "open"]
    return "subcommands (workbench NAME --help for each):\n" + "\n".join(rows)


def _parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A subcommand's parser with the settings flags (`--home`, `--log-level`, ...)."""
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("settings (also WORKBENCH_* variables and settings.toml)")
    g.add_argument("--home", default=None, metavar="DIR",
                   help="data folder for sessions and crash reports (WORKBENCH_HOME)")
    g.add_argument("--log-level", default=None, metavar="LEVEL",
                   help="logging level: DEBUG, INFO, WARNING, ERROR (WORKBENCH_LOG)")
    g.add_argument("--max-prompts", type=int, default=None, metavar="N",
                   help="largest prompt set a task may build (WORKBENCH_MAX_PROMPTS)")
    return p


def _parse(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse, then fix the settings from the flags and start logging at their level."""
    from workbench import settings

    args = p.parse_args(argv)
    chosen = settings.configure(home=args.home, log_level=args.log_level,
                                max_prompts=args.max_prompts)
    logging.basicConfig(level=chosen.log_level)
    return args


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
    from workbench import settings

    n, seed = _int_word(options.pop("n", "256"), "n"), _int_word(options.pop("seed", "0"), "seed")
    limit = settings.current().max_prompts
    if not 1 <= n <= limit:
        raise WorkbenchError(f"n={n} must be between 1 and the limit {limit:,}: raise the limit "
                             f"with --max-prompts {n} (or WORKBENCH_MAX_PROMPTS)")
    corrupt = options.pop("corrupt", None)
    return n, seed, corrupt, options


def _int_word(value: str, key: str) -> int:
    if not value.isascii() or not value.lstrip("+-").isdigit() or len(value) > 12:
        raise WorkbenchError(f"{key}={value[:40]} must be an integer, like {key}=256")
    return int(value)


def evaluate(model: Any, task_name: str, options: dict[str, str]) -> dict[str, Any]:
    """Metrics of a loaded model on a generated prompt set, as `eval --json` prints them."""
    import torch

    from workbench.metrics import Report, answer_logits
    from workbench.tasks import make_task
    from workbench.tasks.encode import encode

    n, seed, corrupt, task_options = _split_run_options(dict(options))
    task = make_task(task_name, **task_options)
    enc = encode(task.prompt_set(n, seed, corrupt, split="test"), model.tokenizer)
    chunk = max(1, 2**24 // (enc.clean.numel() // enc.n * len(model.tokenizer)))  # ~64 MB each
    parts = [enc.subset(slice(i, i + chunk)) for i in range(0, enc.n, chunk)]
    al = torch.cat([answer_logits(model.logits(part.clean), part) for part in parts])
    report = Report.of(al, enc)
    typed = {k: getattr(task, k) for k in task_options}  # as the task read them
    return {"model": model.identity.source, "identity": model.identity.sha256,
            "dtype": model.card.dtype, "task": task_name, "options": typed, **asdict(report)}


def cmd_eval(argv: list[str]) -> int:
    p = _parser("workbench eval", "metrics of a model on a task's prompt set")
    p.add_argument("--model", default="add3",
                   help="bundled name, checkpoint folder or cached hub name (default: add3)")
    p.add_argument("--task", default=None, help="default: the task the model was trained on")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weights and engine dtype (default: float32)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("options", nargs="*", help="task options and n=, seed=, corrupt=")
    args = _parse(p, argv)
    from workbench.model import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype)
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
              f"{result['logit_diff']:.3f}, answer prob {result['prob']:.3f}, prob diff "
              f"{result['prob_diff']:.3f}")
    return 0


def cmd_open(argv: list[str]) -> int:
    """Open the TUI on a model; `--session PATH` names the log (an existing one is resumed)."""
    p = _parser("workbench", "Circuit Workbench: open a model in the terminal workbench (TUI), "
                "or run a subcommand", epilog=_subcommand_list())
    p.add_argument("model", nargs="?", default=None, help="default: add3, or the session's")
    p.add_argument("--session", type=Path, default=None,
                   help="session log (default: a new timestamped file in the data directory)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="weights and engine dtype (default: float32; half precision halves "
                   "the memory, sums stay in float32)")
    p.add_argument("--download", action="store_true", help="allow fetching a hub model")
    args = _parse(p, argv)
    from workbench.sessionlog import default_session_path
    from workbench.tui.app import run_app

    path = args.session if args.session is not None else default_session_path()
    return run_app(args.model, path, device=args.device, download=args.download,
                   dtype=args.dtype)


def _mix(specs: list[str]) -> list[dict[str, Any]]:
    """`--mix 'counting kind=months'` -> [{"task": "counting", "options": {"kind": "months"}}],
    options typed as the task reads them."""
    from workbench.tasks import make_task

    out = []
    for spec in specs:
        words = spec.split()
        if not words:
            raise WorkbenchError("--mix needs a task name, e.g. --mix 'counting kind=months'")
        options = dict(key_values(words[1:]))
        task = make_task(words[0], **options)
        out.append({"task": words[0], "options": {k: getattr(task, k) for k in options}})
    return out


def cmd_train(argv: list[str]) -> int:
    from workbench.train import TrainConfig, command_line, train, write_card

    p = _parser("workbench train", "train a toy model on a task (reproducible from a seed)")
    p.add_argument("--task", required=True, help="task to learn, e.g. addition")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--name", default=None, help="model card title (default: the folder name)")
    p.add_argument("options", nargs="*", help="task options, e.g. digits=3")
    defaults = TrainConfig(task="addition")
    for field, text in TRAIN_FLAGS.items():
        kind = float if field in ("lr", "weight_decay") else int
        p.add_argument(f"--{field.replace('_', '-')}", type=kind, default=getattr(defaults, field),
                       help=f"{text} (default: {getattr(defaults, field)})")
    p.add_argument("--target", type=float, default=None,
                   help="stop once held-out exact match reaches this")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop at this step but keep the --steps-long schedule")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps")
    p.add_argument("--tokenizer", choices=("digits", "gpt2"), default="digits",
                   help="digits (one token per character) or gpt2 (GPT-2's exact BPE)")
    p.add_argument("--mix", action="append", default=[], metavar="'TASK key=value ...'",
                   help="train this task too (repeatable), e.g. --mix 'counting kind=months'")
    p.add_argument("--half", action="store_true", help="store the weights in float16")
    args = _parse(p, argv)
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
                                      "stop_at", "save_every")},
                      tokenizer=args.tokenizer, half=args.half, mix=_mix(args.mix))

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
    p = _parser("workbench replay", "re-execute a session file or script headless and check "
                "its recorded digests; exit 1 on any failure, difference or edited line")
    p.add_argument("file", type=Path, help="a session log (.jsonl) or a script of commands")
    p.add_argument("--json", action="store_true", help="one JSON object per command")
    p.add_argument("--keep-going", action="store_true",
                   help="run every command even after a failure (the exit status still says)")
    p.add_argument("--log", type=Path, default=None, help="also record the replay here")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="folder for the files its save/export write (default: FILE.replay/ "
                   "beside it); absolute paths and .. are refused")
    p.add_argument("--allow-writes", action="store_true",
                   help="let save/export write where the file says (only for files you trust)")
    args = _parse(p, argv)
    from workbench.replay import replay

    def show(outcome: Any) -> None:
        if args.json:
            print(json.dumps(outcome.to_json()), flush=True)
        elif outcome.ok:
            print(f"[{outcome.n}] {outcome.cmd}: {_brief(outcome.out)}", flush=True)
        else:
            print(f"[{outcome.n}] {outcome.cmd}: error: {outcome.error}", flush=True)

    report = replay(args.file, keep_going=args.keep_going, log_to=args.log, on_outcome=show,
                    out=args.out, allow_writes=args.allow_writes)
    for problem in report.problems:
        print(f"integrity: {problem}", file=sys.stderr)
    for m in report.mismatches:
        print(f"digest differs at command {m.n} ({m.cmd}): recorded {m.recorded}, "
              f"now {m.now}", file=sys.stderr)
    for f in report.failures:
        print(f"command {f.n} failed: {f.cmd}: {f.error}", file=sys.stderr)
    if not report.ok:
        print(report.summary(), file=sys.stderr)
    return 0 if report.ok else 1


def _brief(out: dict[str, Any]) -> str:
    """One line for a command's outcome in text mode."""
    if "percent" in out:
        pct = "n/a" if out["percent"] is None else f"{out['percent']:.1f}%"
        return (f"performance {pct}, {out['metric_name']} {out['metric']}, accuracy "
                f"{out['accuracy']}")
    if "path" in out:  # export, save
        return f"wrote {out.get('written') or out['path']}"
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

    p = _parser("workbench finetune", "fine-tune a GPT-2-family model on text (FineMath or a "
                "local file), nanoGPT-style; Ctrl-C saves")
    ft_config.add_arguments(p)
    cfg = ft_config.from_args(_parse(p, argv))
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


def cmd_plot_train(argv: list[str]) -> int:
    """Per-digit loss/accuracy curves of a `workbench train` run, shelves marked; with
    --confusion, per-digit confusion matrices and carry accuracy at its saved checkpoints."""
    p = argparse.ArgumentParser(prog="workbench plot-train",
                                description="plot a training run's dynamics")
    p.add_argument("run", type=Path, help="a directory written by workbench train")
    p.add_argument("--out", type=Path, required=True, help="FILE.png|.svg|.pdf")
    p.add_argument("--confusion", type=Path, default=None,
                   help="also write confusion matrices at the saved checkpoints here")
    p.add_argument("--n", type=int, default=500, help="held-out problems per checkpoint")
    args = p.parse_args(argv)
    from workbench.figures_mpl import FORMATS, save
    from workbench.training import curves_figure, dynamics, dynamics_figure, read_log, shelf_lines

    for out in (args.out, args.confusion):
        if out is not None and out.suffix.lower().lstrip(".") not in FORMATS:
            raise WorkbenchError(f"plot-train: '{out}' needs a suffix .png|.svg|.pdf")
    log = read_log(args.run)
    print(f"wrote {save(curves_figure(log), args.out)}: {log.n_digits} digits, "
          f"{len(log.steps)} logged steps")
    for line in shelf_lines(log):
        print(f"shelf {line}")
    if args.confusion is not None:
        snaps = dynamics(args.run, n=args.n)
        steps = ", ".join(str(s.step) for s in snaps)
        print(f"wrote {save(dynamics_figure(snaps), args.confusion)}: checkpoints at {steps}")
    return 0


TRAIN_FLAGS = {
    "seed": "random seed of data order and initial weights",
    "steps": "length of the learning-rate schedule, in steps",
    "batch": "prompts per step",
    "n_layer": "transformer layers",
    "d_model": "residual stream width",
    "n_head": "attention heads per layer",
    "warmup": "linear warm-up steps",
    "log_every": "log the training loss every N steps",
    "eval_every": "score held-out exact match every N steps",
    "eval_n": "held-out prompts per evaluation",
    "threads": "torch CPU threads",
    "lr": "peak learning rate",
    "weight_decay": "AdamW weight decay",
}

register("open", "open a model in the terminal workbench (the default)", cmd_open)
register("eval", "metrics of a model on a task's prompt set (--json for one object)", cmd_eval)
register("train", "train a bundled-style toy model on a task", cmd_train)
register("replay", "re-execute a session file headless; check digests and integrity",
         cmd_replay)
register("finetune", "fine-tune a GPT-2-family checkpoint on text", cmd_finetune)


SAE_FLAGS = {
    "d_sae": "dictionary features",
    "k": "active features per vector (topk)",
    "steps": "optimizer steps",
    "batch": "prompts per step",
    "seed": "random seed of data order, initial weights and resampling",
    "resample_every": "resample dead features every N steps",
    "eval_every": "measure L0 / FVU / dead / replacement every N steps",
    "eval_n": "held-out prompts per evaluation",
    "threads": "torch CPU threads",
    "l1": "sparsity coefficient (relu: L1, jumprelu: L0)",
    "lr": "Adam learning rate",
}


def cmd_train_sae(argv: list[str]) -> int:
    """Train an SAE (attn_out|mlp_out|resid_pre) or an MLP transcoder; Ctrl-C saves."""
    from rich import progress as rp

    from workbench.features.train import SaeConfig, command_line, train_sae

    defaults = SaeConfig()
    p = argparse.ArgumentParser(prog="workbench train-sae",
                                description="train a sparse dictionary on a model's activations")
    p.add_argument("--model", default=defaults.model,
                   help="bundled name, checkpoint folder or cached hub name (default add3)")
    p.add_argument("--site", required=True, help="attn_out | mlp_out | resid_pre | mlp")
    p.add_argument("--layer", type=int, required=True, help="the layer of the site")
    p.add_argument("--transcoder", action="store_true", help="with --site mlp: MLP in -> out")
    p.add_argument("--out", required=True, type=Path,
                   help="folder to write (SAELens layout: cfg.json + sae_weights.safetensors)")
    p.add_argument("--task", default=None, help="default: the model's own task")
    p.add_argument("--text", default=None, help="a text file to stream instead of a task")
    p.add_argument("--sparsity", default=defaults.sparsity, help="topk | relu (L1) | jumprelu")
    for name, text in SAE_FLAGS.items():
        kind = float if name in ("l1", "lr") else int
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name),
                       help=f"{text} (default {getattr(defaults, name)})")
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


register("train-sae", "train an SAE (attn_out|mlp_out|resid_pre) or an MLP transcoder",
         cmd_train_sae)
register("plot-train", "per-digit training curves of a run (and confusion at its checkpoints)",
         cmd_plot_train)
