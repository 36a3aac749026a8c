"""`workbench train-sae`: the CLI trains, logs and saves in SAELens layout; a run is
deterministic (so a card's command reproduces its dictionary bit for bit); a short run
already reaches a useful quality; bad flags are one-line errors; the bundled add3 set
meets its card."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from workbench.cli import main
from workbench.features.files import load_saelens, resolve
from workbench.features.replacement import DictionarySet
from workbench.features.stats import evaluate
from workbench.features.train import SaeConfig, command_line, train_sae
from workbench.model import LoadedModel

BUNDLED = Path(__file__).resolve().parent.parent / "workbench" / "models" / "add3" / \
    "dictionaries"


def short(site: str, layer: int, out: Path, steps: int = 40) -> list[str]:
    words = ["train-sae", "--model", "add3", "--site", site, "--layer", str(layer),
             "--d-sae", "64", "--k", "8", "--steps", str(steps), "--batch", "16",
             "--eval-n", "64", "--eval-every", "20", "--resample-every", "20", "--out",
             str(out)]
    return words + (["--transcoder"] if site == "mlp" else [])


@pytest.mark.slow
def test_train_sae_is_deterministic_and_saves_saelens_layout(tmp_path: Path) -> None:
    assert main(short("mlp", 1, tmp_path / "a")) == 0
    assert main(short("mlp", 1, tmp_path / "b")) == 0
    a, b = load_saelens(tmp_path / "a"), load_saelens(tmp_path / "b")
    assert a.same_as(b) and a.transcoder and a.layer == 1 and a.d_sae == 64
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert cfg["hook_name_out"] == "blocks.1.hook_mlp_out"
    stats = cfg["workbench"]["stats"]
    assert {"l0", "fvu", "dead", "perf_drop", "perf_keep"} <= set(stats)
    rows = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text()
            .splitlines()]
    assert {r["kind"] for r in rows} >= {"train", "eval", "resample"}
    assert rows[-1]["final"] and rows[-1]["step"] == 40


@pytest.mark.slow
def test_a_short_run_already_replaces_attention_well(add3: LoadedModel) -> None:
    result = train_sae(SaeConfig(site="attn_out", layer=0, d_sae=64, k=8, steps=150,
                                 batch=32, eval_n=128, eval_every=1000), model=add3)
    assert result.stats["fvu"] < 0.1
    assert result.stats["perf_drop"] > 80.0
    assert result.stats["perf_keep"] == pytest.approx(100.0, abs=1e-3)


def test_bad_flags_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    assert main(["train-sae", "--site", "mlp", "--layer", "0", "--out", str(tmp_path)]) == 2
    assert "--site mlp --transcoder" in capsys.readouterr().err
    assert main(["train-sae", "--site", "attn", "--layer", "0", "--out", str(tmp_path)]) == 2
    assert "choose attn_out|mlp_out|resid_pre|mlp" in capsys.readouterr().err
    assert main(["train-sae", "--site", "attn_out", "--layer", "0", "--k", "999",
                 "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())  # nothing written


def test_bundled_dictionaries_meet_their_card(add3: LoadedModel) -> None:
    """Each bundled folder records the command that made it; all four together replace
    add3 at >= 90% with error terms dropped (the card's numbers come from this)."""
    dicts = resolve("add3")
    assert sorted(d.key for d in dicts) == ["a0", "a1", "m0", "m1"]
    for d in dicts:
        cmd = d.meta["command"]
        assert cmd.startswith("workbench train-sae --model add3")
        words = shlex.split(cmd)
        assert words[words.index("--layer") + 1] == str(d.layer)
        cfg = SaeConfig(**{k: v for k, v in d.meta["train"].items()})
        assert command_line(cfg, Path(words[-1])) == cmd
    card = (BUNDLED / "DICTIONARIES.md").read_text()
    for d in dicts:
        assert d.meta["command"] in card
    from workbench.ablation import AblationEngine
    from workbench.tasks import make_task
    from workbench.tasks.encode import encode

    with torch.no_grad():
        engine = AblationEngine(add3, encode(make_task("addition", digits=3).prompt_set(
            256, 1, split="test"), add3.tokenizer))
        stats = evaluate(engine, DictionarySet(tuple(dicts)))
    assert stats["perf_drop"] >= 90.0
    assert stats["perf_keep"] == pytest.approx(100.0, abs=1e-3)
