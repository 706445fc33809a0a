"""Tissue segmentation against the synthetic slide cohort's truth, and the TissueMask API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from numpy.typing import NDArray
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box

from hestkit.slide import Slide, open_slide
from hestkit.synthetic.slides import SLIDE_CLASS_CODES, make_slide_cohort
from hestkit.tissue import TissueError, TissueMask, segment_tissue


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    # 8 mm x 6 mm at 2 um/px: tissue pieces of ~1-2 mm with holes of ~100 um
    return make_slide_cohort(tmp_path_factory.mktemp("seg"), n_slides=3, size_px=(3072, 4096), mpp=2.0, seed=5)


def _truth(row: pd.Series) -> tuple[NDArray[np.bool_], NDArray[np.uint8]]:
    return np.asarray(Image.open(row.truth_mask)) > 0, np.asarray(Image.open(row.classes_mask))


def test_segmentation_matches_truth(cohort: pd.DataFrame) -> None:
    holes = 0
    for _, row in cohort.iterrows():
        mask = segment_tissue(row.path)
        truth, classes = _truth(row)
        pred = mask.raster(row.truth_downsample)
        assert pred.shape == truth.shape
        iou = (pred & truth).sum() / (pred | truth).sum()
        assert iou > 0.9, (row.slide_id, iou)
        # pen ink, dust and the slide-edge shadow are not tissue
        for name in ("pen", "shadow", "dust"):
            sel = classes == SLIDE_CLASS_CODES[name]
            assert sel.any() or name == "dust"
            assert (pred & sel).sum() <= 0.02 * max(sel.sum(), 1), name
        # polygons in level-0 px, inside the slide, with holes kept
        minx, miny, maxx, maxy = mask.geometry.bounds
        assert minx >= 0 and miny >= 0 and maxx <= row.width and maxy <= row.height
        holes += sum(len(p.interiors) for p in mask.geometry.geoms)
        assert mask.pixel_size_um == pytest.approx(2.0, rel=1e-3)
        assert mask.area_um2 == pytest.approx(mask.area_px * 4.0)
    assert holes >= 3


def test_reads_a_low_level_block_by_block(cohort: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[int, int, int]] = []
    original = Slide.read_region

    def spy(self: Slide, level: int, x0: int, y0: int, w: int, h: int, *, fill: int = 255) -> NDArray[np.uint8]:
        reads.append((level, w, h))
        return original(self, level, x0, y0, w, h, fill=fill)

    monkeypatch.setattr(Slide, "read_region", spy)
    segment_tissue(cohort.path[0], target_mpp=8.0)
    assert reads and all(level == 2 for level, _, _ in reads)  # 8 um/px = level 2 of a 2 um/px slide
    assert sum(w * h for _, w, h in reads) <= 1024 * 768


def test_fraction_and_contains_are_exact() -> None:
    # an L-shaped piece with a square hole, on a 1000 x 800 px slide
    shell = [(100, 100), (700, 100), (700, 300), (300, 300), (300, 700), (100, 700)]
    poly = Polygon(shell, [[(150, 150), (250, 150), (250, 250), (150, 250)]])
    mask = TissueMask(MultiPolygon([poly]), 1000, 800, 0.5)
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(-50, 950, 300), rng.uniform(-50, 750, 300), rng.uniform(10, 200, 300), rng.uniform(10, 200, 300)])
    got = mask.fractions(boxes)
    want = np.array([poly.intersection(box(x, y, x + w, y + h)).area / (w * h) for x, y, w, h in boxes])
    np.testing.assert_allclose(got, want, atol=0.02)
    assert mask.fraction(170, 170, 20, 20) == 0.0  # in the hole
    assert mask.fraction(110, 110, 20, 20) == pytest.approx(1.0)
    assert mask.fraction(400, 150, 100, 100) == pytest.approx(1.0)
    assert mask.fraction(650, 150, 100, 100) == pytest.approx(0.5, abs=0.01)  # half past the right edge
    assert mask.fraction(990, 790, 20, 20) == 0.0  # off the slide
    xs, ys = rng.uniform(0, 1000, 2000), rng.uniform(0, 800, 2000)
    np.testing.assert_array_equal(mask.contains(xs, ys), shapely.contains_xy(poly, xs, ys))
    with pytest.raises(TissueError, match=r"\(N, 4\)"):
        mask.fractions(np.zeros((3, 3)))


def test_geojson_round_trip_and_qupath(cohort: pd.DataFrame, tmp_path: Path) -> None:
    mask = segment_tissue(cohort.path[1])
    path = mask.write_geojson(tmp_path / "m.geojson")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    f0 = data["features"][0]
    assert f0["properties"]["classification"]["name"] == "Tissue"
    assert f0["geometry"]["type"] == "Polygon"
    back = TissueMask.from_geojson(path)
    assert (back.width, back.height, back.pixel_size_um) == (mask.width, mask.height, mask.pixel_size_um)
    assert back.geometry.symmetric_difference(mask.geometry).area < 1e-6 * mask.area_px
    assert back.params["saturation"] == mask.params["saturation"]
    # a QuPath export: other classes ignored when Tissue annotations exist; size given
    qp = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": mapping_of(box(0, 0, 10, 10)), "properties": {"classification": {"name": "Tumor"}}},
            {"type": "Feature", "geometry": mapping_of(box(20, 20, 40, 40)), "properties": {"classification": {"name": "Tissue"}}},
        ],
    }
    m2 = TissueMask.from_geojson(qp, width=100, height=100)
    assert m2.area_px == 400 and m2.fraction(20, 20, 20, 20) == pytest.approx(1.0)
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}}')
    with pytest.raises(TissueError, match="LineString"):
        TissueMask.from_geojson(bad)
    with pytest.raises(TissueError, match="not found"):
        TissueMask.from_geojson(tmp_path / "missing.geojson")


def mapping_of(g: Polygon) -> dict[str, object]:
    return dict(shapely.geometry.mapping(g))


def test_pluggable_segmenter_and_errors(cohort: pd.DataFrame, tmp_path: Path) -> None:
    class Everything:
        name = "everything"

        def __call__(self, rgb: NDArray[np.uint8], px_um: float) -> NDArray[np.bool_]:
            return np.ones(rgb.shape[:2], dtype=bool)

    with open_slide(cohort.path[0]) as s:
        m = segment_tissue(s, method=Everything())
        assert m.method == "everything"
        assert m.fraction(0, 0, s.width, s.height) == pytest.approx(1.0)
    with pytest.raises(TissueError, match="unknown tissue method"):
        segment_tissue(cohort.path[0], method="deep")
    # no pixel size: assumed, and said
    png = tmp_path / "flat.png"
    with open_slide(cohort.path[0]) as s:
        Image.fromarray(s.read_region(2, 0, 0, s.levels[2].width, s.levels[2].height)).save(png)
    with pytest.warns(UserWarning, match="no pixel size"):
        m = segment_tissue(png)
    assert m.pixel_size_um is None and m.params["pixel_size_assumed"]
    assert m.n_pieces >= 1
