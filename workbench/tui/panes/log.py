"""The session log pane: one line per executed command with its outcome in brief.

Where it sits: above the command line. It mirrors what `Session.execute` appended to the
session file (the same `n`, the same canonical command text), so what the user sees here is
what `workbench replay` re-runs. Failures are red; `help` prints its text.

Invariant: no timestamps or durations, so the pane is deterministic (snapshot tests).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import RichLog

from workbench.session import Outcome


def brief(out: dict[str, Any]) -> str:
    """One line for a successful command's summary."""
    if "percent" in out:
        pct = "n/a" if out["percent"] is None else f"{out['percent']:.1f}%"
        acc = "n/a" if out.get("accuracy") is None else f"{100 * out['accuracy']:.1f}%"
        metric = out.get("metric")
        shown = "n/a" if metric is None else f"{metric:.3f}"
        return f"performance {pct}, {out.get('metric_name')} {shown}, accuracy {acc}"
    if "shared_nodes" in out:
        return (f"{len(out['shared_nodes'])} shared nodes, {len(out['only_a_nodes'])} only "
                f"in the first, {len(out['only_b_nodes'])} only in the second")
    if "id" in out:
        extra = out.get("title") or (f"{len(out['nodes'])} nodes" if "nodes" in out else "")
        return f"-> {out['id']}" + (f" ({extra})" if extra else "")
    if "model" in out:
        return f"{out['model']}: {out.get('layers')} layers x {out.get('heads')} heads"
    if "name" in out and "n" in out:
        return f"{out['name']}: {out['n']} pairs, e.g. {out.get('example')}{out.get('answer')}"
    if "ablations" in out:
        return f"ablated now: {', '.join(out['ablations']) or 'nothing'}"
    if "metric" in out:
        return f"metric {out['metric']}"
    if "path" in out:
        return f"wrote {out['path']}"
    return ""


class LogPane(RichLog):
    DEFAULT_CSS = """
    LogPane { height: 20%; min-height: 4; border-top: solid $primary; padding: 0 1;
              background: $surface; overflow-y: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, wrap=True, markup=False, highlight=False, max_lines=2000)
        self.lines_shown: list[str] = []

    def add(self, outcome: Outcome) -> None:
        if outcome.n == 0:
            return
        head = Text(f"[{outcome.n}] ", style="dim") + Text(outcome.cmd, style="bold")
        if not outcome.ok:
            line = head + Text(f"  error: {outcome.error}", style="red")
        elif "text" in outcome.out:
            line = head + Text("\n" + str(outcome.out["text"]))
        else:
            line = head + Text(f"  {brief(outcome.out)}", style="")
        self.lines_shown.append(line.plain)
        self.write(line)

    def note(self, text: str, style: str = "dim") -> None:
        self.lines_shown.append(text)
        self.write(Text(text, style=style))
