"""`hestkit check` finds damage and leftovers; `check --repair` removes the leftovers of
failed or killed writers (never committed data); manifests are strict JSON."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import catalog
from catalog._store import json_bytes
from catalog.check import check_catalog
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_hest, make_visium


def _strict(data: bytes | str) -> object:
    def refuse(token: str) -> object:
        raise ValueError(f"{token} in JSON")

    return json.loads(data, parse_constant=refuse)


def _app():  # type: ignore[no-untyped-def]
    from cli.hestkit import app

    return app


def test_json_elements_are_strict_json() -> None:
    doc = {"a": float("nan"), "b": [np.float32("inf"), -np.inf, 1.5, np.int64(3)], "c": {"d": np.array([1.0, np.nan])}}
    assert _strict(json_bytes(doc)) == {"a": None, "b": [None, None, 1.5, 3], "c": {"d": [1.0, None]}}


def test_check_and_repair(tmp_path: Path) -> None:
    src = make_hest(tmp_path / "hest", "TENX9", n_rows=5, n_cols=5, seed=61)
    meta = tmp_path / "hest" / "metadata" / "TENX9.json"
    md = json.loads(meta.read_text())
    md.update({"dv200": float("nan"), "reads": float("inf")})  # as in real HEST-1k metadata
    meta.write_text(json.dumps(md))
    cat = catalog.create(tmp_path / "cat")
    assert not cat.ingest([src.path], options=ReadOptions(ids=("TENX9",)), workers=1).failed
    root = cat.path
    m = _strict((root / "manifest" / "TENX9.json").read_text())
    assert isinstance(m, dict) and m["metadata"]["dv200"] is None and m["metadata"]["reads"] is None
    clean = check_catalog(cat.uri)
    assert clean.ok and clean.counts["rows read"] > 0 and clean.counts["patches read"] > 0, clean.lines()
    assert clean.counts["SOMA arrays"] == 4 and clean.counts["manifests"] == 1
    res = CliRunner().invoke(_app(), ["check", str(root), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["ok"] is True

    # leftovers of failed and killed writers
    old = time.time() - 2 * 3600
    half = root / "soma" / "ms" / "RNA" / "X" / "counts" / "__schema" / f"__9999999999999_9999999999999_{uuid.uuid4().hex}"
    half.touch()  # a schema version whose write hit a full disk
    orphan = root / "patches" / "ghost--20200101T000000-abcdef01.zarr"
    (orphan / "patches").mkdir(parents=True)
    (orphan / "zarr.json").write_text("{}")
    young = root / "patches" / "inflight--20200101T000000-abcdef02.zarr"
    young.mkdir()
    (young / "zarr.json").write_text("{}")
    tmp_manifest = root / "manifest" / f".x.json.{uuid.uuid4().hex}.tmp"
    tmp_manifest.write_text("{")
    for p in (orphan / "zarr.json", orphan, tmp_manifest):
        os.utime(p, (old, old))
    with pytest.raises(Exception, match="__schema"):
        cat.pairs().expression()  # the damage is real: TileDB cannot open the array
    rep = check_catalog(cat.uri)
    assert not rep.ok
    assert any(f.level == "error" and f.element == str(half) for f in rep.findings)
    assert any(f.level == "warning" and f.element == str(orphan) for f in rep.findings)
    assert any(f.level == "warning" and f.element == str(tmp_manifest) for f in rep.findings)
    assert any(f.level == "info" and f.element == str(young) for f in rep.findings)
    res = CliRunner().invoke(_app(), ["check", str(root)])
    assert res.exit_code == 1 and "half-written TileDB schema version" in res.output and "DAMAGED" in res.output
    res = CliRunner().invoke(_app(), ["check", str(root), "--repair"])
    assert res.exit_code == 0, res.output
    assert "repaired" in res.output
    assert not half.exists() and not orphan.exists() and not tmp_manifest.exists()
    assert young.exists()  # maybe an ingest in progress: left alone
    assert cat.manifest("TENX9")["ingest_id"] == m["ingest_id"]
    assert cat.pairs().expression().shape[0] == int(m["n_pairs"])
    assert check_catalog(cat.uri).ok


def test_check_reports_a_damaged_sample(tmp_path: Path) -> None:
    t = make_visium(tmp_path / "a", n_rows=4, n_cols=4, seed=62)
    cat = catalog.create(tmp_path / "cat")
    assert not cat.ingest([t.path], options=ReadOptions(sample_id="a"), workers=1).failed
    m = cat.manifest("a")
    shard = next((cat.path / m["patches_path"] / "patches" / "c").rglob("*"))
    while shard.is_dir():
        shard = next(shard.iterdir())
    shard.write_bytes(b"not a shard")
    rep = check_catalog(cat.uri)
    assert not rep.ok and any("patches of 'a' unreadable" in f.message for f in rep.errors), rep.lines()
    (cat.path / "manifest" / "a.json").write_text('{"encoding-type": "hestkit-sample-manifest"')
    rep = check_catalog(cat.uri, repair=True)
    assert any("not JSON" in f.message for f in rep.errors)  # damage is reported, never "repaired" away
    assert (cat.path / "manifest" / "a.json").exists()
