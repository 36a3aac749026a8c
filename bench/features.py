"""Cost of the feature-basis tools on the bundled `add3` with its bundled dictionaries.

On 256 prompts of `task addition digits=3` (12 tokens each), through `Session.execute`, the
path the TUI and replay use:
1. `sae load add3`, then one plain fused forward (`engine.forward.run`, the FE unit) and one
   replacement-model forward (every dictionary in, error terms kept);
2. `run feature_attr` with its defaults (edges=30), with `edges=0`, with `threshold=0.01`
   (hierarchical detaching) and with a feature target;
3. `select r1 top=20` and `check c1` (the feature circuit in the replacement model).
Each is the median of `--repeats` runs (after one untimed warm-up); FE = seconds / fused
forward seconds. The machine's load average is recorded beside the numbers: the machine is
shared, and wall time scales with it. Torch runs `--threads` threads (default 1).
Prints a table and writes `bench/results/features.json`. Run from the repository root:
`python bench/features.py [--repeats 5] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import median_seconds  # noqa: E402

from workbench.features.replacement import run as replacement_run  # noqa: E402
from workbench.session import Session  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "features.json"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = Session(model="add3")
    for line in ("task addition digits=3 n=256 seed=1", "sae load add3"):
        out = s.execute(line)
        assert out.ok, out.error
    eng = s.engine()
    dicts = s.state.dictionaries
    load_before = os.getloadavg()
    rows: dict[str, dict[str, float]] = {}

    def measure(name: str, fn: object) -> None:
        wall, cpu = median_seconds(fn, args.repeats)  # type: ignore[arg-type]
        rows[name] = {"seconds": round(wall, 4), "cpu_seconds": round(cpu, 4)}

    def forward() -> None:
        with torch.no_grad():
            eng.forward.run(eng.enc.clean, eng.enc.answer_pos)

    def replacement() -> None:
        with torch.no_grad():
            replacement_run(eng.weights, eng.enc.clean, dicts, "keep")

    def cmd(line: str) -> object:
        def go() -> None:
            out = s.execute(line)
            assert out.ok, f"{line}: {out.error}"
        return go

    measure("fused forward", forward)
    measure("replacement forward", replacement)
    s.execute("run feature_attr")
    s.execute("select r1 top=20")
    target = next(k for k, _ in s.state.result("r1").ranked()  # type: ignore[attr-defined]
                  if k.startswith("m1.f"))
    for line in ("run feature_attr", "run feature_attr edges=0",
                 "run feature_attr threshold=0.01", f"run feature_attr target={target}",
                 "select r1 top=20", "check c1", "sae load add3"):
        measure(line, cmd(line))
    unit = rows["fused forward"]["seconds"]
    for row in rows.values():
        row["fe"] = round(row["seconds"] / unit, 2)
    result = {
        "model": "add3", "prompts": 256, "tokens": int(eng.enc.clean.shape[1]),
        "dictionaries": [d.describe() for d in dicts.ordered()], "threads": args.threads,
        "repeats": args.repeats, "load_average": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
        "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in rows)
    print(f"add3, 256 prompts, {args.threads} thread(s), load average {load_before[0]:.1f}")
    for name, row in rows.items():
        print(f"{name:<{width}}  {row['seconds']:8.4f} s  {row['fe']:8.2f} FE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
