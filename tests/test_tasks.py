"""Task generators, the option registry, JSON Lines prompt sets and `encode`.

Answers are checked against Python arithmetic on operands parsed back out of the prompt text, so
a generator cannot agree with itself by construction. No model is involved: all fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from workbench.errors import WorkbenchError
from workbench.tasks import TASKS, PromptPair, PromptSet, make_task
from workbench.tasks.encode import encode
from workbench.tokenizer import build_tokenizer

TOK = build_tokenizer()
# Every (task, options, corruption) combination the corruption tests run.
CASES = [
    (name, opts, corrupt)
    for name, opts in [("addition", {"digits": 1}), ("addition", {"digits": 3}),
                       ("multiplication", {"digits": 2}), ("sequence", {"width": 2}),
                       ("greater_than", {})]
    for corrupt in TASKS[name].corruptions
]


def operands(clean: str, symbol: str) -> tuple[int, int]:
    match = re.fullmatch(rf"(\d+){re.escape(symbol)}(\d+)=", clean)
    assert match, clean
    return int(match[1]), int(match[2])


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A GPT-2-style byte-level BPE (trained in memory: GPT-2's own files are not offline) that
    merges multi-digit numbers ("123" is one token) and knows " 1", " +" etc. as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eot = "<|endoftext|>"
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=[eot], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    spaced = "".join(" " + ch for ch in "0123456789+*=,>")
    core.train_from_iterator([spaced] * 20 + [str(n) for n in range(1000)] * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=eot, eos_token=eot)


# --- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [1, 2, 3, 5])
def test_addition_answers_match_python(digits: int) -> None:
    for pair in make_task("addition", digits=digits).pairs(200, seed=digits):
        a, b = operands(pair.clean, "+")
        assert "".join(pair.answer) == f"{a + b:0{digits + 1}d}"
        ca, cb = operands(pair.corrupted, "+")
        assert "".join(pair.contrast) == f"{ca + cb:0{digits + 1}d}"


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_multiplication_answers_are_padded_products_msb_first(digits: int) -> None:
    for pair in make_task("multiplication", digits=digits).pairs(200, seed=digits):
        assert len(pair.clean) == 2 * digits + 2  # zero-padded operands
        a, b = operands(pair.clean, "*")
        product = f"{a * b:0{2 * digits}d}"
        assert pair.answer == tuple(product)
        assert int("".join(pair.answer)) == a * b


@pytest.mark.parametrize("width", [1, 2, 3])
def test_sequence_answer_is_last_term_plus_one(width: int) -> None:
    for pair in make_task("sequence", width=width, length=4).pairs(100, seed=width):
        terms = pair.clean.rstrip(",").split(",")
        assert len(terms) == 4 and all(len(t) == width for t in terms)
        values = [int(t) for t in terms]
        assert values == list(range(values[0], values[0] + 4))
        assert "".join(pair.answer) == f"{values[-1] + 1:0{width}d}"
        assert "".join(pair.contrast) == terms[-1]  # contrast: copying the last term


def test_greater_than_accepts_exactly_the_later_years() -> None:
    for pair in make_task("greater_than", century=17).pairs(300, seed=0):
        assert pair.clean[:2] == "17" and pair.clean[4:] == ">17"
        xx = int(pair.clean[2:4])
        assert {int(a) for a in pair.accepted} == set(range(xx + 1, 100))
        assert pair.accepts(pair.answer)
        assert not pair.accepts(pair.contrast)
        assert int("".join(pair.contrast)) <= xx


# --- corruptions ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "opts", "corrupt"), CASES)
def test_corruption_keeps_token_length(name: str, opts: dict, corrupt: str) -> None:
    pairs = make_task(name, **opts).pairs(300, seed=1, corrupt=corrupt)
    for pair in pairs:
        assert len(TOK.encode(pair.clean)) == len(TOK.encode(pair.corrupted))
    enc = encode(pairs, TOK)  # encode checks it too
    assert enc.clean.shape == enc.corrupted.shape


# Corruptions that may by chance reproduce the clean prompt, and the condition when they do.
MAY_COINCIDE = {"random_operands", "repeated_digits", "shuffled_operands"}


@pytest.mark.parametrize(("name", "opts", "corrupt"), CASES)
def test_corruption_changes_the_prompt(name: str, opts: dict, corrupt: str) -> None:
    pairs = make_task(name, **opts).pairs(300, seed=2, corrupt=corrupt)
    same = [p for p in pairs if p.clean == p.corrupted]
    if name in ("sequence", "greater_than") or corrupt == "random_digit":
        assert not same  # these always change the prompt
        return
    assert corrupt in MAY_COINCIDE
    if opts.get("digits") == 1 and corrupt != "random_operands":
        return  # see the xfail below (repeated_digits) and shuffling only two digits
    assert len(same) < 0.15 * len(pairs)
    for pair in same:  # coincidences only where the corruption cannot help it
        a, b = pair.clean.rstrip("=").replace("*", "+").split("+")
        if corrupt == "repeated_digits":
            assert len(set(a)) == 1 and len(set(b)) == 1  # operands already repdigits
    if corrupt == "shuffled_operands":
        for pair in pairs:  # a shuffle is a permutation of the operand digits
            assert sorted(re.sub(r"\D", "", pair.clean)) == sorted(
                re.sub(r"\D", "", pair.corrupted))


@pytest.mark.xfail(strict=True, reason="repeated_digits is the identity on 1-digit operands")
def test_repeated_digits_changes_one_digit_addition() -> None:
    pairs = make_task("addition", digits=1).pairs(50, corrupt="repeated_digits")
    assert any(p.clean != p.corrupted for p in pairs)


def test_unknown_corruption_is_an_error() -> None:
    with pytest.raises(WorkbenchError, match="no corruption 'swap'.*random_digit"):
        make_task("addition").pairs(3, corrupt="swap")


# --- style, determinism, split -------------------------------------------------------------


DIGIT_TASKS = ("addition", "greater_than", "multiplication", "sequence")


@pytest.mark.parametrize("name", DIGIT_TASKS)
def test_spaced_style_gives_single_token_units(name: str, bpe_tokenizer) -> None:
    digits = make_task(name).pairs(100, seed=4)
    spaced = make_task(name, style="spaced").pairs(100, seed=4)
    for d, s in zip(digits, spaced, strict=True):  # same problems, only rendered differently
        assert s.clean == "".join(" " + ch for ch in d.clean)
        assert s.answer == tuple(" " + u for u in d.answer)
        for unit in s.answer + s.contrast:
            assert len(bpe_tokenizer.encode(unit, add_special_tokens=False)) == 1
        assert len(bpe_tokenizer.encode(s.clean, add_special_tokens=False)) == len(d.clean)
    enc = encode(spaced, bpe_tokenizer)
    assert enc.clean.shape == enc.corrupted.shape


def test_digits_style_merges_under_bpe(bpe_tokenizer) -> None:
    """Why `style=spaced` exists: BPE turns "123" into one token."""
    assert len(bpe_tokenizer.encode("123+456=", add_special_tokens=False)) == 4


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_pairs_other_seed_other_pairs(name: str) -> None:
    task = make_task(name)
    assert task.pairs(50, seed=7) == task.pairs(50, seed=7)
    assert task.pairs(50, seed=7) != task.pairs(50, seed=8)
    assert task.prompt_set(20, seed=3).pairs == make_task(name).prompt_set(20, seed=3).pairs


@pytest.mark.parametrize(("name", "opts"), [("addition", {"digits": 2}),
                                            ("multiplication", {"digits": 2}),
                                            ("sequence", {"width": 2}),
                                            ("greater_than", {})])
def test_train_and_test_splits_share_no_problem(name: str, opts: dict) -> None:
    task = make_task(name, **opts)
    train = {p.clean for p in task.pairs(2000, seed=0, split="train")}
    test = {p.clean for p in task.pairs(2000, seed=0, split="test")}
    assert train and test and not train & test
    everything = {p.clean for p in task.pairs(2000, seed=0, split="all")}
    assert everything & train and everything & test  # both splits are real subsets


# --- registry ------------------------------------------------------------------------------


def test_make_task_coerces_string_options() -> None:
    task = make_task("addition", digits="2", style="spaced")
    assert (task.digits, task.style) == (2, "spaced")


@pytest.mark.parametrize(("name", "opts", "message"), [
    ("additon", {}, "unknown task 'additon': did you mean addition"),
    ("zzz", {}, "choose one of addition"),
    ("addition", {"width": "2"}, "no option 'width'; options: digits, style"),
    ("addition", {"digits": "three"}, "digits expects int, got 'three'"),
    ("addition", {"style": "fancy"}, "style must be one of digits, spaced"),
    ("addition", {"digits": "0"}, "out of range"),
])
def test_make_task_errors(name: str, opts: dict, message: str) -> None:
    with pytest.raises(WorkbenchError, match=re.escape(message)):
        make_task(name, **opts)


# --- JSON Lines ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["addition", "greater_than"])
def test_jsonl_round_trip(name: str, tmp_path: Path) -> None:
    prompts = make_task(name).prompt_set(30, seed=5)
    prompts.save_jsonl(tmp_path / "p.jsonl")
    loaded = PromptSet.load_jsonl(tmp_path / "p.jsonl")
    assert loaded.pairs == prompts.pairs
    assert loaded.name == "p"


def test_jsonl_contrast_is_optional_and_lists_allowed(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"clean": "1+2=", "corrupted": "2+2=", "answer": ["0", "3"]}\n')
    (pair,) = PromptSet.load_jsonl(path).pairs
    assert pair.answer == pair.contrast == ("0", "3")


GOOD = json.dumps({"clean": "12+34=", "corrupted": "13+34=", "answer": "046",
                   "contrast": "047"})


@pytest.mark.parametrize(("line", "message"), [
    ('{"clean": "12+34=", ', "p.jsonl:3: not valid JSON"),
    ('["12+34="]', "p.jsonl:3: expected a JSON object"),
    ('{"clean": "12+34=", "answer": "046"}', "p.jsonl:3: missing field(s) corrupted"),
    ('{"clean": 12, "corrupted": "13+34=", "answer": "046"}', "p.jsonl:3: clean and corrupted"),
    ('{"clean": "1=", "corrupted": "2=", "answer": 46}', "p.jsonl:3: answer must be a string"),
    ('{"clean": "1=", "corrupted": "2=", "answer": ["0", "4", "6"], "contrast": ["0", "4"]}',
     "p.jsonl:3: contrast has 2 entries but answer has 3"),
    ('{"clean": "1=", "corrupted": "2=", "answer": ""}', "p.jsonl:3: a prompt pair needs"),
])
def test_bad_jsonl_line_names_line_and_reason(line: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n")  # blank line 2 still counts
    with pytest.raises(WorkbenchError, match=re.escape(message)):
        PromptSet.load_jsonl(path)


def test_empty_and_missing_jsonl(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(WorkbenchError, match="holds no prompt pairs"):
        PromptSet.load_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(WorkbenchError, match="does not exist"):
        PromptSet.load_jsonl(tmp_path / "missing.jsonl")


# --- encode --------------------------------------------------------------------------------


def test_encode_teacher_forces_the_answer() -> None:
    pairs = make_task("addition", digits=3).pairs(20, seed=6)
    enc = encode(pairs, TOK)
    assert enc.n == 20 and enc.n_answer == 4
    assert (enc.clean[:, 0] == TOK.bos_token_id).all()
    for b, pair in enumerate(pairs):
        ids = TOK.encode(pair.clean + "".join(pair.answer), add_special_tokens=False)
        assert enc.clean[b, 1:].tolist() == ids[:-1]  # BOS + prompt + answer[:-1]
        assert enc.answer[b].tolist() == ids[-4:]
        assert enc.answer_pos[b].tolist() == [8, 9, 10, 11]  # predicts answer unit i


def test_encode_rejects_multi_token_answer_unit() -> None:
    pair = PromptPair(clean="1+11=", corrupted="2+11=", answer=("12",), contrast=("13",))
    with pytest.raises(WorkbenchError, match=r"answer unit '12' is 2 tokens.*style=spaced"):
        encode((pair,), TOK)


def test_encode_rejects_length_mismatch() -> None:
    pair = PromptPair(clean="1+1=", corrupted="10+1=", answer=("2",), contrast=("1",))
    with pytest.raises(WorkbenchError, match="pair 0: clean prompt is 4 tokens but corrupted is 5"):
        encode((pair,), TOK)


def test_encode_rejects_differing_answer_lengths() -> None:
    pairs = (PromptPair("1+1=", "2+1=", ("2",), ("3",)),
             PromptPair("9+9=", "8+9=", ("1", "8"), ("1", "7")))
    with pytest.raises(WorkbenchError, match="pair 1 has 2 answer tokens but pair 0 has 1"):
        encode(pairs, TOK)


def test_encode_rejects_empty_set() -> None:
    with pytest.raises(WorkbenchError, match="empty"):
        encode((), TOK)
