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
