"""SOMA appends: joinids are allocated from the rows written, and domains grow ahead of
need so that a catalog of many commits does not pile up one TileDB schema version per
commit (every later open of the array would load them all)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from catalog import _soma


def _obs(sample: str, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "obs_id": [f"{sample}/i/{j}" for j in range(n)],
            "sample_id": sample,
            "ingest_id": "i",
            "barcode": [f"B{j}" for j in range(n)],
            "organ": "Brain",
            "technology": "visium",
            "species": "Mus musculus",
            "patient": "",
            "in_tissue": np.ones(n, np.int8),
            "array_row": np.arange(n, dtype=np.int32),
            "array_col": np.zeros(n, np.int32),
            "x_px": np.arange(n, dtype=float),
            "y_px": np.zeros(n),
            "x_um": np.zeros(n),
            "y_um": np.zeros(n),
            "pixel_size_um": np.full(n, 0.5),
            "spot_size_um": np.full(n, 55.0),
            "patch_index": np.arange(n, dtype=np.int64),
        }
    )


def _versions(array: Path) -> int:
    return len(list((array / "__schema").iterdir()))


def test_appends_allocate_consecutive_joinids_and_grow_domains_geometrically(tmp_path: Path) -> None:
    root = tmp_path / "soma"
    _soma.create_experiment(root)
    assert _soma.obs_row_count(root) == 0
    start, _ = _soma.append_rows(root, _obs("one", 1), sp.csr_matrix(np.array([[3.0]])), ["G0"], ["E0"])
    assert start == 0 and _soma.obs_row_count(root) == 1  # a single row is counted (not read as empty)
    rng = np.random.default_rng(0)
    written: dict[tuple[int, int], float] = {(0, 0): 3.0}  # G0 is var joinid 0
    total, n_commits = 1, 60
    for k in range(n_commits):
        n = int(rng.integers(1, 9))
        genes = [f"G{g}" for g in sorted(rng.choice(40 + k, size=5, replace=False))]  # var grows too
        counts = sp.random(n, 5, density=0.5, format="csr", random_state=k, dtype=np.float32)
        counts.data = np.ceil(counts.data * 9)
        start, gmap = _soma.append_rows(root, _obs(f"s{k}", n), counts, genes, genes)
        assert start == total  # consecutive joinids, never reused
        total += n
        assert _soma.obs_row_count(root) == total
        coo = counts.tocoo()
        for r, c, v in zip(coo.row, coo.col, coo.data, strict=True):
            written[(start + int(r), gmap[genes[c]])] = float(v)
    # 61 commits: a handful of schema versions per array, not one per commit
    for array in (root / "obs", root / "ms" / "RNA" / "var", root / "ms" / "RNA" / "X" / "counts"):
        assert _versions(array) <= 12, array
    # every row and cell reads back, from both X layers
    obs = _soma.read_obs_ranges(root, [(0, total, "i")])
    assert len(obs) == total and obs["soma_joinid"].tolist() == list(range(total))
    var = _soma.read_var(root)
    n_var = len(var)
    for frac in (0.0, 1.0):
        _soma.BY_GENE_MAX_FRACTION, old = frac, _soma.BY_GENE_MAX_FRACTION
        try:
            X = _soma.read_X(root, np.arange(total), np.arange(n_var)).toarray()
        finally:
            _soma.BY_GENE_MAX_FRACTION = old
        got = {(int(r), int(c)): float(X[r, c]) for r, c in zip(*np.nonzero(X), strict=True)}
        assert got == written
