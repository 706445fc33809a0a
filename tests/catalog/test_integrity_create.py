"""Two first ingests into a catalog that does not exist yet, in two processes, both land
(locally and on S3); a creation that died half-way is redone, never taken for a
foreign folder."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp

import catalog
from catalog import _faults, _soma
from catalog._store import Layout
from catalog.check import check_catalog
from catalog.errors import NotACatalogError
from hestkit.sample import ReadOptions
from hestkit.synthetic import SyntheticSample, make_visium

_SCRIPT = """
import sys, time, catalog
from hestkit.sample import ReadOptions
root, src, sid, wait_for = sys.argv[1:5]
if wait_for != "-":
    deadline = time.monotonic() + 60
    while not catalog._store.Layout(root).exists(wait_for) and time.monotonic() < deadline:
        time.sleep(0.01)
cat = catalog.create(root)
if sid != "-":
    rep = cat.ingest([src], options=ReadOptions(sample_id=sid), workers=1)
    if rep.failed:
        sys.exit("FAILED " + rep.failed[0].message)
"""


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[SyntheticSample]:
    root = tmp_path_factory.mktemp("race")
    return [make_visium(root / "a", n_rows=4, n_cols=5, seed=51), make_visium(root / "b", n_rows=5, n_cols=4, seed=52)]


def _race(root: str, two: list[SyntheticSample], marker: str, tmp_path: Path, child_ingests: bool = True) -> None:
    """A child process creates the catalog and stalls (holding the writers' lock) between
    its first folders and catalog.json; this process starts its own first ingest as soon
    as those folders appear. Both must land."""
    script = tmp_path / "race.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HESTKIT_TEST_SLEEP_AT": "create:2"}
    child = subprocess.Popen(
        [sys.executable, str(script), root, str(two[0].path), "a" if child_ingests else "-", "-"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        layout = Layout(root)
        deadline = time.monotonic() + 120
        while not layout.exists(marker) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not layout.exists(layout.catalog_json)  # the race is on: creation in progress
        cat = catalog.create(root)
        rep = cat.ingest([two[1].path], options=ReadOptions(sample_id="b"), workers=1)
        assert not rep.failed, rep.failed[0].message
    finally:
        err = child.communicate(timeout=180)[1]
    assert child.returncode == 0, err
    cat = catalog.open(root)
    assert sorted(m["sample_id"] for m in cat.manifests()) == (["a", "b"] if child_ingests else ["b"])
    assert check_catalog(root).ok


def test_two_first_ingests_race_to_create_a_local_catalog(two: list[SyntheticSample], tmp_path: Path) -> None:
    root = tmp_path / "cat"
    _race(str(root), two, str(root / "soma"), tmp_path)


def test_a_creation_that_died_is_redone_but_foreign_folders_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    catalog.create(root)
    (root / "catalog.json").unlink()  # as if the creator died before its last step
    cat = catalog.create(root)
    assert len(cat) == 0 and check_catalog(cat.uri).ok
    foreign = tmp_path / "foreign"
    (foreign / "soma").mkdir(parents=True)
    (foreign / "soma" / "notes.txt").write_text("mine")
    with pytest.raises(NotACatalogError, match=r"no catalog\.json"):
        catalog.create(foreign)
    assert (foreign / "soma" / "notes.txt").read_text() == "mine"
    (foreign / "data.csv").write_text("x")
    with pytest.raises(NotACatalogError, match="not empty"):
        catalog.create(foreign)


# -- S3, through a moto server on loopback --------------------------------------------




@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for k, v in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "hestkit-test-key",
        "AWS_SECRET_ACCESS_KEY": "hestkit-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "HESTKIT_S3_LOCK_LEASE_S": "5",
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    from catalog import _s3

    bucket = f"hestkit-{uuid.uuid4().hex[:12]}"
    _s3.filesystem().call_s3("create_bucket", Bucket=bucket)
    return bucket


def test_two_first_ingests_race_to_create_an_s3_catalog(two: list[SyntheticSample], s3_bucket: str, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}/cat"
    # the child only creates (concurrent S3 ingests are covered in test_s3.py)
    _race(root, two, f"{root}/soma/__group", tmp_path, child_ingests=False)
    # then `check --repair` on S3: a half-written schema version and a dead writer's staging
    from catalog import _s3

    fs = _s3.filesystem()
    half = f"{s3_bucket}/cat/soma/obs/__schema/__9999999999999_9999999999999_{uuid.uuid4().hex}"
    orphan = f"{s3_bucket}/cat/patches/ghost--20200101T000000-abcdef01.zarr/zarr.json"
    fs.pipe_file(half, b"")
    fs.pipe_file(orphan, b"{}")
    rep = check_catalog(root)
    assert not rep.ok and any(f.element == f"s3://{half}" for f in rep.errors), rep.lines()
    rep = check_catalog(root, repair=True, older_than_s=0)
    assert rep.ok, rep.lines()
    assert not fs.exists(half) and not fs.exists(orphan)
    cat = catalog.open(root)
    assert cat.pairs().expression().shape[0] == int(cat.manifest("b")["n_pairs"]) > 0
    assert check_catalog(root).ok
    # a full disk (injected) in an S3 append, after obs, var and X/counts rows and a
    # half-written schema version landed: rolled back whole
    before = {k: v["size"] for k, v in fs.find(f"{s3_bucket}/cat/soma", detail=True).items()}

    def full(point: str) -> None:
        if point == "rows:X/counts":
            fs.pipe_file(f"{s3_bucket}/cat/soma/ms/RNA/X/counts/__schema/__9999999999999_9999999999999_{uuid.uuid4().hex}", b"")
            raise OSError(errno.ENOSPC, "No space left on device")

    _faults.set_fault_hook(full)
    try:
        with pytest.raises(OSError, match="No space left"):
            _soma.append_rows(f"{root}/soma", _obs_rows(3), sp.csr_matrix(np.ones((3, 2), np.float32)), ["NEW1", "NEW2"], ["E1", "E2"])
    finally:
        _faults.set_fault_hook(None)
    assert {k: v["size"] for k, v in fs.find(f"{s3_bucket}/cat/soma", detail=True).items()} == before
    assert check_catalog(root).ok and [m["sample_id"] for m in cat.manifests()] == ["b"]
    assert cat.pairs().expression().shape[0] == int(cat.manifest("b")["n_pairs"])


def _obs_rows(n: int) -> pd.DataFrame:
    cols: dict[str, object] = {}
    for f in _soma.OBS_SCHEMA:
        if pa.types.is_large_string(f.type):
            cols[f.name] = [f"x{j}" for j in range(n)]
        else:
            cols[f.name] = np.zeros(n, dtype=f.type.to_pandas_dtype())
    return pd.DataFrame(cols)
