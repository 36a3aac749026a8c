"""The core is headless: importing it (and every plugin) never imports Textual.

DESIGN.md: `workbench/` never imports Textual; only `workbench/tui/` does. A fresh interpreter
imports the core modules and every module in `plugins/` and reports whether `textual` is in
`sys.modules`; then it imports the TUI and reports again, so a probe that cannot see Textual
arrive fails instead of passing silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ("workbench", "workbench.session", "workbench.replay", "workbench.cli",
        "workbench.ablation", "workbench.plugins", "workbench.engine.api", "workbench.graph")

PROBE = """
import importlib, json, pkgutil, sys
import plugins

def textual_modules():
    return sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))

names = {core!r} + tuple(f"plugins.{{m.name}}" for m in pkgutil.iter_modules(plugins.__path__))
for name in names:
    importlib.import_module(name)
core = textual_modules()
import workbench.tui.app
print(json.dumps({{"imported": names, "core": core, "after_tui": len(textual_modules())}}))
"""


def test_core_and_plugins_do_not_import_textual() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE.format(core=CORE)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    plugin_files = {f"plugins.{p.stem}" for p in (ROOT / "plugins").glob("[!_]*.py")}
    assert plugin_files <= set(report["imported"]) and set(CORE) <= set(report["imported"])
    assert report["core"] == [], f"the headless core imported {report['core'][:5]}"
    assert report["after_tui"] > 0  # the probe does see Textual when something imports it
