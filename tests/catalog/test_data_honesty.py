"""Issue 16, items 1-3, 5, 6 on synthetic data: edge rule, upsampling rule, unmeasured
genes, absolute paths + relocate, the HEST export's wsi name."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

import catalog
from catalog.errors import QueryError
from catalog.export import export_sample
from cli.hestkit import app
from hestkit.patches import PairSpec, background_colour, cut_block, plan_patches
from hestkit.resolution import REFUSE_ABOVE, WARN_ABOVE, UpsamplingError, check_upsampling
from hestkit.sample import ReadOptions
from hestkit.slide import open_slide
from hestkit.synthetic import make_visium

from .conftest import Case

runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("honest")
    make_visium(root / "s1", n_rows=4, n_cols=4, pixel_size_um=0.5, seed=31, origin_px=(150.0, 140.0))
    return root / "s1"


# -- item 3: the edge rule -------------------------------------------------------------


def test_plan_and_cut_edge_patches(small: Path) -> None:
    spec = PairSpec(32, 2.0)  # window 64 um = 128 px at 0.5 um/px
    with open_slide(small / "tissue_fullres.tif") as slide:
        w, h = slide.width, slide.height
        centres = np.array([[20.0, 300.0], [w - 10.0, h - 30.0], [-3.0, 50.0], [400.0, 400.0], [w + 1.0, 10.0]])
        fill = plan_patches(slide, centres, 0.5, spec, background=(250, 240, 230))
        drop = plan_patches(slide, centres, 0.5, spec, edge="drop")
        assert fill.kept.tolist() == [0, 1, 3] and fill.dropped_outside.tolist() == [2, 4] and len(fill.dropped_edge) == 0
        assert drop.kept.tolist() == [3] and drop.dropped_edge.tolist() == [0, 1] and drop.dropped_outside.tolist() == [2, 4]
        # the share of each window on the image
        half = 64.0
        want0 = (20.0 + half) / 128.0
        want1 = (10.0 + half) / 128.0 * (30.0 + half) / 128.0
        np.testing.assert_allclose(fill.valid_fraction, [want0, want1, 1.0])
        got = {}
        for b in fill.blocks:
            for k, p in zip(b.spots.tolist(), cut_block(slide, fill, b, centres, spec), strict=True):
                got[int(fill.kept[k])] = p
        full = slide.read_region(0, 0, 0, w, h)
    # left part of patch 0 is off the image (x < 0): exactly the background colour
    p0 = got[0]
    off_cols = int(np.floor((half - 20.0) / 4.0))  # 4 slide px per patch px
    assert (p0[:, : off_cols - 1] == np.array([250, 240, 230], np.uint8)).all()
    assert not (p0[:, off_cols + 2 :] == np.array([250, 240, 230], np.uint8)).all()
    # the on-image part is the slide's pixels (block average of 4 x 4 px, low-passed)
    ref = full[300 - 64 : 300 + 64, 0 : 20 + 64].reshape(32, 4, -1, 4, 3).mean(axis=(1, 3))  # patch cols 11..31
    assert np.abs(p0[:, off_cols + 2 :].astype(float) - ref[:, 2:]).mean() < 12
    # patch 1 is off the image on its right and bottom
    p1 = got[1]
    assert (p1[-5:, :] == np.array([250, 240, 230], np.uint8)).all() and (p1[:, -5:] == [250, 240, 230]).all()


def test_background_colour_is_the_thumbnail_ring() -> None:
    t = np.zeros((100, 120, 3), np.uint8)
    t[:] = (240, 238, 236)
    t[20:80, 20:100] = (150, 60, 120)
    assert background_colour(t) == (240, 238, 236)


def test_ingest_keeps_edge_spots_and_records_their_valid_fraction(
    ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path
) -> None:
    cat, cases = ingested
    case = next(c for c in cases if c.sample_id == "brainB")  # spots near the top-left edge
    t = case.truth
    m = cat.manifest("brainB")
    view = cat.pairs(sample_ids=["brainB"])
    vf = view.obs["patch_valid_fraction"].to_numpy()
    half = cat.spec.field_um / 2 / m["pixel_size_um"]  # the pixel size the ingest estimated
    h, w = t.image_shape
    idx = {b: i for i, b in enumerate(t.barcodes)}
    for k, b in enumerate(view.obs["barcode"]):
        x, y = t.centres_px[idx[b]]
        ox = min(x + half, w) - max(x - half, 0)
        oy = min(y + half, h) - max(y - half, 0)
        assert vf[k] == pytest.approx(ox * oy / (2 * half) ** 2, abs=1e-5)
    edge = np.flatnonzero(vf < 1)
    assert len(edge) == m["n_edge_patches"] > 0
    assert m["edge_rule"] == "fill" and m["dropped"]["edge"] == 0
    assert m["dropped"]["not_in_tissue"] == m["n_spots"] - m["n_in_tissue"]
    assert m["dropped"]["outside_image"] == m["n_dropped_outside_image"] == m["n_in_tissue"] - m["n_pairs"]
    # the off-image corner of an edge patch is the recorded background colour
    k = int(edge[np.argmin(vf[edge])])
    x, y = view.obs[["x_px", "y_px"]].to_numpy()[k]
    patch = view.patch(k)
    bg = np.array(m["background_rgb"])
    cols = int((half - x) / half * 112) - 2
    rows = int((half - y) / half * 112) - 2
    region = patch[: max(rows, 1), :] if rows > 0 else patch[:, : max(cols, 1)]
    assert np.abs(region.astype(int) - bg).max() <= 6  # JPEG
    # --edge drop keeps today's behaviour, and counts the spots by cause
    cat2 = catalog.create(tmp_path / "drop")
    opts = ReadOptions(sample_id="brainB", edge="drop")
    rep = cat2.ingest([case.path], options=opts, workers=1)
    assert not rep.failed, rep.failed[0].message
    m2 = cat2.manifest("brainB")
    assert m2["n_pairs"] == m["n_pairs"] - len(edge)
    assert m2["dropped"] == {"outside_image": m["dropped"]["outside_image"], "edge": len(edge), "not_in_tissue": m["dropped"]["not_in_tissue"]}
    assert (cat2.pairs().obs["patch_valid_fraction"] == 1.0).all()
    df = cat2.samples().set_index("sample_id")
    assert df.loc["brainB", "n_dropped_edge"] == len(edge)
    from cli.hestkit import SUMMARY_COLUMNS

    assert {"n_dropped_outside_image", "n_dropped_edge", "n_dropped_not_in_tissue"} <= set(SUMMARY_COLUMNS)
    r = runner.invoke(app, ["ls", str(tmp_path / "drop")])
    assert r.exit_code == 0 and "brainB" in r.output


# -- item 1: the upsampling rule -------------------------------------------------------


def test_upsampling_thresholds() -> None:
    assert check_upsampling("s", Path("a.tif"), 0.5, 0.5).factor == 1.0
    assert check_upsampling("s", Path("a.tif"), 0.25, 0.5).factor == 1.0  # downsampling
    r = check_upsampling("s", Path("a.tif"), 1.0 * WARN_ABOVE + 0.5, 1.0)
    assert r.warning is not None and "upsampled 2.5x" in r.warning
    assert check_upsampling("s", Path("a.tif"), WARN_ABOVE, 1.0).warning is None
    with pytest.raises(UpsamplingError, match=r"upsampled 4\.5x.*tissue_lowres_image\.png is Space Ranger's downscaled copy"):
        check_upsampling("s", Path("spatial/tissue_lowres_image.png"), REFUSE_ABOVE + 0.5, 1.0)
    ok = check_upsampling("s", Path("a.tif"), 9.0, 1.0, allow=True)
    assert ok.factor == 9.0 and ok.allowed and ok.warning is not None


def test_ingest_records_refuses_and_allows_upsampling(small: Path, tmp_path: Path) -> None:
    # the slide is 0.5 um/px: patches of 0.5/3 um/px are upsampled 3x (warned), 0.5/6 6x (refused)
    warn_cat = catalog.create(tmp_path / "warn", PairSpec(32, 0.5 / 3))
    rep = warn_cat.ingest([small], options=ReadOptions(sample_id="s1"), workers=1)
    assert not rep.failed, rep.failed[0].message
    m = warn_cat.manifest("s1")
    assert m["upsampling_factor"] == pytest.approx(3.0, rel=1e-3)
    assert m["source_pixel_size_um"] == pytest.approx(0.5, rel=1e-3)
    assert any("upsampled 3.0x" in w for w in m["warnings"])
    assert rep.results[0].upsampling_factor == pytest.approx(3.0, rel=1e-3)

    spec6 = PairSpec(32, 0.5 / 6)
    refuse_cat = catalog.create(tmp_path / "refuse", spec6)
    rep = refuse_cat.ingest([small], options=ReadOptions(sample_id="s1"), workers=1)
    assert rep.failed and "upsampled 6.0x" in rep.failed[0].message and "allow" in rep.failed[0].message
    assert len(refuse_cat) == 0 and not list((tmp_path / "refuse" / "patches").glob("*"))
    r = runner.invoke(
        app,
        ["ingest", str(small), "--catalog", str(tmp_path / "refuse"), "--sample-id", "s1", "--allow-upsampling", "-q", "--workers", "1",
         "--patch-size", "32", "--patch-um-per-px", str(0.5 / 6)],
    )
    assert r.exit_code == 0, r.output
    m = refuse_cat.manifest("s1")
    assert m["upsampling_factor"] == pytest.approx(6.0, rel=1e-3) and m["upsampling_allowed"] is True
    from cli.hestkit import SUMMARY_COLUMNS

    assert {"source_pixel_size_um", "upsampling_factor"} <= set(SUMMARY_COLUMNS)
    assert refuse_cat.samples().loc[0, "upsampling_factor"] == pytest.approx(6.0, rel=1e-3)


# -- item 2: unmeasured genes ----------------------------------------------------------


def test_unmeasured_genes_are_told_apart(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    view = cat.pairs()
    own = {c.sample_id: set(c.truth.genes) for c in cases}
    measured = view.measured
    assert set(measured.index) == set(own)
    for sid, row in measured.iterrows():
        assert {g for g, ok in row.items() if ok} == own[str(sid)] & set(view.genes)
    assert (~measured.to_numpy()).any(), "the cohort's samples must differ in genes for this test"
    with pytest.warns(catalog.UnmeasuredGeneWarning, match="not measured by some selected samples"):
        X = view.expression()
    dense = view.expression(unmeasured="nan")
    mask = view.measured_mask()
    assert dense.shape == mask.shape == X.shape
    assert np.isnan(dense[~mask]).all() and not np.isnan(dense[mask]).any()
    np.testing.assert_array_equal(dense[mask], X.toarray()[mask])
    lacking = view.lacking()
    np.testing.assert_array_equal(lacking.to_numpy(), (~measured.to_numpy()).sum(axis=0))
    # a gene every sample measured gives no warning
    common = [g for g in view.genes if lacking[g] == 0][:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", catalog.UnmeasuredGeneWarning)
        view.expression(common)
    # torch: the mask travels with each item
    ds = view.to_torch(return_mask=True)
    _, e, ok = ds[len(ds) - 1]
    np.testing.assert_array_equal(ok.numpy(), mask[len(ds) - 1])
    assert e.shape == ok.shape
    # the multi-sample AnnData records which zeros are measurements
    a = view.to_anndata()
    np.testing.assert_array_equal(a.var["n_samples_measured"].to_numpy(), measured.sum(axis=0).to_numpy())
    np.testing.assert_array_equal(a.uns["hestkit"]["measured"], measured.to_numpy())


def test_gene_by_symbol_or_id_case_sensitive(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    t = cases[0].truth
    sym, gid = t.genes[3], t.gene_ids[3]
    assert sym != gid
    by_sym = cat.pairs(sample_ids=[cases[0].sample_id], genes=[sym])
    by_id = cat.pairs(sample_ids=[cases[0].sample_id], genes=[gid])
    assert by_sym.genes == by_id.genes == [sym]
    assert (by_sym.expression() != by_id.expression()).nnz == 0
    if sym.swapcase() != sym:
        with pytest.raises(QueryError, match=f"did you mean {sym}"):
            cat.pairs(sample_ids=[cases[0].sample_id], genes=[sym.swapcase()])


def test_query_cli_warns_with_the_count_of_samples_lacking_a_gene(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, _ = ingested
    view = cat.pairs()
    lacking = view.lacking()
    g = str(lacking[lacking > 0].index[0])
    r = runner.invoke(app, ["query", str(cat.uri), "--gene", g])
    assert r.exit_code == 0, r.output
    assert f"{g} was not measured by {int(lacking[g])} of {len(view.sample_ids)} selected samples" in r.output


def test_sample_exports_write_only_measured_genes(ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path) -> None:
    import anndata as ad

    cat, cases = ingested
    c = cases[1]
    out = export_sample(cat, c.sample_id, "anndata", tmp_path / "a.h5ad")
    a = ad.read_h5ad(out)
    assert set(a.var_names) == set(c.truth.genes)


# -- items 5 and 6: paths, relocate, the HEST export's wsi name ---------------------------


def test_paths_are_absolute_and_relocate_rewrites_them(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    shutil.copytree(small, data / "s1")
    monkeypatch.chdir(data)
    cat = catalog.create(tmp_path / "cat", PairSpec(32, 2.0))
    rep = cat.ingest([Path("s1")], options=ReadOptions(image=Path("s1/spatial/tissue_hires_image.png")), workers=1)
    assert not rep.failed, rep.failed[0].message
    m = cat.manifest("s1")
    assert m["image_path"] == str(data / "s1" / "spatial" / "tissue_hires_image.png")
    assert all(Path(p).is_absolute() for p in m["source_paths"])
    # from another folder the export finds the slide; the HEST h5 names the file it wrote
    monkeypatch.chdir(tmp_path)
    out = export_sample(cat, "s1", "hest", tmp_path / "hest")
    with h5py.File(out / "patches" / "s1.h5") as f:
        text = str(f.attrs["coordinates"])
    assert "wsis/s1.png" in text and (out / "wsis" / "s1.png").exists()
    # the data move: export says so; relocate fixes it
    shutil.move(str(data), str(tmp_path / "moved"))
    with pytest.raises(catalog.CatalogError, match="no longer there"):
        export_sample(cat, "s1", "hest", tmp_path / "hest2")
    r = runner.invoke(app, ["relocate", str(tmp_path / "cat"), "--from", str(data), "--to", str(tmp_path / "moved"), "--dry-run"])
    assert r.exit_code == 0 and "would rewrite" in r.output, r.output
    assert cat.manifest("s1")["image_path"].startswith(str(data))
    r = runner.invoke(app, ["relocate", str(tmp_path / "cat"), "--from", str(data), "--to", str(tmp_path / "moved")])
    assert r.exit_code == 0, r.output
    m2 = cat.manifest("s1")
    assert m2["image_path"] == str(tmp_path / "moved" / "s1" / "spatial" / "tissue_hires_image.png")
    assert all(p.startswith(str(tmp_path / "moved")) for p in m2["source_paths"])
    assert {k: v for k, v in m2.items() if k not in ("image_path", "source_paths")} == {
        k: v for k, v in m.items() if k not in ("image_path", "source_paths")
    }
    export_sample(cat, "s1", "hest", tmp_path / "hest2")
    # a prefix that matches nothing is an error, and so is a no-op
    r = runner.invoke(app, ["relocate", str(tmp_path / "cat"), "--from", "/nowhere", "--to", "/else"])
    assert r.exit_code == 1 and "no recorded path" in r.output
    r = runner.invoke(app, ["relocate", str(tmp_path / "cat"), "--from", "/a", "--to", "/a/"])
    assert r.exit_code == 1 and "same path" in r.output
    json.loads((tmp_path / "cat" / "manifest" / "s1.json").read_text())  # still valid JSON
