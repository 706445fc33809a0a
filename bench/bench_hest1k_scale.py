"""A catalog shaped like HEST-1k: build time and size, query latency, loader throughput.

Builds (or reuses) a catalog with one sample per row of the HEST-1k metadata CSV (real
organ, technology, species, patient, spot and gene counts; sparse counts; patches for
``--patch-fraction`` of the samples; see ``bench/_hest1k_scale.py``), then measures, in
one run:

* build time and size on disk (SOMA, patches, manifests);
* ``catalog.open`` + ``pairs(organ=..., technology=...)`` to a view (cold: fresh
  process state for the catalog object, imports already done), and again (warm);
* obs plus a 50-gene expression matrix over every spot of the catalog;
* random-access pair throughput through ``PairView.to_torch`` with a shuffled DataLoader
  at 1 and 2 workers, against the same patches read from HEST-style per-sample ``.h5``
  files (``img`` chunked one patch per chunk, h5py), same pairs, same expression, same
  batch size: a ratio;
* peak RSS (VmHWM) and USS of a DataLoader worker.

    .venv/bin/python bench/bench_hest1k_scale.py --workdir /tmp/hestkit-scale --patch-fraction 0.05 \
        --density-scale 0.02 --samples-per-commit 25 --build-only     # build once (~14 min here)
    .venv/bin/python bench/bench_hest1k_scale.py --workdir /tmp/hestkit-scale --repeats 2   # measure

``--samples 40`` builds a seeded subset of the metadata rows for a quick try.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _hest1k_scale as scale

GENES_50 = [
    *("ACTB GAPDH EPCAM KRT8 KRT18 KRT19 CDH1 ESR1 PGR ERBB2 MKI67 TOP2A VIM COL1A1 COL1A2 COL3A1 FN1 SPARC ACTA2 TAGLN".split()),
    *("MYH11 DCN LUM POSTN PTPRC CD3E CD4 CD8A MS4A1 CD68".split()),
    *[
        f"GENE{i:04d}"
        for i in (
            120,
            250,
            400,
            700,
            1000,
            1500,
            2200,
            3000,
            4100,
            5500,
            7000,
            9000,
            11000,
            13500,
            16000,
            19000,
            22000,
            25000,
            28000,
            30500,
        )
    ],
]


def du(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _status(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def worker_memory() -> list[dict[str, float]]:
    import psutil

    rows = []
    for ch in psutil.Process().children(recursive=True):
        try:
            uss = ch.memory_full_info().uss / 2**20
        except (psutil.Error, OSError):
            continue
        rows.append({"pid": ch.pid, "uss_mib": uss, **_status(ch.pid)})
    return rows


def uint8_chw(patch: np.ndarray) -> Any:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor: normalisation is left to the GPU, so the
    loader moves 1 byte per pixel (the same transform for both datasets)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)


class H5PairDataset:
    """Pairs from HEST-style ``patches/{id}.h5`` files (``img`` one patch per chunk),
    expression preloaded as CSR, the same way PairDataset preloads it."""

    def __init__(self, files: dict[str, str], samples: np.ndarray, rows: np.ndarray, X: Any) -> None:
        self.files, self.samples, self.rows, self.X = files, samples, rows, X
        self._h: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import h5py
        import torch

        s = str(self.samples[i])
        f = self._h.get(s)
        if f is None:
            f = self._h[s] = h5py.File(self.files[s], "r")
        patch = f["img"][int(self.rows[i])]
        e = np.asarray(self.X[i].toarray()).ravel().astype(np.float32)
        return uint8_chw(patch), torch.from_numpy(e)


def loader_rate(ds: Any, workers: int, n_items: int, batch: int, seed: int) -> tuple[float, list[dict[str, float]]]:
    """Pairs/s of a shuffled DataLoader over ``n_items`` random pairs (first batch excluded),
    and the workers' memory sampled once the loader has run for a while."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(ds, replacement=False, num_samples=min(n_items + batch, len(ds)), generator=g)
    dl = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(dl)
    next(it)  # start-up and first batch excluded
    t = time.perf_counter()
    n = 0
    mem: list[dict[str, float]] = []
    for img, _e in it:
        n += img.shape[0]
        if workers and not mem and n >= n_items // 2:
            mem = worker_memory()
    dt = time.perf_counter() - t
    return n / dt, mem


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    ap.add_argument("--metadata", type=Path, default=here.parent.parent / "shared" / "hest1k_metadata_v1_1_0.csv")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hestkit-scale"))
    ap.add_argument("--samples", type=int, default=None, help="seeded subset of the metadata rows (default: all)")
    ap.add_argument("--patch-fraction", type=float, default=0.05)
    ap.add_argument("--density-scale", type=float, default=0.02, help="x realistic detected genes per spot")
    ap.add_argument("--samples-per-commit", type=int, default=1, help="samples per SOMA append (TileDB fragment)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild even if the catalog exists")
    ap.add_argument("--loader-pairs", type=int, default=3000)
    ap.add_argument("--loader-samples", type=int, default=8, help="patch samples used in the loader comparison")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loader-repeats", type=int, default=2, help="alternating runs per loader; the best is kept")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--skip-loader", action="store_true", help="build and query figures only (no patches needed)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import catalog

    root = args.workdir / "catalog"
    stats_path = args.workdir / "build.json"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    if args.rebuild or not stats_path.exists():
        shutil.rmtree(root, ignore_errors=True)
        args.workdir.mkdir(parents=True, exist_ok=True)
        md = scale.read_metadata(args.metadata, args.samples, seed=args.seed)
        t0 = time.perf_counter()

        def progress(k: int, n: int) -> None:
            if k % 50 == 0 or k == n:
                print(f"  built {k}/{n} samples, {time.perf_counter() - t0:.0f} s", flush=True)

        st = scale.build_scale_catalog(
            root,
            md,
            patch_fraction=args.patch_fraction,
            density_scale=args.density_scale,
            samples_per_commit=args.samples_per_commit,
            seed=args.seed,
            progress=progress,
        )
        sizes = {p.name: du(p) for p in root.iterdir() if p.is_dir()}
        stats = {
            **st.__dict__,
            "patch_samples": list(st.patch_samples),
            "sizes": sizes,
            "total_bytes": du(root),
            "density_scale": args.density_scale,
            "patch_fraction": args.patch_fraction,
            "samples_per_commit": args.samples_per_commit,
        }
        stats_path.write_text(json.dumps(stats, indent=1))
    stats = json.loads(stats_path.read_text())
    gib = 2**30
    print(
        f"| build | {stats['n_samples']:,} samples, {stats['n_spots']:,} spots, {stats['n_nonzero'] / 1e6:,.0f} M non-zeros, "
        f"{stats['n_var']:,} genes, {stats['n_patches']:,} patches ({stats['n_patch_samples']} samples), "
        f"{stats.get('samples_per_commit', 1)} sample(s) per SOMA commit | "
        f"{stats['seconds']:.0f} s | {stats['total_bytes'] / gib:.2f} GiB "
        f"(soma {stats['sizes'].get('soma', 0) / gib:.2f}, patches {stats['sizes'].get('patches', 0) / gib:.2f}, "
        f"manifest {stats['sizes'].get('manifest', 0) / gib:.3f}, genes {stats['sizes'].get('genes', 0) / gib:.3f}) |"
    )
    if args.build_only:
        return

    from catalog import _soma

    _soma._soma()  # import tiledbsoma outside the timings
    md = scale.read_metadata(args.metadata, args.samples, seed=args.seed)
    top = md.groupby(["organ", "technology"]).size().sort_values(ascending=False)
    (organ, tech), _n = top.index[0], top.iloc[0]
    for rep in range(args.repeats):
        t = time.perf_counter()
        cat = catalog.open(root)
        v = cat.pairs(organ=organ, technology=tech)
        dt = time.perf_counter() - t
        print(
            f"| open + pairs(organ={organ!r}, technology={tech!r}) #{rep + 1} | {len(v):,} pairs, {v.obs['sample_id'].nunique()} samples | {dt:.2f} s |"
        )
    t = time.perf_counter()
    v2 = cat.pairs(organ=organ, technology=tech)
    print(f"| same query, same Catalog object | {len(v2):,} pairs | {time.perf_counter() - t:.2f} s |")
    want = (md["organ"].str.lower() == organ.lower()) & (md["technology"] == tech)
    assert len(v) == int(md.loc[want, "spots_under_tissue"].sum()), "pair count differs from the metadata"
    for rep in range(args.repeats):
        t = time.perf_counter()
        cat = catalog.open(root)
        v = cat.pairs(genes=GENES_50)
        t_view = time.perf_counter() - t
        X = v.expression()
        dt = time.perf_counter() - t
        print(
            f"| open + pairs(genes=50) + expression(), whole catalog #{rep + 1} | {len(v):,} pairs x {X.shape[1]} genes, "
            f"{X.nnz:,} non-zeros | view {t_view:.2f} s, total {dt:.2f} s |"
        )
    assert len(v) == stats["n_spots"]
    # the same 50-gene read from each X layer, in this run: a ratio
    layer_s: dict[str, float] = {}
    mats = {}
    default_fraction = _soma.BY_GENE_MAX_FRACTION
    for label, frac in (("gene-major X/counts_by_gene", 1.0), ("row-major X/counts", 0.0)):
        _soma.BY_GENE_MAX_FRACTION = frac
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            mats[label] = v.expression()
            best = min(best, time.perf_counter() - t)
        layer_s[label] = best
        print(f"| expression(), 50 genes x {len(v):,} pairs, {label} (best of {args.repeats}) | {best:.2f} s |")
    _soma.BY_GENE_MAX_FRACTION = default_fraction
    a, b = mats.values()
    assert a.nnz == b.nnz and (a != b).nnz == 0, "the two X layers disagree"
    g, r = layer_s.values()
    print(f"| 50-gene read, row-major / gene-major | {r / g:.1f}x |")
    del mats, a, b

    if args.skip_loader:
        return
    # -- loader: catalog (zarr JPEG shards) vs HEST-style per-sample .h5 -------------------
    import gc

    del v, v2, X  # the workers fork from this process: do not hand them the whole-catalog query
    gc.collect()
    from catalog.export import _write_hest_patches

    rng = np.random.default_rng(args.seed)
    psamples = sorted(
        rng.choice(stats["patch_samples"], size=min(args.loader_samples, len(stats["patch_samples"])), replace=False).tolist()
    )
    view = cat.pairs(sample_ids=psamples, genes=GENES_50[:10])
    h5dir = args.workdir / "h5"
    h5dir.mkdir(exist_ok=True)
    files = {}
    for s in psamples:
        f = h5dir / f"{s}.h5"
        if not f.exists():
            _write_hest_patches(cat, s, f)
        files[s] = str(f)
    h5_bytes = sum(Path(f).stat().st_size for f in files.values())
    ds_cat = view.to_torch(transform=uint8_chw)
    ds_h5 = H5PairDataset(files, view.obs["sample_id"].to_numpy(), view.obs["patch_index"].to_numpy(), ds_cat._X)
    print(
        f"loader: {len(view):,} pairs from {len(psamples)} samples; .h5 files {h5_bytes / gib:.2f} GiB; "
        f"batch {args.batch}; {args.loader_pairs} random pairs per measurement; images as uint8 CHW tensors"
    )
    for w in args.workers:
        rates_cat, rates_h5 = [], []
        for rep in range(args.loader_repeats):  # alternate the two, keep the best of each
            r, mem = loader_rate(ds_cat, w, args.loader_pairs, args.batch, args.seed + 10 * w + rep)
            rates_cat.append(r)
            r, mem_h5 = loader_rate(ds_h5, w, args.loader_pairs, args.batch, args.seed + 10 * w + rep)
            rates_h5.append(r)
        r_cat, r_h5 = max(rates_cat), max(rates_h5)
        m = max(mem, key=lambda d: d.get("VmHWM", 0.0)) if mem else {}
        mh = max(mem_h5, key=lambda d: d.get("VmHWM", 0.0)) if mem_h5 else {}
        print(
            f"| {w} worker(s) | catalog {r_cat:,.0f} pairs/s | HEST .h5 {r_h5:,.0f} pairs/s | ratio {r_cat / r_h5:.2f} | "
            f"catalog worker peak RSS {m.get('VmHWM', float('nan')):.0f} MiB, USS {m.get('uss_mib', float('nan')):.0f} MiB | "
            f".h5 worker peak RSS {mh.get('VmHWM', float('nan')):.0f} MiB, USS {mh.get('uss_mib', float('nan')):.0f} MiB | "
            f"all runs: catalog {', '.join(f'{x:.0f}' for x in rates_cat)}; .h5 {', '.join(f'{x:.0f}' for x in rates_h5)} |"
        )


if __name__ == "__main__":
    main()
