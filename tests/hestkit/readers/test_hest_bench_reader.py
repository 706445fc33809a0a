"""A HEST-Benchmark task folder ingested as a catalog: the pre-cut patches are the images."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import imagecodecs
import numpy as np
import pytest

import catalog
from hestkit.errors import ReaderError, ValidationError
from hestkit.patches import PairSpec, plan_patches
from hestkit.readers import HestBenchReader, find_reader, load, scan
from hestkit.sample import ReadOptions
from hestkit.slide import open_slide
from hestkit.synthetic import make_hest_bench


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hest_bench(tmp_path_factory.mktemp("hbr"), tasks={"T": 2}, n_spots=20, seed=5).root / "T"


def _patches(h5: Path) -> tuple[np.ndarray, list[str]]:
    with h5py.File(h5, "r") as f:
        return f["img"][:], [b.decode() for b in f["barcode"][:, 0]]


def test_reader_pairs_each_patch_with_its_barcodes_counts(bench: Path) -> None:
    assert isinstance(find_reader(bench), HestBenchReader)
    refs = scan(bench, ReadOptions(organ="Breast"))
    assert [r.sample_id for r in refs] == ["T_S0", "T_S1"]
    src = load(refs[1])
    imgs, bcs = _patches(bench / "patches" / "T_S1.h5")
    assert list(src.spots["barcode"]) == bcs
    assert src.pixel_size.value == pytest.approx(0.5) and src.pixel_size.source == "embedded"
    import anndata as ad

    a = ad.read_h5ad(bench / "adata" / "T_S1.h5ad")
    rows = a.obs_names.get_indexer(bcs)
    np.testing.assert_array_equal(src.counts.toarray(), a.X[rows].toarray())
    assert any("have no patch" in w for w in src.warnings)  # the 5 extra spots are said, not silently dropped
    # the mosaic returns each stored patch, unchanged, at its spot centre
    with open_slide(src.image_path) as slide:
        assert slide.max_window_px == imgs.shape[1]
        for i in (0, len(bcs) - 1):
            cx, cy = src.spots.loc[i, ["x_px", "y_px"]]
            h = imgs.shape[1] // 2
            np.testing.assert_array_equal(slide.read_region(0, int(cx) - h, int(cy) - h, 2 * h, 2 * h), imgs[i])


def test_ingest_gives_the_stored_patches_and_refuses_wider_fields(bench: Path, tmp_path: Path) -> None:
    cat = catalog.create(tmp_path / "cat", PairSpec(32, 0.5, jpeg_quality=100))
    rep = cat.ingest([bench], options=ReadOptions(organ="Breast", species="Homo sapiens"), workers=1)
    assert not rep.failed
    view = cat.pairs(sample_ids=["T_S0"])
    imgs, bcs = _patches(bench / "patches" / "T_S0.h5")
    pos = {b: i for i, b in enumerate(bcs)}
    assert sorted(view.obs["barcode"]) == sorted(bcs)
    for i, b in enumerate(view.obs["barcode"]):
        # exactly the stored patch, through the catalog's JPEG codec (quality 100)
        expected = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(imgs[pos[b]], level=100))
        np.testing.assert_array_equal(view.patch(i), expected)
    assert np.isfinite(view.obs["x_um"]).all()
    # a catalog of 224 px at 0.5 um/px would need 112 um: wider than a 16 um patch
    wide = catalog.create(tmp_path / "wide")
    rep = wide.ingest([bench], options=ReadOptions(organ="Breast"), workers=1)
    assert len(rep.failed) == 2
    assert "wider than one patch" in rep.failed[0].message and "patch_size_px=32" in rep.failed[0].message


def test_pixel_size_without_attributes_is_assumed_only_for_224_px(tmp_path: Path) -> None:
    root = make_hest_bench(tmp_path / "a", tasks={"T": 1}, n_spots=4, extra_spots=0, patch_px=224, attrs=False, seed=1).root
    src = load(scan(root / "T", ReadOptions())[0])
    assert src.pixel_size.value == 0.5 and src.pixel_size.source == "metadata"
    assert "assumed HEST-Benchmark's documented 0.5 um/px" in src.warnings[0]
    small = make_hest_bench(tmp_path / "b", tasks={"T": 1}, n_spots=4, extra_spots=0, attrs=False, seed=1).root
    with pytest.raises(ReaderError, match="pass pixel_size_um=UM"):
        load(scan(small / "T", ReadOptions())[0])
    assert load(scan(small / "T", ReadOptions(pixel_size_um=0.25))[0]).pixel_size.value == 0.25
    # an upsampling catalog is allowed but said
    with open_slide(small / "T" / "patches" / "T_S0.h5") as slide, pytest.warns(UserWarning, match="upsampled"):
        plan_patches(slide, np.array([[100.0, 100.0]]), 0.5, PairSpec(16, 0.25))


def test_missing_barcode_rows_are_a_validation_error(bench: Path, tmp_path: Path) -> None:
    import anndata as ad

    task = tmp_path / "T"
    shutil.copytree(bench, task)
    _, bcs = _patches(task / "patches" / "T_S0.h5")
    a = ad.read_h5ad(task / "adata" / "T_S0.h5ad")
    a[[b != bcs[0] for b in a.obs_names]].copy().write_h5ad(task / "adata" / "T_S0.h5ad")
    with pytest.raises(ValidationError, match=r"T_S0\.h5ad: has no row for 1 patch barcode"):
        load(scan(task, ReadOptions(ids=("T_S0",)))[0])
