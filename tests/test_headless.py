"""The core is headless: importing it (and every plugin) never imports Textual.

DESIGN.md: `workbench/` never imports Textual; only `workbench/tui/` does. A fresh interpreter
imports the core modules and every module in `plugins/`, then checks `sys.modules`. A second
run checks the test itself can see Textual arrive (through the TUI package), so a broken probe
cannot pass silently.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ("workbench", "workbench.session", "workbench.replay", "workbench.cli",
        "workbench.ablation", "workbench.plugins")

PROBE = """
import importlib, pkgutil, sys
import plugins
names = {core!r} + tuple(f"plugins.{{m.name}}" for m in pkgutil.iter_modules(plugins.__path__))
for name in names:
    importlib.import_module(name)
{extra}
loaded = sorted(m for m in sys.modules if m == "textual" or m.startswith("textual."))
print(len(names), "imported;", "textual loaded:" if loaded else "textual not loaded", *loaded[:3])
sys.exit(1 if loaded else 0)
"""


def _probe(extra: str = "") -> subprocess.CompletedProcess[str]:
    code = PROBE.format(core=CORE, extra=extra)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT),
                                                       "HF_HUB_OFFLINE": "1", "PATH": ""})


def test_core_and_plugins_do_not_import_textual() -> None:
    done = _probe()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "textual not loaded" in done.stdout
    n_plugins = len(list((ROOT / "plugins").glob("[!_]*.py")))
    assert done.stdout.startswith(f"{len(CORE) + n_plugins} imported")


def test_the_probe_notices_textual() -> None:
    done = _probe("import workbench.tui.app")
    assert done.returncode == 1 and "textual loaded" in done.stdout, done.stdout + done.stderr
