"""No third-party noise in normal output (issue 16, item 11): a 2-sample ingest (local dask
cluster, with port 8787 taken as when another cluster runs) and a SpatialData export print
only hestkit's own lines: no dask port / log lines, no zarr autosharding warning."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.hestkit import app
from hestkit.synthetic import make_visium

NOISE = ("already in use", "8787", "distributed.", "autosharding", "auto_shard", "Warning", "warnings.warn")


@pytest.fixture
def port_8787_taken() -> Iterator[None]:
    """Hold 127.0.0.1:8787 (dask's default dashboard port) for the test, if it is free."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 8787))
        s.listen()
    except OSError:
        pass  # already in use: just as good
    try:
        yield
    finally:
        s.close()


def _clean(text: str) -> None:
    for word in NOISE:
        assert word not in text, f"{word!r} in output:\n{text}"


def test_ingest_and_spatialdata_export_are_quiet(
    tmp_path: Path, port_8787_taken: None, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("spatialdata")
    paths = [
        make_visium(tmp_path / f"s{i}" / "outs", layout="spaceranger2", n_rows=5, n_cols=5, pixel_size_um=0.5, seed=20 + i).path
        for i in range(2)
    ]
    cat = tmp_path / "cat"
    runner = CliRunner()
    with warnings.catch_warnings(record=True) as caught:
        # what a user sees: Python's default filters (no DeprecationWarning outside __main__,
        # no ResourceWarning), but every occurrence counted
        warnings.simplefilter("always")
        for cat_ in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=cat_)
        r = runner.invoke(app, ["ingest", *map(str, paths), "-c", str(cat), "--organ", "Brain", "--workers", "2"])
        assert r.exit_code == 0, r.output
        assert "ingested 2 sample(s)" in r.output
        r2 = runner.invoke(app, ["export", str(cat), "s0", "-f", "spatialdata", "-o", str(tmp_path / "s.zarr")])
    assert r2.exit_code == 0, r2.output
    assert (tmp_path / "s.zarr").is_dir()
    third_party = [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught]
    assert not third_party, third_party
    _clean(r.output)
    _clean(r2.output)
    out, err = capfd.readouterr()
    _clean(out + err)


def test_a_failing_sample_is_reported_once_without_worker_tracebacks(tmp_path: Path) -> None:
    """A sample that fails validation is an ordinary outcome: hestkit reports it (with its
    fix) and exits 1; the dask worker that ran it logs no "Compute Failed" traceback. Run
    as a user runs it (a fresh process: dask's log handlers write to the real stderr)."""
    import json
    import os
    import subprocess
    import sys

    good = make_visium(tmp_path / "good" / "outs", n_rows=5, n_cols=5, seed=30).path
    bad = make_visium(tmp_path / "bad" / "outs", n_rows=5, n_cols=5, seed=31).path
    (Path(bad) / "filtered_feature_bc_matrix.h5").write_bytes(b"not an HDF5 file")
    cat = tmp_path / "cat"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "cli.hestkit", "ingest", str(good), str(bad), "-c", str(cat), "--organ", "Brain", "--workers", "2", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "filtered_feature_bc_matrix.h5" in r.stderr and "not a readable HDF5 file" in r.stderr
    assert "Compute Failed" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    _clean(r.stdout + r.stderr)
    ls = subprocess.run([sys.executable, "-m", "cli.hestkit", "ls", str(cat), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert ls.returncode == 0, ls.stderr
    assert [row["sample_id"] for row in json.loads(ls.stdout)["samples"]] == ["good"]
