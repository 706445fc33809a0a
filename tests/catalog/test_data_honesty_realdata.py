"""Issue 16, items 1, 2, 3 and 5 on the small real public runs (../shared/realdata):
the Seurat Visium mouse brain (lowres PNG only) and STUtility's legacy ST olfactory bulbs."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import catalog
from catalog.export import export_sample
from hestkit.errors import ValidationError
from hestkit.patches import PairSpec
from hestkit.readers import VisiumReader
from hestkit.sample import ReadOptions


@pytest.fixture()
def brain(realdata: Path) -> Path:
    p = realdata / "visium_seurat_mousebrain"
    if not p.is_dir():
        pytest.skip("visium_seurat_mousebrain not in the real data folder")
    return p


@pytest.fixture()
def mob(realdata: Path) -> Path:
    p = realdata / "legacy_st_stutility_mob"
    if not p.is_dir():
        pytest.skip("legacy_st_stutility_mob not in the real data folder")
    return p


def _lowres(brain: Path) -> Path:
    return brain / "spatial" / "tissue_lowres_image.png"


def test_real_missing_fullres_error_names_spaceranger_images(brain: Path) -> None:
    r = VisiumReader()
    (ref,) = r.scan(brain, ReadOptions())
    with pytest.raises(ValidationError) as ei:
        r.load(ref)
    msg = str(ei.value)
    assert "tissue_lowres_image.png (tissue_lowres_scalef 0.051635113, about 14 um/px)" in msg
    assert "upsampled" in msg and "allow_upsampling=True" in msg and "--" not in msg


def test_real_lowres_visium_upsampling_refused_then_recorded(brain: Path, tmp_path: Path) -> None:
    cat = catalog.create(tmp_path / "cat", PairSpec(16, 0.5))
    rep = cat.ingest([brain], options=ReadOptions(image=_lowres(brain)), workers=1)
    assert rep.failed
    msg = rep.failed[0].message
    assert "upsampled 28.1x" in msg and "Space Ranger's downscaled copy" in msg and "allow" in msg
    assert len(cat) == 0
    rep = cat.ingest([brain], options=ReadOptions(image=_lowres(brain), allow_upsampling=True), workers=1)
    assert not rep.failed, rep.failed[0].message
    m = cat.manifest("visium_seurat_mousebrain")
    # 0.7246 um/px at full resolution / lowres scale factor 0.0516 = 14.03 um/px
    assert m["source_pixel_size_um"] == pytest.approx(14.03, rel=0.005)
    assert m["upsampling_factor"] == pytest.approx(28.06, rel=0.005) and m["upsampling_allowed"] is True
    assert any("upsampled 28.1x" in w for w in m["warnings"])


def test_real_edge_patches_kept_with_valid_fraction(brain: Path, tmp_path: Path) -> None:
    # 32 px patches at 80 um/px (a 2.56 mm field, 182 lowres px): spots within 91 px of the border cross it
    spec = PairSpec(32, 80.0)
    cat = catalog.create(tmp_path / "fill", spec)
    rep = cat.ingest([brain], options=ReadOptions(image=_lowres(brain)), workers=1)
    assert not rep.failed, rep.failed[0].message
    m = cat.manifest("visium_seurat_mousebrain")
    view = cat.pairs()
    assert len(view) == m["n_pairs"] == 2695 and m["dropped"]["outside_image"] == 0
    xy = view.obs[["x_px", "y_px"]].to_numpy()
    half = spec.field_um / 2 / m["pixel_size_um"]
    w, h = m["image_width"], m["image_height"]
    ox = np.minimum(xy[:, 0] + half, w) - np.maximum(xy[:, 0] - half, 0)
    oy = np.minimum(xy[:, 1] + half, h) - np.maximum(xy[:, 1] - half, 0)
    want = ox * oy / (2 * half) ** 2
    np.testing.assert_allclose(view.obs["patch_valid_fraction"].to_numpy(), want, atol=1e-5)
    n_edge = int((want < 1 - 1e-9).sum())
    assert n_edge == m["n_edge_patches"] > 100
    # the most cut patch: its pixels whose source lies off the image (by > 2 image px) are the background colour
    k = int(np.argmin(want))
    step = 2 * half / 32
    cx = xy[k, 0] - half + (np.arange(32) + 0.5) * step
    cy = xy[k, 1] - half + (np.arange(32) + 0.5) * step
    off = ((cx < -2) | (cx > w + 2))[None, :] | ((cy < -2) | (cy > h + 2))[:, None]
    assert off.sum() >= 32
    patch = view.patch(k)
    assert np.abs(patch[off].astype(int) - np.array(m["background_rgb"])).max() <= 8
    # --edge drop: those spots are dropped and counted as "edge"
    cat2 = catalog.create(tmp_path / "drop", spec)
    rep = cat2.ingest([brain], options=ReadOptions(image=_lowres(brain), edge="drop"), workers=1)
    assert not rep.failed, rep.failed[0].message
    m2 = cat2.manifest("visium_seurat_mousebrain")
    assert m2["n_pairs"] == 2695 - n_edge and m2["dropped"]["edge"] == n_edge == m2["n_dropped_edge"]


def test_real_unmeasured_genes_and_ids(brain: Path, mob: Path, tmp_path: Path) -> None:
    cat = catalog.create(tmp_path / "cat", PairSpec(16, 8.0))
    rep = cat.ingest([brain], options=ReadOptions(image=_lowres(brain), species="Mus musculus"), workers=1)
    assert not rep.failed, rep.failed[0].message
    rep = cat.ingest([mob], options=ReadOptions(species="Mus musculus"), workers=1)
    assert not rep.failed, rep.failed[0].message
    # the ST runs list Ensembl ids only: Xkr4 is unmeasured there, not zero
    view = cat.pairs(genes=["Xkr4"])
    assert view.lacking()["Xkr4"] == 2
    meas = view.measured["Xkr4"]
    assert bool(meas["visium_seurat_mousebrain"]) and not meas["MOB1"] and not meas["MOB2"]
    with pytest.warns(catalog.UnmeasuredGeneWarning, match=r"Xkr4 \(2 of 3\)"):
        X = view.expression()
    dense = view.expression(unmeasured="nan")
    st_rows = view.obs["technology"].to_numpy() == "st"
    assert np.isnan(dense[st_rows]).all() and not np.isnan(dense[~st_rows]).any()
    with h5py.File(brain / "filtered_feature_bc_matrix.h5") as f:
        names = [x.decode() for x in f["matrix/features/name"][:]]
        ids = [x.decode() for x in f["matrix/features/id"][:]]
    np.testing.assert_array_equal(dense[~st_rows, 0], X.toarray()[~st_rows, 0])
    # the same gene by its id (both are kept), and case-sensitive symbols
    gid = ids[names.index("Xkr4")]
    assert cat.pairs(genes=[gid]).genes == ["Xkr4"]
    with pytest.raises(catalog.QueryError, match="did you mean Xkr4"):
        cat.pairs(genes=["XKR4"])
    # an id the ST runs list with a version suffix is found without it
    st_gene = next(g for g in cat.sample_genes(cat.manifest("MOB1")) if g.split(".")[0] not in ids)
    assert cat.pairs(sample_ids=["MOB1"], genes=[st_gene.split(".")[0]]).genes == [st_gene]
    # the per-sample export writes only the genes the sample measured
    import anndata as ad

    a = ad.read_h5ad(export_sample(cat, "MOB1", "anndata", tmp_path / "mob1.h5ad"))
    assert "Xkr4" not in a.var_names and a.n_vars == 1000


def test_real_paths_absolute_and_relocated(mob: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("MOB1.tsv", "MOB1.jpg", "alignment_table_MOB1.tsv"):
        shutil.copyfile(mob / name, data / name)
    monkeypatch.chdir(tmp_path)
    cat = catalog.create(tmp_path / "cat", PairSpec(16, 8.0))
    rep = cat.ingest([Path("data")], workers=1)  # a relative path
    assert not rep.failed, rep.failed[0].message
    m = cat.manifest("MOB1")
    assert m["image_path"] == str(data / "MOB1.jpg")
    assert m["dropped"]["not_in_tissue"] == m["n_spots"] - m["n_in_tissue"]
    monkeypatch.chdir("/")
    export_sample(cat, "MOB1", "hest", tmp_path / "hest1")  # from another folder
    with h5py.File(tmp_path / "hest1" / "patches" / "MOB1.h5") as f:
        assert "wsis/MOB1.jpg" in str(f.attrs["coordinates"])
    shutil.move(str(data), str(tmp_path / "moved"))
    with pytest.raises(catalog.CatalogError, match="no longer there"):
        export_sample(cat, "MOB1", "hest", tmp_path / "hest2")
    from catalog.relocate import relocate

    rep2 = relocate(cat, str(data), str(tmp_path / "moved"))
    assert rep2.samples == ["MOB1"] and not rep2.missing
    export_sample(cat, "MOB1", "hest", tmp_path / "hest2")
    assert (tmp_path / "hest2" / "wsis" / "MOB1.jpg").exists()
