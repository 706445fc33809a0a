"""Peak memory of Xenium transcript pooling as the transcript count grows.

Writes synthetic XOA 2 ``transcripts.parquet`` files of N transcripts (in row groups of
1 M rows, streamed: the generator never holds the table), then, for each N, pools them
into 55 um pseudo-spots with :func:`hestkit.readers.xenium.pool_transcripts` in a fresh
process and reports wall time and that process's peak RSS.

    .venv/bin/python bench/bench_xenium_memory.py --transcripts 3e6 10e6 30e6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_CHILD = """
import json, resource, sys, time
from hestkit.readers.xenium import pool_transcripts
t = time.perf_counter()
p = pool_transcripts(sys.argv[1], 55.0)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:  # VmHWM: this process's own high-water RSS (ru_maxrss can carry the forked parent's across exec)
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(json.dumps({"seconds": dt, "peak_rss_mib": rss, "pseudo_spots": int(p.counts.shape[0]), "genes": int(p.counts.shape[1]),
                  "kept": int(p.counts.sum())}))
"""


def write_transcripts(path: Path, n: int, *, n_genes: int = 300, side_um: float = 6000.0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    names = np.array([f"GENE{g:04d}" for g in range(n_genes)] + ["NegControlProbe_0001", "UnassignedCodeword_0001"])
    writer = None
    step = 1_000_000
    for start in range(0, n, step):
        m = min(step, n - start)
        code = rng.integers(0, len(names), m)
        tbl = pa.table(
            {
                "transcript_id": np.arange(start, start + m, dtype=np.uint64),
                "cell_id": pa.array(np.full(m, "UNASSIGNED")),
                "overlaps_nucleus": np.zeros(m, dtype=np.uint8),
                "feature_name": pa.array(names[code]),
                "x_location": rng.uniform(0, side_um, m).astype(np.float32),
                "y_location": rng.uniform(0, side_um, m).astype(np.float32),
                "z_location": rng.uniform(0, 20, m).astype(np.float32),
                "qv": rng.uniform(10, 40, m).astype(np.float32),
                "is_gene": code < n_genes,
            }
        )
        if writer is None:
            writer = pq.ParquetWriter(str(path), tbl.schema)
        writer.write_table(tbl, row_group_size=step)
    if writer is not None:
        writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transcripts", type=float, nargs="+", default=[3e6, 10e6, 30e6])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="hestkit-xenium-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{'transcripts':>12} {'file MiB':>9} {'seconds':>8} {'peak RSS MiB':>13} {'pseudo-spots':>13} {'kept':>11}")
    for n in (int(x) for x in args.transcripts):
        path = tmp / f"transcripts_{n}.parquet"
        write_transcripts(path, n)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True)
        res = json.loads(out.stdout.strip().splitlines()[-1])
        wall = time.perf_counter() - t
        print(
            f"{n:>12,} {path.stat().st_size / 2**20:>9.0f} {res['seconds']:>8.1f} {res['peak_rss_mib']:>13.0f} "
            f"{res['pseudo_spots']:>13,} {res['kept']:>11,}   (process wall {wall:.1f} s)"
        )
        path.unlink()
    if args.workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
