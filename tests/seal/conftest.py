from __future__ import annotations

from pathlib import Path

import pytest

import catalog
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four small Visium samples from four patients (two organs)."""
    root = tmp_path_factory.mktemp("sealcat")
    cat = catalog.create(root / "cat")
    for i in range(4):
        make_visium(root / f"s{i}", n_rows=7, n_cols=7, pixel_size_um=1.0, seed=200 + i)
        opts = ReadOptions(sample_id=f"s{i}", organ="Breast" if i < 2 else "Lung", patient=f"P{i}", species="Homo sapiens")
        rep = cat.ingest([root / f"s{i}"], options=opts, workers=1)
        assert not rep.failed
    return root / "cat"


@pytest.fixture(scope="session")
def plaid_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six samples (six patients) whose images show expression only through texture
    (``morphology="plaid"``): a frozen random encoder passes little of it to a ridge probe."""
    root = tmp_path_factory.mktemp("plaidcat")
    cat = catalog.create(root / "cat")
    for i in range(6):
        make_visium(root / f"s{i}", n_rows=9, n_cols=9, pixel_size_um=1.0, seed=300 + i, morphology="plaid")
        opts = ReadOptions(sample_id=f"s{i}", organ="Breast", patient=f"P{i}", species="Homo sapiens")
        rep = cat.ingest([root / f"s{i}"], options=opts, workers=1)
        assert not rep.failed
    return root / "cat"
