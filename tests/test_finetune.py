"""`workbench finetune` on a tiny GPT-2 (2 layers, d_model 32) and a tiny tiktoken encoding.

The encoding is bytes plus a few merges (space+digit, so ` 1 2 * 3 4 =` has one token per
digit) and `<|endoftext|>`; the corpus is a few hundred lines of arithmetic in a temporary
JSONL file. Runs are 6-12 steps of 256 tokens, one CPU thread: they check that the loss falls,
that a resumed run repeats the uninterrupted one bit for bit, that the output opens in the
workbench, and every error path; not that the model learns multiplication.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import torch

from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.finetune import FinetuneConfig, finetune
from workbench.finetune import checkpoint as ckpt
from workbench.finetune.codec import EOT, GPT2_PAT, encoding_from_hf, hf_tokenizer
from workbench.finetune.data import Batches
from workbench.finetune.loop import lr_at, make_optimizer
from workbench.finetune.tracking import wandb_mode
from workbench.model import load_model

MERGES = [b" " + str(d).encode() for d in range(10)] + [b" =", b" *", b"12", b" 12"]


def tiny_encoding(merges: list[bytes] = MERGES, name: str = "tiny") -> tiktoken.Encoding:
    ranks = {bytes([i]): i for i in range(256)}
    for token in merges:
        ranks[token] = len(ranks)
    return tiktoken.Encoding(name=name, pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={EOT: len(ranks)})


ENC = tiny_encoding()


def tiny_gpt2(directory: Path, vocab_size: int, tokenizer: bool = False) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=vocab_size,
                        bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(str(directory))
    if tokenizer:
        hf_tokenizer(ENC).save_pretrained(str(directory))
    return directory


def corpus(path: Path, n: int = 300) -> Path:
    rng = random.Random(0)
    lines = []
    for _ in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        spaced = " ".join(f"{a:02d}{b:02d}")
        lines.append({"text": rng.choice([f"{a} * {b} = {a * b}", f" {spaced} = {a * b}",
                                          f"The product of {a} and {b} is {a * b}."]),
                      "id": len(lines)})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    return {"model": tiny_gpt2(root / "model", ENC.n_vocab, tokenizer=True),
            "data": corpus(root / "corpus.jsonl"), "root": root}


def config(files: dict[str, Path], out: Path, **changes: Any) -> FinetuneConfig:
    base = FinetuneConfig(
        model=str(files["model"]), data=str(files["data"]), out=str(out), rows=300,
        eval_rows=30, block_size=32, micro_batch=4, grad_accum=2, max_steps=12, lr=1e-2,
        min_lr=1e-3, warmup=2, eval_every=6, eval_batches=4, task_n=32, save_every=100,
        threads=1, wandb=False)
    return dataclasses.replace(base, **changes)


def rows(out: Path, kind: str) -> list[dict[str, Any]]:
    lines = (out / "finetune_log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.fixture(scope="module")
def straight(files: dict[str, Path]) -> Path:
    """12 uninterrupted steps."""
    out = files["root"] / "straight"
    result = finetune(config(files, out), encoding=ENC)
    assert result.step == 12 and not result.interrupted
    return out


# --- training -------------------------------------------------------------------------------


def test_loss_falls_and_task_is_scored(straight: Path) -> None:
    losses = [r["loss"] for r in rows(straight, "train")]
    assert len(losses) == 12 and losses[-1] < losses[0] - 1.0
    evals = rows(straight, "eval")
    assert [r["step"] for r in evals] == [0, 6, 12]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert all(0 <= r["task_accuracy"] <= 1 and len(r["task_per_digit"]) == 4 for r in evals)
    train = rows(straight, "train")[-1]
    assert train["tokens"] == 12 * 4 * 2 * 32 and train["tokens_per_s"] > 0


def test_resume_repeats_the_uninterrupted_run(files: dict[str, Path], straight: Path) -> None:
    out = files["root"] / "resumed"

    def ctrl_c_at_step_5(row: dict[str, Any]) -> None:
        if row["kind"] == "train" and row["step"] == 5:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: stop after this step and save

    first = finetune(config(files, out), encoding=ENC, on_log=ctrl_c_at_step_5)
    assert first.interrupted and first.step == 5
    assert ckpt.read_state(out / "checkpoint").step == 5
    assert not (out / "model.safetensors").exists()  # only the checkpoint, no final export
    with pytest.raises(WorkbenchError, match="already holds a run; pass --resume"):
        finetune(config(files, out), encoding=ENC)
    with pytest.raises(WorkbenchError, match="cannot resume exactly: --seed"):
        finetune(config(files, out, resume=True, seed=1), encoding=ENC)
    with pytest.raises(WorkbenchError, match="was 4 x 2 in the saved run but is 2 x 2"):
        finetune(config(files, out, resume=True, micro_batch=2), encoding=ENC)
    second = finetune(config(files, out, resume=True), encoding=ENC)
    assert second.step == 12 and not second.interrupted
    # Same data order (the same losses, step by step) and the same weights, bit for bit.
    assert [r["loss"] for r in rows(out, "train")] == [r["loss"] for r in rows(straight, "train")]
    assert [r["step"] for r in rows(out, "train")] == list(range(1, 13))
    assert (out / "model.safetensors").read_bytes() == (
        straight / "model.safetensors").read_bytes()


def test_keyboard_interrupt_saves_the_last_step(files: dict[str, Path], tmp_path: Path) -> None:
    def interrupt(row: dict[str, Any]) -> None:
        if row["kind"] == "train" and row["step"] == 2:
            raise KeyboardInterrupt

    result = finetune(config(files, tmp_path / "k", max_steps=4), encoding=ENC,
                      on_log=interrupt)
    assert result.interrupted and result.step == 2
    state = ckpt.read_state(tmp_path / "k" / "checkpoint")
    assert (state.step, state.tokens) == (2, 2 * 256)
    assert state.cursor == 2 * 2 * 4  # two steps of grad_accum 2 x micro_batch 4 windows


def test_checkpoint_opens_in_the_workbench(straight: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    model = load_model(str(straight), device="cpu")
    assert (model.card.n_layers, model.card.d_model, model.card.d_vocab) == (2, 32, ENC.n_vocab)
    assert model.tokenizer.encode(" 1 2 * 3 4 =", add_special_tokens=False) == (
        ENC.encode_ordinary(" 1 2 * 3 4 ="))
    assert "fine-tuned by Circuit Workbench" in model.card.description
    code = main(["eval", "--model", str(straight), "--task", "multiplication", "digits=2",
                 "style=spaced", "n=16", "--json", "--device", "cpu"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["n"] == 16 and 0 <= result["accuracy"] <= 1
    assert len(result["per_digit_accuracy"]) == 4


def test_cli_finetune_with_the_checkpoint_tokenizer(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["finetune", "--model", str(files["model"]), "--data", str(files["data"]),
            "--rows", "300", "--eval-rows", "30", "--out", str(out), "--max-steps", "2",
            "--block-size", "32", "--micro-batch", "4", "--grad-accum", "1", "--warmup", "1",
            "--eval-every", "2", "--task-n", "16", "--threads", "1", "--no-wandb"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"saved {out}: 2 steps, 256 tokens" in printed
    saved = json.loads((out / "finetune_config.json").read_text())
    assert saved["tokenizer"] == "auto" and saved["wandb"] is False
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["tokenizer"].startswith("checkpoint:") and meta["n_vocab"] == ENC.n_vocab
    assert (meta["train_rows"], meta["val_rows"]) == (270, 30)
    card = (out / "MODEL_CARD.md").read_text()
    assert "--max-steps 2" in card and "--no-wandb" in card


def test_task_metric_skipped_once_when_digits_are_not_tokens(
        tiny_checkpoint: Path, files: dict[str, Path], tmp_path: Path) -> None:
    # The digit tokenizer of the toy checkpoints splits " 1" into " " and "1".
    out = tmp_path / "digits"
    result = finetune(config(files, out, model=str(tiny_checkpoint), block_size=16,
                             max_steps=2, eval_every=1, lr=1e-3))
    assert result.task_accuracy is None and result.step == 2
    notes = [r["message"] for r in rows(out, "note") if "skipping" in r["message"]]
    assert len(notes) == 1 and "is 2 tokens" in notes[0]
    assert all(r["task_accuracy"] is None for r in rows(out, "eval"))


# --- errors ---------------------------------------------------------------------------------


def test_missing_column_names_the_columns(files: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"content": "1 * 2 = 2", "id": 0}\n' * 40)
    with pytest.raises(WorkbenchError, match="no column 'text'; columns: content, id"):
        finetune(config(files, tmp_path / "o", data=str(bad), rows=40, eval_rows=4),
                 encoding=ENC)


def test_parquet_source_and_missing_column(files: dict[str, Path], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [json.loads(line)["text"] for line in files["data"].read_text().splitlines()]
    pq.write_table(pa.table({"text": texts, "n": list(range(len(texts)))}), tmp_path / "c.parquet")
    result = finetune(config(files, tmp_path / "pq", data=str(tmp_path / "c.parquet"),
                             max_steps=1, eval_every=10), encoding=ENC)
    assert result.step == 1 and result.val_loss is not None
    with pytest.raises(WorkbenchError, match="no column 'body'; columns: text, n"):
        finetune(config(files, tmp_path / "pq2", data=str(tmp_path / "c.parquet"),
                        text_field="body"), encoding=ENC)


@pytest.mark.parametrize(("argv", "message"), [
    (["--data", "/nowhere/corpus.jsonl"], "data file /nowhere/corpus.jsonl does not exist"),
    (["--data", "notes.txt"], "data file notes.txt does not exist"),
    (["--model", "/nowhere/model"], "checkpoint directory /nowhere/model does not exist"),
    (["--block-size", "128"], "--block-size 128 exceeds"),
    (["--device", "cpu", "--dtype", "bfloat16"], "bfloat16 is for CUDA"),
    (["--eval-rows", "300"], "--eval-rows 300 must be below --rows 300"),
    (["--resume"], "no checkpoint to resume"),
])
def test_cli_errors_are_one_line(files: dict[str, Path], tmp_path: Path, argv: list[str],
                                 message: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = {"--model": str(files["model"]), "--data": str(files["data"]),
            "--out": str(tmp_path / "o"), "--rows": "300", "--block-size": "32",
            "--no-wandb": None}
    for flag, value in zip(argv[::2], argv[1::2], strict=False):
        base[flag] = value
    if "--resume" in argv:
        base["--resume"] = None
    words = ["finetune"] + [w for k, v in base.items() for w in ((k,) if v is None else (k, v))]
    assert main(words) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_tokenizer_model_mismatch(files: dict[str, Path], tmp_path: Path) -> None:
    wrong = tiny_gpt2(tmp_path / "wide", ENC.n_vocab + 100)
    with pytest.raises(WorkbenchError, match=f"has {ENC.n_vocab} tokens but model .* has "
                                             f"vocab_size {ENC.n_vocab + 100}: they do not match"):
        finetune(config(files, tmp_path / "o", model=str(wrong)), encoding=ENC)


def test_out_of_memory_suggests_a_smaller_micro_batch(
        files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workbench.finetune import loop

    def oom(*args: Any, **kwargs: Any) -> float:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop, "accumulate", oom)
    with pytest.raises(WorkbenchError, match="out of GPU memory at --micro-batch 4 .* try "
                                             "--micro-batch 2 --grad-accum 4"):
        finetune(config(files, tmp_path / "o"), encoding=ENC)


def test_hub_stream_is_sampled_and_checked(files: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    texts = [json.loads(line)["text"] for line in files["data"].read_text().splitlines()]
    calls = []

    def fake_load(name: str, config: str | None, split: str, streaming: bool) -> Any:
        calls.append((name, config, split, streaming))
        if name == "nobody/nothing":
            raise DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")
        return datasets.IterableDataset.from_generator(
            lambda: ({"text": t, "score": 4.0} for t in texts))

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = config(files, tmp_path / "hub", data="HuggingFaceTB/finemath:finemath-4plus",
                 rows=100, eval_rows=10, max_steps=1)
    assert finetune(cfg, encoding=ENC).step == 1
    assert calls == [("HuggingFaceTB/finemath", "finemath-4plus", "train", True)]
    meta = json.loads((tmp_path / "hub" / "data" / "meta.json").read_text())
    assert (meta["train_rows"], meta["val_rows"]) == (90, 10)
    with pytest.raises(WorkbenchError, match="no column 'content'; columns: text, score"):
        finetune(dataclasses.replace(cfg, out=str(tmp_path / "h2"), text_field="content"),
                 encoding=ENC)
    with pytest.raises(WorkbenchError, match="unknown dataset 'nobody/nothing'"):
        finetune(dataclasses.replace(cfg, out=str(tmp_path / "h3"), data="nobody/nothing"),
                 encoding=ENC)


# --- parts ----------------------------------------------------------------------------------


def test_exported_tokenizer_matches_tiktoken(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    hf_tokenizer(ENC).save_pretrained(str(tmp_path))
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [" 1 2 * 3 4 = 0 4 0 8", "3 * 4 = 12\n\nhello  world's 112", "é ü\t x "]:
        assert tok.encode(text, add_special_tokens=False) == ENC.encode_ordinary(text)
    assert tok.bos_token_id == tok.eos_token_id == ENC.eot_token
    again = encoding_from_hf(tok)
    assert again._mergeable_ranks == ENC._mergeable_ranks
    assert again._special_tokens == ENC._special_tokens


def test_batches_resume_in_the_same_order() -> None:
    import numpy as np

    tokens = np.arange(10 * 8 + 1, dtype=np.uint16)  # 10 windows of 8 + 1 tokens
    a = Batches(tokens, 8, 3, seed=5)
    served = [a.next()[0][:, 0].tolist() for _ in range(7)]  # 21 windows: into epoch 2
    flat = [start // 8 for batch in served for start in batch]
    assert sorted(flat[:10]) == sorted(flat[10:20]) == list(range(10))  # each once an epoch
    assert flat[:10] != flat[10:20]  # a fresh order each epoch
    b = Batches(tokens, 8, 3, seed=5)
    for _ in range(4):
        b.next()
    c = Batches(tokens, 8, 3, seed=5)
    c.seek(*b.position)
    assert [c.next()[0][:, 0].tolist() for _ in range(3)] == served[4:]
    x, y = Batches(tokens, 8, 2, seed=0).next()
    assert x.shape == y.shape == (2, 8) and torch.equal(x[:, 1:], y[:, :-1])


def test_schedule_and_weight_decay_groups(files: dict[str, Path]) -> None:
    from transformers import GPT2LMHeadModel

    cfg = config(files, Path("unused"), lr=1.0, min_lr=0.1, warmup=10)
    assert lr_at(0, cfg, 100) == pytest.approx(1 / 11)
    assert lr_at(10, cfg, 100) == pytest.approx(1.0)
    assert lr_at(55, cfg, 100) == pytest.approx(0.55)
    assert lr_at(100, cfg, 100) == pytest.approx(0.1)
    model = GPT2LMHeadModel.from_pretrained(str(files["model"]))
    decay, no_decay = make_optimizer(model, cfg, torch.device("cpu")).param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert "transformer.wte.weight" in {names[id(p)] for p in decay["params"]}
    assert "transformer.ln_f.weight" in {names[id(p)] for p in no_decay["params"]}


def test_wandb_is_offline_unless_configured(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    assert wandb_mode() is None  # `wandb login` was done: let wandb decide (online)
    (tmp_path / "netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() is None
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() is None  # the user's WANDB_MODE is respected


def test_wandb_receives_config_and_metrics(files: dict[str, Path], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[tuple[dict[str, Any], int]] = []
    inits: list[dict[str, Any]] = []

    class Run:
        id = "run123"

        def log(self, row: dict[str, Any], step: int) -> None:
            logged.append((row, step))

        def finish(self) -> None:
            logged.append(({"finished": True}, -1))

    def init(**kwargs: Any) -> Run:
        inits.append(kwargs)
        return Run()

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    fake = types.SimpleNamespace(init=init, Settings=lambda **kwargs: kwargs)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    finetune(config(files, tmp_path / "w", max_steps=2, eval_every=2, wandb=True), encoding=ENC)
    (kwargs,) = inits
    assert kwargs["mode"] == "offline" and kwargs["config"]["lr"] == 1e-2
    assert kwargs["settings"]["console"] == "off" and kwargs["resume"] == "allow"
    keys = set().union(*(row for row, _ in logged))
    assert {"train/loss", "train/lr", "train/tokens_per_s", "val/loss",
            "task/multiplication_accuracy", "finished"} <= keys
    assert ckpt.read_state(tmp_path / "w" / "checkpoint").wandb_id == "run123"


# --- the held-out split is sized from the rows read (issue 14) -------------------------------


def test_held_out_split_is_sized_from_the_rows_read(files: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """300 rows read with the default --rows 100,000: 1% (3 rows) is held out, not 1,000."""
    out = tmp_path / "o"
    result = finetune(config(files, out, rows=100_000, eval_rows=None, max_steps=2),
                      encoding=ENC)
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert (meta["train_rows"], meta["val_rows"]) == (297, 3)
    assert result.step == 2


def test_too_little_data_gives_the_right_advice(files: dict[str, Path], tmp_path: Path) -> None:
    small = corpus(tmp_path / "small.jsonl", n=5)
    with pytest.raises(WorkbenchError, match=r"the data has only 5 rows \(--rows 100,000\): "
                       r"give more text, or lower --block-size or --micro-batch"):
        finetune(config(files, tmp_path / "o", data=str(small), rows=100_000, eval_rows=None),
                 encoding=ENC)
    with pytest.raises(WorkbenchError, match=r"--eval-rows 5 holds out every row"):
        finetune(config(files, tmp_path / "p", data=str(small), rows=10, eval_rows=5),
                 encoding=ENC)
