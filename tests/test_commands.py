"""Command language v1: every DESIGN.md example parses, canonical text round-trips, and each
kind of mistake gives one clear line (did-you-mean, usage, bad option, bad value, bad id)."""

from __future__ import annotations

import pytest

from workbench.commands import VERBS, Command, help_text, parse
from workbench.errors import WorkbenchError

# (line, verb, args, options)
EXAMPLES: list[tuple[str, str, tuple[str, ...], tuple[tuple[str, str], ...]]] = [
    ("load add3 device=cpu", "load", ("add3",), (("device", "cpu"),)),
    (
        "load mul2 device=cuda:1 dtype=bfloat16",
        "load",
        ("mul2",),
        (("device", "cuda:1"), ("dtype", "bfloat16")),
    ),
    (
        "task addition n=256 seed=0 digits=3",
        "task",
        ("addition",),
        (("n", "256"), ("seed", "0"), ("digits", "3")),
    ),
    (
        "task multiplication corrupt=random_digit",
        "task",
        ("multiplication",),
        (("corrupt", "random_digit"),),
    ),
    ("prompts pairs.jsonl", "prompts", ("pairs.jsonl",), ()),
    ("metric logit_diff", "metric", ("logit_diff",), ()),
    ("metric kl", "metric", ("kl",), ()),
    (
        "ablate a9.1 a9.* m3 mode=mean pos=-1",
        "ablate",
        ("a9.1", "a9.*", "m3"),
        (("mode", "mean"), ("pos", "-1")),
    ),
    (
        "ablate a*.* m* a3.0->a9.1<q> a9.1@-1 m9.n123",
        "ablate",
        ("a*.*", "m*", "a3.0->a9.1<q>", "a9.1@-1", "m9.n123"),
        (),
    ),
    ("restore a9.1 m3", "restore", ("a9.1", "m3"), ()),
    ("restore all", "restore", ("all",), ()),
    ("perf", "perf", (), ()),
    ("run dla", "run", ("dla",), ()),
    (
        "run eap_ig steps=8 anything=goes",
        "run",
        ("eap_ig",),
        (("steps", "8"), ("anything", "goes")),
    ),
    ("select r3", "select", ("r3",), ()),
    ("select r1 top=10", "select", ("r1",), (("top", "10"),)),
    ("select r12 threshold=0.05", "select", ("r12",), (("threshold", "0.05"),)),
    ("select a0.1 m1", "select", ("a0.1", "m1"), ()),
    ("check c1 mode=mean", "check", ("c1",), (("mode", "mean"),)),
    ("check c3", "check", ("c3",), ()),
    ("compare c1 c2", "compare", ("c1", "c2"), ()),
    ("export c1 out.dot", "export", ("c1", "out.dot"), ()),
    ("export c2 figs/c2.SVG", "export", ("c2", "figs/c2.SVG"), ()),
    ("export c2 c2.json", "export", ("c2", "c2.json"), ()),
    ("save s.jsonl", "save", ("s.jsonl",), ()),
    ("sae load add3", "sae", ("load", "add3"), ()),
    ("sae load saes/ layer=1 site=mlp", "sae", ("load", "saes/"), (("layer", "1"),
                                                                   ("site", "mlp"))),
    ("undo", "undo", (), ()),
    ("redo", "redo", (), ()),
    ("help", "help", (), ()),
    ("help ablate", "help", ("ablate",), ()),
]


@pytest.mark.parametrize(("line", "verb", "args", "options"), EXAMPLES)
def test_design_examples_parse(
    line: str, verb: str, args: tuple[str, ...], options: tuple[tuple[str, str], ...]
) -> None:
    cmd = parse(line)
    assert cmd is not None
    assert (cmd.verb, cmd.args, cmd.options) == (verb, args, options)
    assert cmd.text == line  # every example is already canonical
    assert str(cmd) == line
    assert parse(cmd.text) == cmd


def test_every_verb_has_an_example() -> None:
    assert {verb for _, verb, _, _ in EXAMPLES} == set(VERBS)


@pytest.mark.parametrize("line", ["", "   ", "# a comment", "   # indented comment", "\t"])
def test_blank_and_comment_lines_are_none(line: str) -> None:
    assert parse(line) is None


def test_trailing_comment_and_spacing_are_dropped_from_text() -> None:
    cmd = parse("  ablate   a9.1    mode=zero   # knock out the name mover  ")
    assert cmd is not None
    assert cmd.text == "ablate a9.1 mode=zero"
    assert cmd.args == ("a9.1",)


def test_options_may_come_before_args_and_keep_their_order() -> None:
    cmd = parse("ablate pos=-1 a9.1 mode=mean m3")
    assert cmd is not None
    assert cmd.args == ("a9.1", "m3")
    assert cmd.options == (("pos", "-1"), ("mode", "mean"))
    assert cmd.text == "ablate a9.1 m3 pos=-1 mode=mean"
    assert list(cmd.opts) == ["pos", "mode"]


def test_option_lookup() -> None:
    cmd = parse("task addition n=64 digits=3")
    assert cmd is not None
    assert cmd.option("n") == "64"
    assert cmd.option("seed") is None
    assert cmd.option("seed", "0") == "0"
    assert cmd.opts == {"n": "64", "digits": "3"}


def test_verb_is_case_insensitive() -> None:
    cmd = parse("PERF")
    assert cmd is not None and cmd.verb == "perf" and cmd.text == "perf"


def test_quoted_values_keep_spaces_and_hashes() -> None:
    cmd = parse('prompts "my file.jsonl"  # the pairs')
    assert cmd is not None
    assert cmd.args == ("my file.jsonl",)
    assert cmd.text == 'prompts "my file.jsonl"'
    assert parse(cmd.text) == cmd

    cmd = parse('run patch label="a # b" path=\'x "y".txt\'')
    assert cmd is not None
    assert cmd.opts == {"label": "a # b", "path": 'x "y".txt'}
    assert parse(cmd.text) == cmd


def test_command_is_frozen() -> None:
    cmd = parse("perf")
    assert isinstance(cmd, Command)
    with pytest.raises(AttributeError):
        cmd.verb = "undo"  # type: ignore[misc]


def _error(line: str) -> str:
    with pytest.raises(WorkbenchError) as info:
        parse(line)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_typo_in_verb_suggests_the_verb() -> None:
    assert _error("ablat a9.1") == "unknown command 'ablat': did you mean ablate?"
    assert _error("restor all") == "unknown command 'restor': did you mean restore?"


def test_unknown_verb_without_close_match_points_to_help() -> None:
    assert _error("xyzzy") == "unknown command 'xyzzy': type help for the list"


@pytest.mark.parametrize(
    ("line", "verb"),
    [
        ("ablate", "ablate"),
        ("ablate mode=mean", "ablate"),
        ("load", "load"),
        ("load add3 mul2", "load"),
        ("perf now", "perf"),
        ("undo 2", "undo"),
        ("compare c1", "compare"),
        ("export c1", "export"),
        ("metric", "metric"),
        ("restore", "restore"),
        ("restore all a9.1", "restore"),
        ("select r1 top=3 threshold=0.1", "select"),
        ("select r1 r2 top=3", "select"),
        ("help ablate restore", "help"),
    ],
)
def test_wrong_arguments_show_usage(line: str, verb: str) -> None:
    assert _error(line) == f"usage: {VERBS[verb].usage}"


def test_usage_strings_match_design() -> None:
    assert VERBS["ablate"].usage == "ablate NODE... [mode=zero|mean|resample] [pos=P]"
    assert VERBS["restore"].usage == "restore NODE... | restore all"
    assert VERBS["export"].usage == (
        "export c<n> PATH.dot|.svg|.png|.json|.pdf | export r<n> PATH.png|.svg|.pdf")
    assert VERBS["select"].usage == "select r<n> [top=K | threshold=T] | select NODE..."


def test_unknown_option_suggests_the_option() -> None:
    assert _error("ablate a9.1 mdoe=mean") == "ablate has no option 'mdoe': did you mean mode?"
    assert _error("ablate a9.1 colour=red") == (
        "ablate has no option 'colour': its options are mode, pos"
    )
    assert _error("perf fast=1") == "perf has no option 'fast': its options are metric"
    assert _error("compare c1 c2 fast=1") == "compare has no option 'fast': it takes no options"


def test_open_option_verbs_accept_any_key() -> None:
    assert parse("run acdc threshold=0.01 edges=true") is not None
    assert parse("task greater_than n=32 start=1700") is not None


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("ablate a9.1 mode=", "option 'mode=' has no value"),
        ("ablate a9.1 =mean", "bad option '=mean'"),
        ("ablate a9.1 mode=zero mode=mean", "option 'mode' given twice"),
        ('prompts "unclosed.jsonl', "cannot read command line: no closing quotation"),
    ],
)
def test_malformed_options_and_quotes(line: str, fragment: str) -> None:
    assert fragment in _error(line)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "metric logitdiff",
            "unknown metric 'logitdiff': did you mean logit_diff? "
            "choose logit_diff|prob|accuracy|kl|l2|prob_diff",
        ),
        (
            "metric logit-diff",
            "unknown metric 'logit-diff': did you mean logit_diff? "
            "choose logit_diff|prob|accuracy|kl|l2|prob_diff",
        ),
        (
            "ablate a9.1 mode=maen",
            "unknown ablation mode 'maen': did you mean mean? choose zero|mean|resample",
        ),
        ("check c1 mode=ones", "unknown ablation mode 'ones': choose zero|mean|resample"),
        ("ablate a9.1 pos=last", "ablate: pos=last must be an integer"),
        ("load add3 device=gpu", "unknown device 'gpu': did you mean cpu? choose auto|cpu|cuda"),
        (
            "load add3 dtype=float64",
            "unknown dtype 'float64': did you mean float16? choose float32|bfloat16|float16",
        ),
        ("task addition n=0", "task: n=0 must be an integer >= 1"),
        ("select r1 top=0", "select: top=0 must be an integer >= 1"),
        ("select r1 top=ten", "select: top=ten must be an integer >= 1"),
        ("select r1 threshold=big", "select: threshold=big must be a finite number, like 0.01"),
        ("prompts pairs.csv", "prompts: 'pairs.csv' is not a .jsonl file"),
    ],
)
def test_bad_values(line: str, message: str) -> None:
    assert _error(line) == message


@pytest.mark.parametrize("path", ["out.gif", "out", "out.dot.bak"])
def test_export_needs_a_known_suffix(path: str) -> None:
    assert _error(f"export c1 {path}") == (
        f"export: '{path}' needs a suffix .dot|.svg|.png|.json|.pdf to choose the format"
    )
    assert _error(f"export r1 {path}") == (
        f"export: '{path}' needs a suffix .png|.svg|.pdf to choose the format"
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("check r1", "check: expected a circuit id like c1, got 'r1'"),
        ("check c0", "check: expected a circuit id like c1, got 'c0'"),
        ("compare c1 x2", "compare: expected a circuit id like c1, got 'x2'"),
        ("export 1 out.dot",
         "export: expected a circuit id like c1 or a result id like r1, got '1'"),
        ("select c1 top=3", "select: expected a result id like r1, got 'c1'"),
        ("select rx threshold=0.1", "select: expected a result id like r1, got 'rx'"),
    ],
)
def test_bad_ids(line: str, message: str) -> None:
    assert _error(line) == message


def test_help_for_unknown_verb_suggests() -> None:
    assert _error("help ablat") == "unknown command 'ablat': did you mean ablate?"


def test_help_text_lists_every_verb() -> None:
    text = help_text()
    first_words = [line.split()[0] for line in text.splitlines() if line.strip()]
    for verb in VERBS:
        assert verb in first_words
    assert VERBS["ablate"].summary in text


def test_help_text_for_one_verb() -> None:
    assert help_text("ablate") == f"usage: {VERBS['ablate'].usage}\n{VERBS['ablate'].summary}"
    with pytest.raises(WorkbenchError, match="did you mean compare"):
        help_text("compar")


def test_commands_module_is_pure_python() -> None:
    import subprocess
    import sys

    code = "import sys, workbench.commands; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_sae_lines_are_checked() -> None:
    assert "use sae load" in _error("sae unload add3")
    assert "layer=x must be an integer >= 0" in _error("sae load add3 layer=x")
    assert "choose attn_out|mlp|mlp_out" in _error("sae load add3 site=resid")
    assert _error("sae load") == f"usage: {VERBS['sae'].usage}"
