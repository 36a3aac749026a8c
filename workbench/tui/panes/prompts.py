"""Model card and prompt-set browser.

Where it sits: the first tab on the right. The card lists the resident model (name, identity,
shape, device), the prompt set, metric and ablation mode. The table lists examples: clean and
corrupted prompt, the answer, what the full model and the model with the current ablations
predict (argmax per answer digit, teacher forced), each digit green when right and red when
wrong, and whether the whole answer is right (✓ / ✗).

Invariant: the rows come ready-made from the session worker (`PromptTable`); nothing here runs
the model.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from workbench.tui.views import CardView, PromptRow, PromptTable

COLUMNS = ("#", "ok", "clean", "corrupted", "answer", "full", "ablated")


def digits(predicted: tuple[str, ...], answer: tuple[str, ...]) -> Text:
    """Predicted units, each green when it matches the answer unit, red when not."""
    out = Text()
    for i, unit in enumerate(predicted):
        right = i < len(answer) and answer[i] == unit
        out.append(unit, style="green" if right else "bold red")
    return out


def row_cells(row: PromptRow) -> tuple[object, ...]:
    ok = Text("✓", style="green") if row.right else Text("✗", style="bold red")
    return (str(row.index), ok, row.clean, row.corrupted, "".join(row.answer),
            digits(row.full, row.answer), digits(row.ablated, row.answer))


class PromptsPane(Vertical):
    DEFAULT_CSS = """
    PromptsPane > #card { height: auto; padding: 0 1; }
    PromptsPane > #prompt-summary { height: 1; padding: 0 1; color: $text-muted; }
    PromptsPane > DataTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.table: PromptTable | None = None

    def compose(self) -> ComposeResult:
        yield Static("loading the model...", id="card")
        yield Static("", id="prompt-summary")
        table: DataTable[object] = DataTable(id="prompt-table", zebra_stripes=True,
                                             cursor_type="row")
        table.add_columns(*COLUMNS)
        yield table

    def show_card(self, card: CardView | None) -> None:
        text = Text()
        if card is None:
            text.append("no model loaded", style="dim")
        for i, (key, value) in enumerate(card.lines if card else ()):
            text.append(f"{key:>9} ", style="bold")
            text.append(value + ("\n" if i < len(card.lines) - 1 else ""))  # type: ignore[union-attr]
        self.query_one("#card", Static).update(text)

    def show_prompts(self, table: PromptTable | None, problem: str | None = None) -> None:
        if table is not None and self.table is table:
            return
        self.table = table
        grid = self.query_one("#prompt-table", DataTable)
        grid.clear()
        summary = self.query_one("#prompt-summary", Static)
        if table is None:
            summary.update(problem or "")
            return
        for row in table.rows:
            grid.add_row(*row_cells(row), key=str(row.index))
        summary.update(f"{table.name}: first {len(table.rows)} of {table.n}, "
                       f"{table.n_right} right when ablated")
