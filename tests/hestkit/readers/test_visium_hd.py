"""The Visium HD reader: pooling of bins into pseudo-spots, geometry, catalog ingest,
the real VisiumIO schema fixture, and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.io
import scipy.sparse as sp

import catalog
from hestkit.errors import ValidationError
from hestkit.readers import _visium_hd_bins as hdb
from hestkit.readers import find_reader, list_readers, register_reader
from hestkit.readers import visium_hd as vhd
from hestkit.readers._tenx import read_10x_h5
from hestkit.readers.visium import VisiumReader, read_tissue_positions
from hestkit.readers.visium_hd import VisiumHDReader, fit_bin_grid, pool_bins, pool_bins_streamed
from hestkit.sample import ReadOptions, SampleSource
from hestkit.synthetic.visium_hd import SyntheticVisiumHD, make_visium_hd


def _ensure_registered() -> None:
    if "visium-hd" not in {r.name for r in list_readers()}:
        register_reader(VisiumHDReader())


def _load(path: Path, **opts: object) -> SampleSource:
    reader = VisiumHDReader()
    (ref,) = reader.scan(path, ReadOptions(**opts))  # type: ignore[arg-type]
    return reader.load(ref)


@pytest.fixture(scope="module")
def hd(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVisiumHD:
    # 150 x 130 bins: 5.4 x 4.6 blocks of 28, so the grid edge cuts blocks too; rotated, flipped.
    return make_visium_hd(tmp_path_factory.mktemp("hd") / "run1", n_rows=150, n_cols=130, seed=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVisiumHD:
    return make_visium_hd(tmp_path_factory.mktemp("hd_small") / "run", n_rows=40, n_cols=40, seed=1)


@pytest.fixture()
def small_copy(small: SyntheticVisiumHD, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(small.path, dst)
    return dst


def _check_against_truth(src: SampleSource, truth: SyntheticVisiumHD, side_um: float, bin_um: float = 2.0) -> None:
    k = round(side_um / bin_um)  # k bins of the size read (x_um/y_um: from the centre of that size's bin 0)
    exp = truth.expected_pseudo_spots(side_um)
    got = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(src.spots["array_row"], src.spots["array_col"], strict=True))}
    assert set(got) == set(exp)
    dense = src.counts.toarray()
    for key, e in exp.items():
        i = got[key]
        np.testing.assert_array_equal(dense[i], e.counts)
        assert src.spots["x_px"].iloc[i] == pytest.approx(e.centre_px[0], abs=1e-6)
        assert src.spots["y_px"].iloc[i] == pytest.approx(e.centre_px[1], abs=1e-6)
        assert src.spots["barcode"].iloc[i] == f"s_{round(side_um):03d}um_{key[0]:05d}_{key[1]:05d}-1"
        assert src.spots["x_um"].iloc[i] == pytest.approx((key[1] * k + (k - 1) / 2) * bin_um)
        assert src.spots["y_um"].iloc[i] == pytest.approx((key[0] * k + (k - 1) / 2) * bin_um)
    assert (src.spots["in_tissue"] == 1).all()
    assert src.spot_diameter_um == pytest.approx(k * bin_um)
    assert src.spot_shape == "square" and src.technology == "visium-hd"
    assert src.genes == truth.genes


@pytest.mark.parametrize("side_um", [56.0, 16.0])
def test_pooled_counts_and_full_block_centres(hd: SyntheticVisiumHD, side_um: float) -> None:
    src = _load(hd.path, spot_size_um=side_um)
    _check_against_truth(src, hd, side_um)
    k = round(side_um / hd.bin_um)
    assert src.metadata["bins_per_side"] == k and src.metadata["bins_folder"] == "square_002um"
    # partial blocks (tissue edge, grid edge) exist and their centre is not the mean of their bins
    exp = hd.expected_pseudo_spots(side_um)
    partial = [e for e in exp.values() if not e.complete]
    assert len(partial) >= 5 and any(e.complete for e in exp.values())
    offsets = [math.dist(e.centre_px, e.bins_mean_px) for e in partial]
    assert max(offsets) > 0.1 * k * hd.bin_um / hd.pixel_size_um
    # and the sum over pseudo-spots is the sum over the filtered bins
    assert src.counts.sum() == hd.counts[np.flatnonzero(hd.bins["in_tissue"].to_numpy())].sum()


def test_pixel_size_and_grid(hd: SyntheticVisiumHD) -> None:
    src = _load(hd.path)
    assert src.pixel_size.value == pytest.approx(0.5) and src.pixel_size.estimated == pytest.approx(0.5)
    assert src.pixel_size.source == "embedded"  # embedded agrees with microns_per_pixel
    assert src.metadata["microns_per_pixel"] == pytest.approx(0.5)
    # the fitted array-to-pixel affine is the true grid: rotated 0.9 deg, array_col flipped
    m = np.array(src.metadata["array_to_pixel_affine"])
    np.testing.assert_allclose(m, hd.affine.to_array()[:2], atol=1e-6)
    assert m[0, 0] < 0 and math.degrees(math.atan2(-m[1, 0], -m[0, 0])) == pytest.approx(0.9, abs=1e-6)
    assert _load(hd.path, pixel_size_um=0.61).pixel_size.value == 0.61


def test_microns_per_pixel_wins_over_a_wrong_embedded_value(small_copy: Path) -> None:
    sf = small_copy / "binned_outputs" / "square_002um" / "spatial" / "scalefactors_json.json"
    d = json.loads(sf.read_text())
    d["microns_per_pixel"] = 0.7
    sf.write_text(json.dumps(d))
    src = _load(small_copy)
    assert src.pixel_size.value == pytest.approx(0.7) and src.pixel_size.source == "estimated"
    assert src.warnings and "0.7" in src.warnings[0]


def test_uses_the_finest_bins_present(hd: SyntheticVisiumHD, tmp_path: Path) -> None:
    dst = tmp_path / "run"
    shutil.copytree(hd.path, dst)
    shutil.rmtree(dst / "binned_outputs" / "square_002um")
    src = _load(dst)
    assert src.metadata["bins_folder"] == "square_008um" and src.metadata["bins_per_side"] == 7
    # 7 x 8 um = 28 x 2 um: the same pseudo-spots, counts and centres as from the 2 um bins
    _check_against_truth(src, hd, 56.0, bin_um=8.0)


def test_reader_selection(small: SyntheticVisiumHD) -> None:
    _ensure_registered()
    assert find_reader(small.path).name == "visium-hd"
    assert VisiumHDReader().can_open(small.path)
    assert not VisiumReader().can_open(small.path)
    assert not VisiumHDReader().can_open(small.path / "binned_outputs" / "square_002um")
    pos = read_tissue_positions(small.path / "binned_outputs" / "square_002um" / "spatial" / "tissue_positions.parquet")
    aff, resid = fit_bin_grid(pos["array_row"], pos["array_col"], pos["pxl_row_in_fullres"], pos["pxl_col_in_fullres"])
    assert resid < 1e-6 and aff.linear_scale == pytest.approx(2.0 / 0.5)


def test_ingest_patches_show_their_pseudo_spot(hd: SyntheticVisiumHD, tmp_path: Path) -> None:
    _ensure_registered()
    cat = catalog.create(tmp_path / "cat")
    report = cat.ingest([hd.path], technology="visium-hd", options=ReadOptions(sample_id="hd1"), workers=1)
    assert not report.failed, report.failed[0].message if report.failed else ""
    exp = hd.expected_pseudo_spots()
    view = cat.pairs(sample_ids=["hd1"])
    assert len(view) == report.ingested[0].n_pairs > 0
    by_barcode = {f"s_056um_{r:05d}_{c:05d}-1": e for (r, c), e in exp.items()}
    assert set(view.obs["barcode"]) <= set(by_barcode)
    # expression round-trips
    expr = view.expression(hd.genes).toarray()
    for i, b in enumerate(view.obs["barcode"]):
        np.testing.assert_array_equal(expr[i], by_barcode[b].counts)
    # pixel level: the centre of the patch of each complete block shows that block's colour
    checked = 0
    for i, b in enumerate(view.obs["barcode"]):
        e = by_barcode[b]
        if not e.complete:
            continue
        centre = view.patch(i)[106:118, 106:118].reshape(-1, 3).astype(float)
        colour = hd.block_colours[(e.block_row, e.block_col)].astype(float)
        assert np.abs(centre - colour).max() <= 14, (b, centre.mean(axis=0), colour)
        checked += 1
    assert checked >= 4
    m = cat.manifest("hd1")
    assert m["technology"] == "visium-hd" and m["spot_shape"] == "square" and m["spot_diameter_um"] == 56.0


# -- streaming the HDF5 matrix ------------------------------------------------------------


def _same_source(a: SampleSource, b: SampleSource) -> None:
    assert a.counts.dtype == b.counts.dtype and a.counts.shape == b.counts.shape
    assert (a.counts != b.counts).nnz == 0 and a.counts.nnz == b.counts.nnz
    pd.testing.assert_frame_equal(a.spots, b.spots)
    assert a.genes == b.genes and a.gene_ids == b.gene_ids
    assert a.metadata == b.metadata and a.warnings == b.warnings


@pytest.mark.parametrize("chunk", [1, 97])
def test_chunked_streaming_gives_the_same_pseudo_spots(
    hd: SyntheticVisiumHD, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    whole = _load(hd.path, spot_size_um=16.0)  # default chunk: the whole (small) matrix at once
    monkeypatch.setattr(vhd, "_CHUNK_BINS", chunk)
    src = _load(hd.path, spot_size_um=16.0)
    _check_against_truth(src, hd, 16.0)
    _same_source(src, whole)


def test_pool_bins_streamed_equals_pool_bins() -> None:
    rng = np.random.default_rng(0)
    n, g, k = 500, 7, 4
    r, c = rng.integers(-3, 30, n), rng.integers(0, 25, n)
    x = sp.random(n, g, density=0.3, format="csr", random_state=1, dtype=np.float64)
    x.data = np.round(x.data * 10).astype(np.int32)
    x = sp.csr_matrix(x, dtype=np.int32)
    tissue = rng.random(n) < 0.7
    ref = pool_bins(r, c, x, k, tissue)
    chunks = ((a, x[a : a + 13]) for a in range(0, n, 13))
    got = pool_bins_streamed(r, c, chunks, g, k, tissue, dtype=x.dtype)
    keep = np.flatnonzero(ref.has_tissue)
    assert 0 < keep.size < ref.block_row.size  # some blocks have no in-tissue bin and are left out
    np.testing.assert_array_equal(got.block_row, ref.block_row[keep])
    np.testing.assert_array_equal(got.block_col, ref.block_col[keep])
    np.testing.assert_array_equal(got.n_bins, ref.n_bins[keep])
    assert got.has_tissue.all() and got.counts.dtype == np.int32
    np.testing.assert_array_equal(got.counts.toarray(), ref.counts[keep].toarray())
    with pytest.raises(ValueError, match="does not follow"):
        pool_bins_streamed(r, c, iter([(13, x[13:26])]), g, k, tissue)
    with pytest.raises(ValueError, match="cover 13 of 500"):
        pool_bins_streamed(r, c, iter([(0, x[:13])]), g, k, tissue)
    empty = pool_bins_streamed([], [], iter([]), g, k)
    assert empty.counts.shape == (0, g) and empty.block_row.size == 0


def test_other_feature_types_mex_and_csv_positions(small_copy: Path, small: SyntheticVisiumHD) -> None:
    """Only Gene Expression features are pooled (as _tenx does); the MEX folder and a CSV
    positions table (both read whole) give the same pseudo-spots as the streamed h5."""
    b = small_copy / "binned_outputs" / "square_002um"
    with h5py.File(b / "filtered_feature_bc_matrix.h5", "r+") as f:
        ft = f["matrix/features/feature_type"][:]
        ft[::4] = b"Antibody Capture"
        del f["matrix/features/feature_type"]
        f["matrix/features/feature_type"] = ft
    kept = [i for i in range(len(small.genes)) if i % 4]
    h5 = _load(small_copy, spot_size_um=8.0)
    assert h5.genes == [small.genes[i] for i in kept] and h5.gene_ids == [small.gene_ids[i] for i in kept]
    exp = small.expected_pseudo_spots(8.0)
    dense = h5.counts.toarray()
    rows = list(zip(h5.spots["array_row"], h5.spots["array_col"], strict=True))
    assert len(rows) > 10
    for i, key in enumerate(rows):
        np.testing.assert_array_equal(dense[i], exp[(int(key[0]), int(key[1]))].counts[kept])
    nonzero = {key for key, e in exp.items() if e.counts[kept].sum() > 0}
    assert set(rows) == nonzero

    m = read_10x_h5(b / "filtered_feature_bc_matrix.h5")
    mex = b / "filtered_feature_bc_matrix"
    mex.mkdir()
    scipy.io.mmwrite(str(mex / "matrix.mtx"), m.counts.T.tocoo())
    (mex / "barcodes.tsv").write_text("\n".join(m.barcodes) + "\n")
    (mex / "features.tsv").write_text("".join(f"{i}\t{n}\tGene Expression\n" for i, n in zip(m.ids, m.names, strict=True)))
    (b / "filtered_feature_bc_matrix.h5").unlink()
    ppath = b / "spatial" / "tissue_positions.parquet"
    pd.read_parquet(ppath).to_csv(ppath.with_suffix(".csv"), index=False)
    ppath.unlink()
    other = _load(small_copy, spot_size_um=8.0)
    np.testing.assert_array_equal(other.counts.toarray(), dense)
    pd.testing.assert_frame_equal(other.spots, h5.spots)
    assert other.genes == h5.genes and other.metadata["n_bins"] == h5.metadata["n_bins"]


def test_barcode_join() -> None:
    keys = np.array([b"s_002um_00001_00002-1", b"a", b"bb", b"s_002um_00001_00003-1"])
    query = np.array([b"bb", b"s_002um_00001_00003-1", b"zz", b"a", b"s_002um_00001_00002-1xx"])
    assert hdb._join(keys, query).tolist() == [2, 3, -1, 1, -1]
    assert hdb._join(np.concatenate([keys, keys[:1]]), query) is None
    assert hdb._join(np.empty(0, dtype="S1"), query).tolist() == [-1] * 5


def test_barcode_join_survives_hash_collisions(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = np.array([b"x1", b"x2", b"x3"])
    monkeypatch.setattr(hdb, "_hash_bytes", lambda a, width: np.zeros(a.size, dtype=np.uint64))
    assert hdb._join(keys, np.array([b"x3", b"x1", b"y"])).tolist() == [2, 0, -1]
    assert hdb._join(np.array([b"x1", b"x1"]), np.array([b"x1"])) is None
    # a foreign barcode whose hash equals a known one is not taken for it
    monkeypatch.setattr(hdb, "_hash_bytes", lambda a, width: np.arange(a.size, dtype=np.uint64))
    assert hdb._join(keys, np.array([b"x1", b"zz"])).tolist() == [0, -1]


def test_arrow_barcodes_to_bytes() -> None:
    arr = pa.array(["s_002um_00001_00002-1", None, "é", "", "ab"])
    assert hdb._arrow_bytes(arr).tolist() == [b"s_002um_00001_00002-1", b"", "é".encode(), b"", b"ab"]
    assert hdb._arrow_bytes(arr.slice(2, 2)).tolist() == ["é".encode(), b""]
    assert hdb._arrow_bytes(pa.array(["ab", "cd"], type=pa.large_string())).tolist() == [b"ab", b"cd"]
    assert hdb._arrow_bytes(pa.array([12, 3])).tolist() == [b"12", b"3"]
    assert hdb._arrow_bytes(pa.array([], type=pa.string())).size == 0


def test_duplicate_positions_and_corrupt_matrix(small_copy: Path) -> None:
    b = small_copy / "binned_outputs" / "square_002um"
    ppath = b / "spatial" / "tissue_positions.parquet"
    pos = pd.read_parquet(ppath)
    pd.concat([pos, pos.iloc[:2]]).to_parquet(ppath, index=False)
    with pytest.raises(ValidationError, match="more than once"):
        _load(small_copy)
    pos.to_parquet(ppath, index=False)
    with h5py.File(b / "filtered_feature_bc_matrix.h5", "r+") as f:
        ind = f["matrix/indices"][:]
        ind[-1] = 10_000
        del f["matrix/indices"]
        f["matrix/indices"] = ind
    with pytest.raises(ValidationError, match=r"corrupt or inconsistent.*feature indices"):
        _load(small_copy)
    with h5py.File(b / "filtered_feature_bc_matrix.h5", "r+") as f:
        ip = f["matrix/indptr"][:]
        del f["matrix/indptr"]
        f["matrix/indptr"] = ip[:-1]
    with pytest.raises(ValidationError, match="corrupt or inconsistent"):
        _load(small_copy)


def test_unreadable_or_inconsistent_positions_parquet_names_the_file_and_fix(small_copy: Path, tmp_path: Path) -> None:
    from hestkit.errors import ReaderError

    ppath = small_copy / "binned_outputs" / "square_002um" / "spatial" / "tissue_positions.parquet"
    pos = pd.read_parquet(ppath)
    bad = tmp_path / "tissue_positions.parquet"
    bad.write_bytes(ppath.read_bytes()[: len(ppath.read_bytes()) // 2])  # truncated: Arrow cannot open it
    for read in (hdb._read_positions, hdb._read_position_grid):
        with pytest.raises(ReaderError, match=r"tissue_positions\.parquet.*cannot be parsed as a positions table.*outs/spatial"):
            read(bad)
    pos.to_parquet(bad, index=False)
    assert len(hdb._read_positions(bad).barcode) == len(pos)  # the same table, whole: read


# -- real data: the VisiumIO 2 um schema fixture (10 bins x 10 genes, no counts) -----------


@pytest.fixture()
def visiumio(realdata: Path) -> Path:
    p = realdata / "visiumhd_visiumio_2um"
    if not p.is_dir():
        pytest.skip("visiumhd_visiumio_2um not present")
    return p


def test_real_schema_and_grid(visiumio: Path) -> None:
    b = visiumio / "binned_outputs" / "square_002um"
    pos = read_tissue_positions(b / "spatial" / "tissue_positions.parquet")
    assert len(pos) == 10 and pos["barcode"].str.match(r"^s_002um_\d{5}_\d{5}-1$").all()
    aff, resid = fit_bin_grid(pos["array_row"], pos["array_col"], pos["pxl_row_in_fullres"], pos["pxl_col_in_fullres"])
    m = aff.to_array()
    # pxl_col = 21028.1 - 7.299 col + 0.109 row ; pxl_row = 46.8 + 0.111 col + 7.298 row
    tol = np.array([[0.002, 0.002, 0.5], [0.002, 0.002, 0.5]])
    assert (np.abs(m[:2] - [[-7.299, 0.109, 21028.1], [0.111, 7.298, 46.8]]) <= tol).all(), m
    assert aff.linear_scale == pytest.approx(2.0 / 0.27382, rel=2e-3) and resid < 2.0
    with h5py.File(b / "filtered_feature_bc_matrix.h5") as f:
        assert list(f["matrix/shape"][:]) == [10, 10] and f["matrix/data"].shape == (0,)


def test_real_all_zero_counts_give_no_pairs(visiumio: Path, tmp_path: Path) -> None:
    """No counts is a clear outcome: 0 pseudo-spots with a warning; ingest refuses the sample
    ("no pairs: ...", issue 15) and the catalog stays empty."""
    assert VisiumHDReader().can_open(visiumio)
    img = visiumio / "binned_outputs" / "square_002um" / "spatial" / "tissue_lowres_image.png"
    with pytest.raises(ValidationError, match="image=PATH"):
        _load(visiumio)
    src = _load(visiumio, image=img)
    assert src.n_spots == 0 and src.counts.shape == (0, 10)
    assert any("no pseudo-spot" in w for w in src.warnings)
    assert src.metadata["coordinate_scale"] == pytest.approx(0.02505533)
    assert src.pixel_size.value == pytest.approx(0.2738243 / 0.02505533, rel=1e-4)
    _ensure_registered()
    cat = catalog.create(tmp_path / "cat")
    # the lowres PNG (10.9 um/px) would upsample 0.5 um/px patches 21.9x: refused unless allowed
    report = cat.ingest([visiumio], technology="visium-hd", options=ReadOptions(sample_id="vio", image=img), workers=1)
    assert len(report.failed) == 1 and not report.ingested
    msg = report.failed[0].message
    assert "vio: no pairs: " in msg and "filtered_feature_bc_matrix.h5" in msg and "no pseudo-spot" in msg, msg
    assert cat.samples().empty and len(cat.pairs()) == 0


# -- bad input ---------------------------------------------------------------------------


def test_unknown_bin_size(small_copy: Path) -> None:
    b = small_copy / "binned_outputs"
    shutil.rmtree(b / "square_008um")
    shutil.rmtree(b / "square_016um")
    (b / "square_002um").rename(b / "square_fineum")
    sf = b / "square_fineum" / "spatial" / "scalefactors_json.json"
    d = json.loads(sf.read_text())
    del d["bin_size_um"]
    sf.write_text(json.dumps(d))
    with pytest.raises(ValidationError, match="unknown bin size") as ei:
        _load(small_copy)
    assert ei.value.problems[0].path == b / "square_fineum"


def test_missing_scalefactors_and_foreign_barcodes_reported_together(small_copy: Path) -> None:
    b = small_copy / "binned_outputs" / "square_002um"
    (b / "spatial" / "scalefactors_json.json").unlink()
    ppath = b / "spatial" / "tissue_positions.parquet"
    pos = pd.read_parquet(ppath)
    with h5py.File(b / "filtered_feature_bc_matrix.h5") as f:
        first = f["matrix/barcodes"][0].decode()
    pos[pos["barcode"] != first].to_parquet(ppath, index=False)
    with pytest.raises(ValidationError) as ei:
        _load(small_copy)
    msgs = [str(p) for p in ei.value.problems]
    assert len(msgs) == 2, msgs
    assert any("scalefactors_json.json" in m and "missing" in m for m in msgs)
    assert any("1 of" in m and first in m and "absent from tissue_positions.parquet" in m for m in msgs)


# -- bins located by their barcodes (no join) vs the join ----------------------------------


def _load_by_join(monkeypatch: pytest.MonkeyPatch, path: Path, **opts: object) -> SampleSource:
    with monkeypatch.context() as m:
        m.setattr(vhd, "_read_position_grid", lambda p: None)
        return _load(path, **opts)


@pytest.mark.parametrize(("side_um", "chunk"), [(56.0, None), (16.0, 97)])
def test_parsed_barcodes_equal_the_join(
    hd: SyntheticVisiumHD, monkeypatch: pytest.MonkeyPatch, side_um: float, chunk: int | None
) -> None:
    if chunk is not None:
        monkeypatch.setattr(vhd, "_CHUNK_BINS", chunk)
    calls: list[Path] = []
    real = vhd._read_position_grid
    monkeypatch.setattr(vhd, "_read_position_grid", lambda p: calls.append(p) or real(p))
    joins: list[int] = []
    real_join = vhd._bins_of_matrix
    monkeypatch.setattr(vhd, "_bins_of_matrix", lambda *a: joins.append(1) or real_join(*a))
    parsed = _load(hd.path, spot_size_um=side_um)
    assert calls and not joins  # the parsed-barcode path, no join
    joined = _load_by_join(monkeypatch, hd.path, spot_size_um=side_um)
    assert joins
    _check_against_truth(parsed, hd, side_um)
    _same_source(parsed, joined)


def test_parsed_barcodes_follow_in_tissue_of_the_positions(small_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bins listed out of tissue do not make a block: the same on both paths."""
    ppath = small_copy / "binned_outputs" / "square_002um" / "spatial" / "tissue_positions.parquet"
    pos = pd.read_parquet(ppath)
    out = (pos["array_row"] < 12) & (pos["array_col"] < 20)
    pos.loc[out, "in_tissue"] = 0
    pos.to_parquet(ppath, index=False)
    parsed = _load(small_copy, spot_size_um=8.0)
    joined = _load_by_join(monkeypatch, small_copy, spot_size_um=8.0)
    _same_source(parsed, joined)
    assert not ((parsed.spots["array_row"] < 2) & (parsed.spots["array_col"] < 4)).any()


def test_malformed_barcode_falls_back_to_the_join(
    small_copy: Path, small: SyntheticVisiumHD, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _load(small_copy, spot_size_um=8.0)
    b = small_copy / "binned_outputs" / "square_002um"
    with h5py.File(b / "filtered_feature_bc_matrix.h5", "r+") as f:
        bcs = f["matrix/barcodes"][:]
        old = bcs[3]
        bcs[3] = b"s_002um_0000x_00001-1"
        del f["matrix/barcodes"]
        f["matrix/barcodes"] = bcs
    ppath = b / "spatial" / "tissue_positions.parquet"
    pos = pd.read_parquet(ppath)
    pos.loc[pos["barcode"] == old.decode(), "barcode"] = "s_002um_0000x_00001-1"
    pos.to_parquet(ppath, index=False)
    assert vhd._read_position_grid(ppath) is None  # the positions table does not fit the scheme
    joins: list[int] = []
    real_join = vhd._bins_of_matrix
    monkeypatch.setattr(vhd, "_bins_of_matrix", lambda *a: joins.append(1) or real_join(*a))
    after = _load(small_copy, spot_size_um=8.0)
    assert joins
    _same_source(after, before)
    # a malformed barcode in the matrix only: the join falls back and reports it absent
    pos.loc[pos["barcode"] == "s_002um_0000x_00001-1", "barcode"] = old.decode()
    pos.to_parquet(ppath, index=False)
    assert vhd._read_position_grid(ppath) is not None
    joins.clear()
    with pytest.raises(ValidationError, match=r"1 of \d+ barcodes of the matrix are absent.*s_002um_0000x_00001-1"):
        _load(small_copy, spot_size_um=8.0)
    assert joins


def test_parse_bin_barcodes() -> None:
    t = b"s_002um_00000_00000-1"
    good = np.array([b"s_002um_00012_03405-1", b"s_002um_99999_00000-1"])
    r, c = hdb._parse_bin_barcodes(good, t)
    assert r.tolist() == [12, 99999] and c.tolist() == [3405, 0]
    wide = good.astype("S30")  # NUL padded
    assert hdb._parse_bin_barcodes(wide, t)[0].tolist() == [12, 99999]
    for bad in (b"s_002um_00012_03405-2", b"s_008um_00012_03405-1", b"s_002um_0001/_03405-1", b"s_002um_00012_03405-1x", b"x"):
        assert hdb._parse_bin_barcodes(np.array([good[0], bad]), t) is None, bad
    assert hdb._parse_bin_barcodes(np.array([b"s_002um_0012_3405-1"]), t) is None
    assert hdb._parse_bin_barcodes(np.empty(0, dtype="S1"), t)[0].size == 0
