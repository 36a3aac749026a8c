"""Checked ranges for options declared as data: `steps: Annotated[int, Range(1, 10_000)] = 200`.

Where it sits: a plugin's `Params` or a task's fields carry a `Range` in `typing.Annotated`;
`workbench.tasks.coerce` reads it when it turns `key=value` text into the field's type, so an
absurd value (`steps=10000000`, `tau=-1`) is refused before any work starts, with the range.

Invariant: a `Range` only checks; it never clamps or changes a value.
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.errors import WorkbenchError

__all__ = ["Range"]


@dataclass(frozen=True)
class Range:
    """Inclusive bounds (None: unbounded on that side) and why the upper one exists."""

    low: float | None = None
    high: float | None = None

    def check(self, value: object, what: str) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        if (self.low is not None and value < self.low) or \
                (self.high is not None and value > self.high):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            raise WorkbenchError(f"{what} = {value:g} is out of range: use {low} to {high}")
