"""Tests of hestkit.synthetic: real formats on disk, exact image/expression truth."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import openslide
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
import tifffile
from PIL import Image

from hestkit.synthetic import (
    GLASS_RGB,
    TISSUE_RGB,
    SyntheticSample,
    gene_programs,
    make_demo_cohort,
    make_hest,
    make_visium,
    pyramid_shapes,
    spot_colour,
    spot_colours,
    write_flat_image,
    write_pyramidal_tiff,
)

JPEG_TOL = 12
POSITION_COLUMNS = [
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
]
HEST_KEYS = [
    "id",
    "dataset_title",
    "organ",
    "disease_state",
    "oncotree_code",
    "species",
    "patient",
    "st_technology",
    "license",
    "inter_spot_dist",
    "spot_diameter",
    "spots_under_tissue",
    "preservation_method",
    "nb_genes",
    "pixel_size_um_embedded",
    "pixel_size_um_estimated",
    "magnification",
    "fullres_px_width",
    "fullres_px_height",
    "tissue",
]


@pytest.fixture(scope="module")
def sr2(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSample:
    out = tmp_path_factory.mktemp("sr2") / "outs"
    return make_visium(out, n_rows=8, n_cols=8, n_genes=40, seed=1)


@pytest.fixture(scope="module")
def sr1_mex(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSample:
    out = tmp_path_factory.mktemp("sr1") / "outs"
    return make_visium(
        out,
        layout="spaceranger1",
        matrix="mex",
        n_rows=7,
        n_cols=9,
        n_genes=30,
        pixel_size_um=0.8,
        embed_pixel_size=False,
        species="Mus musculus",
        seed=2,
    )


@pytest.fixture(scope="module")
def hest(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSample:
    root = tmp_path_factory.mktemp("hest")
    return make_hest(root, "SYN01", organ="Bowel", n_rows=8, n_cols=8, n_genes=40, seed=3)


def _read_level0(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        return tf.series[0].levels[0].asarray()


def _assert_counts_equal(a: sp.spmatrix, b: sp.spmatrix) -> None:
    assert a.shape == b.shape
    assert abs(sp.csr_matrix(a, dtype=np.int64) - sp.csr_matrix(b, dtype=np.int64)).sum() == 0


# --- truth object -------------------------------------------------------------------


def test_truth_geometry(sr2: SyntheticSample) -> None:
    n = sr2.n_spots
    assert n == 64 and len(set(sr2.barcodes)) == n
    assert all(len(b) == 18 and b.endswith("-1") and set(b[:16]) <= set("ACGT") for b in sr2.barcodes)
    assert sr2.centres_px.shape == (n, 2) and sr2.counts.shape == (n, len(sr2.genes))
    assert np.all(sr2.array_col % 2 == sr2.array_row % 2)
    assert np.array_equal(sr2.centres_px, np.rint(sr2.centres_px))
    # Hexagonal packing: 100 um between neighbours along a row, 50*sqrt(3) between rows.
    row0 = np.flatnonzero(sr2.array_row == 0)
    dx = np.diff(sr2.centres_px[row0, 0])
    assert np.all(np.abs(dx - 100.0 / sr2.pixel_size_um) <= 1.0)
    dy = sr2.centres_px[sr2.array_row == 1, 1][0] - sr2.centres_px[row0, 1][0]
    assert abs(dy - 50.0 * np.sqrt(3.0) / sr2.pixel_size_um) <= 1.0
    # Every spot plus >= 140 um of margin fits in the image (origin is 280 px = 140 um).
    h, w = sr2.image_shape
    margin = 140.0 / sr2.pixel_size_um
    assert sr2.centres_px.min() >= margin - 1
    assert sr2.centres_px[:, 0].max() + 150.0 / sr2.pixel_size_um <= w
    assert sr2.centres_px[:, 1].max() + 150.0 / sr2.pixel_size_um <= h
    frac = sr2.in_tissue.mean()
    assert 0.75 <= frac <= 0.95 and not sr2.in_tissue.all()


def test_counts_model(sr2: SyntheticSample) -> None:
    counts = sr2.counts
    assert isinstance(counts, sp.csr_matrix) and counts.dtype == np.int32
    dense = counts.toarray()
    assert dense.min() >= 0 and (dense == 0).any() and dense.max() > 5
    # Off-tissue spots are much lower (ambient), in-tissue ones vary spatially.
    assert dense[~sr2.in_tissue].sum(1).mean() < 0.2 * dense[sr2.in_tissue].sum(1).mean()
    # Neighbouring spots correlate: program-0 score along rows vs random pairs.
    prog0 = np.log1p(dense[:, gene_programs(dense.shape[1]) == 0].sum(1))
    idx = np.flatnonzero(sr2.in_tissue)
    pairs = [
        (i, j) for i in idx for j in idx if sr2.array_row[i] == sr2.array_row[j] and sr2.array_col[j] - sr2.array_col[i] == 2
    ]
    a, b = np.array(pairs).T
    assert np.corrcoef(prog0[a], prog0[b])[0, 1] > 0.5


def test_spot_colour_is_function_of_counts(sr2: SyntheticSample) -> None:
    dense = sr2.counts.toarray()
    cols = spot_colours(sr2.counts)
    assert np.array_equal(cols, sr2.colours)
    for i in range(0, sr2.n_spots, 7):
        assert np.array_equal(spot_colour(dense[i]), sr2.colour(i))
    # Far enough from the backgrounds to segment; and spots differ from each other.
    for bg in (TISSUE_RGB, GLASS_RGB):
        assert np.all(np.abs(cols.astype(int) - np.array(bg)).max(1) >= 25)
    assert len({tuple(c) for c in cols[sr2.in_tissue]}) > sr2.in_tissue.sum() // 2
    programs = gene_programs(60)
    assert [int((programs == k).sum()) for k in range(4)] == [15, 15, 15, 15]


# --- Visium files -------------------------------------------------------------------


def test_sr2_positions_and_scalefactors(sr2: SyntheticSample) -> None:
    pos_path = sr2.path / "spatial" / "tissue_positions.csv"
    assert pos_path.read_text().splitlines()[0] == ",".join(POSITION_COLUMNS)
    assert not (sr2.path / "spatial" / "tissue_positions_list.csv").exists()
    pos = pd.read_csv(pos_path)
    assert list(pos.columns) == POSITION_COLUMNS and len(pos) == sr2.n_spots
    assert pos["pxl_row_in_fullres"].dtype.kind == "i"
    assert pos["barcode"].tolist() == sr2.barcodes
    assert np.array_equal(pos["in_tissue"].to_numpy(), sr2.in_tissue.astype(int))
    assert np.array_equal(pos["array_row"].to_numpy(), sr2.array_row)
    assert np.array_equal(pos["array_col"].to_numpy(), sr2.array_col)
    assert np.array_equal(pos["pxl_col_in_fullres"].to_numpy(), sr2.centres_px[:, 0])
    assert np.array_equal(pos["pxl_row_in_fullres"].to_numpy(), sr2.centres_px[:, 1])

    sf = json.loads((sr2.path / "spatial" / "scalefactors_json.json").read_text())
    assert set(sf) == {
        "tissue_hires_scalef",
        "tissue_lowres_scalef",
        "spot_diameter_fullres",
        "fiducial_diameter_fullres",
    }
    assert sf["spot_diameter_fullres"] == pytest.approx(55.0 / 0.5)
    h, w = sr2.image_shape
    for key, name, side in (
        ("tissue_hires_scalef", "tissue_hires_image.png", 2000),
        ("tissue_lowres_scalef", "tissue_lowres_image.png", 600),
    ):
        s = sf[key]
        with Image.open(sr2.path / "spatial" / name) as im:
            assert im.size == (round(w * s), round(h * s))
            assert max(im.size) <= side
            arr = np.asarray(im.convert("RGB"))
        # PNG is lossless: the colour at each in-tissue centre is exact.
        for i in np.flatnonzero(sr2.in_tissue):
            x, y = sr2.centres_px[i] * s
            assert np.array_equal(arr[int(y), int(x)], sr2.colour(i))


def test_sr2_h5_matrix(sr2: SyntheticSample) -> None:
    with h5py.File(sr2.path / "filtered_feature_bc_matrix.h5", "r") as f:
        m = f["matrix"]
        n_feat, n_bc = (int(v) for v in m["shape"][()])
        barcodes = [b.decode() for b in m["barcodes"][()]]
        mat = sp.csc_matrix((m["data"][()], m["indices"][()], m["indptr"][()]), shape=(n_feat, n_bc))
        feats = m["features"]
        ids = [x.decode() for x in feats["id"][()]]
        names = [x.decode() for x in feats["name"][()]]
        assert {x.decode() for x in feats["feature_type"][()]} == {"Gene Expression"}
        assert {x.decode() for x in feats["genome"][()]} == {"GRCh38"}
        assert [x.decode() for x in feats["_all_tag_keys"][()]] == ["genome"]
    keep = sr2.in_tissue_index()
    assert barcodes == [sr2.barcodes[i] for i in keep]
    assert names == sr2.genes and ids == sr2.gene_ids and ids[0].startswith("ENSG")
    assert n_feat == len(sr2.genes) and n_bc == keep.size
    _assert_counts_equal(mat.T, sr2.counts[keep])


def test_sr1_mex_and_headerless_positions(sr1_mex: SyntheticSample) -> None:
    t = sr1_mex
    assert not (t.path / "spatial" / "tissue_positions.csv").exists()
    pos_path = t.path / "spatial" / "tissue_positions_list.csv"
    first = pos_path.read_text().splitlines()[0].split(",")
    assert first[0] == t.barcodes[0] and first[0] != "barcode"
    pos = pd.read_csv(pos_path, header=None, names=POSITION_COLUMNS)
    assert len(pos) == t.n_spots
    assert np.array_equal(pos["pxl_col_in_fullres"].to_numpy(), t.centres_px[:, 0])

    mex = t.path / "filtered_feature_bc_matrix"
    assert not (t.path / "filtered_feature_bc_matrix.h5").exists()
    with gzip.open(mex / "matrix.mtx.gz", "rt") as fh:
        header = fh.readline()
        mat = scipy.io.mmread(mex / "matrix.mtx.gz")
    assert header.startswith("%%MatrixMarket matrix coordinate integer general")
    with gzip.open(mex / "barcodes.tsv.gz", "rt") as fh:
        barcodes = fh.read().split()
    feats = pd.read_csv(mex / "features.tsv.gz", sep="\t", header=None)
    assert feats.shape == (len(t.genes), 3)
    assert feats[0].tolist() == t.gene_ids and feats[0].iloc[0].startswith("ENSMUSG")
    assert feats[1].tolist() == t.genes and set(feats[2]) == {"Gene Expression"}
    assert any(g != g.upper() for g in t.genes)  # mouse-style symbols
    keep = t.in_tissue_index()
    assert barcodes == [t.barcodes[i] for i in keep]
    assert mat.shape == (len(t.genes), keep.size)
    _assert_counts_equal(sp.csr_matrix(mat).T, t.counts[keep])


# --- the pyramidal TIFF -------------------------------------------------------------


def _check_pyramid(sample: SyntheticSample, *, embedded: bool) -> None:
    h, w = sample.image_shape
    shapes = pyramid_shapes(h, w)
    assert len(shapes) >= 3 and max(shapes[-1]) < 512
    with tifffile.TiffFile(sample.image_path) as tf:
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == [(a, b, 3) for a, b in shapes]
        assert len(tf.pages) == len(shapes)  # separate top-level IFDs, no SubIFDs
        for k, page in enumerate(tf.pages):
            assert isinstance(page, tifffile.TiffPage)
            assert page.is_tiled and page.compression == tifffile.COMPRESSION.JPEG
            assert page.subfiletype == (1 if k else 0)
            unit = page.tags["ResolutionUnit"].value
            if embedded:
                assert unit == tifffile.RESUNIT.CENTIMETER
                num, den = page.tags["XResolution"].value
                assert 1e4 / (num / den) == pytest.approx(sample.pixel_size_um * w / page.imagewidth, rel=1e-4)
            else:
                assert unit == tifffile.RESUNIT.NONE
    slide = openslide.OpenSlide(sample.image_path)
    try:
        assert slide.level_count == len(shapes)
        assert slide.level_dimensions == tuple((b, a) for a, b in shapes)
        mpp = slide.properties.get(openslide.PROPERTY_NAME_MPP_X)
        if embedded:
            assert mpp is not None and float(mpp) == pytest.approx(sample.pixel_size_um, rel=1e-4)
        else:
            assert mpp is None
        # Level 1 through OpenSlide: the disk colour at each in-tissue centre.
        for i in sample.in_tissue_index()[::5]:
            x, y = (sample.centres_px[i] / 2).astype(int)
            region = np.asarray(slide.read_region((int(x) * 2, int(y) * 2), 1, (1, 1)))
            assert np.abs(region[0, 0, :3].astype(int) - sample.colour(i)).max() <= JPEG_TOL
    finally:
        slide.close()


def test_tiff_pyramid_embedded(sr2: SyntheticSample) -> None:
    _check_pyramid(sr2, embedded=True)


def test_tiff_pyramid_not_embedded(sr1_mex: SyntheticSample) -> None:
    _check_pyramid(sr1_mex, embedded=False)


def test_level0_colour_at_every_spot(sr2: SyntheticSample) -> None:
    img = _read_level0(sr2.image_path)
    assert img.shape == (*sr2.image_shape, 3)
    for i in range(sr2.n_spots):
        x, y = sr2.centres_px[i].astype(int)
        px = img[y, x].astype(int)
        if sr2.in_tissue[i]:
            assert np.abs(px - sr2.colour(i)).max() <= JPEG_TOL, i
            # The whole disk interior is flat: a 30x30 window around the centre too.
            win = img[y - 15 : y + 15, x - 15 : x + 15].reshape(-1, 3).astype(int)
            assert np.abs(win - sr2.colour(i)).max() <= JPEG_TOL
        else:  # off-tissue spots are not painted
            bg = np.abs(px[None] - np.array([TISSUE_RGB, GLASS_RGB])).max(1).min()
            assert bg <= 6 + JPEG_TOL


def test_render_is_tile_consistent(sr2: SyntheticSample) -> None:
    scene = sr2.scene
    full = scene.render(2.0, 0, 0, 300, 400)
    assert np.array_equal(full[37:137, 251:351], scene.render(2.0, 37, 251, 100, 100))
    assert np.array_equal(sr2.render(1.0, 5, 7, 3, 4), scene.render(1.0, 5, 7, 3, 4))
    assert scene.render(1.0, 0, 0, 0, 5).shape == (0, 5, 3)


def test_write_pyramidal_tiff_direct(tmp_path: Path) -> None:
    def render(ds: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        out = np.zeros((h, w, 3), np.uint8)
        out[..., 0] = 40 * (1 + int(np.log2(ds)))
        out[..., 1] = 128
        return out

    path = tmp_path / "x.tif"
    write_pyramidal_tiff(path, height=700, width=1100, render=render, pixel_size_um=0.25)
    with tifffile.TiffFile(path) as tf:
        levels = tf.series[0].levels
        assert [lv.shape[:2] for lv in levels] == [(700, 1100), (350, 550), (175, 275)]
        assert np.abs(levels[2].asarray()[..., 0].astype(int) - 120).max() <= 3
    flat = tmp_path / "x.png"
    arr = np.arange(60, dtype=np.uint8).reshape(4, 5, 3)
    write_flat_image(flat, arr)
    assert np.array_equal(np.asarray(Image.open(flat)), arr)
    with pytest.raises(ValueError):
        write_flat_image(tmp_path / "x.bmp", arr)


# --- HEST-1k ------------------------------------------------------------------------


def test_hest_layout(hest: SyntheticSample) -> None:
    root = hest.path
    assert hest.image_path == root / "wsis" / "SYN01.tif"
    with tifffile.TiffFile(hest.image_path) as tf:
        assert tf.is_bigtiff
    _check_pyramid(hest, embedded=True)

    adata = ad.read_h5ad(root / "st" / "SYN01.h5ad")
    keep = hest.in_tissue_index()
    assert adata.obs_names.tolist() == [hest.barcodes[i] for i in keep]
    assert adata.var_names.tolist() == hest.genes
    assert sp.issparse(adata.X)
    x = sp.csr_matrix(adata.X)
    assert np.array_equal(x.data, np.rint(x.data))
    _assert_counts_equal(x.astype(np.int64), hest.counts[keep])
    assert np.array_equal(adata.obsm["spatial"], hest.centres_px[keep])
    assert (adata.obs["in_tissue"] == 1).all()
    assert np.array_equal(adata.obs["array_row"].to_numpy(), hest.array_row[keep])
    assert np.array_equal(adata.obs["array_col"].to_numpy(), hest.array_col[keep])

    meta = json.loads((root / "metadata" / "SYN01.json").read_text())
    assert list(meta) == HEST_KEYS
    assert meta["id"] == "SYN01" and meta["organ"] == "Bowel" and meta["st_technology"] == "Visium"
    assert meta["spots_under_tissue"] == keep.size and meta["nb_genes"] == len(hest.genes)
    assert meta["pixel_size_um_embedded"] == pytest.approx(0.5)
    assert meta["pixel_size_um_estimated"] == pytest.approx(0.5, rel=0.02)
    assert (meta["fullres_px_height"], meta["fullres_px_width"]) == hest.image_shape
    img = _read_level0(hest.image_path)
    for i in keep:
        x, y = hest.centres_px[i].astype(int)
        assert np.abs(img[y, x].astype(int) - hest.colour(i)).max() <= JPEG_TOL


def test_hest_rejects_other_technologies(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_hest(tmp_path, "A", st_technology="Xenium")
    with pytest.raises(ValueError):
        make_visium(tmp_path / "v", layout="spaceranger3")  # type: ignore[arg-type]


# --- determinism --------------------------------------------------------------------


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_seed_determinism(tmp_path: Path) -> None:
    kw = {"n_rows": 5, "n_cols": 6, "n_genes": 24, "pixel_size_um": 1.0}
    a = make_visium(tmp_path / "a", seed=7, **kw)  # type: ignore[arg-type]
    b = make_visium(tmp_path / "b", seed=7, **kw)  # type: ignore[arg-type]
    c = make_visium(tmp_path / "c", seed=8, **kw)  # type: ignore[arg-type]
    ta, tb, tc = (_tree_bytes(tmp_path / n) for n in "abc")
    assert ta == tb
    assert set(ta) == set(tc)
    assert all(ta[k] != tc[k] for k in ("filtered_feature_bc_matrix.h5", "tissue_fullres.tif"))
    assert a.barcodes == b.barcodes != c.barcodes
    assert np.array_equal(a.colours, b.colours) and not np.array_equal(a.colours, c.colours)
    ha = make_hest(tmp_path / "ha", "S", seed=7, **kw)  # type: ignore[arg-type]
    hb = make_hest(tmp_path / "hb", "S", seed=7, **kw)  # type: ignore[arg-type]
    assert _tree_bytes(ha.path) == _tree_bytes(hb.path)


# --- demo cohort --------------------------------------------------------------------


def test_demo_cohort(tmp_path: Path) -> None:
    entries = make_demo_cohort(tmp_path, seed=0)
    assert [e.kind for e in entries] == ["visium"] * 3 + ["hest"] * 2
    assert len({e.sample_id for e in entries}) == 5
    by_id = {e.sample_id: e for e in entries}
    sr1 = by_id["visium_mouse_brain_sr1"]
    assert (sr1.path / "spatial" / "tissue_positions_list.csv").exists()
    assert sr1.species == "Mus musculus" and sr1.organ == "Brain"
    assert by_id["visium_breast_p2"].truth.pixel_size_embedded is False
    assert (by_id["visium_breast_p2"].path / "filtered_feature_bc_matrix" / "matrix.mtx.gz").exists()
    assert {e.patient for e in entries if e.organ == "Breast"} == {"P1", "P2"}
    hest_entries = [e for e in entries if e.kind == "hest"]
    assert all(e.path == tmp_path / "hest" and e.image is None for e in hest_entries)
    assert {e.organ for e in hest_entries} == {"Bowel", "Kidney"}
    for e in entries:
        assert e.truth.image_path.exists()
        assert max(e.truth.image_shape) <= 3400
        if e.kind == "visium":
            assert e.image == e.truth.image_path


def test_plaid_morphology_shows_programs_only_through_texture(tmp_path: Path) -> None:
    """The "plaid" disks: a grating whose period (program 0) and orientation (program 1)
    can be read back from the rendered pixels; the disk colour does not follow expression."""
    from hestkit.synthetic._expression import program_levels

    s = make_visium(tmp_path / "p", n_rows=6, n_cols=6, pixel_size_um=1.0, seed=11, morphology="plaid")
    scene = s.scene
    assert scene.plaid_px is not None
    level = program_levels(s.counts)
    inside = np.flatnonzero(s.in_tissue)
    # colour is independent of every program's level (stain jitter only)
    for k in range(4):
        r = np.corrcoef(level[inside, k], s.scene.colours[inside].astype(float).mean(axis=1))[0, 1]
        assert abs(r) < 0.5
    # period and angle follow programs 0 and 1 monotonically
    assert np.all(np.diff(scene.plaid_px[inside, 0][np.argsort(level[inside, 0])]) <= 1e-9)
    assert np.all(np.diff(scene.plaid_px[inside, 1][np.argsort(level[inside, 1])]) >= -1e-9)
    # read the first grating back from the pixels: the strongest Fourier peak of a
    # window inside the disk is at the grating's wave vector
    half = 16
    for i in inside[:6]:
        cx, cy = (round(float(v)) for v in scene.centres_px[i])
        win = scene.render(1.0, cy - half, cx - half, 2 * half, 2 * half).astype(float).mean(axis=2)
        p1, angle, contrast, p2, _ = scene.plaid_px[i]
        spec = np.abs(np.fft.fft2(win - win.mean()))
        freqs = np.fft.fftfreq(2 * half)
        expected = [(np.cos(angle) / p1, np.sin(angle) / p1), (-np.sin(angle) / p2, np.cos(angle) / p2)]
        ky, kx = np.unravel_index(int(np.argmax(spec)), spec.shape)
        found = np.array([freqs[kx], freqs[ky]])
        dist = min(min(np.linalg.norm(found - np.array(e)), np.linalg.norm(found + np.array(e))) for e in expected)
        assert dist <= 1.5 / (2 * half)  # within one and a half frequency bins
        assert 0.15 <= contrast <= 0.75
