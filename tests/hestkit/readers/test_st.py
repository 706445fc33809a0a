"""The legacy Spatial Transcriptomics reader: synthetic 1k/2k arrays, the catalog, real STUtility data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hestkit.errors import ReaderError, ValidationError
from hestkit.readers import list_readers, register_reader
from hestkit.readers.st import StReader, detect_st_layout, read_spot_detector
from hestkit.sample import ReadOptions
from hestkit.synthetic.st import make_st


def _ensure_registered() -> None:
    if "st" not in {r.name for r in list_readers()}:
        register_reader(StReader())


def _load_one(folder: Path, options: ReadOptions | None = None):  # type: ignore[no-untyped-def]
    reader = StReader()
    refs = reader.scan(folder, options or ReadOptions())
    assert len(refs) == 1
    return reader.load(refs[0])


@pytest.mark.parametrize(
    ("layout", "pixel_size", "fmt"),
    [("1k", 1.0, "tif"), ("1k", 2.5, "jpg"), ("2k", 1.0, "jpg"), ("2k", 2.5, "tif")],
)
def test_synthetic_pixel_size_counts_and_centres(tmp_path: Path, layout: str, pixel_size: float, fmt: str) -> None:
    t = make_st(tmp_path / "s", layout=layout, n_x=9, n_y=10, pixel_size_um=pixel_size, image_format=fmt, seed=3)  # type: ignore[arg-type]
    assert StReader().can_open(t.path)
    src = _load_one(t.path)
    assert src.sample_id == "ST1" and src.technology == "st"
    # no pixel size in the image: estimated from the array grid
    assert src.pixel_size.source == "estimated" and src.pixel_size.embedded is None
    assert src.pixel_size.value == pytest.approx(pixel_size, rel=0.01)
    assert src.metadata["layout"] == layout
    assert src.metadata["array_pitch_um"] == (200.0 if layout == "1k" else 100.0)
    assert src.spot_diameter_um == 100.0 and src.spot_shape == "circle"
    # only the spots under tissue, in detector order; off-tissue rows of the table are dropped
    inside = t.in_tissue_index()
    assert 0 < len(inside) < t.n_spots
    assert list(src.spots["barcode"]) == [t.barcodes[i] for i in inside]
    assert (src.spots["in_tissue"] == 1).all()
    assert src.metadata["n_spots_in_counts_table"] == t.n_spots + 2
    np.testing.assert_array_equal(src.counts.toarray(), t.counts.toarray()[inside])
    assert src.genes == t.genes and src.gene_ids == t.genes
    # centres are the detector's pixel columns, exactly (x = column, y = row)
    det = pd.read_csv(t.path / "spot_data-selection-ST1.tsv", sep="\t")
    np.testing.assert_array_equal(src.centres_px(), det[["pixel_x", "pixel_y"]].to_numpy())
    np.testing.assert_array_equal(src.centres_px(), t.centres_px[inside])
    np.testing.assert_array_equal(src.spots["array_col"], t.array_col[inside])
    np.testing.assert_array_equal(src.spots["array_row"], t.array_row[inside])
    # the array frame in micrometres maps onto the pixels at the true pixel size
    np.testing.assert_allclose(src.spots[["x_um", "y_um"]].to_numpy(), t.centres_um[inside])
    assert src.warnings == []


def test_alignment_table_and_filtered_counts(tmp_path: Path) -> None:
    t = make_st(tmp_path / "a", layout="2k", n_x=8, n_y=8, detector="alignment", with_offtissue=False, seed=5)
    det = read_spot_detector(t.path / "alignment_table_ST1.tsv")
    assert len(det) == t.n_spots and int(det["selected"].sum()) == int(t.in_tissue.sum())
    assert detect_st_layout(det["x"], det["y"]) == ("2k", 100.0)
    src = _load_one(t.path, ReadOptions(sample_id="mine", organ="Brain", species="Mus musculus", patient="M1"))
    assert src.sample_id == "mine"
    assert (src.metadata["organ"], src.metadata["species"], src.metadata["patient"]) == ("Brain", "Mus musculus", "M1")
    np.testing.assert_array_equal(src.counts.toarray(), t.counts.toarray()[t.in_tissue_index()])
    assert src.pixel_size.value == pytest.approx(1.0, rel=0.01)
    # --pixel-size-um overrides the estimate
    over = _load_one(t.path, ReadOptions(pixel_size_um=0.9))
    assert over.pixel_size.source == "override" and over.pixel_size.value == 0.9


def test_layout_detection() -> None:
    xs, ys = np.meshgrid(np.arange(1, 6), np.arange(1, 6))
    assert detect_st_layout(xs.ravel(), ys.ravel()) == ("1k", 200.0)
    even = (xs + ys) % 2 == 0
    assert detect_st_layout(xs[even], ys[even]) == ("2k", 100.0)
    # one parity but no diagonal neighbours: not evidence of a checkerboard
    assert detect_st_layout([1, 3, 5], [1, 1, 1]) == ("1k", 200.0)


def test_ingest_pairs_are_aligned(tmp_path: Path) -> None:
    import catalog

    _ensure_registered()
    folder = tmp_path / "two"
    truths = {
        "STA": make_st(folder, layout="1k", n_x=6, n_y=6, pixel_size_um=1.0, stem="STA", image_format="tif", seed=7),
        "STB": make_st(folder, layout="2k", n_x=8, n_y=8, pixel_size_um=2.5, stem="STB", image_format="jpg", seed=8),
    }
    cat = catalog.create(tmp_path / "cat")
    # STB's 2.5 um/px image gives 0.5 um/px patches upsampled 5x: refused unless allowed (then recorded)
    opts = ReadOptions(organ="Brain", species="Homo sapiens", allow_upsampling=True)
    rep = cat.ingest([folder], technology="st", options=opts, workers=1)
    assert not rep.failed, rep.failed[0].message
    df = cat.samples().set_index("sample_id")
    assert sorted(df.index) == ["STA", "STB"]
    assert df.loc["STB", "upsampling_factor"] == pytest.approx(5.0, rel=0.01)
    assert df.loc["STA", "upsampling_factor"] == pytest.approx(2.0, rel=0.01)
    yy, xx = np.mgrid[0:224, 0:224] + 0.5
    disk = (xx - 112) ** 2 + (yy - 112) ** 2 < 90**2  # 45 um: inside the 50 um disk radius
    for sid, t in truths.items():
        row = df.loc[sid]
        assert row["technology"] == "st" and row["pixel_size_source"] == "estimated"
        assert row["pixel_size_um"] == pytest.approx(t.pixel_size_um, rel=0.01)
        assert row["n_pairs"] == int(t.in_tissue.sum())
        view = cat.pairs(sample_ids=[sid])
        index = {t.barcodes[i]: int(i) for i in t.in_tissue_index()}
        assert sorted(view.obs["barcode"]) == sorted(index)
        X = view.expression().toarray()
        gidx = [t.genes.index(g) for g in view.genes]
        for k in range(len(view)):
            i = index[view.obs["barcode"].iloc[k]]
            np.testing.assert_array_equal(X[k], t.counts.toarray()[i, gidx])
            patch = view.patch(k).astype(int)
            colour = t.colour(i).astype(int)
            centre = patch[104:120, 104:120].reshape(-1, 3).mean(axis=0)
            assert np.abs(centre - colour).max() < 14, (sid, k, centre, colour)
            # at 0.5 um/px the 100 um disk is 200 px across and fills the patch centre
            close = (np.abs(patch - colour) <= 30).all(axis=2)
            assert close[disk].mean() > 0.98, (sid, k, close[disk].mean())


# -- real data: STUtility's mouse olfactory bulb (2k array, alignment tables) -------------
@pytest.fixture()
def mob(realdata: Path) -> Path:
    p = realdata / "legacy_st_stutility_mob"
    if not p.is_dir():
        pytest.skip("legacy_st_stutility_mob not in the real data folder")
    return p


def test_real_mob_samples(mob: Path) -> None:
    reader = StReader()
    assert reader.can_open(mob)
    refs = reader.scan(mob, ReadOptions(species="Mus musculus"))
    assert [r.sample_id for r in refs] == ["MOB1", "MOB2"]
    for ref, n_under, umi in zip(refs, (379, 407), (958_111, 1_127_390), strict=True):
        sid = ref.sample_id
        assert Path(ref.extra["detector"]).name == f"alignment_table_{sid}.tsv"
        assert Path(ref.extra["image"]).name == f"{sid}.jpg"
        src = reader.load(ref)
        assert src.n_spots == n_under
        assert src.metadata["layout"] == "2k" and src.metadata["array_pitch_um"] == 100.0
        # 141 um between diagonal neighbours (31.7 px) -> about 4.45 um/px
        assert src.pixel_size.source == "estimated"
        assert src.pixel_size.value == pytest.approx(4.45, rel=0.03)
        assert any("scaled unequally" in w for w in src.warnings)
        # counts equal a direct read of the table, for the selected spots
        aln = pd.read_csv(mob / f"alignment_table_{sid}.tsv", sep="\t")
        sel = aln[aln["selected"] == 1]
        ids = [f"{x}x{y}" for x, y in zip(sel["x"], sel["y"], strict=True)]
        direct = pd.read_csv(mob / f"{sid}.tsv", sep="\t", index_col=0)
        assert list(src.spots["barcode"]) == ids
        np.testing.assert_array_equal(src.counts.toarray(), direct.loc[ids].to_numpy())
        assert src.genes == list(direct.columns)
        assert int(src.counts.sum()) == umi
        np.testing.assert_array_equal(src.centres_px(), sel[["pixel_x", "pixel_y"]].to_numpy())
        # spots land on tissue: the image is darker at selected spots than at the others
        grey = np.asarray(Image.open(mob / f"{sid}.jpg").convert("L"), dtype=float)
        x = np.clip(aln["pixel_x"].round().astype(int), 0, grey.shape[1] - 1)
        y = np.clip(aln["pixel_y"].round().astype(int), 0, grey.shape[0] - 1)
        g = grey[y, x]
        on = aln["selected"].to_numpy() == 1
        assert g[on].mean() < g[~on].mean() - 40, (g[on].mean(), g[~on].mean())
    # one of several samples
    (only,) = reader.scan(mob, ReadOptions(ids=("MOB2",), sample_id="bulb2"))
    assert only.sample_id == "bulb2" and Path(only.extra["counts"]).name == "MOB2.tsv"


def test_real_mob_option_errors(mob: Path) -> None:
    with pytest.raises(ReaderError, match="sample_id=ID"):
        StReader().scan(mob, ReadOptions(sample_id="x"))
    with pytest.raises(ReaderError, match="MOB3"):
        StReader().scan(mob, ReadOptions(ids=("MOB3",)))


# -- bad input ------------------------------------------------------------------------------
def test_missing_detector_and_image_reported_together(tmp_path: Path) -> None:
    t = make_st(tmp_path / "s", n_x=5, n_y=5, seed=1)
    (t.path / "spot_data-selection-ST1.tsv").unlink()
    t.image_path.unlink()
    assert not StReader().can_open(t.path)
    with pytest.raises(ValidationError) as err:
        _load_one(t.path)
    msgs = [str(p) for p in err.value.problems]
    assert len(msgs) == 2, msgs
    assert any("no spot detector file for ST1.tsv" in m and "spot_data-selection-ST1.tsv" in m for m in msgs)
    assert any("no full-resolution image" in m for m in msgs)


def test_counts_table_missing_a_selected_spot(tmp_path: Path) -> None:
    t = make_st(tmp_path / "s", n_x=5, n_y=5, seed=2)
    table = t.path / "ST1.tsv"
    gone = t.barcodes[int(t.in_tissue_index()[0])]
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(line for line in lines if not line.startswith(gone + "\t")))
    with pytest.raises(ValidationError) as err:
        _load_one(t.path)
    (p,) = err.value.problems
    assert p.path == table and "spot_data-selection-ST1.tsv" in p.message and gone in p.message


def test_image_smaller_than_coordinates(tmp_path: Path) -> None:
    t = make_st(tmp_path / "s", n_x=5, n_y=5, seed=4)
    small = tmp_path / "small.jpg"
    h, w = t.image_shape
    Image.new("RGB", (w // 4, h // 4), (240, 240, 240)).save(small)
    with pytest.raises(ValidationError) as err:
        _load_one(t.path, ReadOptions(image=small))
    (p,) = err.value.problems
    assert p.path == small and "outside the image" in p.message


def test_non_numeric_counts(tmp_path: Path) -> None:
    t = make_st(tmp_path / "s", n_x=5, n_y=5, seed=6)
    table = t.path / "ST1.tsv"
    lines = table.read_text().splitlines()
    cells = lines[1].split("\t")
    cells[3] = "abc"
    lines[1] = "\t".join(cells)
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValidationError) as err:
        _load_one(t.path)
    (p,) = err.value.problems
    assert p.path == table and "non-numeric" in p.message


def test_pairing_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    make_st(folder, n_x=4, n_y=4, stem="A", seed=1)
    make_st(folder, n_x=4, n_y=4, stem="B", image_format="jpg", seed=2)
    saved = {s: (folder / f"spot_data-selection-{s}.tsv").read_text() for s in "AB"}
    refs = StReader().scan(folder, ReadOptions())
    assert [(Path(r.extra["detector"]).name, Path(r.extra["image"]).name) for r in refs] == [
        ("spot_data-selection-A.tsv", "A.tif"),
        ("spot_data-selection-B.tsv", "B.jpg"),
    ]
    # detector files that name neither counts table: ambiguous
    for s in "AB":
        (folder / f"spot_data-selection-{s}.tsv").rename(folder / f"spot_data-selection-run{s}.tsv")
    with pytest.raises(ReaderError, match=r"which spot detector file belongs to A\.tsv, B\.tsv"):
        StReader().scan(folder, ReadOptions())
    # with no spare detector file, the unpaired sample is reported when it is loaded
    (folder / "spot_data-selection-runA.tsv").unlink()
    (folder / "spot_data-selection-runB.tsv").rename(folder / "spot_data-selection-B.tsv")
    ref_a, ref_b = StReader().scan(folder, ReadOptions())
    assert ref_a.extra["detector"] is None and Path(ref_b.extra["detector"]).name == "spot_data-selection-B.tsv"
    with pytest.raises(ValidationError, match=r"no spot detector file for A\.tsv"):
        StReader().load(ref_a)
    assert StReader().load(ref_b).n_spots > 0
    # a selection file and an alignment table for the same sample: the full table is used
    (folder / "spot_data-selection-A.tsv").write_text(saved["A"])
    aln = pd.read_csv(folder / "spot_data-selection-A.tsv", sep="\t").assign(selected=1)
    aln.to_csv(folder / "alignment_table_A.tsv", sep="\t", index=False)
    ref_a, _ = StReader().scan(folder, ReadOptions())
    assert Path(ref_a.extra["detector"]).name == "alignment_table_A.tsv"
    assert list(StReader().load(ref_a).spots["barcode"]) == [f"{x}x{y}" for x, y in zip(aln["x"], aln["y"], strict=True)]
    # two images for one sample
    Image.new("RGB", (8, 8)).save(folder / "A.jpg")
    with pytest.raises(ReaderError, match="several image files"):
        StReader().scan(folder, ReadOptions())
