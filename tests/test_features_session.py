"""`sae load`, `run feature_attr`, `select`, `check` and `run feature_info` through the
session: a SAELens folder written here loads and attaches; a feature circuit's `check` is the
replacement model run by hand with the other features ablated; undo detaches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_features_attr import random_dicts

from workbench.features.circuit import keep_masks
from workbench.features.files import save_saelens
from workbench.features.replacement import FeatureAblation, ablation_values, logits, run
from workbench.graph import Circuit, parse_node
from workbench.metrics import metric, performance
from workbench.session import Session


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random dictionaries for the tiny model's shape (d_model 16, 2 layers), SAELens layout."""
    root = tmp_path_factory.mktemp("dicts")
    for d in random_dicts(16, 2, dtype=torch.float32).dictionaries:
        save_saelens(d, root / d.key, "tiny")
    return root


def eng_positions(s: Session) -> int:
    return s.engine().n_pos


def by_hand(s: Session, c: Circuit | None, mode: str) -> float:
    """The replacement model run directly, everything outside `c` ablated with `mode`."""
    eng, dicts = s.engine(), s.state.dictionaries
    clean = run(eng.weights, eng.enc.clean, dicts, "keep")
    feats, errors = ablation_values(clean, eng.enc.lengths, mode)
    keep = keep_masks(c, dicts, eng.n_pos)
    tr = run(eng.weights, eng.enc.clean, dicts, "keep", clean_errors=clean.errors,
             ablation=FeatureAblation(keep, feats, errors))
    return metric("logit_diff", logits(eng.weights, tr, eng.enc.answer_pos), eng.enc)


def test_sae_load_attaches_and_undo_detaches(tiny_checkpoint: Path, folder: Path) -> None:
    s = Session(model=str(tiny_checkpoint))
    assert s.execute("task addition digits=2 n=16").ok
    out = s.execute(f"sae load {folder} layer=1")
    assert out.ok, out.error
    assert out.out["attached"] == ["a1", "m1"]
    out = s.execute(f"sae load {folder} site=mlp")
    assert out.out["attached"] == ["m0", "a1", "m1"]
    assert s.execute("undo").ok
    assert s.state.dictionaries.keys() == ["a1", "m1"]
    bad = s.execute(f"sae load {folder} layer=7")
    assert not bad.ok and "nothing matches" in (bad.error or "")
    bad = s.execute("sae load /no/such/folder")
    assert not bad.ok and "no such folder" in (bad.error or "")
    assert not s.execute("sae unload x").ok
    refused = s.execute("ablate m1.f3")  # features go through select + check, said in one line
    assert not refused.ok and "select m1.f3" in (refused.error or "")
    assert "\n" not in (refused.error or "")


def test_feature_circuit_check_is_the_ablated_replacement(tiny_checkpoint: Path,
                                                          folder: Path) -> None:
    s = Session(model=str(tiny_checkpoint))
    s.execute("task addition digits=2 n=16")
    assert s.execute("run feature_attr").error == (
        "feature_attr needs dictionaries: sae load add3 (or a folder) first")
    assert s.execute(f"sae load {folder}").ok
    out = s.execute("run feature_attr target=metric top=40 edges=10")
    assert out.ok, out.error
    assert out.out["kind"] == "feature_graph" and out.out["n"] > 20
    sel = s.execute("select r1 top=12")
    assert sel.ok, sel.error
    circuit = s.state.circuit("c1").circuit
    assert len([n for n in circuit.nodes if n.kind == "feature"]) == 12
    assert len([n for n in circuit.nodes if n.kind == "input"]) == eng_positions(s)  # all in
    assert any(n.kind == "logits" for n in circuit.nodes)
    for mode in ("mean", "zero"):
        chk = s.execute(f"check c1 mode={mode}")
        assert chk.ok, chk.error
        # by hand: the replacement model with everything outside c1 ablated
        eng = s.engine()

        m, empty = by_hand(s, circuit, mode), by_hand(s, None, mode)
        full = metric("logit_diff", eng.clean_logits, eng.enc)
        assert chk.out["metric"] == pytest.approx(m, abs=1e-5)
        assert chk.out["percent"] == pytest.approx(performance(m, full, empty), abs=1e-4)
    everything = s.state.circuit("c1").circuit
    all_nodes = Circuit(nodes=[f"{d.key}.f{i}" for d in s.state.dictionaries.ordered()
                               for i in range(d.d_sae + 1)] + ["logits"])
    # the full circuit is the model
    assert by_hand(s, all_nodes, "mean") == pytest.approx(full, abs=1e-4)
    assert everything is not None
    assert s.execute("select r1 top=30").ok
    cmp = s.execute("compare c1 c2")
    assert cmp.ok and len(cmp.out["only_b_nodes"]) == 18


def test_export_and_feature_info(tiny_checkpoint: Path, folder: Path, tmp_path: Path) -> None:
    s = Session(model=str(tiny_checkpoint))
    s.execute("task addition digits=2 n=16")
    s.execute(f"sae load {folder}")
    s.execute("run feature_attr edges=8")
    s.execute("select r1 top=10")
    for suffix in (".json", ".dot", ".svg"):
        out = s.execute(f"export c1 {tmp_path / ('c1' + suffix)}")
        assert out.ok, out.error
    text = (tmp_path / "c1.dot").read_text()
    assert "@" in text and "logits" in text
    loaded = Circuit.load(tmp_path / "c1.json")
    assert loaded.nodes == s.state.circuit("c1").circuit.nodes
    names = [k for k, _ in s.state.result("r1").ranked()]  # type: ignore[attr-defined]
    top = next(n for n in map(parse_node, names) if n.kind == "feature" and n.site == "m"
               and n.index < 24)  # 24 = d_sae: the error node
    info = s.execute(f"run feature_info feature={top.base()} top=3")
    assert info.ok, info.error
    parts = info.out["parts"]
    assert parts["density"]["shape"] == [2, 1] and parts["logits_up"]["shape"] == [3, 1]
    bad = s.execute("run feature_info feature=m0.n3")
    assert not bad.ok and "expected a feature" in (bad.error or "")
