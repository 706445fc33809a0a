"""The Xenium reader: chunked transcript pooling, H&E alignment, pixel size, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hestkit.errors import ValidationError
from hestkit.readers import list_readers, register_reader
from hestkit.readers._tenx import read_10x_h5
from hestkit.readers._xenium_align import read_alignment, scale_from_matrix
from hestkit.readers.xenium import (
    XENIUM_CONTROL_PREFIXES,
    XeniumReader,
    pool_transcripts,
    pseudo_spot_barcode,
    read_gene_panel,
)
from hestkit.sample import ReadOptions, SampleRef, SampleSource
from hestkit.synthetic.xenium import SyntheticXenium, expected_pooled_counts, make_xenium

if "xenium" not in {r.name for r in list_readers()}:
    register_reader(XeniumReader())

W_UM, H_UM = 400.0, 350.0  # small bundles: the tests stay fast


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SyntheticXenium]:
    root = tmp_path_factory.mktemp("xenium")
    return {
        # XOA 1.x: binary names, BLANK_ controls, about -90 degrees like the real 10x example
        "1": make_xenium(root / "xoa1", xoa="1", rotation_deg=-90.0, he_pixel_size_um=0.4, seed=1, width_um=W_UM, height_um=H_UM),
        # XOA 2: strings + is_gene, 30 degrees, no h5 panel (genes sorted by name)
        "2": make_xenium(root / "xoa2", xoa="2", rotation_deg=30.0, seed=2, cell_matrix=False, width_um=W_UM, height_um=H_UM),
    }


def _load(path: Path, **opts: object) -> SampleSource:
    return XeniumReader().load(SampleRef("xenium", "x", path, ReadOptions(**opts)))  # type: ignore[arg-type]


def _frame(src: SampleSource) -> pd.DataFrame:
    s = src.spots
    idx = pd.MultiIndex.from_arrays([s["array_col"].to_numpy(np.int64), s["array_row"].to_numpy(np.int64)], names=["i", "j"])
    return pd.DataFrame(src.counts.toarray(), index=idx, columns=src.genes)


def _same_counts(got: pd.DataFrame, exp: pd.DataFrame) -> None:
    assert set(exp.columns) <= set(got.columns)
    extra = [g for g in got.columns if g not in exp.columns]
    assert (got[extra].to_numpy() == 0).all()  # panel genes without a kept transcript
    pd.testing.assert_frame_equal(got[list(exp.columns)].sort_index().astype(np.int64), exp.astype(np.int64), check_names=False)


@pytest.mark.parametrize("xoa", ["1", "2"])
@pytest.mark.parametrize("size", [55.0, 100.0])
def test_pooled_counts_equal_pandas(bundles: dict[str, SyntheticXenium], xoa: str, size: float) -> None:
    t = bundles[xoa]
    src = _load(t.path, spot_size_um=size)
    assert src.technology == "xenium" and src.spot_shape == "square" and src.spot_diameter_um == size
    got = _frame(src)
    _same_counts(got, t.expected_counts(size))
    if size == t.paint_spot_size_um:  # the generator's own truth, too
        truth = pd.DataFrame(t.paint_counts.toarray(), index=pd.MultiIndex.from_arrays([t.paint_i, t.paint_j]), columns=t.genes)
        _same_counts(got, truth[[g for g in t.genes if truth[g].sum() > 0]].sort_index().reindex(sorted(t.genes), axis=1))
    s = src.spots
    i, j = s["array_col"].to_numpy(), s["array_row"].to_numpy()
    assert list(s["barcode"]) == [pseudo_spot_barcode(size, a, b) for a, b in zip(i, j, strict=True)]
    assert s["barcode"].iloc[0] == f"sq{size:g}um_{i[0]}_{j[0]}"
    np.testing.assert_allclose(s["x_um"], (i + 0.5) * size)
    np.testing.assert_allclose(s["y_um"], (j + 0.5) * size)
    want = np.array([t.centre_px(a, b, size) for a, b in zip(i, j, strict=True)])
    np.testing.assert_allclose(s[["x_px", "y_px"]].to_numpy(), want, atol=1e-6)
    assert (s["in_tissue"] == 1).all() and list(zip(j, i, strict=True)) == sorted(zip(j, i, strict=True))


def test_pooling_is_chunk_independent(bundles: dict[str, SyntheticXenium], monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    import hestkit.readers.xenium as xen

    path = bundles["2"].path / "transcripts.parquet"
    assert pq.ParquetFile(path).metadata.num_row_groups > 1
    whole = pool_transcripts(path, 55.0, batch_size=10**7)
    monkeypatch.setattr(xen, "_SQUASH_MIN", 1)  # compact after every batch
    small = pool_transcripts(path, 55.0, batch_size=333)
    assert small.genes == whole.genes and (small.counts != whole.counts).nnz == 0
    assert (small.i == whole.i).all() and (small.j == whole.j).all() and small.n_kept == whole.n_kept


@pytest.mark.parametrize("xoa", ["1", "2"])
def test_controls_and_low_qv_excluded(bundles: dict[str, SyntheticXenium], xoa: str) -> None:
    t = bundles[xoa]
    src = _load(t.path)
    tr = t.transcripts
    control = tr["feature_name"].str.startswith(XENIUM_CONTROL_PREFIXES)
    if "is_gene" in tr:
        control |= ~tr["is_gene"]
        assert (~tr["is_gene"] & ~tr["feature_name"].str.startswith(XENIUM_CONTROL_PREFIXES)).any()  # only is_gene catches it
    assert not any(g.startswith(XENIUM_CONTROL_PREFIXES) or g.startswith("SyntheticControl") for g in src.genes)
    kept = tr[tr["kept"]]
    assert (kept["qv"] >= 20).all() and ((tr["qv"] == 20) & tr["kept"]).any()
    per_gene = kept.groupby("feature_name").size()
    totals = dict(zip(src.genes, np.asarray(src.counts.sum(axis=0)).ravel(), strict=True))
    for g in src.genes:
        assert totals[g] == per_gene.get(g, 0), g
    md = src.metadata
    assert md["n_transcripts_total"] == len(tr)
    assert md["n_kept"] == len(kept) == src.counts.sum()
    assert md["n_dropped_control"] == int(control.sum())
    assert md["n_dropped_qv"] == int((~control & (tr["qv"] < 20)).sum()) > 0
    assert md["xoa_layout"] == ("1.x" if xoa == "1" else ">=2") and md["feature_name_binary"] == (xoa == "1")
    json.dumps(md)  # the catalog stores it in a JSON manifest


def test_gene_order(bundles: dict[str, SyntheticXenium]) -> None:
    one = _load(bundles["1"].path)  # cell_feature_matrix.h5 present: panel order and Ensembl-style ids
    assert one.genes == bundles["1"].genes and one.gene_ids == bundles["1"].gene_ids
    assert one.metadata["gene_order"] == "cell_feature_matrix.h5 panel"
    two = _load(bundles["2"].path)  # no h5: sorted names, ids = names
    assert two.genes == sorted(two.genes) and two.gene_ids == two.genes and two.metadata["gene_order"] == "sorted"


def test_he_pixel_size(bundles: dict[str, SyntheticXenium]) -> None:
    for t in bundles.values():
        src = _load(t.path)
        assert src.pixel_size.value == pytest.approx(t.he_pixel_size_um, rel=0.005)
        assert src.metadata["he_pixel_size_um_from_alignment"] == pytest.approx(t.he_pixel_size_um, rel=0.005)
        assert src.pixel_size.source == "embedded" and not src.warnings
    over = _load(bundles["2"].path, pixel_size_um=0.61)
    assert over.pixel_size.value == 0.61 and over.pixel_size.source == "override"


def test_reference_example_scale() -> None:
    """REFERENCE's real 10x matrix (~ -90 deg): sqrt|det| and |M01 - M00| agree (within 1 %)."""
    m: list[list[float]] = [[0.011, 1.290, 808.0], [-1.290, 0.011, 73097.7], [0.0, 0.0, 1.0]]
    general, shortcut = scale_from_matrix(m)
    assert general == pytest.approx(shortcut, rel=0.01)
    assert 0.2125 * general == pytest.approx(0.2738, rel=0.01)


def test_keypoints_alignment(bundles: dict[str, SyntheticXenium], tmp_path: Path) -> None:
    t = bundles["2"]
    assert t.keypoints_path is not None and t.keypoints is not None and len(t.keypoints) >= 4
    ref = _load(t.path)
    kp = _load(t.path, alignment=t.keypoints_path)
    np.testing.assert_allclose(kp.centres_px(), ref.centres_px(), atol=1.0)
    md = kp.metadata
    assert md["alignment_kind"] == "keypoints" and len(md["alignment_residuals_um"]) == len(t.keypoints)
    assert 0 < md["alignment_residual_rms_um"] < 1.0 and not md["alignment_discovered"]
    assert kp.pixel_size.value == pytest.approx(t.he_pixel_size_um, rel=0.005) and not kp.warnings
    # badly placed keypoints: still read, but a warning says so
    bad = t.keypoints.copy()
    bad["fixedX"] = bad["fixedX"].to_numpy() + np.r_[400.0, np.zeros(len(bad) - 1)]
    bad.to_csv(tmp_path / "bad_keypoints.csv", index=False)
    src = _load(t.path, alignment=tmp_path / "bad_keypoints.csv")
    assert src.metadata["alignment_residual_max_um"] > 10 and any("keypoints" in w for w in src.warnings)


def test_alignment_found_beside_image(tmp_path: Path) -> None:
    t = make_xenium(tmp_path / "bundle", he_dir=tmp_path / "he", seed=5, keypoints=False, width_um=200.0, height_um=200.0)
    src = _load(t.path, image=t.image_path)
    assert Path(src.metadata["alignment_source"]) == t.alignment_path and src.metadata["alignment_discovered"]
    # without --image, the bundle has no H&E: a clear error, not a morphology image taken by mistake
    with pytest.raises(ValidationError, match="no H&E image"):
        _load(t.path)


def _copy(t: SyntheticXenium, dst: Path) -> Path:
    shutil.copytree(t.path, dst)
    return dst


def test_several_or_no_alignment_files(bundles: dict[str, SyntheticXenium], tmp_path: Path) -> None:
    t = bundles["1"]
    two = _copy(t, tmp_path / "two")
    shutil.copy(t.alignment_path, two / "other_he_imagealignment.csv")
    with pytest.raises(ValidationError, match="several alignment files") as err:
        _load(two)
    assert "alignment=PATH" in str(err.value)
    _load(two, alignment=two / "other_he_imagealignment.csv")  # choosing one fixes it
    none = _copy(t, tmp_path / "none")
    (none / t.alignment_path.name).unlink()
    with pytest.raises(ValidationError, match="no H&E alignment found"):
        _load(none)


def test_singular_and_malformed_alignment(bundles: dict[str, SyntheticXenium], tmp_path: Path) -> None:
    t = bundles["1"]
    sing = tmp_path / "singular_he_imagealignment.csv"
    sing.write_text("1,2,0\n2,4,0\n0,0,1\n")
    with pytest.raises(ValidationError, match="singular") as err:
        _load(t.path, alignment=sing)
    assert str(sing) in str(err.value)
    short = tmp_path / "short.csv"
    short.write_text("1,0,0\n0,1,0\n")
    with pytest.raises(ValidationError, match="expected 3 rows of 3 values"):
        _load(t.path, alignment=short)
    with pytest.raises(ValidationError, match="at least 3 points"):
        (tmp_path / "kp.csv").write_text("fixedX,fixedY,alignmentX,alignmentY\n1,2,3,4\n5,6,7,8\n")
        _load(t.path, alignment=tmp_path / "kp.csv")
    assert read_alignment(t.alignment_path).kind == "imagealignment"


def test_no_pseudo_spot_inside_image(bundles: dict[str, SyntheticXenium], tmp_path: Path) -> None:
    t = bundles["2"]
    m = t.he_to_morph.to_array()
    m[:2, 2] += 1e6  # shifts every transcript far off the H&E
    far = tmp_path / "far_he_imagealignment.csv"
    far.write_text("".join(",".join(repr(float(v)) for v in row) + "\n" for row in m))
    with pytest.raises(ValidationError, match="transcripts outside the image: wrong alignment or image"):
        _load(t.path, alignment=far)


def test_missing_experiment_pixel_size(bundles: dict[str, SyntheticXenium], tmp_path: Path) -> None:
    b = _copy(bundles["2"], tmp_path / "b")
    exp = json.loads((b / "experiment.xenium").read_text())
    del exp["pixel_size"]
    (b / "experiment.xenium").write_text(json.dumps(exp))
    with pytest.raises(ValidationError, match="pixel_size") as err:
        _load(b)
    assert "experiment.xenium" in str(err.value)
    (b / "experiment.xenium").unlink()
    assert XeniumReader().can_open(b)  # transcripts.parquet + cells.parquet
    with pytest.raises(ValidationError, match=r"experiment\.xenium"):
        _load(b)


def test_catalog_patches_show_their_pseudo_spot(bundles: dict[str, SyntheticXenium], tmp_path: Path) -> None:
    import catalog

    for xoa, t in bundles.items():
        cat = catalog.create(tmp_path / f"cat{xoa}")
        rep = cat.ingest([t.path], technology="xenium", options=ReadOptions(image=t.image_path, sample_id=f"x{xoa}"), workers=1)
        assert not rep.failed, rep.failed[0].message
        view = cat.pairs(sample_ids=[f"x{xoa}"])
        assert len(view) == len(t.paint_i) > 20  # every non-empty pseudo-spot fits, with a margin of 80 um
        theta = np.arctan2(t.um_to_he.to_array()[1, 0], t.um_to_he.to_array()[0, 0])
        axes = np.array([[np.cos(theta), np.sin(theta)], [-np.sin(theta), np.cos(theta)]])
        side_px = t.paint_spot_size_um / 0.5  # patches are 0.5 um/px
        for k in range(len(view)):
            _, i, j = view.obs["barcode"].iloc[k].rsplit("_", 2)
            colour = t.colour(int(i), int(j)).astype(int)
            patch = view.patch(k).astype(int)
            centre = patch[106:118, 106:118].reshape(-1, 3).mean(axis=0)
            assert np.abs(centre - colour).max() < 14, (xoa, k, centre, colour)
            # well inside the rotated square along both of its axes: same colour
            for a in axes:
                for sign in (-1, 1):
                    x, y = 112 + sign * 0.3 * side_px * a
                    p = patch[int(y) - 2 : int(y) + 2, int(x) - 2 : int(x) + 2].reshape(-1, 3).mean(axis=0)
                    assert np.abs(p - colour).max() < 14, (xoa, k, sign, p, colour)


# -- real data: SFE's Jurkat/Raji Xenium subset (no H&E, so pooling is tested directly) --


@pytest.fixture()
def sfe(realdata: Path) -> Path:
    p = realdata / "xenium_sfe_jurkat_raji"
    if not (p / "transcripts.parquet").exists():
        pytest.skip("xenium_sfe_jurkat_raji not present")
    return p


@pytest.mark.parametrize("size", [55.0, 100.0])
def test_real_transcripts_pool_like_pandas(sfe: Path, size: float) -> None:
    panel, _ids = read_gene_panel(sfe / "cell_feature_matrix.h5")
    assert len(panel) == 27 and not any(g.startswith(XENIUM_CONTROL_PREFIXES) for g in panel)
    pooled = pool_transcripts(sfe / "transcripts.parquet", size, batch_size=700, gene_panel=panel)  # 8 batches
    assert pooled.genes[: len(panel)] == panel and pooled.n_transcripts_total == 5260
    got = pd.DataFrame(pooled.counts.toarray(), index=pd.MultiIndex.from_arrays([pooled.i, pooled.j]), columns=pooled.genes)
    raw = pd.read_parquet(sfe / "transcripts.parquet")
    _same_counts(got, expected_pooled_counts(raw, size))
    assert pooled.n_dropped_control == int(raw["feature_name"].str.startswith(XENIUM_CONTROL_PREFIXES).sum()) == 3
    assert pooled.n_dropped_qv == 0 and pooled.xoa_layout == "1.x"
    # The parquet is an ~11 % subsample of the run, so pooling does NOT reproduce
    # cell_feature_matrix.h5: the pooled totals per gene are at most (far below) the h5's.
    h5 = read_10x_h5(sfe / "cell_feature_matrix.h5")
    h5_tot = dict(zip(h5.names, np.asarray(h5.counts.sum(axis=0)).ravel(), strict=True))
    pooled_tot = got.sum(axis=0)
    for g in panel:
        assert pooled_tot[g] <= h5_tot[g], g
    assert pooled_tot.sum() < 0.2 * sum(h5_tot.values())


def test_real_bundle_without_experiment_or_he(sfe: Path) -> None:
    assert XeniumReader().can_open(sfe)
    with pytest.raises(ValidationError) as err:
        _load(sfe)
    msg = str(err.value)
    assert "experiment.xenium" in msg and "no H&E image" in msg  # the morphology OME-TIFFs are not taken as the H&E
