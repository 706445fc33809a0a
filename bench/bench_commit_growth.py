"""Cost of one SOMA commit (``catalog._soma.append_rows``) as a catalog gains commits.

A real ingest appends one sample per commit, so a HEST-1k-sized catalog holds ~1,229
TileDB fragments per array. This appends ``--commits`` small samples (20 spots, 50
genes: the metadata work dominates, not the data) into a fresh SOMA experiment, twice in
one run:

* ``exact``: the earlier policy, each commit resizes obs and X to exactly the rows
  written (one new TileDB schema version per commit, which every later open loads) and
  counts rows with ``count`` (reads every fragment's metadata);
* ``geometric``: hestkit's policy, domains grow 1.5x ahead of need and rows are counted
  from the non-empty domain;

and prints the mean time per append over each block of ``--every`` commits::

    .venv/bin/python bench/bench_commit_growth.py --commits 600 --every 100
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from catalog import _soma


def _obs(k: int, n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "obs_id": [f"s{k}/i/{j}" for j in range(n)],
            "sample_id": f"s{k}",
            "ingest_id": "i",
            "barcode": [str(j) for j in range(n)],
            "organ": "o",
            "technology": "visium",
            "species": "s",
            "patient": "p",
            "in_tissue": np.ones(n, np.int8),
            "array_row": np.zeros(n, np.int32),
            "array_col": np.zeros(n, np.int32),
            "x_px": np.zeros(n),
            "y_px": np.zeros(n),
            "x_um": np.zeros(n),
            "y_um": np.zeros(n),
            "pixel_size_um": np.ones(n),
            "spot_size_um": np.ones(n),
            "patch_index": np.arange(n),
        }
    )


def run(root: Path, commits: int, every: int) -> list[float]:
    _soma.create_experiment(root)
    genes = [f"G{i}" for i in range(50)]
    out, last = [], time.perf_counter()
    for k in range(commits):
        counts = sp.random(20, 50, density=0.2, format="csr", random_state=k, dtype=np.float32)
        _soma.append_rows(root, _obs(k, 20), counts, genes, genes)
        if (k + 1) % every == 0:
            now = time.perf_counter()
            out.append((now - last) / every)
            last = now
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commits", type=int, default=600)
    ap.add_argument("--every", type=int, default=100)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    grown, count = _soma._grown, _soma._count
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("exact", "geometric"):
            if label == "exact":
                _soma._grown = lambda current, need: current if current >= need else need  # type: ignore[assignment]
                _soma._count = lambda df: int(df.count)  # type: ignore[assignment]
            else:
                _soma._grown, _soma._count = grown, count  # type: ignore[assignment]
            root = Path(tmp) / label
            results[label] = run(root, args.commits, args.every)
            versions = len(list((root / "obs" / "__schema").iterdir()))
            print(f"{label}: obs schema versions after {args.commits} commits: {versions}", flush=True)
            shutil.rmtree(root)
    print("| commits | exact: ms/append | geometric: ms/append | exact / geometric |")
    print("|---|---|---|---|")
    for i, (a, b) in enumerate(zip(results["exact"], results["geometric"], strict=True)):
        lo, hi = i * args.every + 1, (i + 1) * args.every
        print(f"| {lo}-{hi} | {a * 1000:.0f} | {b * 1000:.0f} | {a / b:.1f}x |")


if __name__ == "__main__":
    main()
