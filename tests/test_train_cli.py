"""`workbench train` and the `workbench` command line, end to end on tiny configurations.

Training runs are 20-30 steps of a 1-layer, d_model 16 model on 1-digit addition (well under a
second each): they check the files, the log and determinism, not that the model learns much.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.model import load_model
from workbench.train import TrainConfig, TrainResult, train

TINY = TrainConfig(task="addition", task_options={"digits": 1}, n_layer=1, d_model=16,
                   n_head=2, steps=30, batch=64, eval_n=100, eval_every=10, log_every=5,
                   warmup=5, threads=1)
TINY_FLAGS = ["--steps", "20", "--batch", "32", "--n-layer", "1", "--d-model", "16",
              "--n-head", "2", "--eval-n", "50", "--eval-every", "10", "--log-every", "5",
              "--warmup", "5", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainResult]:
    out = tmp_path_factory.mktemp("train") / "tiny"
    return out, train(TINY, out)


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# --- training ------------------------------------------------------------------------------


def test_train_writes_a_checkpoint(trained: tuple[Path, TrainResult]) -> None:
    out, result = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_config.json",
                 "train_log.jsonl"):
        assert (out / name).is_file(), name
    assert result.steps == 30 and result.steps_to_target is None
    assert len(result.held_out_per_digit) == 2  # 1-digit addition: answer "0d" or "1d"
    saved = json.loads((out / "train_config.json").read_text())
    assert TrainConfig(**saved) == TINY


def test_train_log_has_per_digit_rows(trained: tuple[Path, TrainResult]) -> None:
    rows = log_rows(trained[0])
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    assert [r["step"] for r in train_rows] == [1, 5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in test_rows] == [10, 20, 30]
    for row in train_rows:
        assert {"loss", "digit_loss", "digit_acc", "lr", "seconds"} <= row.keys()
        assert len(row["digit_loss"]) == len(row["digit_acc"]) == 2
        assert all(0 <= a <= 1 for a in row["digit_acc"])
        assert row["loss"] == pytest.approx(sum(row["digit_loss"]) / 2, abs=1e-4)
    for row in test_rows:
        assert 0 <= row["exact_match"] <= 1 and len(row["digit_acc"]) == 2
    assert test_rows[-1]["exact_match"] == pytest.approx(trained[1].held_out_accuracy)


def test_train_loss_falls(trained: tuple[Path, TrainResult]) -> None:
    losses = [r["loss"] for r in log_rows(trained[0]) if r["split"] == "train"]
    assert losses[-1] < losses[0] - 0.3


def test_trained_checkpoint_loads(trained: tuple[Path, TrainResult]) -> None:
    model = load_model(str(trained[0]), device="cpu")
    assert model.card.n_layers == 1 and model.card.d_model == 16
    assert model.default_task() == ("addition", {"digits": 1})


def test_same_seed_same_weights(trained: tuple[Path, TrainResult], tmp_path: Path) -> None:
    train(TINY, tmp_path / "again")
    original = (trained[0] / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == original


def test_target_stops_early(tmp_path: Path) -> None:
    result = train(dataclasses.replace(TINY, target=0.0), tmp_path / "t")
    assert result.steps == result.steps_to_target == 10  # the first held-out evaluation


# --- the command line ----------------------------------------------------------------------


def test_cli_eval_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", "--model", "add3", "--task", "addition", "digits=3", "n=200",
                 "--json", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    (line,) = out.strip().splitlines()  # exactly one JSON object
    result = json.loads(line)
    assert {"model", "task", "n", "accuracy", "per_digit_accuracy", "logit_diff"} <= result.keys()
    assert (result["model"], result["task"], result["n"]) == ("add3", "addition", 200)
    assert len(result["per_digit_accuracy"]) == 4
    assert result["accuracy"] >= 0.99
    assert result["logit_diff"] > 0


def test_cli_eval_text_uses_default_task(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", "add3", "n=50", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.match(r"add3 on addition \(n=50\): accuracy [01]\.\d{4}, per digit \[", out)


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "--model", "/nonexistent/dir"], "checkpoint directory /nonexistent/dir does not"),
    (["eval", "--model", "add3", "--device", "cpu", "digits"], "expected key=value"),
    (["eval", "--model", "add3", "--device", "cpu", "--task", "additon"], "did you mean"),
    (["train", "--task", "addition", "digits=x", "--out", "unused"], "digits expects int"),
])
def test_cli_errors_are_one_line(argv: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert captured.out == ""


def test_cli_train_writes_card_with_reproduce_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--task", "addition", "digits=1", "--out", str(out),
                 "--name", "tiny-add1", *TINY_FLAGS]) == 0
    assert f"saved {out}: held-out exact match" in capsys.readouterr().out
    card = (out / "MODEL_CARD.md").read_text()
    assert card.startswith("# tiny-add1\n")
    (command,) = re.findall(r"```\n(workbench train .*)\n```", card)
    assert command.startswith("workbench train --task addition digits=1 --seed 0 --steps 20")
    assert f"--threads 1 --out {out}" in command
    # The card's command, run again into another folder, reproduces the weights exactly.
    argv = shlex.split(command)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    assert main(argv) == 0
    again = (tmp_path / "again" / "model.safetensors").read_bytes()
    assert again == (out / "model.safetensors").read_bytes()
