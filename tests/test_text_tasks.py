"""Text tasks (years, counting, ioi, style=text arithmetic) under GPT-2's exact tokenizer.

Answers are checked against facts recomputed from the prompt text (Python arithmetic, the month
list, the names in the sentence); tokenization against GPT-2's ids; metrics with answers of
different token lengths against per-prompt loops written out here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from workbench.bpe import gpt2_tokenizer
from workbench.errors import WorkbenchError
from workbench.metrics import (
    Report,
    correct_per_prompt,
    kl_per_prompt,
    logit_diff_per_prompt,
    metric_per_prompt,
    per_digit_accuracy,
    prob_per_prompt,
)
from workbench.tasks import PromptPair, PromptSet, make_task
from workbench.tasks.encode import encode
from workbench.tasks.text import DAYS, MONTHS, NOUNS, NUMBER_WORDS, valid_years

TOK = gpt2_tokenizer()
YEAR = re.compile(r"The (\w+) lasted from the year (\d\d)(\d\d) to the year (\d\d)")


def test_years_follow_hanna_et_al() -> None:
    years = valid_years()
    assert set(years) == set(range(11, 18))
    for cc, xxs in years.items():
        for xx in xxs:
            ids = TOK.encode(f" {cc}{xx:02d}")
            assert ids == [TOK.encode(f" {cc}")[0], TOK.encode(f"{xx:02d}")[0]]
    assert 32 in years[17] and 1 not in years[17]
    pairs = make_task("years").pairs(300, seed=1)
    for pair in pairs:
        noun, cc, xx, cc2 = YEAR.fullmatch(pair.clean).groups()
        assert noun in NOUNS and cc == cc2 and int(xx) in years[int(cc)]
        assert {int(a) for a in pair.accepted} == set(range(int(xx) + 1, 100))
        assert {int(r) for r in pair.rejected} == set(range(0, int(xx) + 1))
        assert int(pair.answer[0]) > int(xx) >= int(pair.contrast[0])
        _, bcc, bxx, _ = YEAR.fullmatch(pair.corrupted).groups()
        assert (bcc, bxx) == (cc, "01")  # their baseline
    enc = encode(pairs, TOK)
    assert enc.n_answer == 1 and enc.answer_mask is None
    assert len(set(enc.lengths.tolist())) == 1  # every noun is one token: one prompt length


@pytest.mark.parametrize("corrupt", ["01", "random_year", "century"])
def test_years_corruptions_keep_length(corrupt: str) -> None:
    pairs = make_task("years").pairs(100, seed=2, corrupt=corrupt)
    enc = encode(pairs, TOK)  # raises on a length mismatch
    assert (enc.clean != enc.corrupted).any(-1).all()


def test_sentence_is_gpt2s() -> None:
    pair = PromptPair("The war lasted from the year 1732 to the year 17",
                      "The war lasted from the year 1701 to the year 17", ("33",), ("31",),
                      multi_token=True)
    enc = encode((pair,), TOK)
    assert enc.clean[0].tolist() == [50256, 464, 1175, 15436, 422, 262, 614, 1596, 2624, 284,
                                     262, 614, 1596]


@pytest.mark.parametrize("kind", ["numbers", "words", "months", "days"])
@pytest.mark.parametrize("direction", ["up", "down"])
def test_counting_answers_continue_the_sequence(kind: str, direction: str) -> None:
    task = make_task("counting", kind=kind, direction=direction)
    vocab = {"numbers": [str(i) for i in range(1, 100)], "words": list(NUMBER_WORDS),
             "months": list(MONTHS), "days": list(DAYS)}[kind]
    step = 1 if direction == "up" else -1
    for pair in task.pairs(100, seed=3):
        terms = pair.clean.split(" ") if kind == "words" else pair.clean.rstrip(",").split(", ")
        assert 3 <= len(terms) <= 6
        index = [vocab.index(t) for t in terms]
        nxt = index[-1] + step
        if kind in ("months", "days"):
            gaps = [(b - a) % len(vocab) for a, b in zip(index, index[1:], strict=False)]
            assert all(g == step % len(vocab) for g in gaps)
            nxt %= len(vocab)
        else:
            assert all(b - a == step for a, b in zip(index, index[1:], strict=False))
        assert pair.answer == (" " + vocab[nxt],) and pair.contrast == (" " + terms[-1],)


@pytest.mark.parametrize("corrupt", ["repeat_all", "random_term", "shuffled"])
@pytest.mark.parametrize("kind", ["numbers", "words", "months", "days"])
def test_counting_corruptions(kind: str, corrupt: str) -> None:
    pairs = make_task("counting", kind=kind).pairs(60, seed=4, corrupt=corrupt)
    enc = encode(pairs, TOK)  # equal clean/corrupted token lengths, or it raises
    for pair in pairs:
        sep = " " if kind == "words" else ", "
        clean, bad = pair.clean.rstrip(",").split(sep), pair.corrupted.rstrip(",").split(sep)
        if corrupt == "repeat_all":
            assert bad == [clean[0]] * len(clean)
        elif corrupt == "shuffled":
            assert sorted(bad) == sorted(clean) and bad != clean
        else:
            assert sum(a != b for a, b in zip(clean, bad, strict=False)) <= 1
    assert len(set(enc.lengths.tolist())) > 1  # 3 to 6 terms: prompts of different lengths


def test_counting_words_has_multi_token_answers() -> None:
    # " seventeen" etc. may be several GPT-2 tokens: the mask marks the real answer slots.
    pairs = make_task("counting", kind="words").pairs(300, seed=5)
    enc = encode(pairs, TOK)
    widths = {len(TOK.encode(p.answer[0])) for p in pairs}
    assert enc.n_answer == max(widths)
    for b, pair in enumerate(pairs):
        ids = TOK.encode(pair.answer[0])
        assert enc.answer[b, : len(ids)].tolist() == ids
        assert enc.mask[b].tolist() == [True] * len(ids) + [False] * (enc.n_answer - len(ids))


def test_ioi_names_and_answers() -> None:
    for order in ("ABBA", "BABA"):
        for pair in make_task("ioi", order=order).pairs(100, seed=6):
            io, s = pair.answer[0].strip(), pair.contrast[0].strip()
            assert _names(pair.clean) == ([io, s, s] if order == "ABBA" else [s, io, s])
            assert len(TOK.encode(" " + io)) == len(TOK.encode(" " + s)) == 1
    pairs = make_task("ioi").pairs(100, seed=7, corrupt="abc")
    enc = encode(pairs, TOK)
    assert enc.n_answer == 1
    for pair in pairs:
        io, s = pair.answer[0].strip(), pair.contrast[0].strip()
        a, b, c = _names(pair.corrupted)
        assert {a, b} == {io, s} and c not in (io, s)  # the second S mention is a third name


def _names(text: str) -> list[str]:
    words = re.findall(r"[A-Z][a-z]+", text)
    return [w for w in words if w not in ("When", "Then", "After", "While", "Friends", "The")]


@pytest.mark.parametrize("name", ["addition", "multiplication"])
def test_text_style_arithmetic_is_gpt2s(name: str) -> None:
    task = make_task(name, digits=2, style="text")
    pairs = task.pairs(200, seed=8)
    enc = encode(pairs, TOK)
    op = "+" if name == "addition" else "*"
    for b, pair in enumerate(pairs):
        a, c = pair.clean.rstrip("=").split(op)
        assert len(a) == len(c) == 2
        result = int(a) + int(c) if name == "addition" else int(a) * int(c)
        assert pair.answer == (str(result),) and pair.multi_token
        ids = TOK.encode(pair.clean + pair.answer[0])  # as GPT-2 reads the whole line
        n = int(enc.mask[b].sum())
        assert enc.clean[b, 1: int(enc.lengths[b])].tolist() == ids[:-1]
        assert enc.answer[b, :n].tolist() == ids[-n:]
    if name == "multiplication":
        assert enc.answer_mask is not None  # "408" is one token, "2214" two


def test_text_style_corruptions_keep_length() -> None:
    task = make_task("multiplication", digits=3, style="text")
    for corrupt in task.corruptions:
        encode(task.pairs(50, seed=9, corrupt=corrupt), TOK)


def test_text_tasks_refuse_digit_styles() -> None:
    with pytest.raises(WorkbenchError, match="style must be one of text"):
        make_task("years", style="spaced")
    with pytest.raises(WorkbenchError, match="century=9 is out of range"):
        make_task("years", century="9")
    with pytest.raises(WorkbenchError, match="kind must be one of"):
        make_task("counting", kind="colours")


# --- metrics with answers of different token lengths ----------------------------------------


def _ragged() -> tuple[list[PromptPair], object]:
    pairs = [PromptPair("12*34=", "13*34=", ("408",), ("442",), multi_token=True),
             PromptPair("27*82=", "28*82=", ("2214",), ("2296",), multi_token=True),
             PromptPair("9*9=", "8*9=", ("81",), ("72",), multi_token=True)]
    return pairs, encode(pairs, TOK)


def test_metrics_honour_the_answer_mask() -> None:
    pairs, enc = _ragged()
    widths = [len(TOK.encode(p.answer[0])) for p in pairs]
    assert enc.mask.sum(-1).tolist() == widths and max(widths) > min(widths)
    torch.manual_seed(0)
    al = torch.randn(enc.n, enc.n_answer, len(TOK))
    ref = torch.randn_like(al)
    probs, lp, lq = al.softmax(-1), ref.log_softmax(-1), al.log_softmax(-1)
    for b, w in enumerate(widths):
        ans, con = enc.answer[b, :w], enc.contrast[b, :w]
        diff = [float(al[b, i, ans[i]] - al[b, i, con[i]]) for i in range(w) if ans[i] != con[i]]
        assert float(logit_diff_per_prompt(al, enc)[b]) == pytest.approx(
            sum(diff) / max(1, len(diff)), rel=1e-5)
        assert float(prob_per_prompt(al, enc)[b]) == pytest.approx(
            float(probs[b, torch.arange(w), ans].mean()), rel=1e-5)
        kl = (lp[b, :w].exp() * (lp[b, :w] - lq[b, :w])).sum(-1).mean()
        assert float(kl_per_prompt(al, ref, enc)[b]) == pytest.approx(float(kl), rel=1e-5)
    # A prediction right on the real slots is correct whatever sits in the padded slots.
    exact = torch.full_like(al, -10.0)
    exact.scatter_(-1, enc.answer.unsqueeze(-1), 10.0)
    for b, w in enumerate(widths):
        exact[b, w:] = torch.randn(enc.n_answer - w, len(TOK))
    assert correct_per_prompt(exact, enc).all()
    assert per_digit_accuracy(exact, enc) == [1.0] * enc.n_answer


def test_prob_diff_is_hanna_et_als() -> None:
    pairs = make_task("years").pairs(20, seed=10)
    enc = encode(pairs, TOK)
    torch.manual_seed(1)
    al = torch.randn(enc.n, 1, len(TOK)) * 3
    probs = al[:, 0].softmax(-1)
    got = metric_per_prompt("prob_diff", al, enc)
    for b, pair in enumerate(pairs):
        xx = 99 - len(pair.accepted)
        good = sum(float(probs[b, TOK.encode(f"{y:02d}")[0]]) for y in range(xx + 1, 100))
        bad = sum(float(probs[b, TOK.encode(f"{y:02d}")[0]]) for y in range(0, xx + 1))
        assert float(got[b]) == pytest.approx(good - bad, abs=1e-6)
    # Without accepted/rejected sets: p(answer) - p(contrast) over the real slots.
    pairs2, enc2 = _ragged()
    al2 = torch.randn(enc2.n, enc2.n_answer, len(TOK))
    p2 = al2.softmax(-1)
    for b in range(len(pairs2)):
        w = int(enc2.mask[b].sum())
        vals = [float(p2[b, i, enc2.answer[b, i]] - p2[b, i, enc2.contrast[b, i]])
                for i in range(w) if enc2.answer[b, i] != enc2.contrast[b, i]]
        assert float(metric_per_prompt("prob_diff", al2, enc2)[b]) == pytest.approx(
            sum(vals) / max(1, len(vals)), abs=1e-6)
    report = Report.of(al, enc)
    assert report.prob_diff == pytest.approx(float(got.mean()), abs=1e-6)


def test_accuracy_accepts_any_later_year() -> None:
    pairs = make_task("years").pairs(10, seed=11)
    enc = encode(pairs, TOK)
    al = torch.zeros(enc.n, 1, len(TOK))
    al[:, 0, TOK.encode("99")[0]] = 5.0  # 99 > every XX
    assert correct_per_prompt(al, enc).all()
    al[:, 0, TOK.encode("00")[0]] = 10.0  # 00 <= every XX
    assert not correct_per_prompt(al, enc).any()


# --- prompt files: free text and multi-token answers ----------------------------------------


def test_prompt_file_free_text(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [{"clean": "When Mary and John went to the store, John gave a drink to",
             "corrupted": "When Mary and John went to the store, Kate gave a drink to",
             "answer": " Mary", "contrast": " John"},
            {"clean": "27*82=", "corrupted": "28*82=", "answer": "2214", "contrast": "2296"},
            {"clean": "The war lasted from the year 1732 to the year 17",
             "corrupted": "The war lasted from the year 1701 to the year 17", "answer": "50",
             "contrast": "20", "accepted": [f"{y}" for y in range(33, 100)],
             "rejected": [f"{y:02d}" for y in range(0, 33)]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = PromptSet.load_jsonl(path)
    assert all(p.multi_token for p in prompts.pairs)
    assert prompts.pairs[0].answer == (" Mary",)
    enc = encode(prompts, TOK)
    assert enc.mask.sum(-1).tolist() == [1, 2, 1]
    assert enc.answer[0, 0].item() == TOK.encode(" Mary")[0]
    assert enc.answer[1, :2].tolist() == TOK.encode("2214")
    assert enc.rejected is not None and enc.rejected[2] is not None and len(enc.rejected[2]) == 33
    prompts.save_jsonl(tmp_path / "again.jsonl")
    assert PromptSet.load_jsonl(tmp_path / "again.jsonl").pairs == prompts.pairs


def test_digit_tasks_keep_one_token_per_unit() -> None:
    pair = PromptPair("1+11=", "2+11=", ("1", "2"), ("1", "3"))
    enc = encode((pair,), TOK)  # "1" and "2" are single GPT-2 tokens
    assert enc.answer[0].tolist() == [TOK.encode("1")[0], TOK.encode("2")[0]]
    with pytest.raises(WorkbenchError, match="answer unit '12' is 1 tokens|is 2 tokens") as err:
        encode((PromptPair("1+11=", "2+11=", ("123456",), ("1",)),), TOK)
    assert "style=spaced" in str(err.value)
