"""Completion for the command line: verbs, node names, ids and plugin parameters.

Where it sits: the command line widget asks `complete(line, session)` on Tab and for its inline
suggestion. Pure Python (no Textual); it reads the session's state, registry and graph but runs
nothing.

What completes where (the word under the cursor is the last one on the line):
1. the first word: verbs (`VERBS`);
2. `key=` words: the verb's options (`VerbSpec.options`) or, after `run TECHNIQUE`, the fields
   of the technique's `Params` dataclass; after `key=`, the values of a `Literal` or bool field,
   and the fixed choices (`mode=`, `device=`, `dtype=`, `level=`);
3. positional words: node names and patterns from the model's graph (`ablate`, `restore`,
   `select`), technique names (`run`), result ids `r<n>` and circuit ids `c<n>`, task, metric
   and bundled model names, verbs after `help`.

Invariant: every candidate is the whole line with its last word replaced, so accepting one is a
plain assignment and never loses what was typed before it.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable

from workbench.commands import ABLATION_MODES, DEVICES, DTYPES, METRICS, VERBS
from workbench.graph import Graph
from workbench.model import BUNDLED_DIR
from workbench.session import Session
from workbench.tasks import TASKS

_CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ABLATION_MODES, "device": DEVICES, "dtype": DTYPES, "level": ("node", "edge"),
}


def complete(line: str, session: Session | None) -> list[str]:
    """Whole-line candidates for the last word of `line` (empty when nothing fits)."""
    head, _, word = line.rpartition(" ")
    before = head.split()
    if not before:
        return [v for v in VERBS if v.startswith(word.lower())]
    prefix = head + " "
    found = _words(before, word, session)
    seen: dict[str, None] = {}
    for candidate in found:
        if candidate.startswith(word) and candidate != word:
            seen.setdefault(candidate, None)
    return [prefix + c for c in seen]


def common_prefix(lines: list[str]) -> str:
    """The longest prefix shared by every candidate ('' for none)."""
    if not lines:
        return ""
    first, last = min(lines), max(lines)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def _words(before: list[str], word: str, session: Session | None) -> Iterable[str]:
    verb = before[0].lower()
    spec = VERBS.get(verb)
    if spec is None:
        return []
    if "=" in word:
        key = word.split("=", 1)[0]
        return [f"{key}={v}" for v in _values(verb, before, key, session)]
    args = [w for w in before[1:] if "=" not in w]
    options = _option_keys(verb, args, session)
    return [*_positional(verb, args, session), *(f"{k}=" for k in options)]


def _option_keys(verb: str, args: list[str], session: Session | None) -> list[str]:
    if verb == "run":
        params = _params(args, session)
        return [f.name for f in dataclasses.fields(params)] if params else []
    spec = VERBS[verb]
    return list(spec.options or ())


def _params(args: list[str], session: Session | None) -> type | None:
    if not args or session is None or args[0] not in session.registry:
        return None
    return session.registry[args[0]].Params


def _values(verb: str, before: list[str], key: str, session: Session | None) -> list[str]:
    if verb == "run":
        params = _params([w for w in before[1:] if "=" not in w], session)
        if params is None:
            return []
        hints = typing.get_type_hints(params)
        hint = hints.get(key)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if hint else []
        if typing.get_origin(hint) is typing.Literal:
            return [str(a) for a in typing.get_args(hint)]
        if hint is bool or bool in args:
            return ["true", "false"]
        return []
    if verb == "metric":
        return []
    return list(_CHOICES.get(key, ()))


def _positional(verb: str, args: list[str], session: Session | None) -> list[str]:
    state = session.state if session is not None else None
    results = [rid for rid, _ in state.results] if state else []
    circuits = [cid for cid, _ in state.circuits] if state else []
    if verb == "help":
        return list(VERBS) if not args else []
    if verb == "load" and not args:
        return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())
    if verb == "task" and not args:
        return list(TASKS)
    if verb == "metric" and not args:
        return list(METRICS)
    if verb == "run" and not args:
        return sorted(session.registry) if session is not None else []
    if verb in ("check", "export") and not args:
        return circuits
    if verb == "compare" and len(args) < 2:
        return circuits
    if verb == "select" and not args:
        return results + _nodes(session)
    if verb == "restore":
        ablated = [str(a.target) for a in state.ablations] if state else []
        return (["all"] if not args else []) + ablated + _nodes(session)
    if verb in ("ablate", "select"):
        return _nodes(session)
    return []


def _nodes(session: Session | None) -> list[str]:
    """Node names and patterns of the loaded model, in topological order."""
    if session is None or session.state.model is None:
        return []
    graph = Graph.from_sizes(session.state.model.card.n_layers,
                             session.state.model.card.n_heads)
    names = [str(n) for n in graph.nodes if n.kind not in ("input", "logits")]
    patterns = [f"a{layer}.*" for layer in range(graph.n_layers)] + ["a*.*", "m*"]
    return names + patterns
