"""What the panes show, as plain frozen data built from the session (no Textual here).

Where it sits: between the headless core and the widgets. The app's worker thread calls
`build_snapshot` after every command, then `with_prompts` (both may run forward passes through
the ablation engine, so performance is shown before the prompt table is built);
the main thread calls the cheap builders (`card_view`, `grid_view`) straight from the immutable
`State`. Widgets only render these values: no widget computes anything or touches the engine.

Invariant: the performance shown equals what `perf` would log for the same state -- both come
from `AblationEngine.perf` on `engine.logits(state.ablations)` -- and building a view never
executes a command, so looking never changes the session or its log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from workbench.errors import WorkbenchError
from workbench.graph import Edge, parse_node
from workbench.plugins import Result
from workbench.session import Outcome, Session, State
from workbench.tui.result_views import node_scores_of

StateKey = tuple[int, int, str, str, tuple[str, ...]]


def state_key(state: State) -> StateKey:
    """What performance and the prompt answers depend on (identity of model and prompts)."""
    return (id(state.model), id(state.prompts), state.metric, state.mode,
            tuple(f"{a.target}/{a.mode}" for a in state.ablations))


@dataclass(frozen=True)
class PerfView:
    """Performance % and its companions, as the performance pane shows them."""

    percent: float | None
    metric_name: str
    metric: float | None
    metric_full: float | None
    metric_empty: float | None
    accuracy: float | None
    per_digit: tuple[float | None, ...]
    n_ablated: int

    @classmethod
    def from_out(cls, out: dict[str, Any]) -> PerfView:
        """From the `out` of `perf`, `ablate`, `restore` or `check`."""
        return cls(out.get("percent"), str(out.get("metric_name", "")), out.get("metric"),
                   out.get("metric_full"), out.get("metric_empty"), out.get("accuracy"),
                   tuple(out.get("per_digit", ())), len(out.get("ablated", ())))


def perf_now(session: Session) -> PerfView:
    """Performance of the current state, asked of the engine (nothing is logged)."""
    state = session.state
    engine = session.engine()
    perf = engine.perf(engine.logits(state.ablations), state.metric,  # type: ignore[arg-type]
                       state.mode)
    return PerfView(_finite(perf.percent), perf.metric_name, _finite(perf.metric),
                    _finite(perf.metric_full), _finite(perf.metric_empty),
                    _finite(perf.report.accuracy),
                    tuple(_finite(a) for a in perf.report.per_digit_accuracy),
                    len(state.ablations))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@dataclass(frozen=True)
class PromptRow:
    """One example: its prompts, the answer, and what the full and the ablated model say."""

    index: int
    clean: str
    corrupted: str
    answer: tuple[str, ...]
    full: tuple[str, ...]  # argmax of the unablated model, per answer unit (teacher forced)
    ablated: tuple[str, ...]  # argmax with the current ablations

    @property
    def right(self) -> bool:
        return self.ablated == self.answer


@dataclass(frozen=True)
class PromptTable:
    name: str
    n: int
    rows: tuple[PromptRow, ...]

    @property
    def n_right(self) -> int:
        return sum(r.right for r in self.rows)


def prompt_table(session: Session, limit: int = 64) -> PromptTable:
    """The first `limit` examples with the full and ablated model's per-unit answers."""
    state = session.state
    engine = session.engine()
    assert state.prompts is not None and state.model is not None
    tok = state.model.tokenizer
    ablated = engine.logits(state.ablations)[:limit].argmax(-1).tolist()  # (rows, n_answer)
    full = engine.clean_logits[:limit].argmax(-1).tolist()
    names: dict[int, str] = {}

    def text(ids: list[int]) -> tuple[str, ...]:
        for i in ids:
            if i not in names:
                names[i] = tok.decode([i])
        return tuple(names[i] for i in ids)

    rows = tuple(PromptRow(i, p.clean, p.corrupted, p.answer, text(f), text(a))
                 for i, (p, f, a) in enumerate(zip(state.prompts.pairs, full, ablated,
                                                    strict=False)))
    return PromptTable(state.prompts.name, len(state.prompts), rows)


@dataclass(frozen=True)
class Snapshot:
    """The expensive views after one command (built in the worker thread)."""

    key: StateKey | None
    perf: PerfView | None = None
    prompts: PromptTable | None = None
    problem: str | None = None  # why there is nothing to show (no model, no prompts...)


def build_snapshot(session: Session, outcome: Outcome | None, last: Snapshot | None,
                   limit: int = 64, prompts: bool = True) -> Snapshot:
    """Views for the state after `outcome`; reuses `last` when nothing they depend on changed.

    With `prompts=False` the prompt table is left out (`prompts` None) so performance can be
    shown first; `with_prompts` adds it afterwards."""
    state = session.state
    if state.model is None or state.prompts is None:
        why = "no model loaded" if state.model is None else \
            "no prompt set: try  task addition digits=3"
        return Snapshot(None, problem=why)
    key = state_key(state)
    if last is not None and last.key == key and last.perf is not None:
        return last
    if outcome is not None and outcome.ok and "percent" in outcome.out \
            and outcome.cmd.split()[0] in ("perf", "ablate", "restore"):
        perf = PerfView.from_out(outcome.out)
    else:
        perf = perf_now(session)
    snapshot = Snapshot(key, perf)
    return with_prompts(session, snapshot, limit) if prompts else snapshot


def with_prompts(session: Session, snapshot: Snapshot, limit: int = 64) -> Snapshot:
    """`snapshot` with its prompt table (one forward pass at most, usually just the unembed)."""
    if snapshot.prompts is not None or snapshot.key is None:
        return snapshot
    return replace(snapshot, prompts=prompt_table(session, limit))


@dataclass(frozen=True)
class CardView:
    """The model card pane: the model, its identity and the investigation's settings."""

    lines: tuple[tuple[str, str], ...]
    description: str = ""


def card_view(state: State, session_path: str | None) -> CardView | None:
    model = state.model
    if model is None:
        return None
    c = model.card
    lines = [("model", c.name), ("identity", model.identity.short()),
             ("shape", f"{c.n_layers} layers x {c.n_heads} heads, d_model {c.d_model}"),
             ("params", f"{c.n_params:,} on {c.device}/{c.dtype}")]
    if state.prompts is not None:
        lines.append(("prompts", f"{state.prompts.name} (n={len(state.prompts)})"))
    lines += [("metric", state.metric), ("ablation", state.mode)]
    if state.dictionaries:
        lines.append(("dictionaries", ", ".join(
            d.describe() for d in state.dictionaries.ordered())))
    if session_path:
        lines.append(("session", session_path))
    return CardView(tuple(lines))


@dataclass(frozen=True)
class GridView:
    """Head grid contents: which cells are ablated and each cell's score (if a result is
    selected). Cells are named `aL.H`; the MLP column is `mL`."""

    n_layers: int
    n_heads: int
    ablated: frozenset[str] = frozenset()  # whole component ablated
    partial: frozenset[str] = frozenset()  # ablated at some positions or q/k/v inputs only
    scores: dict[str, float] = field(default_factory=dict)
    scale: float = 0.0  # max |score| over the cells, for colouring
    title: str = ""

    @staticmethod
    def cell(layer: int, col: int, n_heads: int) -> str:
        return f"m{layer}" if col == n_heads else f"a{layer}.{col}"


def grid_view(state: State, result: Result | None) -> GridView | None:
    """Grid for the current model, ablations and the selected result's node scores."""
    if state.model is None:
        return None
    card = state.model.card  # sizes only: building the edge graph here would stall the UI
    whole: set[str] = set()
    partial: set[str] = set()
    for ab in state.ablations:
        node = ab.target
        if isinstance(node, Edge):  # an edge marks no cell
            continue
        if node.kind in ("attn", "mlp"):
            (whole if node == node.base() else partial).add(str(node.base()))
        elif node.kind == "neuron":
            partial.add(f"m{node.layer}")
    scores: dict[str, float] = {}
    title = ""
    node_scores = node_scores_of(result)
    if node_scores is not None:
        for name, value in node_scores.scores.items():
            try:
                node = parse_node(name)
            except WorkbenchError:
                continue
            if node.kind in ("attn", "mlp") and node == node.base():
                scores[str(node)] = value
        title = node_scores.title
    scale = max((abs(v) for v in scores.values()), default=0.0)
    return GridView(card.n_layers, card.n_heads, frozenset(whole), frozenset(partial - whole),
                    scores, scale, title)
