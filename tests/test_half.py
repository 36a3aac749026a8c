"""Half precision end to end: bfloat16 and float16 results agree with float32 on the bundled
models, every verb a study uses runs in them, and outputs say which dtype made them.

Documented tolerances (issue 12.2): EAP scores rank-correlate >= 0.99 (Spearman) with the
float32 scores, and performance % of the same ablation differs by < 1 point. Measured (add3 at
64 prompts, bpe-numbers on its default task): Spearman 0.9993 / 0.9996, perf 0.05 / 0.2 points.
The engine's build-time check passes in bfloat16 within `ablation.TOLERANCE` (measured 1.4e-2
/ 3.4e-3 relative; tolerance 6e-2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plugins.eap import edge_attribution
from workbench.ablation import TOLERANCE
from workbench.session import Session


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def ranks(x: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(x)
        r[x.argsort()] = torch.arange(len(x), dtype=x.dtype)
        return r - r.mean()

    ra, rb = ranks(a.double()), ranks(b.double())
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@pytest.mark.slow
@pytest.mark.parametrize("half", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["add3", "bpe-numbers"])
def test_half_precision_agrees_with_float32(name: str, half: str) -> None:
    out = {}
    for dtype in ("float32", half):
        s = Session()
        assert s.execute(f"load {name} dtype={dtype} device=cpu").ok
        if name == "add3":
            assert s.execute("task addition digits=3 n=64").ok
        assert s.state.model is not None and s.state.model.card.dtype == dtype
        ablated = s.execute("ablate a1.0")
        assert ablated.ok, ablated.error
        engine = s.engine()
        assert engine.weights.dtype == getattr(torch, dtype)
        assert engine.check_error <= TOLERANCE[engine.weights.dtype]
        out[dtype] = (ablated.out["percent"], edge_attribution(engine, "logit_diff", "mean"))
    (p32, eap32), (p16, eap16) = out["float32"], out[half]
    assert eap16.dtype == torch.float32  # sums in float32
    assert abs(p32 - p16) < 1.0
    assert spearman(eap32, eap16) >= 0.99


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_half_precision_end_to_end(half: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """perf, eap, acdc, mask, check and export in half precision, each output naming it."""
    monkeypatch.chdir(tmp_path)
    s = Session()
    lines = [f"load add3 dtype={half} device=cpu", "task addition digits=3 n=32",
             "ablate a1.0", "restore all", "run eap", "run acdc tau=0.05", "select r2",
             "check c1", "run mask steps=40", "export c1 c1.dot", "export c1 c1.json"]
    outs = {}
    for line in lines:
        outcome = s.execute(line)
        assert outcome.ok, f"{line}: {outcome.error}"
        outs[line] = outcome.out
    assert outs[lines[0]]["dtype"] == half
    assert outs["run eap"]["dtype"] == outs["run acdc tau=0.05"]["dtype"] == half
    assert dict(s.state.made_by)["r1"] == f"add3 {half}"
    assert 90 <= outs["check c1"]["percent"] <= 110  # ACDC's circuit keeps the behaviour
    assert (tmp_path / "c1.dot").read_text().startswith("digraph")
    # the learned mask's parameters stay float32: float16 once dropped edges for nothing
    mask = dict(s.state.results)["r3"]
    keep = dict(mask.parts)["keep"].values  # type: ignore[attr-defined]
    assert keep.dtype == torch.float32 and bool(keep.isfinite().all())


def test_mask_keeps_the_same_edges_in_float16() -> None:
    chosen = {}
    for dtype in ("float32", "float16"):
        s = Session()
        assert s.execute(f"load add3 dtype={dtype} device=cpu").ok
        assert s.execute("task addition digits=3 n=32").ok
        out = s.execute("run mask steps=60")
        assert out.ok, out.error
        circuit = dict(dict(s.state.results)["r1"].parts)["circuit"].circuit  # type: ignore[attr-defined]
        chosen[dtype] = {str(e) for e in circuit.edges}
    same = len(chosen["float32"] & chosen["float16"])
    assert same >= 0.95 * max(len(chosen["float32"]), len(chosen["float16"]))


def test_cli_dtype_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from workbench.cli import main
    from workbench.tui.boot import open_session

    assert main(["eval", "--model", "add3", "n=50", "--device", "cpu", "--dtype", "bfloat16",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dtype"] == "bfloat16" and result["accuracy"] >= 0.95
    session, outcomes = open_session("add3", tmp_path / "s.jsonl", device="cpu",
                                     dtype="float16")
    assert outcomes[0].cmd == "load add3 device=cpu dtype=float16"
    assert session.state.model is not None and session.state.model.card.dtype == "float16"
    again, _ = open_session(None, tmp_path / "s.jsonl", device="cpu")  # replays the recorded load
    assert again.state.model is not None and again.state.model.card.dtype == "float16"


def test_every_technique_runs_in_half_precision() -> None:
    """Each technique (and the SAE ones with the bundled dictionaries) gives the same verdict
    in float32, bfloat16 and float16: a result, or the same one-line refusal."""
    from workbench.plugins import load_registry

    lines = ["sae load add3"] + [f"run {name}" for name in sorted(load_registry())] + [
        "run ov_copy head=a0.1", "run ov_copy embed=mlp0", "run ov_copy score=qk",
        "run logit_lens stat=prob", "run patch site=heads"]
    verdicts = {}
    for dtype in ("float32", "bfloat16", "float16"):
        s = Session()
        assert s.execute(f"load add3 dtype={dtype} device=cpu").ok
        assert s.execute("task addition digits=3 n=16").ok
        verdicts[dtype] = [(line, s.execute(line).error) for line in lines]
    assert verdicts["float32"] == verdicts["bfloat16"] == verdicts["float16"]
    assert sum(error is None for _, error in verdicts["float32"]) >= len(lines) - 2
