"""Ingest on an existing multi-process dask.distributed cluster (--scheduler)."""

from __future__ import annotations

from pathlib import Path

import pytest

import catalog
from catalog.errors import CatalogError
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_hest


@pytest.mark.slow
def test_ingest_through_a_scheduler_address(tmp_path: Path) -> None:
    from distributed import LocalCluster

    truths = [make_hest(tmp_path / "hest", f"S{i}", patient=f"P{i}", n_rows=6, n_cols=6, seed=40 + i) for i in range(3)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        cat = catalog.create(tmp_path / "cat")
        rep = cat.ingest([tmp_path / "hest"], options=ReadOptions(), scheduler=cluster.scheduler_address)
    assert not rep.failed, rep.failed[0].message if rep.failed else ""
    view = cat.pairs()
    assert len(view) == sum(int(t.in_tissue.sum()) for t in truths)
    assert not view.obs.duplicated(["sample_id", "barcode"]).any()
    assert float(view.expression().sum()) == pytest.approx(sum(float(t.counts[t.in_tissue].sum()) for t in truths))


def test_unreachable_scheduler_is_a_clear_error(tmp_path: Path) -> None:
    make_hest(tmp_path / "hest", "S0", n_rows=4, n_cols=4, seed=1)
    cat = catalog.create(tmp_path / "cat")
    with pytest.raises(CatalogError, match="cannot reach the dask scheduler"):
        cat.ingest([tmp_path / "hest"], scheduler="tcp://127.0.0.1:1")


def test_concurrent_ingests_on_one_cluster_survive_a_killed_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three `hestkit ingest --scheduler` processes at once on one multi-process cluster,
    into one catalog; the first worker to reach a commit is SIGKILLed after writing its SOMA
    rows. dask reruns the lost tasks elsewhere; every sample lands exactly once and the dead
    attempt's rows stay invisible."""
    import os
    import subprocess
    import sys

    from distributed import LocalCluster

    from catalog import _soma

    truths = [make_hest(tmp_path / f"in{i}", f"C{i}", patient=f"P{i}", n_rows=5, n_cols=5, seed=60 + i) for i in range(3)]
    marker = tmp_path / "killed-once"
    # the workers inherit these: only the first worker to get there dies
    monkeypatch.setenv("HESTKIT_TEST_KILL_AT", "after-soma")
    monkeypatch.setenv("HESTKIT_TEST_KILL_ONCE", str(marker))
    cat = catalog.create(tmp_path / "cat")
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HESTKIT_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        cmd = [
            sys.executable,
            "-m",
            "cli.hestkit",
            "ingest",
            "--catalog",
            str(cat.path),
            "--scheduler",
            cluster.scheduler_address,
        ]
        procs = [
            subprocess.Popen([*cmd, str(tmp_path / f"in{i}")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for i in range(3)
        ]
        outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    assert marker.exists()  # a worker really was killed mid-commit
    cat = catalog.open(tmp_path / "cat")
    assert sorted(cat.samples()["sample_id"]) == ["C0", "C1", "C2"]
    view = cat.pairs()
    expected = sum(int(t.in_tissue.sum()) for t in truths)
    assert len(view) == expected
    assert not view.obs.duplicated(["sample_id", "barcode"]).any()
    assert not view.obs["soma_joinid"].duplicated().any()
    for t, sid in zip(truths, ["C0", "C1", "C2"], strict=True):
        sub = cat.pairs(sample_ids=[sid])
        assert len(sub) == int(t.in_tissue.sum())
        assert float(sub.expression().sum()) == pytest.approx(float(t.counts[t.in_tissue].sum()))
        assert all(sub.patch(i).any() for i in range(len(sub)))  # every patch written, none blank
    assert _soma.obs_row_count(cat.layout.soma) > expected  # the killed attempt's rows: present, never visible
