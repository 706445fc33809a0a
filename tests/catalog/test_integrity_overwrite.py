"""--overwrite keeps the replaced patch generation readable for readers that hold it;
`gc` (and `compact`) removes it once it has been retired longer than --older-than."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import catalog
from catalog.check import check_catalog, gc_catalog, parse_duration
from catalog.errors import CatalogError
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium


def _digests(view: catalog.PairView) -> list[str]:
    return [hashlib.sha1(np.ascontiguousarray(view.patch(i)).tobytes()).hexdigest() for i in range(len(view))]


def test_reader_keeps_its_view_through_an_overwrite_until_gc(tmp_path: Path) -> None:
    a = make_visium(tmp_path / "a", n_rows=5, n_cols=5, seed=41)
    b = make_visium(tmp_path / "b", n_rows=5, n_cols=6, seed=42)
    cat = catalog.create(tmp_path / "cat")
    opts = ReadOptions(sample_id="s", organ="Lung")
    assert not cat.ingest([a.path], options=opts, workers=1).failed
    held = cat.pairs()  # a reader's view, opened before the overwrite
    first = held.patch(0)
    before = _digests(held)
    old = cat.manifest("s")["patches_path"]
    assert not cat.ingest([b.path], options=opts, workers=1, overwrite=True).failed
    # the held view reads every one of its (old) patches, unchanged
    assert _digests(held) == before and np.array_equal(held.patch(0), first)
    assert cat.manifest("s")["patches_path"] != old
    assert len(cat.pairs()) != len(held)  # new readers see the new sample
    rep = check_catalog(cat.uri)
    assert rep.ok and any(f.level == "info" and old in f.element and "gc" in f.message for f in rep.findings)
    n_old = len(held)  # the replaced sample's rows: written, no longer committed
    assert any(f.message.startswith(f"{n_old} obs rows of attempts that never committed") for f in rep.findings)
    # gc keeps a generation retired more recently than --older-than
    kept = gc_catalog(cat.uri)
    assert kept.removed == [] and any(old in k for k in kept.kept)
    assert _digests(held) == before
    dry = gc_catalog(cat.uri, older_than_s=0, dry_run=True)
    assert [old in g for g in dry.removed] == [True] and (cat.path / old).exists()
    res = CliRunner().invoke(_app(), ["gc", cat.uri, "--older-than", "0s"])
    assert res.exit_code == 0 and old in res.output, res.output
    assert not (cat.path / old).exists() and not list((cat.path / "retired").iterdir())
    assert len(_digests(cat.pairs())) == len(cat.pairs())
    assert check_catalog(cat.uri).ok


def test_compact_runs_gc_of_old_generations(tmp_path: Path) -> None:
    a = make_visium(tmp_path / "a", n_rows=5, n_cols=5, seed=43)
    cat = catalog.create(tmp_path / "cat")
    opts = ReadOptions(sample_id="s", organ="Lung")
    assert not cat.ingest([a.path], options=opts, workers=1).failed
    old = cat.manifest("s")["patches_path"]
    assert not cat.ingest([a.path], options=opts, workers=1, overwrite=True).failed
    (rec,) = (cat.path / "retired").iterdir()
    doc = json.loads(rec.read_text())
    assert doc["patches_path"] == old and doc["replaced_by"] == cat.manifest("s")["ingest_id"]
    cat.compact()
    assert (cat.path / old).exists()  # retired just now: kept
    doc["retired_at_unix"] -= 2 * 3600
    rec.write_text(json.dumps(doc))
    cat.compact()
    assert not (cat.path / old).exists() and not rec.exists()
    assert check_catalog(cat.uri).ok


def test_parse_duration() -> None:
    assert parse_duration("90s") == 90 and parse_duration("30m") == 1800 and parse_duration("2d") == 172800
    assert parse_duration("0") == 0 and parse_duration("1.5h") == 5400
    with pytest.raises(CatalogError, match="30m"):
        parse_duration("soon")


def _app():  # type: ignore[no-untyped-def]
    from cli.hestkit import app

    return app
