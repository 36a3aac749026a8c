"""Training dynamics: the log reader, shelf detection, checkpoints kept by --save-every,
`workbench plot-train`, and `load RUN_DIR step=N` to check one circuit across training."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from PIL import Image

from workbench.cli import main
from workbench.errors import WorkbenchError
from workbench.session import Session
from workbench.train import TrainConfig, train
from workbench.training import (
    _carries_in,
    checkpoint_path,
    checkpoints,
    curves_figure,
    dynamics,
    named_level,
    read_log,
    shelves,
)

ROOT = Path(__file__).resolve().parents[1]
ADD3 = ROOT / "workbench" / "models" / "add3"


def test_shelves_are_plateaus_that_training_leaves() -> None:
    xs = tuple(range(0, 200, 10))
    ys = (3.9, 2.31, 2.30, 2.32, 2.29, 2.30, 0.7, 0.69, 0.70, 0.71, 0.69, 0.2, 0.05,
          0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01)
    found = shelves(xs, ys)
    assert [(x0, x1) for x0, x1, _ in found] == [(10.0, 50.0), (60.0, 100.0)]
    assert [named_level(level) for *_, level in found] == ["log 10", "log 2"]
    assert shelves(xs, tuple(1.0 / (i + 1) for i in range(20))) == []  # a steady descent
    assert named_level(1.5) is None


def test_carries_into_each_answer_digit() -> None:
    assert _carries_in(57, 68, 3) == [1, 1, 0]  # 125: units carry into tens, tens into top
    assert _carries_in(12, 34, 3) == [0, 0, 0]
    assert _carries_in(95, 5, 3) == [1, 1, 0]


def test_add3_log_shows_the_log10_shelves_of_the_low_digits(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    log = read_log(ADD3)
    assert log.n_digits == 4 and log.steps[0] == 1 and log.test_steps[-1] == 3000
    found = {d: shelves(log.steps, log.digit_loss[d]) for d in range(4)}
    assert found[0] == [] and found[2] and found[3]
    assert all(named_level(level) == "log 10" for d in (2, 3) for *_, level in found[d])
    fig = curves_figure(log)
    assert [name for name, _ in fig.parts[0].series] == ["d0", "d1", "d2", "d3"]  # type: ignore
    out = tmp_path / "add3.png"
    assert main(["plot-train", str(ADD3), "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") and Image.open(io.BytesIO(data)).size[0] >= 1000
    printed = capsys.readouterr().out
    assert "shelf d2: loss 2.3" in printed and "(~log 10)" in printed
    first = data
    assert main(["plot-train", str(ADD3), "--out", str(out)]) == 0
    assert out.read_bytes() == first  # deterministic


def test_plot_train_refuses_what_is_not_a_run(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot-train", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "has no train_log.jsonl" in capsys.readouterr().err
    assert main(["plot-train", str(ADD3), "--out", str(tmp_path / "x.gif")]) == 2
    assert "needs a suffix .png|.svg|.pdf" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.gif").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(task="addition", task_options={"digits": 2}, steps=30, batch=32,
                      n_layer=1, d_model=16, n_head=2, warmup=5, log_every=5, eval_every=10,
                      eval_n=64, save_every=10)
    train(cfg, out)
    return out


@pytest.mark.slow
def test_save_every_keeps_checkpoints_and_load_step_reads_them(run: Path,
                                                                tmp_path: Path) -> None:
    assert [step for step, _ in checkpoints(run)] == [10, 20, 30]
    assert checkpoint_path(run, 20) == run / "checkpoints" / "step-000020"
    with pytest.raises(WorkbenchError, match=r"no checkpoint at step 15 \(saved: 10, 20, 30\)"):
        checkpoint_path(run, 15)
    s = Session(tmp_path / "s.jsonl")
    first = s.execute(f"load {run} step=10")
    assert first.ok, first.error
    assert first.out["step"] == 10
    assert s.execute("task addition digits=2 n=16").ok
    assert s.execute("select a0.* m0").ok
    early = s.execute("check c1")
    assert s.execute(f"load {run} step=30").ok
    late = s.execute("check c1")  # the same circuit, later in training
    assert early.ok and late.ok
    assert early.out["metric_full"] != late.out["metric_full"]
    bad = s.execute(f"load {run} step=15")
    assert not bad.ok and "saved: 10, 20, 30" in (bad.error or "")
    assert not s.execute(f"load {run} step=x").ok
    snaps = dynamics(run, n=64)
    assert [snap.step for snap in snaps] == [10, 20, 30]
    matrix = snaps[-1].confusion[1]  # tens digit: mean p over the digits (the rest: non-digits)
    finite = [row for row in matrix if math.isfinite(row[0])]
    assert len(finite) == 10 and all(0.0 < sum(row) <= 1.0 + 1e-5 for row in finite)
    assert snaps[-1].carry_acc is not None and len(snaps[-1].carry_acc) == 3
    assert math.isnan(snaps[-1].carry_acc[2][1])  # nothing carries into the units
    conf = tmp_path / "conf.png"
    assert main(["plot-train", str(run), "--out", str(tmp_path / "c.png"), "--confusion",
                 str(conf), "--n", "64"]) == 0
    assert conf.read_bytes().startswith(b"\x89PNG")
