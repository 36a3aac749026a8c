"""Task registry: names to generators, and `key=value` options coerced from strings.

`make_task("addition", digits="3")` is what `task addition digits=3` and
`workbench eval --task addition digits=3` both call, so options are typed in one place.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any

from workbench.errors import WorkbenchError
from workbench.ranges import Range
from workbench.tasks.arithmetic import Addition, Multiplication
from workbench.tasks.base import PromptPair, PromptSet, Task
from workbench.tasks.sequence import GreaterThan, SequenceContinuation
from workbench.tasks.text import IOI, Counting, Years

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (Addition, Multiplication, SequenceContinuation, GreaterThan, Years,
                        Counting, IOI)
}

__all__ = ["TASKS", "PromptPair", "PromptSet", "Task", "make_task", "coerce"]


def make_task(name: str, **options: Any) -> Task:
    """Build a task from its name and options given as strings or values."""
    if name not in TASKS:
        hint = difflib.get_close_matches(name, TASKS, n=1)
        fix = f"did you mean {hint[0]}?" if hint else "choose one of " + ", ".join(TASKS)
        raise WorkbenchError(f"unknown task {name!r}: {fix}")
    cls = TASKS[name]
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name for f in dataclasses.fields(cls)}
    typed = {}
    for key, value in options.items():
        if key not in fields:
            raise WorkbenchError(
                f"task {name} has no option {key!r}; options: " + ", ".join(sorted(fields))
            )
        typed[key] = coerce(value, hints[key], f"{name} option {key}")
    return cls(**typed)


def coerce(value: Any, hint: Any, what: str) -> Any:
    """Turn a `key=value` string into the annotated type (int, float, bool, str, Literal).

    Numbers must be finite and written in ASCII (`nan`, `inf`, `1e999` and full-width digits
    are refused); `Annotated[T, Range(lo, hi)]` also checks the range.
    """
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *extras = typing.get_args(hint)
        typed = coerce(value, base, what)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(typed, what)
        return typed
    if not isinstance(value, str):
        return value
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise WorkbenchError(f"{what} must be one of {', '.join(map(str, choices))}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value.lower() in ("none", "") and len(args) < len(typing.get_args(hint)):
            return None
        return coerce(value, args[0], what)
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if hint in (int, float):
            if not value.isascii():
                raise ValueError
            number = hint(value)
            if not math.isfinite(number):
                raise WorkbenchError(f"{what} = {value} is not a finite number: give one like "
                                     "0.01")
            return number
    except ValueError:
        raise WorkbenchError(f"{what} expects {hint.__name__}, got {value!r}") from None
    return value
