"""The catalog's slide table: hestkit add-slides (checks, atomicity, resume, overwrite)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import catalog
from catalog.slides import SLIDE_MANIFEST_ENCODING, add_slides, slide_fingerprint
from cli.hestkit import app
from hestkit.errors import ValidationError


def _csv(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_add_slides_records_labels_and_resumes(slide_cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    csv, df = slide_cohort
    cat_dir = tmp_path / "cat"
    rep = add_slides(cat_dir, csv)
    assert sorted(rep.added) == sorted(df["slide_id"]) and rep.label_columns == ("label", "score")
    cat = catalog.open(cat_dir)
    table = cat.slides()
    assert list(table["slide_id"]) == sorted(df["slide_id"])
    assert table["mpp"].tolist() == pytest.approx([0.5] * len(df))  # embedded in the TIFFs
    assert set(table["mpp_source"]) == {"embedded"}
    first = df.sort_values("slide_id").iloc[0]
    m = cat.slide_manifest(first["slide_id"])
    assert m["encoding-type"] == SLIDE_MANIFEST_ENCODING and m["labels"]["label"] == int(first["label"])
    assert m["labels"]["score"] == pytest.approx(float(first["score"]))
    assert m["fingerprint"] == slide_fingerprint(first["path"]) and (m["width"], m["height"]) == (1024, 1024)
    # the same command again: nothing rewritten
    before = {p.name: p.stat().st_mtime_ns for p in (cat_dir / "slide-manifest").iterdir()}
    rep2 = add_slides(cat_dir, csv)
    assert rep2.added == () and sorted(rep2.skipped) == sorted(df["slide_id"])
    assert {p.name: p.stat().st_mtime_ns for p in (cat_dir / "slide-manifest").iterdir()} == before


def test_changed_labels_need_overwrite(slide_cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    csv, df = slide_cohort
    cat_dir = tmp_path / "cat"
    add_slides(cat_dir, csv)
    changed = df[["slide_id", "path", "patient", "label", "score"]].copy()
    changed.loc[0, "label"] = 1 - int(changed.loc[0, "label"])
    new_csv = _csv(tmp_path / "changed.csv", changed.to_dict(orient="records"))
    with pytest.raises(ValidationError, match="overwrite=True") as ei:
        add_slides(cat_dir, new_csv)
    assert str(new_csv) in str(ei.value)
    rep = add_slides(cat_dir, new_csv, overwrite=True)
    assert rep.replaced == (changed.loc[0, "slide_id"],)
    assert catalog.open(cat_dir).slide_manifest(changed.loc[0, "slide_id"])["labels"]["label"] == changed.loc[0, "label"]


def test_bad_csv_lists_every_problem_and_writes_nothing(slide_cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    _, df = slide_cohort
    good = df.iloc[0]
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")
    rows = [
        {"slide_id": "ok1", "path": good["path"], "patient": "P1", "mpp": "", "label": 1},
        {"slide_id": "ok1", "path": good["path"], "patient": "P1", "mpp": "", "label": 0},  # duplicate id
        {"slide_id": "bad id!", "path": good["path"], "patient": "P2", "mpp": "", "label": 0},
        {"slide_id": "nopatient", "path": good["path"], "patient": "", "mpp": "", "label": 0},
        {"slide_id": "missing", "path": "nowhere.tif", "patient": "P3", "mpp": "", "label": 0},
        {"slide_id": "corrupt", "path": "broken.tif", "patient": "P4", "mpp": "", "label": 0},
        {"slide_id": "badmpp", "path": good["path"], "patient": "P5", "mpp": "-3", "label": 0},
    ]
    csv = _csv(tmp_path / "slides.csv", rows)
    cat_dir = tmp_path / "cat"
    with pytest.raises(ValidationError) as ei:
        add_slides(cat_dir, csv)
    msg = str(ei.value)
    assert len(ei.value.problems) == 6, msg
    for needle in ("repeats line 2", "slide_id must be", "empty patient", "nowhere.tif", "broken.tif", "mpp -3"):
        assert needle in msg, needle
    assert all(str(csv) in str(p) for p in ei.value.problems)
    assert not cat_dir.exists()  # nothing created on error


def test_missing_columns_and_no_pixel_size(tmp_path: Path) -> None:
    from hestkit.synthetic._tiff import write_pyramidal_tiff

    csv = _csv(tmp_path / "s.csv", [{"slide": "a", "file": "x.tif"}])
    with pytest.raises(ValidationError, match="missing column"):
        add_slides(tmp_path / "cat", csv)
    tif = tmp_path / "nompp.tif"
    write_pyramidal_tiff(tif, height=256, width=256, render=lambda ds, y0, x0, h, w: __import__("numpy").full((h, w, 3), 200, "uint8"), pixel_size_um=None)
    csv = _csv(tmp_path / "t.csv", [{"slide_id": "a", "path": tif.name, "patient": "P"}])
    with pytest.raises(ValidationError, match="add an mpp column"):
        add_slides(tmp_path / "cat", csv)
    csv = _csv(tmp_path / "u.csv", [{"slide_id": "a", "path": tif.name, "patient": "P", "mpp": 0.25}])
    add_slides(tmp_path / "cat", csv)
    m = catalog.open(tmp_path / "cat").slide_manifest("a")
    assert (m["mpp"], m["mpp_source"], m["labels"]) == (0.25, "csv", {})


def test_cli_add_slides_and_ls(slide_cohort: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    csv, df = slide_cohort
    runner = CliRunner()
    r = runner.invoke(app, ["add-slides", str(csv), "--catalog", str(tmp_path / "cat")])
    assert r.exit_code == 0, r.output
    assert f"{len(df)} slide(s) added" in r.output and "label, score" in r.output
    r = runner.invoke(app, ["ls", str(tmp_path / "cat")])
    assert r.exit_code == 0 and f"{len(df)} slides" in r.output
    r = runner.invoke(app, ["add-slides", str(tmp_path / "nope.csv"), "--catalog", str(tmp_path / "cat")])
    assert r.exit_code == 1 and "file not found" in r.output
