"""Year probabilities (`run year_probs`): Hanna et al.'s picture of greater-than.

1. Take the answer logits at the first answer slot: the clean run's, or with `ablated=true` the
   run with the session's current ablations applied (one forward, reusing unchanged layers).
2. Softmax over the whole vocabulary; read the probability of each two-digit year token
   "00".."99" (each must be one token under the model's tokenizer).
3. Find each prompt's start year XX in its text ("... the year CCXX to the year CC") and
   average the probabilities over the prompts that share an XX.

Returns a Table: rows `XX` (the start years present), columns `YY` 00..99, values mean p(YY).
A model that does greater-than puts its mass right of the diagonal (YY > XX). Cost: 0 FE (the
clean answer logits are cached), or the ablated forward.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError
from workbench.plugins import Context, Table, Technique

YEAR = re.compile(r"year \d\d(\d\d) to the year \d\d$")


@dataclass(frozen=True)
class Params:
    ablated: bool = False  # apply the session's current ablations first


def year_tokens(tokenizer: object) -> list[int]:
    """Token ids of "00".."99"; a clear error when a year is not one token."""
    ids = []
    for yy in range(100):
        tokens = tokenizer.encode(f"{yy:02d}", add_special_tokens=False)  # type: ignore[attr-defined]
        if len(tokens) != 1:
            raise WorkbenchError(f"year {yy:02d} is {len(tokens)} tokens under this tokenizer; "
                                 "year_probs needs GPT-2-style two-digit year tokens")
        ids.append(tokens[0])
    return ids


def run(ctx: Context, params: Params) -> Table:
    starts = []
    for i, pair in enumerate(ctx.prompts.pairs):
        match = YEAR.search(pair.clean)
        if match is None:
            raise WorkbenchError(f"prompt {i} {pair.clean!r} is not a years prompt; year_probs "
                                 "needs `task years` (\"... the year 1732 to the year 17\")")
        starts.append(int(match[1]))
    ids = torch.tensor(year_tokens(ctx.model.tokenizer))
    logits = ctx.engine.logits(ctx.ablations) if params.ablated else ctx.engine.clean_logits
    probs = logits[:, 0].float().softmax(-1)[:, ids.to(logits.device)].cpu()  # (batch, 100)
    xx = torch.tensor(starts)
    present = sorted(set(starts))
    values = torch.stack([probs[xx == x].mean(0) for x in present])
    which = "with the current ablations" if params.ablated else "clean"
    return Table(title=f"year probabilities ({which}): mean p(YY) by start year XX",
                 rows=tuple(f"{x:02d}" for x in present),
                 cols=tuple(f"{y:02d}" for y in range(100)), values=values, unit="probability")


TECHNIQUE = Technique(
    name="year_probs", title="Year probabilities", Params=Params, run=run,
    cost="0 FE (clean answer logits); 1 FE with ablated=true",
)
