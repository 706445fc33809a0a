from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _realdata() -> Path | None:
    env = os.environ.get("HESTKIT_REALDATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "realdata", REPO / "shared" / "realdata"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The folder of small real public runs (../shared/realdata); tests skip without it."""
    p = _realdata()
    if p is None:
        pytest.skip("real public runs not found (set HESTKIT_REALDATA or place shared/realdata beside the repo)")
    return p


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
