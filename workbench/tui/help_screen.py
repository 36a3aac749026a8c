"""Help screen: every key binding with its id, its keys now and what it does.

Where it sits: pushed by `?` / F1 (binding `app.help`). It lists `keys.KEYS` grouped by screen
area with the keys in force after the user's remapping, and says where the remapping file is
and how it looks (`keys.py` documents the format).

Invariant: the list is generated from `KEYS`, so a new binding appears here without an edit.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from workbench.tui.keys import KEYS, bindings, keymap_path, keys_now

AREAS = {"app": "anywhere", "grid": "head grid", "graph": "circuit graph",
         "cmdline": "command line", "help": "this screen"}


def bindings_table(keymap: dict[str, str]) -> Table:
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("where", no_wrap=True)
    table.add_column("keys", style="bold cyan", no_wrap=True)
    table.add_column("action", ratio=1)
    table.add_column("id", style="dim", no_wrap=True)
    for spec in KEYS:
        table.add_row(AREAS.get(spec.area, spec.area), keys_now(spec, keymap),
                      spec.description, spec.id)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = bindings("help")
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; height: 90%; border: round $accent; background: $surface; padding: 0 1;
    }
    """

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__()
        self.keymap = keymap

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text("Key bindings", style="bold"))
            yield Static(bindings_table(self.keymap), id="help-bindings")
            yield Static(Text(
                f"\nRemap keys in {keymap_path()} (TOML):\n  [keys]\n"
                '  "grid.toggle" = "enter,x"\n'
                "Commands typed after ':' and keys in the grid both go through the session "
                "and appear in the log; `workbench replay FILE` re-runs them.", style="dim"))
