"""Results as figures: which figure each result gets, and `export r<n>` to PNG/SVG/PDF files
that are valid and byte-identical for the same result."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from workbench.commands import parse
from workbench.errors import WorkbenchError
from workbench.figures import Bars, CircuitFig, Heat, Lines, Panels, figure_of
from workbench.figures_mpl import render
from workbench.graph import Circuit, Graph
from workbench.model import LoadedModel
from workbench.plugins import CircuitResult, Composite, Curve, NodeScores, Table
from workbench.session import Session

PNG = b"\x89PNG\r\n\x1a\n"


def test_node_scores_on_heads_are_a_signed_layer_by_head_heatmap() -> None:
    scores = NodeScores("dla", {"a0.0": 1.0, "a0.1": -2.0, "a1.1": 0.5, "m1": 3.0}, "logit diff")
    fig = figure_of(scores)
    assert isinstance(fig, Heat) and fig.signed
    assert fig.rows == ("L0", "L1") and fig.cols == ("h0", "h1", "mlp")
    assert fig.values[0][:2] == (1.0, -2.0) and math.isnan(fig.values[0][2])
    assert fig.values[1] == (pytest.approx(math.nan, nan_ok=True), 0.5, 3.0)
    assert fig.scale == 3.0
    unsigned = figure_of(NodeScores("survival", {"a0.0": 0.5, "m0": 1.0}))
    assert isinstance(unsigned, Heat) and not unsigned.signed


def test_other_results_get_bars_lines_panels() -> None:
    neurons = figure_of(NodeScores("n", {f"m0.n{i}": float(i - 20) for i in range(40)}))
    assert isinstance(neurons, Bars) and len(neurons.labels) == 30 and neurons.total == 40
    assert neurons.labels[0] == "m0.n0" and neurons.values[0] == -20.0  # largest |score| first
    years = Table("p(YY)", ("prompt 1", "prompt 2"), tuple(f"{y:02d}" for y in range(10)),
                  torch.rand(2, 10))
    lines = figure_of(years)
    assert isinstance(lines, Lines) and lines.x == tuple(float(y) for y in range(10))
    assert [name for name, _ in lines.series] == ["prompt 1", "prompt 2"]
    attention = figure_of(Table("attention pattern of a0.1 (query x key)", ("q0", "q1"),
                                ("k0", "k1"), torch.tensor([[1.0, 0.0], [0.4, 0.6]])))
    assert isinstance(attention, Heat) and not attention.signed and attention.y_label == "query"
    circuit = Circuit.from_nodes(["a0.0"], Graph.from_sizes(1, 1))
    both = figure_of(Composite("prune", (("circuit", CircuitResult("c", circuit)),
                                         ("curve", Curve("perf", "left", (2.0, 1.0),
                                                         {"perf": (100.0, 50.0)})))))
    assert isinstance(both, Panels) and isinstance(both.parts[0], CircuitFig)
    assert isinstance(both.parts[1], Lines)


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_rendering_is_deterministic_and_dateless(fmt: str) -> None:
    fig = figure_of(NodeScores("dla", {"a0.0": 1.0, "a0.1": -2.0, "m0": 3.0}))
    first, second = render(fig, fmt), render(fig, fmt)
    assert first == second
    if fmt == "png":
        assert first.startswith(PNG) and b"Software" not in first
    elif fmt == "svg":
        assert first.lstrip().startswith(b"<?xml") and b"<dc:date>" not in first
    else:
        assert first.startswith(b"%PDF") and b"CreationDate" not in first
    other = render(figure_of(NodeScores("dla", {"a0.0": 1.0, "a0.1": -2.5, "m0": 3.0})), fmt)
    assert other != first  # the bytes do depend on the numbers


def test_export_result_validation() -> None:
    assert parse("export r2 out/f.png") is not None
    assert parse("export r2 out/f.PDF") is not None
    assert parse("export c1 out/f.pdf") is not None
    with pytest.raises(WorkbenchError, match=r"needs a suffix \.png\|\.svg\|\.pdf"):
        parse("export r1 out/f.dot")
    with pytest.raises(WorkbenchError, match="circuit id like c1 or a result id like r1"):
        parse("export x1 out/f.png")


def _png(path: Path) -> Image.Image:
    data = path.read_bytes()
    assert data.startswith(PNG)
    image = Image.open(io.BytesIO(data))
    image.verify()
    return Image.open(io.BytesIO(data))


@pytest.mark.slow
def test_export_prune_eap_and_attn_results_to_identical_pngs(tmp_path: Path,
                                                              add3: LoadedModel) -> None:
    s = Session(tmp_path / "s.jsonl", model=add3)
    assert s.execute("task addition digits=3 n=16").ok
    for line in ("run prune orders=1 thresholds=80", "run eap", "run attn head=a0.1"):
        assert s.execute(line).ok, line
    sizes = {}
    for rid in ("r1", "r2", "r3"):
        first, second = tmp_path / "out" / f"{rid}-a.png", tmp_path / f"{rid}-b.png"
        for path in (first, second):
            outcome = s.execute(f"export {rid} {path}")
            assert outcome.ok, outcome.error
            assert outcome.out == {"id": rid, "path": str(path)}
        assert first.read_bytes() == second.read_bytes()
        sizes[rid] = _png(first).size
        assert len(set(_png(first).getdata())) > 20  # a picture, not a blank canvas
    assert sizes["r1"][0] > sizes["r2"][0]  # prune's composite is a grid of panels
    # A circuit still goes through Graphviz (PNG) or matplotlib (PDF).
    assert s.execute("select r1 top=3").ok
    assert s.execute(f"export c1 {tmp_path / 'c1.pdf'}").ok
    assert (tmp_path / "c1.pdf").read_bytes().startswith(b"%PDF")
    bad = s.execute(f"export r9 {tmp_path / 'x.png'}")
    assert not bad.ok and "no result r9" in (bad.error or "")
    assert not (tmp_path / "x.png").exists()
