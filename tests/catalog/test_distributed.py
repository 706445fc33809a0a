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
