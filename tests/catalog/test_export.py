"""Export a sample (AnnData, HEST-1k layout) and ingest the HEST export again."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import catalog
from cli.hestkit import app
from hestkit.sample import ReadOptions

from .conftest import Case


@pytest.mark.parametrize("sample_id", ["breastA", "brainB", "TENX01"])
def test_hest_export_round_trip(ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path, sample_id: str) -> None:
    cat, _ = ingested
    r = CliRunner().invoke(app, ["export", str(cat.path), sample_id, "--format", "hest", "-o", str(tmp_path / "hest")])
    assert r.exit_code == 0, r.output
    # HEST patch file: img, TOP-LEFT coords in level-0 px, barcode
    m = cat.manifest(sample_id)
    view = cat.pairs(sample_ids=[sample_id])
    with h5py.File(tmp_path / "hest" / "patches" / f"{sample_id}.h5") as f:
        img, coords, bc = f["img"][:], f["coords"][:], [b[0].decode() for b in f["barcode"][:]]
        src = f["img"].attrs["patch_size_src"]
    assert src == pytest.approx(224 * 0.5 / m["pixel_size_um"])
    assert bc == list(view.obs["barcode"])
    np.testing.assert_allclose(coords + src / 2, view.obs[["x_px", "y_px"]].to_numpy(), atol=0.51)
    np.testing.assert_array_equal(img[0], view.patch(0))
    # ingest the export again: same pairs, same counts, same pixel size
    cat2 = catalog.create(tmp_path / "cat2")
    rep = cat2.ingest([tmp_path / "hest"], options=ReadOptions(), workers=1)
    assert not rep.failed, rep.failed[0].message
    v2 = cat2.pairs(sample_ids=[sample_id])
    assert list(v2.obs["barcode"]) == list(view.obs["barcode"])
    np.testing.assert_allclose(v2.obs[["x_px", "y_px"]].to_numpy(), view.obs[["x_px", "y_px"]].to_numpy())
    genes = sorted(set(view.genes))
    np.testing.assert_array_equal(v2.expression(genes).toarray(), view.expression(genes).toarray())
    # re-estimated from the exported (in-tissue) spots only when no pixel size is embedded
    assert cat2.manifest(sample_id)["pixel_size_um"] == pytest.approx(m["pixel_size_um"], rel=1e-3)
    assert cat2.manifest(sample_id)["organ"] == m["organ"]


def test_anndata_export_follows_scanpy_convention(ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path) -> None:
    cat, _ = ingested
    r = CliRunner().invoke(app, ["export", str(cat.path), "breastA", "--format", "anndata", "-o", str(tmp_path / "a.h5ad")])
    assert r.exit_code == 0, r.output
    a = ad.read_h5ad(tmp_path / "a.h5ad")
    view = cat.pairs(sample_ids=["breastA"])
    assert a.n_obs == len(view)
    np.testing.assert_allclose(a.obsm["spatial"], view.obs[["x_px", "y_px"]].to_numpy())
    sf = a.uns["spatial"]["breastA"]["scalefactors"]
    hires = a.uns["spatial"]["breastA"]["images"]["hires"]
    # spots scaled by tissue_hires_scalef land inside the hires image
    xy = a.obsm["spatial"] * sf["tissue_hires_scalef"]
    assert (xy[:, 0] < hires.shape[1]).all() and (xy[:, 1] < hires.shape[0]).all()
    assert sf["spot_diameter_fullres"] == pytest.approx(55 / cat.manifest("breastA")["pixel_size_um"])
    r = CliRunner().invoke(app, ["export", str(cat.path), "breastA", "--format", "anndata", "-o", str(tmp_path / "a.txt")])
    assert r.exit_code == 1 and ".h5ad" in r.output
    # and back: the h5ad names its slide, so it ingests on its own
    cat2 = catalog.create(tmp_path / "cat2")
    rep = cat2.ingest([tmp_path / "a.h5ad"], options=ReadOptions(sample_id="breastA"), workers=1)
    assert not rep.failed, rep.failed[0].message
    v2 = cat2.pairs()
    assert list(v2.obs["barcode"]) == list(view.obs["barcode"])
    np.testing.assert_allclose(v2.obs[["x_px", "y_px"]].to_numpy(), view.obs[["x_px", "y_px"]].to_numpy())
    np.testing.assert_array_equal(v2.expression(view.genes).toarray(), view.expression().toarray())
    m2, m = cat2.manifest("breastA"), cat.manifest("breastA")
    assert m2["pixel_size_um"] == pytest.approx(m["pixel_size_um"], rel=1e-3)
    assert m2["spot_diameter_um"] == pytest.approx(55.0) and m2["organ"] == "Breast"


def _same_pairs(a: catalog.PairView, b: catalog.PairView) -> None:
    assert list(a.obs["barcode"]) == list(b.obs["barcode"])
    np.testing.assert_allclose(a.obs[["x_px", "y_px"]].to_numpy(), b.obs[["x_px", "y_px"]].to_numpy(), atol=1e-6)
    np.testing.assert_array_equal(a.expression(a.genes).toarray(), b.expression(a.genes).toarray())


def test_legacy_st_through_hest_and_anndata(tmp_path: Path) -> None:
    from hestkit.synthetic import make_st

    make_st(tmp_path / "st", layout="1k", n_x=8, n_y=8, pixel_size_um=1.0, seed=5, stem="ST7")
    cat = catalog.create(tmp_path / "cat")
    assert not cat.ingest([tmp_path / "st"], technology="st", options=ReadOptions(organ="Brain"), workers=1).failed
    view = cat.pairs()
    m = cat.manifest("ST7")
    assert m["technology"] == "st" and m["spot_diameter_um"] == pytest.approx(100.0)
    for fmt, out in (("hest", tmp_path / "hest"), ("anndata", tmp_path / "st7.h5ad")):
        r = CliRunner().invoke(app, ["export", str(cat.path), "ST7", "--format", fmt, "-o", str(out)])
        assert r.exit_code == 0, r.output
        cat2 = catalog.create(tmp_path / f"cat_{fmt}")
        rep = cat2.ingest([out], options=ReadOptions(sample_id="ST7") if fmt == "anndata" else ReadOptions(), workers=1)
        assert not rep.failed, rep.failed[0].message
        _same_pairs(view, cat2.pairs())
        m2 = cat2.manifest("ST7")
        assert m2["technology"] == "st" and m2["spot_diameter_um"] == pytest.approx(100.0)
        assert m2["pixel_size_um"] == pytest.approx(m["pixel_size_um"], rel=1e-6)


def test_xenium_through_spatialdata(tmp_path: Path) -> None:
    pytest.importorskip("spatialdata")
    from hestkit.synthetic import make_xenium

    x = make_xenium(tmp_path / "xen", width_um=400, height_um=350, seed=3)
    cat = catalog.create(tmp_path / "cat")
    rep = cat.ingest([x.path], technology="xenium", options=ReadOptions(image=x.image_path, sample_id="x1"), workers=1)
    assert not rep.failed, rep.failed[0].message
    r = CliRunner().invoke(app, ["export", str(cat.path), "x1", "--format", "spatialdata", "-o", str(tmp_path / "x1.zarr")])
    assert r.exit_code == 0, r.output
    cat2 = catalog.create(tmp_path / "cat2")
    rep = cat2.ingest([tmp_path / "x1.zarr"], options=ReadOptions(sample_id="x1"), workers=1)
    assert not rep.failed, rep.failed[0].message
    _same_pairs(cat.pairs(), cat2.pairs())
    m, m2 = cat.manifest("x1"), cat2.manifest("x1")
    assert m2["technology"] == "xenium" and m2["spot_shape"] == "square"
    assert m2["spot_diameter_um"] == pytest.approx(m["spot_diameter_um"])
    assert m2["pixel_size_um"] == pytest.approx(m["pixel_size_um"], rel=1e-6)
