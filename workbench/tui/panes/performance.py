"""Live performance: a big performance %, the raw metric, accuracy, per-digit bars, history.

Where it sits: below the head grid. The app calls `show(view, history)` after every command
whose state change moves performance (a toggle, `perf`, `undo`, a new task or metric); the
numbers come from the session (`PerfView`), the pane only lays them out.

Performance % is DESIGN.md's: 100 = the full model, 0 = everything ablated under the current
ablation mode. The sparkline shows its history over this session, oldest first.

Invariant: `view` is the value now on screen; tests read it instead of parsing the glyphs.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Digits, Sparkline, Static

from workbench.tui.views import PerfView

BAR = 20
HISTORY = 400  # the sparkline shows the last this many values (the count shows them all)


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def percent_text(view: PerfView | None) -> str:
    """The big number as shown ('49.4%'), or '--' when unknown."""
    if view is None or view.percent is None:
        return "--"
    return f"{view.percent:.1f}%"


def _bar(fraction: float | None) -> Text:
    if fraction is None:
        return Text("n/a".ljust(BAR), style="dim")
    full = round(max(0.0, min(1.0, fraction)) * BAR)
    colour = "green" if fraction >= 0.9 else ("yellow" if fraction >= 0.5 else "red")
    return Text("█" * full, style=colour) + Text("░" * (BAR - full), style="dim")


class PerformancePane(Vertical):
    """Big %, details, per-digit bars and the history sparkline."""

    DEFAULT_CSS = """
    PerformancePane { height: auto; padding: 0 1; }
    PerformancePane > #perf-title { color: $text-muted; }
    PerformancePane > Digits { width: auto; color: $accent; }
    PerformancePane > #perf-history { height: 2; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view: PerfView | None = None
        self.history: tuple[float, ...] = ()

    def compose(self) -> ComposeResult:
        yield Static("performance", id="perf-title")
        yield Digits("--", id="perf-percent")
        yield Static("", id="perf-details")
        yield Sparkline([], id="perf-history")

    def show(self, view: PerfView | None, history: tuple[float, ...]) -> None:
        self.view, self.history = view, history
        self.query_one("#perf-percent", Digits).update(percent_text(view))
        self.query_one("#perf-title", Static).update(
            "performance" + (f" ({view.metric_name})" if view else ""))
        self.query_one("#perf-details", Static).update(self.details())
        self.query_one("#perf-history", Sparkline).data = list(history[-HISTORY:])

    def details(self) -> Text:
        v = self.view
        if v is None:
            return Text("no performance yet", style="dim")
        out = Text()
        out.append(f"{v.metric_name} {_num(v.metric)}", style="bold")
        out.append(f"  accuracy {_pct(v.accuracy)}\n", style="bold")
        out.append(f"full {_num(v.metric_full)} · empty {_num(v.metric_empty)} · "
                   f"{v.n_ablated} ablated\n", style="dim")
        for i, acc in enumerate(v.per_digit):
            out.append(f"d{i} ")
            out.append_text(_bar(acc))
            out.append(f" {_pct(acc, 0):>4}\n")
        if self.history:
            out.append(f"history ({len(self.history)})", style="dim")
        return out
