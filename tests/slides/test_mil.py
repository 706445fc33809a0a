"""ABMIL and the mean-pool probe on bags with a known signal: a label carried by a few tiles
(ABMIL must beat mean pooling) and a score that follows the share of a tile type (Pearson)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from seal.mil import ABMIL, MilConfig
from seal.slide_eval import SlideTask, evaluate_feature_sets, patient_stratified_folds, slide_task


class _Bags:
    """An in-memory stand-in of a slide feature store."""

    def __init__(self, bags: dict[str, np.ndarray]) -> None:
        self.bags = bags
        self.dir = Path("/")

    def features(self, sid: str) -> np.ndarray:
        return self.bags[sid]

    def path(self, sid: str) -> Path:
        return Path("/")


def _cohort(n: int, dim: int, seed: int, kind: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=dim), rng.normal(size=dim)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    bags, y = {}, []
    for i in range(n):
        m = int(rng.integers(150, 300) if kind == "small-region" else rng.integers(60, 120))
        x = rng.normal(size=(m, dim)).astype(np.float32)
        if kind == "small-region":
            lab = i % 2
            if lab:
                k = max(2, int(0.05 * m))  # 5 % of the tiles
                x[:k] += 3.0 * a.astype(np.float32)
            y.append(lab)
        else:
            share = float(rng.uniform(0.05, 0.6))
            k = round(share * m)
            x[:k] += 2.0 * b.astype(np.float32)
            y.append(share)
        bags[f"s{i:02d}"] = x
    return bags, np.asarray(y, dtype=np.float64)


CFG = MilConfig(hidden=64, attention_dim=32, lr=1e-3, max_epochs=30, patience=8, threads=1)


def test_abmil_beats_mean_pooling_on_a_small_region_label() -> None:
    bags, y = _cohort(40, 64, 0, "small-region")
    task = SlideTask("label", "classification", tuple(bags), tuple(f"p{i // 2}" for i in range(len(y))), y, ("0", "1"))
    folds = patient_stratified_folds(task, 3, seed=0)
    res = evaluate_feature_sets({"fs": _Bags(bags)}, task, folds, cfg=CFG)
    s = res.summary().set_index("model")
    assert s.loc["abmil", "auc_mean"] > 0.85
    assert s.loc["abmil", "auc_mean"] > s.loc["mean", "auc_mean"] + 0.15
    # attention of a positive test slide concentrates on its signal tiles (the first 5 %)
    pos = [sid for sid in res.attention["fs"] if y[list(bags).index(sid)] == 1]
    top = [int(np.argmax(res.attention["fs"][sid])) for sid in pos]
    assert np.mean([t < max(2, int(0.05 * len(bags[sid]))) for t, sid in zip(top, pos, strict=True)]) > 0.7


def test_pearson_on_a_continuous_score() -> None:
    bags, y = _cohort(30, 16, 1, "score")
    task = SlideTask("score", "regression", tuple(bags), tuple(f"p{i}" for i in range(len(y))), y)
    res = evaluate_feature_sets({"fs": _Bags(bags)}, task, patient_stratified_folds(task, 3, seed=0), cfg=CFG)
    s = res.summary().set_index("model")
    assert s.loc["mean", "pearson_mean"] > 0.8 and s.loc["abmil", "pearson_mean"] > 0.6
    assert set(res.oof["fs"]["mean"]) == set(bags)  # every slide predicted once, out of fold


def test_folds_are_patient_disjoint_stratified_and_seeded() -> None:
    import pandas as pd

    rng = np.random.default_rng(0)
    slides = pd.DataFrame(
        {"slide_id": [f"s{i}" for i in range(30)], "patient": [f"p{i // 3}" for i in range(30)], "path": "x",
         "status": ["MSI" if i % 3 == 0 else "MSS" for i in range(30)], "note": [""] * 30}
    )
    slides.loc[4, "status"] = None  # a missing label: left out and counted
    task = slide_task(slides, "status")
    assert task.kind == "classification" and task.classes == ("MSI", "MSS") and task.n_missing == 1
    f1, f2 = patient_stratified_folds(task, 5, seed=3), patient_stratified_folds(task, 5, seed=3)
    assert all(np.array_equal(a.test, b.test) for a, b in zip(f1, f2, strict=True))
    pats = np.asarray(task.patients)
    for f in f1:
        assert not set(pats[f.test]) & set(pats[np.concatenate([f.train, f.val])])
        assert not set(pats[f.val]) & set(pats[f.train]) and len(f.val) > 0
    assert sorted(np.concatenate([f.test for f in f1]).tolist()) == list(range(len(task.slide_ids)))
    slides["score"] = rng.normal(size=30)
    assert slide_task(slides, "score").kind == "regression"
    from seal.errors import EvalError

    with pytest.raises(EvalError, match="no label column 'stage'"):
        slide_task(slides, "stage")
    with pytest.raises(EvalError, match="needs 2"):
        patient_stratified_folds(task, 50)
    # a continuous score on few slides is read as one class per value (auto): a clear error,
    # not sklearn's bare ValueError
    few = slides.iloc[:8].copy()
    with pytest.raises(EvalError, match=r"8 classes, none with 2 slides.*regression"):
        patient_stratified_folds(slide_task(few, "score"), 2)
    assert len(patient_stratified_folds(slide_task(few, "score", "regression"), 2)) == 2
    # four classes of three slides, 3 folds: the validation part of each training fold (8
    # slides, 5 parts) cannot be stratified; it is still made, patient-disjoint, and said
    four = pd.DataFrame({"slide_id": [f"s{i}" for i in range(12)], "patient": [f"p{i}" for i in range(12)], "path": "x", "c": [f"k{i % 4}" for i in range(12)]})
    with pytest.warns(UserWarning, match="not stratified"):
        f4 = patient_stratified_folds(slide_task(four, "c"), 3)
    assert all(len(f.val) > 0 and not set(f.val) & set(f.train) for f in f4)


def test_abmil_attention_is_a_distribution_and_bf16_safe() -> None:
    torch.manual_seed(0)
    m = ABMIL(8, 3, hidden=16, attention_dim=8).eval()
    out, a = m(torch.randn(17, 8))
    assert out.shape == (3,) and a.shape == (17,) and torch.isclose(a.sum(), torch.tensor(1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _out16, a16 = m(torch.randn(5, 8))
    assert torch.isclose(a16.float().sum(), torch.tensor(1.0), atol=1e-3)
