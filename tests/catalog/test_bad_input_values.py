"""Hostile values inside otherwise well-formed vendor files (issue 15, items 5-9 and 11).

Each case writes a broken variant of a real Space Ranger layout (the synthetic one):
bad counts, duplicate barcodes, bad gene names, empty samples, NaN / negative spot
coordinates, bad scale factors, empty ids. Each is refused with one message naming the
file, what was found (the first barcode / gene / value) and the fix, and the catalog
stays as it was.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

import catalog
from catalog.errors import CatalogError, QueryError
from cli.hestkit import app
from hestkit.errors import NoPairsError, OptionError, ValidationError
from hestkit.patches import PairSpec
from hestkit.readers import VisiumReader
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium
from hestkit.validate import check_counts

MATRIX = "filtered_feature_bc_matrix.h5"
runner = CliRunner()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    make_visium(root / "s", n_rows=6, n_cols=6, seed=3)
    return root / "s"


@pytest.fixture()
def sample(pristine: Path, tmp_path: Path) -> Path:
    shutil.copytree(pristine, tmp_path / "s")
    return tmp_path / "s"


def _ingest_fails(tmp_path: Path, path: Path, options: ReadOptions | None = None, spec: PairSpec | None = None) -> str:
    cat = catalog.create(tmp_path / "cat", spec)
    rep = cat.ingest([path], options=options or ReadOptions(sample_id="s1"), workers=1)
    assert len(rep.failed) == 1, rep.results
    msg = rep.failed[0].message
    assert "Traceback" not in msg, msg
    # nothing changed: no sample, no pair, no staged patch folder
    assert cat.samples().empty
    assert len(cat.pairs()) == 0
    assert list((cat.path / "patches").iterdir()) == []
    return msg


def _matrix(path: Path) -> tuple[sp.csr_matrix, list[str], list[str]]:
    """The matrix as barcodes x genes, its barcodes and gene names."""
    with h5py.File(path, "r") as f:
        g = f["matrix"]
        n_feat, n_bc = (int(v) for v in g["shape"][:])
        csc = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=(n_feat, n_bc))
        bcs = [b.decode() for b in g["barcodes"][:]]
        names = [n.decode() for n in g["features/name"][:]]
    return csc.T.tocsr(), bcs, names


def _replace(group: h5py.Group, name: str, data: np.ndarray) -> None:
    del group[name]
    group.create_dataset(name, data=data)


def _set_count(path: Path, spot: int, value: float, dtype: str = "float64") -> tuple[str, str]:
    """Set the first stored count of barcode ``spot`` to ``value`` (and a later entry too,
    so "the first" is tested); returns that barcode and gene."""
    m, bcs, names = _matrix(path)
    k = int(m.indptr[spot])
    gene = names[int(m.indices[k])]
    with h5py.File(path, "r+") as f:
        data = f["matrix/data"][:].astype(dtype)
        data[k] = value
        data[-1] = value
        _replace(f["matrix"], "data", data)
    return bcs[spot], gene


@pytest.mark.parametrize(
    ("value", "kind", "shown", "dtype"),
    [
        (-3, "negative", "-3", "int32"),
        (2.5, "non-integer", "2.5", "float64"),
        (math.nan, "NaN", "NaN", "float64"),
        (math.inf, "infinite", "inf", "float64"),
        (2**31, "absurd", "2147483648", "int64"),
    ],
)
def test_bad_counts_are_refused_with_the_first_barcode_gene_and_value(
    sample: Path, tmp_path: Path, value: float, kind: str, shown: str, dtype: str
) -> None:
    barcode, gene = _set_count(sample / MATRIX, 2, value, dtype)
    msg = _ingest_fails(tmp_path, sample)
    assert MATRIX in msg
    assert f"2 {kind} counts" in msg, msg
    assert f"the first is {shown} at barcode {barcode!r}, gene {gene!r}" in msg, msg
    if kind == "non-integer":
        assert "allow_non_integer=True" in msg


def test_allow_non_integer_keeps_fractional_counts_and_records_it(sample: Path, tmp_path: Path) -> None:
    m, _, _ = _matrix(sample / MATRIX)
    with h5py.File(sample / MATRIX, "r+") as f:
        _replace(f["matrix"], "data", f["matrix/data"][:].astype("float64") * 0.25)  # "normalised"
    cat = catalog.create(tmp_path / "cat")
    rep = cat.ingest([sample], options=ReadOptions(sample_id="s1", allow_non_integer=True), workers=1)
    assert not rep.failed, rep.failed[0].message
    assert cat.manifest("s1")["allow_non_integer"] is True
    assert cat.pairs().expression().sum() == pytest.approx(0.25 * float(m.sum()), rel=1e-5)
    # integer samples record the default
    other = tmp_path / "o"
    make_visium(other, n_rows=5, n_cols=5, seed=8)
    assert not cat.ingest([other], options=ReadOptions(sample_id="s2"), workers=1).failed
    assert cat.manifest("s2")["allow_non_integer"] is False


def test_allow_non_integer_still_refuses_nan_and_negative() -> None:
    m = sp.csr_matrix(np.array([[0.5, 0.0, -1.0], [np.nan, 2.0, 0.0]]))
    bad = check_counts(m, ["a", "b"], ["G1", "G2", "G3"], allow_non_integer=True)
    assert {(c.kind, c.barcode, c.gene) for c in bad} == {("NaN", "b", "G1"), ("negative", "a", "G3")}
    strict = check_counts(m, ["a", "b"], ["G1", "G2", "G3"])
    assert ("non-integer", "a", "G1") in {(c.kind, c.barcode, c.gene) for c in strict}


def test_count_check_reads_only_the_stored_values() -> None:
    # 10^6 spots x 10^5 genes: a check that densified (or scanned every cell) could not run
    m = sp.csr_matrix((np.array([1.0, -2.0]), (np.array([5, 999_999]), np.array([3, 99_999]))), shape=(10**6, 10**5))
    bad = check_counts(m, np.array([f"b{i}" for i in range(10**6)]), [f"g{j}" for j in range(10**5)])
    assert [(c.kind, c.barcode, c.gene, c.value) for c in bad] == [("negative", "b999999", "g99999", -2.0)]


def test_duplicate_barcodes_are_refused(sample: Path, tmp_path: Path) -> None:
    with h5py.File(sample / MATRIX, "r+") as f:
        bcs = f["matrix/barcodes"][:]
        bcs[4] = bcs[1]
        _replace(f["matrix"], "barcodes", bcs)
    msg = _ingest_fails(tmp_path, sample)
    assert MATRIX in msg and f"barcode {bcs[1].decode()!r} appears 2 times" in msg, msg


def test_empty_and_multiline_gene_names_are_refused(sample: Path, tmp_path: Path) -> None:
    with h5py.File(sample / MATRIX, "r+") as f:
        names = [n.decode() for n in f["matrix/features/name"][:]]
        ids = [i.decode() for i in f["matrix/features/id"][:]]
        names[3] = ""
        names[7] = "ACTB\nGAPDH"
        _replace(f["matrix/features"], "name", np.array([n.encode() for n in names]))
    msg = _ingest_fails(tmp_path, sample)
    assert "gene name(s) are empty; the first is feature #3" in msg and ids[3] in msg, msg
    assert "span several lines; the first is feature #7: 'ACTB\\nGAPDH'" in msg, msg
    assert MATRIX in msg


def _no_features(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        g = f["matrix"]
        n_bc = int(g["shape"][1])
        _replace(g, "data", np.zeros(0, np.int32))
        _replace(g, "indices", np.zeros(0, np.int64))
        _replace(g, "indptr", np.zeros(n_bc + 1, np.int64))
        _replace(g, "shape", np.array([0, n_bc], np.int32))
        for k in list(g["features"].keys()):
            if k != "_all_tag_keys":
                _replace(g["features"], k, np.zeros(0, "S1"))


def _no_barcodes(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        g = f["matrix"]
        n_feat = int(g["shape"][0])
        _replace(g, "data", np.zeros(0, np.int32))
        _replace(g, "indices", np.zeros(0, np.int64))
        _replace(g, "indptr", np.zeros(1, np.int64))
        _replace(g, "shape", np.array([n_feat, 0], np.int32))
        _replace(g, "barcodes", np.zeros(0, "S1"))


def _none_in_tissue(path: Path) -> None:
    pos = path.parent / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(pos)
    df["in_tissue"] = 0
    df.to_csv(pos, index=False)


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (_no_barcodes, "the matrix lists 0 spots"),
        (_no_features, "the matrix lists 0 genes"),
        (_none_in_tissue, "0 of 31 spots are in tissue"),
    ],
)
def test_empty_samples_are_refused(sample: Path, tmp_path: Path, breakage: object, reason: str) -> None:
    breakage(sample / MATRIX)  # type: ignore[operator]
    msg = _ingest_fails(tmp_path, sample)
    assert "no pairs: " in msg and reason in msg, msg


def test_sample_whose_every_spot_is_dropped_is_refused(sample: Path, tmp_path: Path) -> None:
    # 1024 px patches at 2 um/px cover 4,096 level-0 px (0.5 um/px): larger than the slide, so
    # every patch crosses the image edge; under --edge drop every spot is dropped
    msg = _ingest_fails(tmp_path, sample, ReadOptions(sample_id="s1", edge="drop"), spec=PairSpec(1024, 2.0))
    assert "no pairs: " in msg and "in-tissue spots were dropped" in msg and "4096 level-0 px" in msg, msg
    assert "tissue_fullres.tif" in msg


def _positions(sample: Path) -> tuple[Path, pd.DataFrame, int]:
    pos = sample / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(pos)
    return pos, df, int(df.index[df["in_tissue"] == 1][2])


def _load(sample: Path, **opts: object) -> None:
    reader = VisiumReader()
    ref = reader.scan(sample, ReadOptions(sample_id="s1", **opts))[0]  # type: ignore[arg-type]
    reader.load(ref)


def test_nan_coordinates_have_their_own_message(sample: Path) -> None:
    pos, df, i = _positions(sample)
    df.loc[i, "pxl_row_in_fullres"] = np.nan
    df.to_csv(pos, index=False)
    with pytest.raises(ValidationError) as err:
        _load(sample)
    msg = str(err.value)
    assert "tissue_positions.csv" in msg and "have no pixel position (NaN" in msg, msg
    assert f"barcode {df.loc[i, 'barcode']!r}" in msg and "y=nan" in msg
    assert "outside the image" not in msg


def test_negative_coordinates_report_the_bad_values(sample: Path) -> None:
    pos, df, i = _positions(sample)
    df.loc[i, "pxl_col_in_fullres"] = -57
    df.to_csv(pos, index=False)
    with pytest.raises(ValidationError) as err:
        _load(sample)
    msg = str(err.value)
    assert "tissue_positions.csv" in msg and "1 of" in msg and "negative pixel coordinates" in msg, msg
    assert f"barcode {df.loc[i, 'barcode']!r} at x=-57.0" in msg and "x=-57..-57" in msg


@pytest.mark.parametrize(("value", "what"), [(math.nan, "NaN"), (0, "not positive"), ("abc", "not a number")])
def test_bad_scale_factor_names_file_field_and_value(sample: Path, value: object, what: str) -> None:
    sf = sample / "spatial" / "scalefactors_json.json"
    doc = json.loads(sf.read_text())
    doc["tissue_hires_scalef"] = value
    sf.write_text(json.dumps(doc))
    with pytest.raises(ValidationError) as err:
        _load(sample, image=sample / "spatial" / "tissue_hires_image.png", pixel_size_um=2.0)
    msg = str(err.value)
    assert "scalefactors_json.json" in msg and f"field 'tissue_hires_scalef' is {value!r} ({what})" in msg, msg
    assert "pixel size" not in msg.split("scalefactors_json.json", 1)[1].split("\n")[0]


def test_bad_spot_diameter_in_scalefactors_is_named(sample: Path) -> None:
    sf = sample / "spatial" / "scalefactors_json.json"
    doc = json.loads(sf.read_text())
    doc["spot_diameter_fullres"] = "wide"
    sf.write_text(json.dumps(doc))
    with pytest.raises(ValidationError, match=r"scalefactors_json.json: field 'spot_diameter_fullres' is 'wide'"):
        _load(sample)


def test_empty_sample_id_is_refused(sample: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=r"sample id \(sample_id=ID\) is empty"):
        ReadOptions(sample_id="")
    with pytest.raises(OptionError):
        ReadOptions(sample_id="  ")
    r = runner.invoke(app, ["ingest", str(sample), "--catalog", str(tmp_path / "cat"), "--sample-id", "", "-q"])
    assert r.exit_code == 1 and "sample id (--sample-id ID) is empty" in r.output, r.output
    assert not (tmp_path / "cat").exists()  # nothing created


def test_sample_ids_are_checked_on_read_paths(tmp_path: Path) -> None:
    cat = catalog.create(tmp_path / "cat")
    (tmp_path / "x.json").write_text(json.dumps({"sample_id": "x"}))
    for bad in ("../catalog", "../../x", "a/b", "", "s1\n"):
        with pytest.raises(QueryError, match="is not a sample id"):
            cat.manifest(bad)
    with pytest.raises(QueryError, match="is not a volume id"):
        cat.volume_manifest("../catalog")
    # the same rule on write: a hostile id is refused before anything is read or written
    for evil in ("../evil", "evil\n"):
        with pytest.raises(CatalogError, match="is not allowed"):
            cat.ingest([tmp_path], technology="visium", options=ReadOptions(sample_id=evil), workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat", "x.json"]
    # the command that read catalog.json as a manifest (KeyError: 'patches_path')
    r = runner.invoke(app, ["plot", str(cat.path), "../catalog", "--out", str(tmp_path / "p.png")])
    assert r.exit_code == 1 and "'../catalog' is not a sample id" in r.output, r.output
    r = runner.invoke(app, ["export", str(cat.path), "../catalog", "-f", "anndata", "-o", str(tmp_path / "a.h5ad")])
    assert r.exit_code == 1 and "is not a sample id" in r.output, r.output


def _keep_in_tissue(sample: Path, n: int) -> None:
    pos = sample / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(pos)
    idx = df.index[df["in_tissue"] == 1]
    df.loc[idx[n:], "in_tissue"] = 0
    df.to_csv(pos, index=False)


def test_edge_samples_export_or_say_why(sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No export ends in a raw traceback: a one-pair sample exports, and a
    sample without pairs (as older hestkit versions committed them) exports where the
    format can hold it and gets a clear error where it cannot."""
    import catalog.writer as w

    one = tmp_path / "one"
    shutil.copytree(sample, one)
    _keep_in_tissue(one, 1)
    _keep_in_tissue(sample, 0)
    cat = catalog.create(tmp_path / "cat")
    assert cat.ingest([one], options=ReadOptions(sample_id="one"), workers=1).ingested
    with pytest.raises(NoPairsError, match=r"no pairs: .*0 of 31 spots are in tissue"):
        w.check_source(VisiumReader().load(VisiumReader().scan(sample, ReadOptions(sample_id="zero"))[0]))
    with monkeypatch.context() as mp:  # an older hestkit: no checks
        mp.setattr(w, "check_source", lambda *a, **k: None)
        mp.setattr(w, "check_plan", lambda *a, **k: None)
        assert cat.ingest([sample], options=ReadOptions(sample_id="zero"), workers=1).ingested
    assert cat.manifest("zero")["n_pairs"] == 0 and cat.manifest("one")["n_pairs"] == 1
    for sid in ("one", "zero"):
        formats = [("anndata", f"{sid}.h5ad"), ("hest", f"{sid}_hest")]
        if sid == "zero":  # SpatialData only where it must refuse (a SpatialData export takes ~10 s)
            formats.append(("spatialdata", f"{sid}.zarr"))
        for fmt, out in formats:
            r = runner.invoke(app, ["export", str(cat.path), sid, "-f", fmt, "-o", str(tmp_path / out)])
            assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), r.exception
            if sid == "zero" and fmt == "spatialdata":
                assert r.exit_code == 1 and "holds no pairs" in r.output, r.output
            else:
                assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["plot", str(cat.path), sid, "-o", str(tmp_path / f"{sid}.png")])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["query", str(cat.path), "--sample", sid, "--out", str(tmp_path / f"q_{sid}.h5ad")])
        assert r.exit_code == 0 and f"q_{sid}.h5ad ({1 if sid == 'one' else 0} pairs" in r.output, r.output
    r = runner.invoke(app, ["ls", str(cat.path)])
    assert r.exit_code == 0 and "zero" in r.output, r.output
    with h5py.File(tmp_path / "zero_hest" / "patches" / "zero.h5") as f:
        assert f["img"].shape == (0, 224, 224, 3)
    with h5py.File(tmp_path / "one_hest" / "patches" / "one.h5") as f:
        assert f["img"].shape == (1, 224, 224, 3)


def test_hest_metadata_values_are_checked_but_nan_means_unknown(tmp_path: Path) -> None:
    from hestkit.readers import HestReader
    from hestkit.synthetic import make_hest

    make_hest(tmp_path / "hest", "H1", n_rows=5, n_cols=5, seed=4)
    meta_path = tmp_path / "hest" / "metadata" / "H1.json"
    meta = json.loads(meta_path.read_text())
    reader = HestReader()

    def load() -> None:
        reader.load(reader.scan(tmp_path / "hest", ReadOptions())[0])

    meta_path.write_text(json.dumps({**meta, "pixel_size_um_embedded": math.nan}))  # pandas' "unknown"
    load()
    meta_path.write_text(json.dumps({**meta, "spot_diameter": "55 um"}))
    with pytest.raises(ValidationError, match=r"H1\.json: field 'spot_diameter' is '55 um' \(not a number\)"):
        load()
