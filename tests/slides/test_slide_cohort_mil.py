"""The slide path on the project's synthetic slide cohort itself: rendered slides ->
tissue segmentation (IoU against the generator's truth) -> grid tiles -> ``texture``
features -> the ``seal slide-eval`` models. ABMIL must beat mean pooling on the
small-region label (a gland texture over < 10 % of the tissue of half the slides), its
attention must fall on the gland tiles, and the texture-share score must be predicted
(Pearson).

Full-size figures (120 slides, several seeds, texture vs a random CNN): ``bench/bench_slides.py
eval`` and docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import catalog
from catalog.slide_features import SlideFeatureStore
from catalog.slides import add_slides
from hestkit.synthetic.slides import SLIDE_CLASS_CODES, make_slide_cohort
from hestkit.tissue import TissueMask
from seal.mil import MilConfig
from seal.slide_embed import SlideEmbedConfig, embed_slides
from seal.slide_eval import SlideEvalResult, SlideTask, evaluate_feature_sets, patient_stratified_folds, slide_task

N_SLIDES, SIZE, SEED = 32, 1536, 0
# 64 px tiles at 0.5 um/px (32 um): glands are visible within a tile; tiles mostly on tissue
# (tiles at the tissue edge show glass, which looks like the glands' pale lumens)
EMBED = SlideEmbedConfig(mpp=0.5, tile_px=64, min_tissue=0.75, workers=1, device="cpu")
CFG = MilConfig(hidden=64, attention_dim=32, lr=1e-3, max_epochs=40, patience=10, min_epochs=20, threads=1)
MARGIN = 0.15


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, SlideFeatureStore]:
    root = tmp_path_factory.mktemp("milcohort")
    df = make_slide_cohort(root / "raw", n_slides=N_SLIDES, size_px=SIZE, seed=SEED, region_share=(0.07, 0.095), truth_downsample=4)
    add_slides(root / "cat", root / "raw" / "slides.csv")
    rep = embed_slides(root / "cat", "texture", EMBED)
    assert sorted(rep.embedded) == sorted(df["slide_id"])
    return root / "cat", df, SlideFeatureStore(catalog.open(root / "cat"), rep.feature_set)


def _gland_share(store: SlideFeatureStore, row: pd.Series) -> np.ndarray:
    """Share of each stored tile that is gland texture, from the generator's class map."""
    f = store.get(row.slide_id)
    cls = np.asarray(Image.open(row.classes_mask))
    ds, side = int(row.truth_downsample), int(f.attrs["patch_size_level0"])
    out = []
    for x, y in f.coords:
        w = cls[y // ds : (y + side) // ds, x // ds : (x + side) // ds]
        out.append((w == SLIDE_CLASS_CODES["tissue_c"]).mean())
    return np.asarray(out)


def _label_task(cat_dir: Path, shuffle: int | None = None) -> SlideTask:
    task = slide_task(catalog.open(cat_dir).slides(), "label")
    if shuffle is None:
        return task
    y = np.random.default_rng(shuffle).permutation(task.y)
    return SlideTask(task.column, task.kind, task.slide_ids, task.patients, y, task.classes)


def _evaluate(store: SlideFeatureStore, task: SlideTask, seeds: tuple[int, ...] = (0, 1), models: tuple[str, ...] = ("abmil", "mean")) -> list[SlideEvalResult]:
    """Seeds of 4 patient-level folds (two seeds: 8 train/test splits; 32 slides give test
    parts of 8, so one split's AUC moves in steps of 1/16)."""
    return [
        evaluate_feature_sets({"texture": store}, task, patient_stratified_folds(task, 4, seed=s), models=models, cfg=replace(CFG, seed=s))
        for s in seeds
    ]


def _auc(results: list[SlideEvalResult], model: str) -> float:
    return float(np.mean([f["auc"] for r in results for f in r.per_fold["texture"][model]]))


def test_segmentation_iou_against_the_generator(cohort: tuple[Path, pd.DataFrame, SlideFeatureStore]) -> None:
    cat_dir, df, _ = cohort
    ious = []
    for _, row in df.iterrows():
        (p,) = (cat_dir / "slide-tissue").glob(f"{row.slide_id}--*.geojson")
        pred = TissueMask.from_geojson(p).raster(row.truth_downsample)
        truth = np.asarray(Image.open(row.truth_mask)) > 0
        ious.append((pred & truth).sum() / (pred | truth).sum())
    # small slides (0.77 mm), masks computed at low resolution: edges cost a few % of IoU
    assert min(ious) > 0.75 and float(np.mean(ious)) > 0.83, np.round(ious, 3)


def test_abmil_beats_mean_pooling_on_the_small_region_label(cohort: tuple[Path, pd.DataFrame, SlideFeatureStore]) -> None:
    cat_dir, df, store = cohort
    # the label is a small region: < 10 % of the tissue, yet several tiles of each positive slide
    pos = df[df["label"] == 1]
    assert (pos["region_share"] < 0.1).all() and (df.loc[df["label"] == 0, "region_share"] == 0).all()
    share = {row.slide_id: _gland_share(store, row) for _, row in df.iterrows()}
    assert all(1 <= (share[s] > 0.5).sum() <= 0.15 * len(share[s]) for s in pos["slide_id"])

    results = _evaluate(store, _label_task(cat_dir))
    abmil, mean = _auc(results, "abmil"), _auc(results, "mean")
    assert abmil > 0.75 and abmil > mean + MARGIN, (abmil, mean)
    # ABMIL looks where the label is: on positive test slides the gland tiles get several
    # times their share of the attention
    ratios = []
    for res in results:
        for sid, a in res.attention["texture"].items():
            if sid in set(pos["slide_id"]):
                glands = share[sid] > 0.5
                ratios.append(a[glands].sum() / glands.mean())
    assert float(np.median(ratios)) > 2.0, np.round(ratios, 2)


def test_the_margin_needs_the_label(cohort: tuple[Path, pd.DataFrame, SlideFeatureStore]) -> None:
    """Control: with the labels shuffled across slides ABMIL is at chance (the margin above
    comes from the label, not from the folds or the training)."""
    cat_dir, _, store = cohort
    results = _evaluate(store, _label_task(cat_dir, shuffle=7), seeds=(0,), models=("abmil",))
    assert _auc(results, "abmil") < 0.7


def test_pearson_on_the_texture_share_score(cohort: tuple[Path, pd.DataFrame, SlideFeatureStore]) -> None:
    cat_dir, _, store = cohort
    task = slide_task(catalog.open(cat_dir).slides(), "score")
    assert task.kind == "regression"
    res = evaluate_feature_sets({"texture": store}, task, patient_stratified_folds(task, 4, seed=0), models=("mean",), cfg=CFG)
    assert float(res.summary().set_index("model").loc["mean", "pearson_mean"]) > 0.9
