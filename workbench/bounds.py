"""Checks that keep user input within what the workbench can do: prompt alphabets and sizes.

Where it sits: `Session` calls these before it builds anything from a prompt file or a task
(`prompts FILE`, `task NAME n=`), so a wrong file or an absurd size is refused with one line
before any work starts.

Invariant: a check only reads its inputs; it raises `WorkbenchError` naming the first problem
(file line, the offending character) and the fix.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import WorkbenchError
from workbench.tasks import PromptSet, make_task

__all__ = ["check_alphabet"]


def check_alphabet(prompts: PromptSet, model: Any) -> None:
    """Refuse pairs with characters the model's task never uses (`12a+456=` for addition).

    The task is the one the model was trained on (`LoadedModel.default_task`); tasks of free
    text (alphabet None) and sessions without a model are not checked.
    """
    if model is None:
        return
    name, options = model.default_task()
    try:
        alphabet = make_task(name, **options).alphabet()
    except WorkbenchError:
        return  # a task this workbench does not know: nothing to check against
    if alphabet is None:
        return
    for number, pair in enumerate(prompts.pairs, start=1):
        for field, text in (("clean", pair.clean), ("corrupted", pair.corrupted),
                            ("answer", "".join(pair.answer)),
                            ("contrast", "".join(pair.contrast))):
            bad = next((ch for ch in text if ch not in alphabet), None)
            if bad is not None:
                shown = "".join(sorted(alphabet - {" "})) + " and space"
                raise WorkbenchError(
                    f"{prompts.name}, pair {number}: {field} {text[:40]!r} has {bad!r}, which "
                    f"{name} prompts never contain (they use {shown}); fix that line, or load "
                    "a model trained on such text")
