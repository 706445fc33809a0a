"""``PairView.to_anndata()`` follows the scanpy / squidpy conventions of the AnnData export
(issue 16, item 15): stable obs names, ``obs['library_id']``, ``var['gene_ids']``,
``obsm['spatial']`` and ``uns['spatial'][library_id]`` for every sample of a multi-sample view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import catalog
from catalog.export import sample_anndata

from .conftest import Case


def test_multi_sample_anndata_conventions(ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path) -> None:
    import anndata as ad

    cat, cases = ingested
    view = cat.pairs()
    sids = view.sample_ids
    assert len(sids) >= 3
    a = view.to_anndata()
    obs = view.obs
    # stable names: sample and barcode, not the ingest id
    expected = (obs["sample_id"].astype(str) + "_" + obs["barcode"].astype(str)).to_numpy()
    np.testing.assert_array_equal(a.obs_names.to_numpy(), expected)
    assert a.obs_names.is_unique
    for ingest_id in obs["ingest_id"].astype(str).unique():
        assert not any(ingest_id in n for n in a.obs_names)
    # library key (categorical, as squidpy wants it) and level-0 centres
    assert isinstance(a.obs["library_id"].dtype, pd.CategoricalDtype)
    assert sorted(a.obs["library_id"].cat.categories) == sorted(sids)
    np.testing.assert_array_equal(a.obs["library_id"].astype(str).to_numpy(), obs["sample_id"].astype(str).to_numpy())
    np.testing.assert_allclose(a.obsm["spatial"], obs[["x_px", "y_px"]].to_numpy(dtype=float))
    # gene ids: the same as the single-sample export's, for the genes a sample measured
    assert "gene_ids" in a.var
    for sid in sids:
        e = sample_anndata(cat, sid)
        np.testing.assert_array_equal(a.var.loc[e.var_names, "gene_ids"].to_numpy(), e.var["gene_ids"].to_numpy())
        # and the same uns['spatial'] entry
        lib, lib_e = a.uns["spatial"][sid], e.uns["spatial"][sid]
        np.testing.assert_array_equal(lib["images"]["hires"], lib_e["images"]["hires"])
        assert lib["scalefactors"] == lib_e["scalefactors"]
        # the values themselves
        thumb, ds = cat.sample_thumbnail(sid)
        m = cat.manifest(sid)
        np.testing.assert_array_equal(lib["images"]["hires"], thumb)
        assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(1.0 / ds)
        assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(m["spot_diameter_um"] / m["pixel_size_um"])
        # the export names its single sample's library the same way
        assert list(e.obs["library_id"].cat.categories) == [sid]
    assert set(a.uns["spatial"]) == set(sids)
    # gene ids differ from names where the runs gave both (10x features)
    truth = next(c.truth for c in cases if c.sample_id == "breastA")
    g = truth.genes[0]
    if g in a.var_names:
        assert a.var.loc[g, "gene_ids"] == truth.gene_ids[0]
    # the h5ad round-trips (what `hestkit query --out` writes)
    a.write_h5ad(tmp_path / "v.h5ad")
    b = ad.read_h5ad(tmp_path / "v.h5ad")
    assert set(b.uns["spatial"]) == set(a.uns["spatial"])
    np.testing.assert_array_equal(b.uns["spatial"][sids[0]]["images"]["hires"], a.uns["spatial"][sids[0]]["images"]["hires"])
    np.testing.assert_array_equal(b.obs_names.to_numpy(), a.obs_names.to_numpy())


def _squidpy_layout(a, library_key: str) -> None:  # type: ignore[no-untyped-def]
    """Read the AnnData the way squidpy's spatial_scatter does: per library of the
    categorical library key, its hires image and scale factor from uns['spatial'], spots
    at obsm['spatial'] * scalef; every spot must land on its library's image."""
    for lib in a.obs[library_key].cat.categories:
        entry = a.uns["spatial"][lib]
        img = entry["images"]["hires"]
        sf = entry["scalefactors"]["tissue_hires_scalef"]
        assert entry["scalefactors"]["spot_diameter_fullres"] > 0
        xy = a.obsm["spatial"][(a.obs[library_key] == lib).to_numpy()] * sf
        assert len(xy)
        assert (xy >= -1).all() and (xy[:, 0] <= img.shape[1] + 1).all() and (xy[:, 1] <= img.shape[0] + 1).all()


def test_spatial_plotting_reads_it(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, _ = ingested
    a = cat.pairs().to_anndata()
    _squidpy_layout(a, "library_id")
    try:
        import squidpy as sq
    except ImportError:
        sq = None
    import matplotlib.pyplot as plt

    try:
        if sq is not None:
            sq.pl.spatial_scatter(a, library_key="library_id", img_res_key="hires")
        else:  # scanpy reads the same uns['spatial'] entries, one library at a time
            import scanpy as sc

            for lib in a.obs["library_id"].cat.categories:
                sub = a[a.obs["library_id"] == lib]
                ax = sc.pl.spatial(sub, library_id=lib, img_key="hires", show=False)[0]
                sf = a.uns["spatial"][lib]["scalefactors"]["tissue_hires_scalef"]
                # its spots: one circle per pair, centred on obsm['spatial'] * scalef
                (coll,) = [c for c in ax.collections if len(c.get_paths()) == sub.n_obs]
                verts = [np.asarray(p.vertices, dtype=float) for p in coll.get_paths()]
                centres = np.array([(v.min(axis=0) + v.max(axis=0)) / 2 for v in verts])
                np.testing.assert_allclose(centres, sub.obsm["spatial"] * sf, rtol=1e-6, atol=1e-6)
    finally:
        plt.close("all")
