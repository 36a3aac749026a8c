"""The bundled GPT-2-tokenizer model `bpe-numbers`: the test model for every BPE path.

Its tokenizer must be GPT-2's exactly; it must solve what its card claims on held-out prompts
(`years` accuracy >= 0.95 with prob_diff >= 0.8, `counting kind=months` >= 0.95); the engine's
answer logits must equal a plain `transformers` forward; year_probs must put the mass right of
the diagonal; the finetune codec must recognise it as GPT-2 and tokenize identically; a prompt
file of free text with multi-token answers must run through a session.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from workbench.ablation import AblationEngine
from workbench.cli import evaluate
from workbench.graph import Graph
from workbench.model import LoadedModel
from workbench.plugins import Context, load_registry
from workbench.tasks import make_task
from workbench.tasks.encode import encode

SENTENCE = "The war lasted from the year 1732 to the year 17"
IDS = [464, 1175, 15436, 422, 262, 614, 1596, 2624, 284, 262, 614, 1596]

pytestmark = pytest.mark.slow


def test_tokenizer_is_gpt2s(bpe_numbers: LoadedModel) -> None:
    tok = bpe_numbers.tokenizer
    assert tok.encode(SENTENCE) == IDS  # no BOS from the tokenizer...
    assert bpe_numbers.bridge.to_tokens(SENTENCE)[0].tolist() == [50256, *IDS]  # TL adds one
    assert len(tok) == 50257 and tok.bos_token_id == 50256
    assert bpe_numbers.card.d_vocab == 50257
    assert bpe_numbers.default_task() == ("years", {})


def test_weights_small_and_loaded_as_float32(bpe_numbers: LoadedModel) -> None:
    assert bpe_numbers.directory is not None
    assert (bpe_numbers.directory / "model.safetensors").stat().st_size <= 16 * 2**20
    assert all(p.dtype == torch.float32 for p in bpe_numbers.bridge.parameters())


@pytest.mark.parametrize(("task", "options", "accuracy", "prob_diff"), [
    ("years", {}, 0.95, 0.8),
    ("counting", {"kind": "months"}, 0.95, None),
    ("counting", {"kind": "numbers"}, 0.9, None),
])
def test_held_out_figures(bpe_numbers: LoadedModel, task: str, options: dict, accuracy: float,
                          prob_diff: float | None) -> None:
    result = evaluate(bpe_numbers, task, {**options, "n": "200"})
    assert result["accuracy"] >= accuracy
    if prob_diff is not None:
        assert result["prob_diff"] >= prob_diff


def test_engine_matches_transformers(bpe_numbers: LoadedModel) -> None:
    assert bpe_numbers.directory is not None
    prompts = make_task("counting", kind="numbers").prompt_set(24, seed=3)  # ragged lengths
    enc = encode(prompts, bpe_numbers.tokenizer)
    engine = AblationEngine(bpe_numbers, enc, Graph.of(bpe_numbers.card))
    hf = GPT2LMHeadModel.from_pretrained(str(bpe_numbers.directory), dtype=torch.float32)
    with torch.no_grad():
        logits = hf(enc.clean).logits
    ref = logits.gather(1, enc.answer_pos[..., None].expand(-1, -1, logits.shape[-1]))
    got = engine.clean_logits
    # Compatibility mode centres the unembedding: compare log-probabilities.
    torch.testing.assert_close(got.log_softmax(-1), ref.log_softmax(-1), atol=2e-4, rtol=0)


def test_year_probs_mass_right_of_the_diagonal(bpe_numbers: LoadedModel) -> None:
    prompts = make_task("years").prompt_set(64, seed=4, split="test")
    enc = encode(prompts, bpe_numbers.tokenizer)
    engine = AblationEngine(bpe_numbers, enc, Graph.of(bpe_numbers.card))
    ctx = Context(model=bpe_numbers, prompts=prompts, enc=engine.enc, metric="prob_diff",
                  mode="mean", graph=engine.graph, engine=engine)
    tech = load_registry()["year_probs"]
    table = tech.run(ctx, tech.Params())
    assert table.values.shape == (len(table.rows), 100) and table.cols[0] == "00"
    for row, xx in zip(table.values, table.rows, strict=True):
        assert float(row[int(xx) + 1:].sum()) > 0.8 > float(row[: int(xx) + 1].sum())
    ablated = tech.run(ctx, tech.Params(ablated=True))  # no ablations: the same table
    torch.testing.assert_close(ablated.values, table.values, atol=1e-5, rtol=0)


def test_finetune_codec_sees_gpt2(bpe_numbers: LoadedModel) -> None:
    from workbench.finetune.codec import TiktokenCodec, choose_codec

    assert bpe_numbers.directory is not None
    codec = choose_codec("auto", bpe_numbers.directory, "bpe-numbers", 50257)
    assert isinstance(codec, TiktokenCodec)
    texts = [SENTENCE, "January, February, March,", "12*34=408 ünï 😀  x"]
    assert codec.encode_batch(texts) == [bpe_numbers.tokenizer.encode(t) for t in texts]
    task_tok = codec.task_tokenizer()
    pairs = make_task("years").pairs(16, seed=5)
    a, b = encode(pairs, task_tok), encode(pairs, bpe_numbers.tokenizer)
    assert torch.equal(a.clean, b.clean) and torch.equal(a.answer, b.answer)


def test_prompt_file_session(bpe_numbers: LoadedModel, tmp_path: Path) -> None:
    from workbench.session import Session

    rows = [{"clean": "January, February, March, April, May,", "corrupted":
             "January, January, January, January, January,", "answer": " June",
             "contrast": " May"},
            {"clean": "The war lasted from the year 1732 to the year 17",
             "corrupted": "The war lasted from the year 1701 to the year 17", "answer": "50",
             "contrast": "20", "accepted": [f"{y}" for y in range(33, 100)],
             "rejected": [f"{y:02d}" for y in range(0, 33)]},
            {"clean": "10, 11, 12,", "corrupted": "10, 10, 10,", "answer": " 13",
             "contrast": " 12"}]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    session = Session(model=bpe_numbers)
    out = session.execute(f"prompts {path}")
    assert out.ok, out.error
    perf = session.execute("perf")
    assert perf.ok and perf.out["accuracy"] == 1.0 and perf.out["percent"] == 100.0
