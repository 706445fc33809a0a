"""The synthetic slide cohort: files, labels, truth, and that the pixels match the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hestkit.slide import open_slide
from hestkit.synthetic.slides import SLIDE_CLASS_CODES, make_slide_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return make_slide_cohort(tmp_path_factory.mktemp("slides"), n_slides=4, size_px=(2048, 2560), seed=3)


def test_cohort_files_and_labels(cohort: pd.DataFrame) -> None:
    out = Path(cohort.path[0]).parent
    csv = pd.read_csv(out / "slides.csv")
    assert list(csv.columns) == ["slide_id", "path", "patient", "label", "score"]
    assert csv.label.sum() == 2  # positive_share 0.5
    truth = pd.read_csv(out / "truth.csv")
    assert len(truth) == 4 and "truth_downsample" in truth.columns
    for row in cohort.itertuples():
        with open_slide(row.path) as s:
            assert (s.width, s.height) == (2560, 2048)
            assert len(s.levels) >= 3  # pyramidal
            assert s.embedded_pixel_size_um == pytest.approx(0.5, rel=1e-3)
        mask = np.asarray(Image.open(row.truth_mask))
        assert mask.shape == (2048 // row.truth_downsample, 2560 // row.truth_downsample)
        assert 0.02 < (mask > 0).mean() < 0.6
        if row.label:
            assert 0.0 < row.region_share < 0.1
        else:
            assert row.region_share == 0.0
        assert 0.02 < row.score < 0.7
        classes = np.asarray(Image.open(row.classes_mask))
        assert (classes == SLIDE_CLASS_CODES["pen"]).any()
        assert (classes == SLIDE_CLASS_CODES["shadow"]).any()


def test_pixels_follow_truth(cohort: pd.DataFrame) -> None:
    """The rendered pyramid level agrees with the truth: tissue is pink-purple, glass is
    near-white, ink is dark or saturated and not pink, shadow is dark."""
    row = cohort.iloc[0]
    classes = np.asarray(Image.open(row.classes_mask))
    ds = int(row.truth_downsample)
    with open_slide(row.path) as s:
        level = s.best_level(ds)
        assert s.levels[level].downsample == ds
        img = s.read_region(level, 0, 0, s.levels[level].width, s.levels[level].height).astype(np.int32)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    pinkness = (r + b) / 2 - g
    inner = np.zeros_like(classes, dtype=bool)
    inner[2:-2, 2:-2] = True  # away from JPEG block edges at the border of a class
    for name, check in [
        ("glass", (img.min(axis=2) > 225)),
        ("tissue_a", pinkness > 25),
        ("shadow", img.max(axis=2) < 215),
    ]:
        sel = (classes == SLIDE_CLASS_CODES[name]) & inner
        assert sel.sum() > 50, name
        assert check[sel].mean() > 0.9, name
    pen = classes == SLIDE_CLASS_CODES["pen"]
    assert (pinkness[pen] < 20).mean() > 0.8


def test_seeded(tmp_path: Path) -> None:
    a = make_slide_cohort(tmp_path / "a", n_slides=1, size_px=1024, seed=11)
    b = make_slide_cohort(tmp_path / "b", n_slides=1, size_px=1024, seed=11)
    c = make_slide_cohort(tmp_path / "c", n_slides=1, size_px=1024, seed=12)
    ta, tb, tc = (np.asarray(Image.open(d.truth_mask[0])) for d in (a, b, c))
    assert np.array_equal(ta, tb) and not np.array_equal(ta, tc)
    assert a.score[0] == b.score[0]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="region_share"):
        make_slide_cohort(tmp_path, n_slides=1, size_px=1024, region_share=(0.05, 0.2))
    with pytest.raises(ValueError, match="size_px"):
        make_slide_cohort(tmp_path, n_slides=1, size_px=100)
