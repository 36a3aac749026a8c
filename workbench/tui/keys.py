"""Key bindings: every one has an id, a default key and a description, and can be remapped.

Where it sits: widgets and the app build their `BINDINGS` with `bindings(area)` from the table
below; the app loads the user's overrides with `load_keymap()` and hands them to Textual's
`App.set_keymap`; the help screen lists `KEYS` with the keys now in force.

Remapping file: TOML at `$WORKBENCH_HOME/keys.toml`, else `keys.toml` in the platformdirs user
config dir (`~/.config/circuit-workbench/keys.toml` on Linux). One table `[keys]` maps a binding
id to a key, or to several keys separated by commas (Textual key names: `ctrl+t`, `f2`,
`space`, `colon`, or a single printable character):

    [keys]
    "app.focus_command" = ";"
    "grid.toggle" = "enter,x"
    "app.undo" = "ctrl+z"

Unknown ids and non-string values are reported (one line each) and skipped; the file never
stops the workbench from starting.

Invariant: ids are unique and stable -- users' files refer to them; rename one and their
remapping silently stops applying.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from textual.binding import Binding, BindingType
from textual.keys import format_key

__all__ = ["KEYS", "KeySpec", "bindings", "keymap_path", "keys_now", "load_keymap"]


@dataclass(frozen=True)
class KeySpec:
    """One remappable binding: `id` is `<area>.<name>`; `action` is Textual's action string."""

    id: str
    key: str
    action: str
    description: str
    show: bool = False  # shown in the footer
    priority: bool = False
    short: str = ""  # the footer's label (default: the description)

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]

    def binding(self) -> Binding:
        return Binding(self.key, self.action, self.short or self.description, show=self.show,
                       priority=self.priority, id=self.id, tooltip=self.description)


KEYS: tuple[KeySpec, ...] = (
    # the whole app
    KeySpec("app.focus_command", ":", "focus_command", "focus the command line", True,
            short="command"),
    KeySpec("app.help", "question_mark,f1", "help", "list every key binding", True,
            short="keys"),
    KeySpec("app.palette", "ctrl+p", "command_palette", "command palette (every verb)",
            short="palette"),
    KeySpec("app.cancel", "escape", "cancel", "cancel the running command", True, True,
            short="cancel"),
    KeySpec("app.perf", "p", "command('perf')", "measure performance now", True,
            short="perf"),
    KeySpec("app.undo", "u", "command('undo')", "undo the last change", True, short="undo"),
    KeySpec("app.redo", "ctrl+r", "command('redo')", "redo the last undone change"),
    KeySpec("app.restore_all", "R", "command('restore all')", "restore every component"),
    KeySpec("app.next_result", "right_square_bracket", "cycle_result(1)",
            "show the next result", True, short="result"),
    KeySpec("app.prev_result", "left_square_bracket", "cycle_result(-1)",
            "show the previous result"),
    KeySpec("app.tab_prompts", "1", "show_tab('prompts')", "show the model and prompts"),
    KeySpec("app.tab_results", "2", "show_tab('results')", "show the selected result"),
    KeySpec("app.tab_graph", "3", "show_tab('graph')", "show the circuit graph"),
    KeySpec("app.tab_plot", "4", "show_tab('plot')", "plot the selected result"),
    KeySpec("app.tab_train", "5", "show_tab('train')", "the loaded model's training curves"),
    KeySpec("app.focus_grid", "g", "focus_grid", "focus the head grid"),
    KeySpec("app.search_results", "ctrl+f", "search_results",
            "search the selected result's scores by name"),
    KeySpec("app.quit", "ctrl+q", "quit", "quit (the session file is already saved)", True,
            True, short="quit"),
    # head grid (when focused)
    KeySpec("grid.up", "up,k", "move(0, -1)", "cursor up a layer"),
    KeySpec("grid.down", "down,j", "move(0, 1)", "cursor down a layer"),
    KeySpec("grid.left", "left,h", "move(-1, 0)", "cursor left a head"),
    KeySpec("grid.right", "right,l", "move(1, 0)", "cursor right a head"),
    KeySpec("grid.toggle", "enter,space", "flip", "ablate / restore the cell under the cursor",
            True, short="toggle"),
    KeySpec("grid.page_up", "pageup", "page(-1)", "cursor up a screen of layers"),
    KeySpec("grid.page_down", "pagedown", "page(1)", "cursor down a screen of layers"),
    KeySpec("grid.first_layer", "home", "edge(False)", "cursor to the first layer shown"),
    KeySpec("grid.last_layer", "end", "edge(True)", "cursor to the last layer shown"),
    KeySpec("grid.filter", "slash", "find('filter')",
            "filter cells by name pattern (a3?.*, m*, a*.3)", True, short="filter"),
    KeySpec("grid.jump", "number_sign", "find('jump')", "jump to a layer by number"),
    KeySpec("grid.clear_filter", "escape", "clear_filter", "clear the cell filter"),
    KeySpec("grid.ablate_shown", "A", "ablate_shown",
            "ablate every cell the filter shows (one command)"),
    # circuit graph (when focused)
    KeySpec("graph.prev", "left,up", "step(-1)", "select the previous node"),
    KeySpec("graph.next", "right,down", "step(1)", "select the next node"),
    KeySpec("graph.next_circuit", "c", "next_circuit", "show the next circuit", True,
            short="next circuit"),
    KeySpec("graph.focus", "f", "focus_mode", "dim every edge but the selected node's", True,
            short="focus"),
    KeySpec("graph.pan_left", "h", "pan(-8, 0)", "pan the circuit picture left"),
    KeySpec("graph.pan_right", "l", "pan(8, 0)", "pan the circuit picture right"),
    KeySpec("graph.pan_up", "k", "pan(0, -4)", "pan the circuit picture up"),
    KeySpec("graph.pan_down", "j", "pan(0, 4)", "pan the circuit picture down"),
    KeySpec("graph.zoom_in", "plus,equals_sign", "zoom(1)", "zoom in (wider, taller)", True,
            short="zoom"),
    KeySpec("graph.zoom_out", "minus", "zoom(-1)", "zoom out"),
    KeySpec("graph.zoom_reset", "0", "zoom(0)", "fit the picture to the pane again"),
    KeySpec("graph.more_edges", "e", "more_edges(2.0)", "draw twice as many edges"),
    KeySpec("graph.fewer_edges", "E", "more_edges(0.5)", "draw half as many edges"),
    KeySpec("graph.open", "enter", "open_node", "open the selected feature (feature_info)"),
    # command line (when focused)
    KeySpec("cmdline.complete", "tab", "complete", "complete verb, node or parameter", True,
            short="complete"),
    KeySpec("cmdline.history_prev", "up", "history(-1)", "previous command"),
    KeySpec("cmdline.history_next", "down", "history(1)", "next command"),
    KeySpec("cmdline.leave", "escape", "leave", "leave the command line (back to the grid)"),
    # help screen
    KeySpec("help.close", "escape,q,question_mark", "dismiss", "close this screen", True,
            short="close"),
)

_BY_ID = {spec.id: spec for spec in KEYS}
assert len(_BY_ID) == len(KEYS), "binding ids must be unique"


def bindings(area: str) -> list[BindingType]:
    """The `BINDINGS` list for one screen area (`app`, `grid`, `graph`, `cmdline`, `help`)."""
    return [spec.binding() for spec in KEYS if spec.area == area]


def keymap_path() -> Path:
    """Where the remapping file is looked for (it need not exist)."""
    from workbench.settings import current

    return current().keys_file  # $WORKBENCH_HOME/keys.toml, else the user config dir


def load_keymap(path: Path | None = None) -> tuple[dict[str, str], list[str]]:
    """(binding id -> keys, problems) from the remapping file; a missing file is no problem."""
    path = path or keymap_path()
    if not path.is_file():
        return {}, []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return {}, [f"{path}: cannot read key bindings ({exc}); using the defaults"]
    table = data.get("keys", {})
    if not isinstance(table, dict):
        return {}, [f"{path}: [keys] must be a table of id = \"key\""]
    keymap: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, keys in table.items():
        if binding_id not in _BY_ID:
            problems.append(f"{path}: unknown binding id {binding_id!r} (see the help screen)")
        elif not isinstance(keys, str) or not keys.strip():
            problems.append(f"{path}: {binding_id} must be a string of keys like \"ctrl+t\"")
        else:
            keymap[binding_id] = ",".join(k.strip() for k in keys.split(","))
    return keymap, problems


def keys_now(spec: KeySpec, keymap: dict[str, str]) -> str:
    """The keys bound to `spec` after remapping, as the footer writes them (`? f1`)."""
    return " ".join(format_key(k.strip()) for k in keymap.get(spec.id, spec.key).split(","))
