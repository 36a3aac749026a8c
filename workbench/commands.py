"""Parse one line of the command language (v1) into a typed `Command`.

Where it sits: the TUI command line, session scripts and the CLI all hand raw lines to `parse`;
`Session.execute` receives the resulting `Command`. This module is pure Python (no torch, no
model): it checks the *shape* of a line (verb, argument count, option keys, ids like `r1`/`c2`,
fixed choices such as `mode=`) and nothing that needs state. Node names (`a9.1`, `m*`,
`a3.0->a9.1<q>`, `@-1`) pass through untouched; the naming module interprets them.

Grammar: words separated by spaces; `#` starts a comment anywhere outside quotes; double quotes
group words (`prompts "my file.jsonl"`); a word `key=value` (key an identifier) is an option,
any other word a positional argument. Values stay strings: plugins coerce them from `Params`.

Invariant: `Command.text` is canonical (verb, args, then options in given order, single spaces,
comment dropped, quoted only where needed) and `parse(cmd.text) == cmd` for every parsed command.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from workbench.errors import WorkbenchError

__all__ = [
    "ABLATION_MODES",
    "EXPORT_SUFFIXES",
    "METRICS",
    "VERBS",
    "Command",
    "VerbSpec",
    "help_text",
    "parse",
]

METRICS: tuple[str, ...] = ("logit_diff", "prob", "accuracy", "kl", "l2",
                            "prob_diff")  # == metrics.METRICS
ABLATION_MODES: tuple[str, ...] = ("zero", "mean", "resample")
EXPORT_SUFFIXES: tuple[str, ...] = (".dot", ".svg", ".png", ".json", ".pdf")
FIGURE_SUFFIXES: tuple[str, ...] = (".png", ".svg", ".pdf")  # export r<n>: matplotlib
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESULT_ID = re.compile(r"r[1-9][0-9]*")
_CIRCUIT_ID = re.compile(r"c[1-9][0-9]*")
_INT = re.compile(r"[+-]?[0-9]+")
_CUDA_INDEX = re.compile(r"cuda:[0-9]+")
_NEEDS_QUOTES = re.compile(r"""[\s"'\\#]""")


@dataclass(frozen=True)
class VerbSpec:
    """What one verb accepts. `options=None` means any `key=value` (plugin or task options)."""

    usage: str
    summary: str
    min_args: int
    max_args: int | None
    options: tuple[str, ...] | None


VERBS: dict[str, VerbSpec] = {
    "load": VerbSpec(
        "load MODEL [device=auto|cpu|cuda] [dtype=float32|bfloat16|float16] [step=N]",
        "load a model (bundled toy name, checkpoint directory or cached hub name); "
        "step=N: a training run's checkpoint at step N",
        1,
        1,
        ("device", "dtype", "step"),
    ),
    "task": VerbSpec(
        "task NAME [n=256] [seed=0] [corrupt=KIND] [task options, e.g. digits=3]",
        "generate a prompt set of clean/corrupted pairs from a built-in task",
        1,
        1,
        None,
    ),
    "prompts": VerbSpec(
        "prompts PATH.jsonl", "load a prompt set from a JSONL file of pairs", 1, 1, ()
    ),
    "metric": VerbSpec(
        "metric logit_diff|prob|accuracy|kl|l2|NAME",
        "choose the metric performance % and every technique use (NAME: the session's own)",
        1,
        1,
        (),
    ),
    "ablate": VerbSpec(
        "ablate NODE... [mode=zero|mean|resample] [pos=P]",
        "switch components off (heads, MLPs, neurons, edges, patterns like a9.*)",
        1,
        None,
        ("mode", "pos"),
    ),
    "restore": VerbSpec(
        "restore NODE... | restore all",
        "switch ablated components back on",
        1,
        None,
        (),
    ),
    "perf": VerbSpec(
        "perf [metric=NAME]",
        "performance % now (with current ablations), raw metric, accuracy, per-digit",
        0,
        0,
        ("metric",),
    ),
    "run": VerbSpec(
        "run TECHNIQUE [key=value ...]",
        "run a technique on the prompt set -> result r<n>",
        1,
        1,
        None,
    ),
    "select": VerbSpec(
        "select r<n> [top=K | threshold=T] | select NODE...",
        "turn a result's scores (a circuit result as it is), or a list of nodes, into c<n>; "
        "edges cut off from input or logits are dropped",
        1,
        None,
        ("top", "threshold"),
    ),
    "check": VerbSpec(
        "check c<n> [mode=mean] [level=node|edge] [metric=NAME]",
        "faithfulness: performance % with everything outside c<n> ablated",
        1,
        1,
        ("mode", "level", "metric"),
    ),
    "compare": VerbSpec(
        "compare c<n> c<m>",
        "shared / only-in-each nodes and edges of two circuits",
        2,
        2,
        (),
    ),
    "export": VerbSpec(
        "export c<n> PATH.dot|.svg|.png|.json|.pdf | export r<n> PATH.png|.svg|.pdf",
        "write a circuit (Graphviz DOT/SVG/PNG, JSON, PDF) or a result's figure (matplotlib)",
        2,
        2,
        (),
    ),
    "sae": VerbSpec(
        "sae load NAME_OR_DIR [layer=L] [site=attn_out|mlp|mlp_out] [download=yes]",
        "attach SAEs/transcoders to the model (bundled set, SAELens or circuit-tracer folder)",
        2,
        2,
        ("layer", "site", "download"),
    ),
    "save": VerbSpec("save PATH", "save the session log to PATH", 1, 1, ()),
    "undo": VerbSpec("undo", "step back through state-changing commands", 0, 0, ()),
    "redo": VerbSpec("redo", "step forward through undone commands", 0, 0, ()),
    "help": VerbSpec("help [VERB]", "list the commands, or explain one", 0, 1, ()),
}


@dataclass(frozen=True)
class Command:
    """One parsed line: `verb args... key=value...`; `text` is its canonical form."""

    verb: str
    args: tuple[str, ...]
    options: tuple[tuple[str, str], ...]
    text: str

    def option(self, key: str, default: str | None = None) -> str | None:
        """The value given for `key`, or `default` when it was not given."""
        for k, v in self.options:
            if k == key:
                return v
        return default

    @property
    def opts(self) -> dict[str, str]:
        """The options as a dict (insertion order = order given)."""
        return dict(self.options)

    def __str__(self) -> str:
        return self.text


def _quote(word: str) -> str:
    """Quote a word only when shlex would otherwise split or alter it."""
    if word and not _NEEDS_QUOTES.search(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def canonical_text(verb: str, args: tuple[str, ...], options: tuple[tuple[str, str], ...]) -> str:
    """The canonical line for a command: verb, args, then key=value, single spaces."""
    words = [verb, *(_quote(a) for a in args), *(f"{k}={_quote(v)}" for k, v in options)]
    return " ".join(words)


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_verb(verb: str) -> WorkbenchError:
    guess = _suggest(verb, list(VERBS))
    if guess:
        return WorkbenchError(f"unknown command '{verb}': did you mean {guess}?")
    return WorkbenchError(f"unknown command '{verb}': type help for the list")


def _usage(spec: VerbSpec) -> WorkbenchError:
    return WorkbenchError(f"usage: {spec.usage}")


def _tokens(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True, posix=True)
    except ValueError as exc:  # e.g. "No closing quotation"
        raise WorkbenchError(f"cannot read command line: {str(exc).lower()}") from None


def _split_words(words: list[str]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    args: list[str] = []
    options: list[tuple[str, str]] = []
    seen: set[str] = set()
    for word in words:
        if "=" not in word:
            args.append(word)
            continue
        key, value = word.split("=", 1)
        if not _KEY.fullmatch(key):
            raise WorkbenchError(f"bad option '{word}': write key=value with a name before '='")
        if value == "":
            raise WorkbenchError(f"option '{key}=' has no value: write {key}=VALUE")
        if key in seen:
            raise WorkbenchError(f"option '{key}' given twice")
        seen.add(key)
        options.append((key, value))
    return tuple(args), tuple(options)


def _check_options(verb: str, spec: VerbSpec, options: tuple[tuple[str, str], ...]) -> None:
    if spec.options is None:
        return
    for key, _ in options:
        if key in spec.options:
            continue
        if not spec.options:
            raise WorkbenchError(f"{verb} has no option '{key}': it takes no options")
        guess = _suggest(key, spec.options)
        hint = f"did you mean {guess}?" if guess else f"its options are {', '.join(spec.options)}"
        raise WorkbenchError(f"{verb} has no option '{key}': {hint}")


def _choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value in choices:
        return
    # Always list the choices: a near miss can mislead (float64 is closest to bfloat16).
    guess = _suggest(value, choices)
    hint = f"did you mean {guess}? " if guess else ""
    raise WorkbenchError(f"unknown {what} '{value}': {hint}choose {'|'.join(choices)}")


def _int_option(cmd: Command, key: str, minimum: int | None = None) -> None:
    value = cmd.option(key)
    if value is None:
        return
    if not _INT.fullmatch(value) or (minimum is not None and int(value) < minimum):
        kind = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise WorkbenchError(f"{cmd.verb}: {key}={value} must be {kind}")


def _result_id(verb: str, word: str) -> None:
    if not _RESULT_ID.fullmatch(word):
        raise WorkbenchError(f"{verb}: expected a result id like r1, got '{word}'")


def _circuit_id(verb: str, word: str) -> None:
    if not _CIRCUIT_ID.fullmatch(word):
        raise WorkbenchError(f"{verb}: expected a circuit id like c1, got '{word}'")


def _check_load(cmd: Command) -> None:
    device = cmd.option("device")
    if device is not None and not _CUDA_INDEX.fullmatch(device):
        _choice("device", device, DEVICES)
    dtype = cmd.option("dtype")
    if dtype is not None:
        _choice("dtype", dtype, DTYPES)
    _int_option(cmd, "step")


def _check_task(cmd: Command) -> None:
    _int_option(cmd, "n", minimum=1)
    _int_option(cmd, "seed")


def _check_prompts(cmd: Command) -> None:
    if not cmd.args[0].lower().endswith(".jsonl"):
        raise WorkbenchError(f"prompts: '{cmd.args[0]}' is not a .jsonl file")


def _check_metric(cmd: Command) -> None:
    """Built-in names are checked with a did-you-mean; another identifier may be a metric
    function the session was given, which only the session knows."""
    name = cmd.args[0]
    if not name.isidentifier() or (name not in METRICS and _suggest(name, METRICS)):
        _choice("metric", name, METRICS)


def _check_ablate(cmd: Command) -> None:
    mode = cmd.option("mode")
    if mode is not None:
        _choice("ablation mode", mode, ABLATION_MODES)
    _int_option(cmd, "pos")


def _check_restore(cmd: Command) -> None:
    if "all" in cmd.args and len(cmd.args) > 1:
        raise _usage(VERBS["restore"])


def _check_select(cmd: Command) -> None:
    first = cmd.args[0]
    by_score = bool(cmd.options) or _RESULT_ID.fullmatch(first) is not None
    if not by_score:
        return  # select NODE...
    _result_id("select", first)
    if len(cmd.args) != 1 or len(cmd.options) > 1:
        raise _usage(VERBS["select"])
    top, threshold = cmd.option("top"), cmd.option("threshold")
    if top is not None:
        _int_option(cmd, "top", minimum=1)
    elif threshold is not None:
        try:
            finite = math.isfinite(float(threshold)) and threshold.isascii()
        except ValueError:
            finite = False
        if not finite:
            raise WorkbenchError(f"select: threshold={threshold} must be a finite number, "
                                 "like 0.01")


def _check_check(cmd: Command) -> None:
    _circuit_id("check", cmd.args[0])
    mode = cmd.option("mode")
    if mode is not None:
        _choice("ablation mode", mode, ABLATION_MODES)
    level = cmd.option("level")
    if level is not None:
        _choice("circuit level", level, ("node", "edge"))


def _check_compare(cmd: Command) -> None:
    for word in cmd.args:
        _circuit_id("compare", word)


def _check_export(cmd: Command) -> None:
    target, path = cmd.args[0], cmd.args[1]
    if _RESULT_ID.fullmatch(target):
        suffixes = FIGURE_SUFFIXES
    elif _CIRCUIT_ID.fullmatch(target):
        suffixes = EXPORT_SUFFIXES
    else:
        raise WorkbenchError(f"export: expected a circuit id like c1 or a result id like r1, "
                             f"got '{target}'")
    if not path.lower().endswith(suffixes):
        raise WorkbenchError(
            f"export: '{path}' needs a suffix {'|'.join(suffixes)} to choose the format"
        )


def _check_sae(cmd: Command) -> None:
    if cmd.args[0] != "load":
        raise WorkbenchError(f"sae: unknown action '{cmd.args[0]}': use sae load NAME_OR_DIR")
    _int_option(cmd, "layer", minimum=0)
    site = cmd.option("site")
    if site is not None:
        _choice("dictionary site", site, ("attn_out", "mlp", "mlp_out"))
    download = cmd.option("download")
    if download is not None:
        _choice("download", download, ("yes", "no"))


def _check_help(cmd: Command) -> None:
    if cmd.args and cmd.args[0] not in VERBS:
        raise _unknown_verb(cmd.args[0])


_CHECKS: dict[str, Callable[[Command], None]] = {
    "load": _check_load,
    "task": _check_task,
    "prompts": _check_prompts,
    "metric": _check_metric,
    "ablate": _check_ablate,
    "restore": _check_restore,
    "select": _check_select,
    "check": _check_check,
    "compare": _check_compare,
    "export": _check_export,
    "sae": _check_sae,
    "help": _check_help,
}


def parse(line: str) -> Command | None:
    """Parse one line; None for a blank or comment-only line; `WorkbenchError` when invalid."""
    words = _tokens(line)
    if not words:
        return None
    verb = words[0].lower()
    spec = VERBS.get(verb)
    if spec is None:
        raise _unknown_verb(words[0])
    args, options = _split_words(words[1:])
    if len(args) < spec.min_args or (spec.max_args is not None and len(args) > spec.max_args):
        raise _usage(spec)
    _check_options(verb, spec, options)
    cmd = Command(verb, args, options, canonical_text(verb, args, options))
    check = _CHECKS.get(verb)
    if check is not None:
        check(cmd)
    return cmd


def help_text(verb: str | None = None) -> str:
    """All verbs with one-line summaries, or the usage and summary of one verb."""
    if verb is None:
        width = max(len(v) for v in VERBS)
        lines = [f"{v:<{width}}  {s.summary}" for v, s in VERBS.items()]
        return "\n".join([*lines, "", "help VERB shows a command's usage"])
    spec = VERBS.get(verb.lower())
    if spec is None:
        raise _unknown_verb(verb)
    return f"usage: {spec.usage}\n{spec.summary}"
