"""Bad input: each case gets one clear error naming the file, and the catalog stays as it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import catalog
from catalog.check import gc_catalog
from catalog.errors import SampleExistsError
from hestkit.errors import HestkitError, ImageError
from hestkit.readers import VisiumReader
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium, write_flat_image


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    make_visium(tmp_path / "s", n_rows=6, n_cols=6, seed=3)
    return tmp_path / "s"


def _ingest_fails(tmp_path: Path, path: Path, match: str, options: ReadOptions | None = None) -> str:
    cat = catalog.create(tmp_path / "cat")
    rep = cat.ingest([path], options=options or ReadOptions(sample_id="s1"), workers=1)
    assert len(rep.failed) == 1, rep.results
    msg = rep.failed[0].message
    assert match in msg, msg
    # the catalog is untouched: no sample, no pair, no staged patch folder
    assert cat.samples().empty
    assert len(cat.pairs()) == 0
    assert list((cat.path / "patches").iterdir()) == []
    return msg


def test_missing_matrix(sample: Path, tmp_path: Path) -> None:
    (sample / "filtered_feature_bc_matrix.h5").unlink()
    _ingest_fails(tmp_path, sample, "no filtered_feature_bc_matrix.h5")


def test_corrupt_matrix(sample: Path, tmp_path: Path) -> None:
    p = sample / "filtered_feature_bc_matrix.h5"
    p.write_bytes(p.read_bytes()[:500])
    msg = _ingest_fails(tmp_path, sample, "filtered_feature_bc_matrix.h5")
    assert "not a readable HDF5" in msg


def test_barcodes_absent_from_positions(sample: Path, tmp_path: Path) -> None:
    pos = sample / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(pos)
    df[df["in_tissue"] == 1].iloc[3:].to_csv(pos, index=False)  # drop three in-tissue spots
    msg = _ingest_fails(tmp_path, sample, "absent from tissue_positions.csv")
    assert "3 of" in msg


def test_missing_scalefactors(sample: Path, tmp_path: Path) -> None:
    (sample / "spatial" / "scalefactors_json.json").unlink()
    _ingest_fails(tmp_path, sample, "scalefactors_json.json: missing")


def test_missing_positions_column(sample: Path, tmp_path: Path) -> None:
    pos = sample / "spatial" / "tissue_positions.csv"
    pd.read_csv(pos).drop(columns=["pxl_row_in_fullres"]).to_csv(pos, index=False)
    _ingest_fails(tmp_path, sample, "lacks the column(s) pxl_row_in_fullres")


def test_image_smaller_than_spot_coordinates(sample: Path, tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    write_flat_image(small, np.full((300, 300, 3), 200, np.uint8))
    msg = _ingest_fails(tmp_path, sample, "outside the image", ReadOptions(sample_id="s1", image=small))
    assert "small.png" in msg


def test_unreadable_image(sample: Path, tmp_path: Path) -> None:
    (sample / "tissue_fullres.tif").write_bytes(b"II*\x00garbage" * 100)
    _ingest_fails(tmp_path, sample, "tissue_fullres.tif: cannot be read as an image")


def test_unknown_pixel_size(tmp_path: Path) -> None:
    # no embedded pixel size and a single row of spots: nothing to estimate from
    s = make_visium(tmp_path / "one", n_rows=1, n_cols=6, embed_pixel_size=False, seed=4, in_tissue_fraction=1.0)
    _ingest_fails(tmp_path, s.path, "pass pixel_size_um=UM")
    # the override fixes it; the failure carried it as a structured fix (the CLI spells the flag)
    cat = catalog.open(tmp_path / "cat")
    assert [o.name for o in cat.ingest([s.path], options=ReadOptions(sample_id="s1"), workers=1).failed[0].options] == ["pixel_size_um"]
    rep = cat.ingest([s.path], options=ReadOptions(sample_id="s1", pixel_size_um=0.5), workers=1)
    assert not rep.failed and cat.samples()["pixel_size_source"].tolist() == ["override"]


def test_every_problem_is_reported_at_once(sample: Path) -> None:
    (sample / "spatial" / "scalefactors_json.json").unlink()
    (sample / "tissue_fullres.tif").unlink()
    with pytest.raises(HestkitError) as err:
        reader = VisiumReader()
        reader.load(reader.scan(sample, ReadOptions())[0])
    text = str(err.value)
    assert "scalefactors_json.json" in text and "no full-resolution image" in text and "2 problems" in text


def test_missing_image_file_named(tmp_path: Path) -> None:
    from hestkit.slide import open_slide

    with pytest.raises(ImageError, match=r"nope\.svs"):
        open_slide(tmp_path / "nope.svs")


def test_existing_sample_is_skipped_refused_or_overwritten(sample: Path, tmp_path: Path) -> None:
    cat = catalog.create(tmp_path / "cat")
    opts = ReadOptions(sample_id="s1", organ="Lung")
    assert cat.ingest([sample], options=opts, workers=1).ingested
    n = len(cat.pairs())
    old = cat.manifest("s1")["patches_path"]
    # same input again: skipped (a re-run resumes)
    rep = cat.ingest([sample], options=opts, workers=1)
    assert [r.status for r in rep.results] == ["skipped"]
    # another input under the same id: refused
    other = tmp_path / "other"
    make_visium(other, n_rows=5, n_cols=5, seed=9)
    with pytest.raises(SampleExistsError, match="overwrite=True"):
        cat.ingest([other], options=opts, workers=1)
    # --overwrite replaces it whole
    rep = cat.ingest([other], options=opts, workers=1, overwrite=True)
    assert rep.ingested
    assert len(cat.pairs()) == len(cat.pairs(sample_ids=["s1"])) != n
    assert (cat.path / old).exists()  # kept for readers holding the old view until gc
    assert gc_catalog(cat.uri, older_than_s=0).removed and not (cat.path / old).exists()
    assert len(cat.samples()) == 1


_KILL_SCRIPT = """
import sys, catalog
from hestkit.sample import ReadOptions
cat = catalog.create(sys.argv[1])
for i, p in enumerate(sys.argv[2:]):
    rep = cat.ingest([p], options=ReadOptions(sample_id=f"s{i}"), workers=1)
    assert not rep.failed, rep.failed[0].message
"""


def test_ingest_killed_mid_sample(tmp_path: Path) -> None:
    a = make_visium(tmp_path / "a", n_rows=6, n_cols=6, seed=5)
    b = make_visium(tmp_path / "b", n_rows=6, n_cols=6, seed=6)
    cat_dir = tmp_path / "cat"
    script = tmp_path / "ingest.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "HESTKIT_TEST_KILL_AT": "after-soma"}
    # killed (SIGKILL) after writing the first sample's SOMA rows, before its manifest
    proc = subprocess.run(
        [sys.executable, str(script), str(cat_dir), str(a.path), str(b.path)], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    cat = catalog.open(cat_dir)
    assert cat.samples().empty and len(cat.pairs()) == 0
    # the same command again, without the fault: both samples land once each
    env.pop("HESTKIT_TEST_KILL_AT")
    proc = subprocess.run(
        [sys.executable, str(script), str(cat_dir), str(a.path), str(b.path)], env=env, capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    cat = catalog.open(cat_dir)
    view = cat.pairs()
    expected = int(a.in_tissue.sum() + b.in_tissue.sum())
    assert len(view) == expected
    assert not view.obs.duplicated(["sample_id", "barcode"]).any()
    assert view.expression().sum() == pytest.approx(float(a.counts[a.in_tissue].sum() + b.counts[b.in_tissue].sum()))


def test_newer_catalog_format_is_refused(tmp_path: Path) -> None:
    import json

    cat = catalog.create(tmp_path / "cat")
    meta = json.loads((cat.path / "catalog.json").read_text())
    meta["encoding-version"] = "2.0.0"
    (cat.path / "catalog.json").write_text(json.dumps(meta))
    with pytest.raises(catalog.CatalogVersionError, match="Upgrade hestkit"):
        catalog.open(cat.path)


def test_not_a_catalog(tmp_path: Path) -> None:
    with pytest.raises(catalog.NotACatalogError, match="hestkit ingest"):
        catalog.open(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hi")
    with pytest.raises(catalog.NotACatalogError, match="not empty"):
        catalog.create(tmp_path / "x")
    shutil.rmtree(tmp_path / "x")
