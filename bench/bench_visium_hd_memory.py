"""Peak memory of the Visium HD reader as the number of 2 um bins grows.

For each N, writes a synthetic Space Ranger ``binned_outputs/square_002um/`` folder of N
bins (a grid of about sqrt(N) x sqrt(N) 2 um bins, all in tissue, 10-20 nonzero genes of
200 per bin) straight with h5py and pyarrow, in slices of 500 000 bins (the generator never
holds the matrix): ``filtered_feature_bc_matrix.h5`` (10x HDF5 v3, CSC, gzip as Space
Ranger writes it), ``spatial/tissue_positions.parquet`` and ``scalefactors_json.json``, plus
a small constant-colour pyramidal TIFF at 2 um/px covering the grid. Then it runs
``VisiumHDReader().load`` (default 56 um pseudo-spots = 28 x 28 bins) in a fresh Python
process and reports its wall time, its peak RSS after the imports and after the load, and
the number of pseudo-spots. Generated files are deleted after each size.

Peak RSS is the child's ``VmHWM`` (``/proc/self/status``; ``ru_maxrss`` where there is no
``/proc``). ``ru_maxrss`` is not used on Linux: it carries the RSS of the forked copy of the
parent (here the generator) across ``exec``, so it would report the parent's size.

``--baseline`` also runs, in its own fresh process, the whole-matrix path the reader used
before it streamed (``_tenx.read_10x`` + ``read_tissue_positions`` + a pandas join +
``pool_bins`` of all bins at once), for comparison.

    .venv/bin/python bench/bench_visium_hd_memory.py --bins 1e6 4e6 9e6 [--baseline] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hestkit.synthetic import write_pyramidal_tiff

BIN_UM = 2.0
PIXEL_UM = 2.0  # the placeholder image: one pixel per 2 um bin keeps it small
N_GENES = 200
SLICE = 500_000
MARGIN_PX = 64

_PEAK = """
def peak_rss_mib():
    # VmHWM: the high-water RSS of this process's own address space. ru_maxrss is not used
    # on Linux because it keeps the RSS of the forked parent copy across exec.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
"""

_CHILD = (
    _PEAK
    + """
import json, sys, time
from pathlib import Path
from hestkit.readers.visium_hd import VisiumHDReader
from hestkit.sample import ReadOptions
rss0 = peak_rss_mib()
t = time.perf_counter()
reader = VisiumHDReader()
(ref,) = reader.scan(Path(sys.argv[1]), ReadOptions(sample_id="bench"))
src = reader.load(ref)
dt = time.perf_counter() - t
rss = peak_rss_mib()
print(json.dumps({"seconds": dt, "import_rss_mib": rss0, "peak_rss_mib": rss, "pseudo_spots": int(src.n_spots),
                  "bins": int(src.metadata["n_bins"]), "total": int(src.counts.sum())}))
"""
)

# The reader before streaming: the whole matrix, the whole positions table, one product.
_BASELINE = (
    _PEAK
    + """
import json, sys, time
from pathlib import Path
import numpy as np, pandas as pd
from hestkit.readers._tenx import read_10x
from hestkit.readers.visium import read_tissue_positions
from hestkit.readers.visium_hd import pool_bins
rss0 = peak_rss_mib()
t = time.perf_counter()
b = Path(sys.argv[1]) / "binned_outputs" / "square_002um"
m = read_10x(b / "filtered_feature_bc_matrix.h5")
pos = read_tissue_positions(b / "spatial" / "tissue_positions.parquet")
rows = pd.Index(pos["barcode"].astype(str)).get_indexer(pd.Index(m.barcodes))
bins = pos.iloc[rows]
p = pool_bins(bins["array_row"], bins["array_col"], m.counts, 28, bins["in_tissue"].to_numpy() > 0)
keep = p.has_tissue & (np.asarray(p.counts.sum(axis=1)).ravel() > 0)
dt = time.perf_counter() - t
rss = peak_rss_mib()
print(json.dumps({"seconds": dt, "import_rss_mib": rss0, "peak_rss_mib": rss, "pseudo_spots": int(keep.sum()),
                  "bins": len(m.barcodes), "total": int(p.counts[np.flatnonzero(keep)].sum())}))
"""
)


def _barcodes(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``s_002um_RRRRR_CCCCC-1`` as a (n, 21) uint8 array, built without Python strings."""
    out = np.empty((rows.size, 21), dtype=np.uint8)
    out[:, :8] = np.frombuffer(b"s_002um_", dtype=np.uint8)
    out[:, 13] = ord("_")
    out[:, 19:] = np.frombuffer(b"-1", dtype=np.uint8)
    for i in range(5):
        p = 10 ** (4 - i)
        out[:, 8 + i] = 48 + (rows // p) % 10
        out[:, 14 + i] = 48 + (cols // p) % 10
    return out


def write_visium_hd(out: Path, n_bins: int, seed: int = 0) -> tuple[int, int, int]:
    """A ``square_002um`` Space Ranger output of about ``n_bins`` bins; returns (rows, cols, nnz)."""
    rng = np.random.default_rng(seed)
    n_rows = max(1, math.isqrt(n_bins))
    n_cols = -(-n_bins // n_rows)
    n = n_rows * n_cols
    folder = out / "binned_outputs" / "square_002um"
    (folder / "spatial").mkdir(parents=True)
    bin_px = BIN_UM / PIXEL_UM
    # nonzero genes per bin, fixed up front so the HDF5 datasets get their final size
    per_bin = rng.integers(10, 21, n, dtype=np.int8)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(per_bin, out=indptr[1:])
    nnz = int(indptr[-1])
    gz = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    schema = pa.schema(
        [
            ("barcode", pa.string()),
            ("in_tissue", pa.int32()),
            ("array_row", pa.int32()),
            ("array_col", pa.int32()),
            ("pxl_row_in_fullres", pa.float64()),
            ("pxl_col_in_fullres", pa.float64()),
        ]
    )
    with (
        h5py.File(folder / "filtered_feature_bc_matrix.h5", "w") as f,
        pq.ParquetWriter(folder / "spatial" / "tissue_positions.parquet", schema) as writer,
    ):
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = np.int64(2)
        g = f.create_group("matrix")
        ds_bc = g.create_dataset("barcodes", shape=(n,), dtype="S21", chunks=(min(n, 80_000),), **gz)
        ds_data = g.create_dataset("data", shape=(nnz,), dtype=np.int32, chunks=(min(nnz, 80_000),), **gz)
        ds_ind = g.create_dataset("indices", shape=(nnz,), dtype=np.int64, chunks=(min(nnz, 80_000),), **gz)
        g.create_dataset("indptr", data=indptr, **gz)
        g.create_dataset("shape", data=np.array([N_GENES, n], dtype=np.int32))
        feats = g.create_group("features")
        feats.create_dataset("id", data=np.array([f"ENSG{i:011d}".encode() for i in range(N_GENES)]))
        feats.create_dataset("name", data=np.array([f"GENE{i:03d}".encode() for i in range(N_GENES)]))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * N_GENES))
        feats.create_dataset("genome", data=np.array([b"GRCh38"] * N_GENES))
        for a in range(0, n, SLICE):
            b = min(a + SLICE, n)
            idx = np.arange(a, b, dtype=np.int64)
            rows, cols = idx // n_cols, idx % n_cols
            bc = _barcodes(rows, cols)
            ds_bc[a:b] = bc.view("S21").ravel()
            # genes of a bin: o, o + s, ..., o + (n - 1) s with a random step s: distinct and sorted
            m = per_bin[a:b].astype(np.int64)
            step = rng.integers(1, 10, b - a)
            start = (rng.random(b - a) * (N_GENES - 20 * step)).astype(np.int64)
            j = np.arange(int(m.sum())) - np.repeat(indptr[a:b] - indptr[a], m)
            genes = np.repeat(start, m) + j * np.repeat(step, m)
            lo, hi = int(indptr[a]), int(indptr[b])
            ds_ind[lo:hi] = genes
            ds_data[lo:hi] = rng.integers(1, 6, hi - lo, dtype=np.int32)
            offsets = pa.py_buffer((np.arange(b - a + 1, dtype=np.int32) * 21).tobytes())
            barcode = pa.StringArray.from_buffers(b - a, offsets, pa.py_buffer(bc.tobytes()))
            writer.write_table(
                pa.table(
                    {
                        "barcode": barcode,
                        "in_tissue": np.ones(b - a, dtype=np.int32),
                        "array_row": rows.astype(np.int32),
                        "array_col": cols.astype(np.int32),
                        "pxl_row_in_fullres": MARGIN_PX + rows * bin_px,
                        "pxl_col_in_fullres": MARGIN_PX + cols * bin_px,
                    },
                    schema=schema,
                )
            )
    scalef = {
        "spot_diameter_fullres": BIN_UM / PIXEL_UM,
        "bin_size_um": BIN_UM,
        "microns_per_pixel": PIXEL_UM,
        "tissue_lowres_scalef": 0.1,
        "tissue_hires_scalef": 0.5,
        "fiducial_diameter_fullres": 1.0,
        "regist_target_img_scalef": 0.5,
    }
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalef, indent=4))
    height = math.ceil(n_rows * bin_px) + 2 * MARGIN_PX
    width = math.ceil(n_cols * bin_px) + 2 * MARGIN_PX

    def render(downsample: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        return np.full((h, w, 3), (200, 150, 190), dtype=np.uint8)

    write_pyramidal_tiff(out / "tissue_fullres.tif", height=height, width=width, render=render, pixel_size_um=PIXEL_UM)
    return n_rows, n_cols, nnz


def _run(code: str, path: Path) -> dict[str, float]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_wall"] = time.perf_counter() - t
    return res


def _du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bins", type=float, nargs="+", default=[1e6, 4e6, 9e6], help="numbers of 2 um bins")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the samples (default: a temp folder)")
    ap.add_argument("--baseline", action="store_true", help="also run the whole-matrix path (pre-streaming reader)")
    args = ap.parse_args()
    own = args.workdir is None
    tmp = Path(tempfile.mkdtemp(prefix="hestkit-visiumhd-")) if own else Path(args.workdir)
    tmp.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    head = (
        f"{'path':<9} {'bins':>10} {'grid':>11} {'nonzeros':>12} {'files MiB':>9} {'gen s':>6} "
        f"{'load s':>7} {'RSS after import MiB':>20} {'peak RSS MiB':>12} {'pseudo-spots':>12}"
    )
    print(head)
    try:
        for n_req in (int(x) for x in args.bins):
            sample = tmp / f"hd_{n_req}"
            shutil.rmtree(sample, ignore_errors=True)
            t = time.perf_counter()
            n_rows, n_cols, nnz = write_visium_hd(sample, n_req)
            gen = time.perf_counter() - t
            size = _du(sample)
            runs = [("streamed", _CHILD)] + ([("baseline", _BASELINE)] if args.baseline else [])
            first: dict[str, float] | None = None
            for name, code in runs:
                r = _run(code, sample)
                first = first or r
                if (r["pseudo_spots"], r["total"]) != (first["pseudo_spots"], first["total"]):
                    raise SystemExit(f"{name} disagrees with the streamed reader: {r} vs {first}")
                print(
                    f"{name:<9} {int(r['bins']):>10,} {f'{n_rows}x{n_cols}':>11} {nnz:>12,} {size:>9.0f} {gen:>6.1f} "
                    f"{r['seconds']:>7.1f} {r['import_rss_mib']:>20.0f} {r['peak_rss_mib']:>12.0f} "
                    f"{int(r['pseudo_spots']):>12,}",
                    flush=True,
                )
            shutil.rmtree(sample, ignore_errors=True)
    finally:
        if own:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
