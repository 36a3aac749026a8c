"""Benchmark the TUI: launch to first interactive frame, and toggle to updated performance.

Not a test (DESIGN.md: measure in `bench/`, never in timed tests). Run from the repository root:

    python bench/tui.py [--model add3] [--device cpu] [--repeats 20] [--threads N]
    python bench/tui.py --shape xl [--size 160x50] [--repeats 10] [--threads 1]

1. Launch: build `WorkbenchApp(model=..., session_path=...)` as `workbench MODEL --session P`
   does and run it headless with `App.run_test(size=(100, 30))`; the clock stops when the first
   performance and prompt views are on screen (`launch_to_ready_s`); the grid, card and keys
   are usable earlier, once the model is resident (`app.ready`: `launch_to_usable_warm_s`).
   Measured twice in one process: `cold` includes importing the model stack,
   `warm` is a second launch with it imported.
2. Toggle: with the head grid focused on a1.1, press Enter and wait until the performance pane
   shows the new value (its `view` changes and the big number is redrawn); alternate ablate and
   restore, `--repeats` times; report the median and spread, and the part spent inside
   `Session.execute` (from the outcomes) so UI overhead is visible. The key is delivered two
   ways: posted straight to the app's event loop (`toggle_to_performance`: what a user sees,
   less terminal I/O) and with `Pilot.press` (`..._via_pilot_press`, which also waits for the
   process to go idle, so it adds harness time).

3. `--shape xl`: the same on a random GPT-2-XL-shaped checkpoint of reduced width (48 layers x
   25 heads, d_model 50, digit tokenizer; built in a temp dir, loaded through `load_model`) at
   `--size` (default 160x50). Start-up is split into the `load` command (the model's load
   time) and the rest up to `ready` (default prompt set, first performance and views: the
   "usable screen"). Each toggle records two latencies: key -> the toggled cell repainted in
   the grid (its pending mark: what the user sees at once) and key -> the new performance
   shown. Toggles run on the default 256 prompts and again after `task ... n=32`.

Writes `bench/results/tui.json` (the `--shape xl` run goes under its `xl_shape` key; each run
keeps the other's figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


async def launch(model: str, device: str, path: Path,
                 size: tuple[int, int] = (100, 30)) -> tuple[float, Any]:
    """Seconds from constructing the app to `ready`, and the app (still running)."""
    from workbench.tui.app import WorkbenchApp

    start = time.perf_counter()
    app = WorkbenchApp(model=model, session_path=path, device=device, keymap={})
    context = app.run_test(size=size)
    pilot = await context.__aenter__()
    while not app.ready:  # model resident: grid, card and keys usable
        await pilot.pause(0.005)
    usable = time.perf_counter() - start
    while app.busy or app.snapshot is None or app.snapshot.perf is None:  # first performance
        await pilot.pause(0.005)
    app.usable_s = usable
    return time.perf_counter() - start, (app, context, pilot)


async def toggles(app: Any, pilot: Any, repeats: int, direct: bool) -> dict[str, Any]:
    """Toggle a1.1 `repeats` times; `direct` posts the key event straight to the app (the
    latency a user sees), else uses `pilot.press` (which also waits for the process to go
    idle, so it includes test-harness time)."""
    from textual import events

    from workbench.tui.panes.head_grid import HeadGrid
    from workbench.tui.panes.performance import PerformancePane, percent_text

    pane = app.query_one(PerformancePane)
    digits = app.query_one("#perf-percent")
    grid = app.query_one(HeadGrid)
    grid.focus()
    grid.cursor = (1, 1)  # a1.1: a head that matters in add3
    times, inside = [], []
    for _ in range(repeats):
        await pilot.pause(0.05)
        before = pane.view
        n = len(app.session.outcomes)
        start = time.perf_counter()
        if direct:
            app.post_message(events.Key("enter", "\r"))
        else:
            await pilot.press("enter")
        while pane.view is before or digits.value != percent_text(pane.view):
            await asyncio.sleep(0.0005)
        times.append(time.perf_counter() - start)
        while app.busy:  # let the prompt table finish before the next toggle
            await asyncio.sleep(0.001)
        inside.append(app.session.outcomes[n].seconds)
    return {"n": repeats, "median_ms": 1000 * statistics.median(times),
            "p90_ms": 1000 * sorted(times)[int(0.9 * (len(times) - 1))],
            "min_ms": 1000 * min(times), "max_ms": 1000 * max(times),
            "execute_median_ms": 1000 * statistics.median(inside),
            "commands": sorted({o.cmd for o in app.session.outcomes[-repeats:]})}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cold, (app, context, _) = await launch(args.model, args.device, Path(tmp) / "a.jsonl")
        await context.__aexit__(None, None, None)
        warm, (app, context, pilot) = await launch(args.model, args.device,
                                                  Path(tmp) / "b.jsonl")
        try:
            toggle = await toggles(app, pilot, args.repeats, direct=True)
            harness = await toggles(app, pilot, args.repeats, direct=False)
            prompts = len(app.session.state.prompts)
            card = app.session.state.model.card
        finally:
            await context.__aexit__(None, None, None)
    return {
        "bench": "tui", "model": args.model, "device": card.device, "prompts": prompts,
        "terminal": [100, 30], "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_1m": os.getloadavg()[0],
        "python": platform.python_version(), "torch": torch.__version__,
        "launch_to_ready_s": {"cold": round(cold, 3), "warm": round(warm, 3)},
        "launch_to_usable_warm_s": round(app.usable_s, 3),
        "toggle_to_performance": _rounded(toggle),
        "toggle_to_performance_via_pilot_press": _rounded(harness),
    }


def xl_checkpoint(directory: Path) -> Path:
    """The random reduced-width GPT-2-XL-shaped checkpoint (as tests/test_tui_xl.py builds)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from workbench.tokenizer import build_tokenizer, save_tokenizer

    tok = build_tokenizer()
    config = GPT2Config(n_layer=48, n_head=25, n_embd=50, n_positions=32, vocab_size=len(tok),
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    import torch

    torch.manual_seed(0)
    GPT2LMHeadModel(config).eval().save_pretrained(str(directory))
    save_tokenizer(tok, directory)
    return directory


async def xl_toggles(app: Any, repeats: int, cursor: tuple[int, int]) -> dict[str, Any]:
    """Toggle the cell at `cursor` (column, layer) `repeats` times by posting Enter; per toggle
    the time to the cell's repaint (pending mark drawn) and to the new performance shown."""
    from textual import events

    from workbench.tui.panes.head_grid import HeadGrid
    from workbench.tui.panes.performance import PerformancePane, percent_text

    pane = app.query_one(PerformancePane)
    digits = app.query_one("#perf-percent")
    grid = app.query_one(HeadGrid)
    grid.focus()
    grid.jump(cursor[1])
    grid.cursor = cursor
    name = grid.cursor_node
    redraw, perf, inside = [], [], []
    for _ in range(repeats):
        await asyncio.sleep(0.05)
        before = pane.view
        n = len(app.session.outcomes)
        start = time.perf_counter()
        app.post_message(events.Key("enter", "\r"))
        while "…" not in grid.drawn(name):
            await asyncio.sleep(0.0005)
        redraw.append(time.perf_counter() - start)
        while pane.view is before or digits.value != percent_text(pane.view):
            await asyncio.sleep(0.0005)
        perf.append(time.perf_counter() - start)
        while app.busy:
            await asyncio.sleep(0.001)
        inside.append(app.session.outcomes[n].seconds)

    def row(times: list[float]) -> dict[str, Any]:
        return _rounded({"median_ms": 1000 * statistics.median(times),
                         "max_ms": 1000 * max(times), "min_ms": 1000 * min(times)})

    return {"n": repeats, "cell": name, "toggle_to_grid_redraw": row(redraw),
            "toggle_to_performance": row(perf),
            "execute_median_ms": round(1000 * statistics.median(inside), 2)}


async def main_xl(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(x) for x in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        build = time.perf_counter()
        ckpt = xl_checkpoint(Path(tmp) / "xl-ckpt")
        build = time.perf_counter() - build
        launches = []
        for name in ("a", "b"):
            seconds, (app, context, pilot) = await launch(str(ckpt), args.device,
                                                         Path(tmp) / f"{name}.jsonl",
                                                         (width, height))
            load = app.session.outcomes[0]
            assert load.ok, load.error
            launches.append({"launch_to_usable_s": round(app.usable_s, 3),
                             "launch_to_performance_s": round(seconds, 3),
                             "load_command_s": round(load.seconds, 3),
                             "usable_minus_load_s": round(app.usable_s - load.seconds, 3),
                             "performance_minus_load_s": round(seconds - load.seconds, 3)})
            if name == "a":
                await context.__aexit__(None, None, None)
        try:
            card = app.session.state.model.card
            n256 = await xl_toggles(app, args.repeats, (3, 30))
            app.submit("task addition digits=3 n=32")
            while app.busy or app._queue or app.session.state.prompts is None or \
                    len(app.session.state.prompts) != 32:
                await asyncio.sleep(0.01)
            n32 = await xl_toggles(app, args.repeats, (3, 30))
        finally:
            await context.__aexit__(None, None, None)
    return {
        "shape": f"{card.n_layers} layers x {card.n_heads} heads, d_model {card.d_model}",
        "edges": 2_235_025, "device": card.device, "terminal": [width, height],
        "checkpoint_build_s": round(build, 3), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
        "startup": {"cold": launches[0], "warm": launches[1]},
        "toggles_256_prompts": n256, "toggles_32_prompts": n32,
    }


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="add3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--shape", choices=("model", "xl"), default="model",
                        help="xl: a random reduced-width GPT-2-XL-shaped checkpoint")
    parser.add_argument("--size", default="160x50", help="terminal for --shape xl")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tui.json")
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    previous = json.loads(arguments.out.read_text()) if arguments.out.is_file() else {}
    if arguments.shape == "xl":
        result = {**previous, "xl_shape": asyncio.run(main_xl(arguments))}
        shown = result["xl_shape"]
    else:
        result = asyncio.run(main(arguments))
        if "xl_shape" in previous:
            result["xl_shape"] = previous["xl_shape"]
        shown = result
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(shown, indent=2))
