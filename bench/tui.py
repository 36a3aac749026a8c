"""Benchmark the TUI: launch to first interactive frame, and toggle to updated performance.

Not a test (DESIGN.md: measure in `bench/`, never in timed tests). Run from the repository root:

    python bench/tui.py [--model add3] [--device cpu] [--repeats 20] [--threads N]

1. Launch: build `WorkbenchApp(model=..., session_path=...)` as `workbench MODEL --session P`
   does and run it headless with `App.run_test(size=(100, 30))`; the clock stops when the app
   reports `ready` (model resident, default prompt set encoded, first performance and prompt
   views on screen). Measured twice in one process: `cold` includes importing the model stack,
   `warm` is a second launch with it imported.
2. Toggle: with the head grid focused on a1.1, press Enter and wait until the performance pane
   shows the new value (its `view` changes and the big number is redrawn); alternate ablate and
   restore, `--repeats` times; report the median and spread, and the part spent inside
   `Session.execute` (from the outcomes) so UI overhead is visible. The key is delivered two
   ways: posted straight to the app's event loop (`toggle_to_performance`: what a user sees,
   less terminal I/O) and with `Pilot.press` (`..._via_pilot_press`, which also waits for the
   process to go idle, so it adds harness time).

Writes `bench/results/tui.json`.
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


async def launch(model: str, device: str, path: Path) -> tuple[float, Any]:
    """Seconds from constructing the app to `ready`, and the app (still running)."""
    from workbench.tui.app import WorkbenchApp

    start = time.perf_counter()
    app = WorkbenchApp(model=model, session_path=path, device=device, keymap={})
    context = app.run_test(size=(100, 30))
    pilot = await context.__aenter__()
    while not app.ready:
        await pilot.pause(0.005)
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
        "toggle_to_performance": _rounded(toggle),
        "toggle_to_performance_via_pilot_press": _rounded(harness),
    }


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="add3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tui.json")
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = asyncio.run(main(arguments))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
