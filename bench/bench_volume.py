"""Volumes: ingest-volume memory and speed as the volume grows, and sub-volume throughput.

``ingest``: writes synthetic OME-TIFF stacks (``make_large_volume``, plane by plane), then,
in a fresh process per size and method, converts each to a multiscale OME-Zarr and reports
wall time and that process's peak RSS (VmHWM):

- hestkit: ``Catalog.ingest_volume`` (slabs of 16 planes x 1024^2 tiles, pyramid slab by slab);
- peer: ``tifffile.imread`` of the stack then ``ome_zarr.writer.write_image`` (the usual
  ome-zarr-py recipe, which takes an in-memory array), same chunks and levels.

``extract``: 224 px sub-volumes (``VolumePairSpec()``) from the ingested volume at N random
centres: one ``extract_subvolume`` call per centre vs one batched ``extract_subvolumes``.

``learn``: is the synthetic cohort's expression learnable from its 3D morphology? Hand-made
sub-volume features (intensity histogram, bright/dark fractions, radial power spectrum of
the centre plane) + ridge, fitted on one volume's three sections and tested on another
volume's: per-gene Pearson against the measured counts and against the truth.

    .venv/bin/python bench/bench_volume.py ingest --shapes 50x1000x1000 200x2000x2000
    .venv/bin/python bench/bench_volume.py extract --shape 100x1000x1000 --n 256
    .venv/bin/python bench/bench_volume.py learn
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_HWM = """
def _hwm():
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        with open("/proc/self/status") as fh:
            rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    return rss
"""

_HESTKIT = (
    _HWM
    + """
import json, sys, time
import catalog
cat = catalog.create(sys.argv[2])
t = time.perf_counter()
r = cat.ingest_volume(sys.argv[1], "v", modality="microct")
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mib": _hwm(), "levels": r.n_levels}))
"""
)

_PEER = (
    _HWM
    + """
import json, sys, time
import numpy as np, tifffile, zarr
from ome_zarr.io import parse_url
from ome_zarr.writer import write_image
from hestkit.ngff import pyramid_plan
t = time.perf_counter()
a = tifffile.imread(sys.argv[1])
n = len(pyramid_plan(a.shape, (2.0, 2.0, 2.0)))
root = zarr.group(store=parse_url(sys.argv[2], mode="w").store)
axes = [{"name": ax, "type": "space", "unit": "micrometer"} for ax in "zyx"]
write_image(a, root, axes=axes, scale_factors=[2] * (n - 1), storage_options={"chunks": (16, 256, 256)})
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mib": _hwm(), "levels": n}))
"""
)


def _run(code: str, *args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _shape(s: str) -> tuple[int, int, int]:
    z, y, x = (int(v) for v in s.lower().split("x"))
    return z, y, x


def bench_ingest(shapes: list[str], keep: Path | None) -> None:
    from hestkit.synthetic import make_large_volume

    tmp = Path(tempfile.mkdtemp(prefix="hk_vol_", dir=keep))
    rows = []
    try:
        for s in shapes:
            shape = _shape(s)
            src = tmp / f"v_{s}.ome.tif"
            t = time.perf_counter()
            make_large_volume(src, shape_zyx=shape, voxel_size_um=(2.0, 2.0, 2.0), seed=1)
            gen = time.perf_counter() - t
            mib = src.stat().st_size / 2**20
            ours = _run(_HESTKIT, str(src), str(tmp / f"cat_{s}"))
            peer = _run(_PEER, str(src), str(tmp / f"peer_{s}.zarr"))
            vox = shape[0] * shape[1] * shape[2]
            rows.append((s, vox, mib, gen, ours, peer))
            shutil.rmtree(tmp / f"cat_{s}", ignore_errors=True)
            shutil.rmtree(tmp / f"peer_{s}.zarr", ignore_errors=True)
            src.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(
        "| volume (z x y x x) | voxels | hestkit ingest-volume | peak RSS | tifffile.imread + ome-zarr write_image | peak RSS | RSS ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for s, vox, _mib, _gen, o, p in rows:
        print(
            f"| {s} | {vox / 1e6:,.0f} M | {o['seconds']:.1f} s ({vox / o['seconds'] / 1e6:.1f} Mvox/s) | {o['peak_rss_mib']:,.0f} MiB "
            f"| {p['seconds']:.1f} s | {p['peak_rss_mib']:,.0f} MiB | {p['peak_rss_mib'] / o['peak_rss_mib']:.1f}x |"
        )


def bench_extract(shape_s: str, n: int) -> None:
    import numpy as np

    import catalog
    from hestkit.synthetic import make_large_volume
    from hestkit.volume import VolumePairSpec, extract_subvolume, extract_subvolumes

    tmp = Path(tempfile.mkdtemp(prefix="hk_volx_"))
    try:
        shape = _shape(shape_s)
        make_large_volume(tmp / "v.zarr", shape_zyx=shape, voxel_size_um=(2.0, 2.0, 2.0), seed=2, fmt="ome-zarr")
        cat = catalog.create(tmp / "cat")
        cat.ingest_volume(tmp / "v.zarr", "v")
        vol = cat.volume("v")
        spec = VolumePairSpec()
        ext = np.array(shape) * 2.0
        rng = np.random.default_rng(0)
        centres = rng.uniform(0.1, 0.9, size=(n, 3)) * ext
        centres[:, 0] = ext[0] / 2  # pairs of one section plane, as training reads them
        t = time.perf_counter()
        single = np.stack([extract_subvolume(vol, tuple(c), spec) for c in centres])
        t_single = time.perf_counter() - t
        t = time.perf_counter()
        batched = extract_subvolumes(vol, centres, spec)
        t_batch = time.perf_counter() - t
        assert (single == batched).all()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; volume {shape_s} at 2 um, {n} sub-volumes of 9x224x224"
    )
    print("| method | sub-volumes/s | ratio |")
    print("|---|---|---|")
    print(f"| extract_subvolume, one call per centre | {n / t_single:.1f} | 1.0x |")
    print(f"| extract_subvolumes, batched (blocks read once) | {n / t_batch:.1f} | {t_single / t_batch:.1f}x |")


def bench_learn(seed: int) -> None:
    import numpy as np
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    import catalog
    from hestkit.sample import ReadOptions
    from hestkit.synthetic import make_volume_cohort
    from hestkit.volume import VolumePairSpec

    tmp = Path(tempfile.mkdtemp(prefix="hk_voll_"))
    try:
        co = make_volume_cohort(
            tmp / "data",
            seed=seed,
            n_volumes=2,
            shape_zyx=(24, 400, 400),
            section_depths_um=(12, 24, 36),
            n_genes=24,
            section_pixel_size_um=1.0,
        )
        cat = catalog.create(tmp / "cat")
        for v in co.volumes:
            cat.ingest_volume(v.path, v.volume_id)
            rep = cat.ingest([s.path for s in v.sections], options=ReadOptions(patient=v.patient), workers=1)
            assert not rep.failed, rep.failed[0].message
            for s in v.sections:
                cat.link_section(s.sample_id, v.volume_id, s.z_um, affine=s.affine_path)
        view = cat.volume_pairs(spec=VolumePairSpec(size_um=112, size_px=112, depth_um=20, n_slices=5))
        subs = view.subvolumes(range(len(view)))
        truth = np.zeros((len(view), len(view.genes)))
        vol = view.obs["volume_id"].to_numpy()
        for v in co.volumes:
            m = vol == v.volume_id
            truth[m] = np.log1p(v.true_expression(view.obs.loc[m, ["z_um", "y_um", "x_um"]].to_numpy()))
        y = np.log1p(view.expression().toarray())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def feats(sv: np.ndarray) -> np.ndarray:
        c = sv[..., 0].astype(float)
        f = [c.mean(), (c > 180).mean(), (c < 45).mean(), float(np.median(c))]
        f += list(np.histogram(c, bins=12, range=(0, 256))[0] / c.size)
        mid = c[len(c) // 2] - c[len(c) // 2].mean()
        power = np.abs(np.fft.rfft2(mid)) ** 2
        k = np.sqrt(np.fft.fftfreq(mid.shape[0])[:, None] ** 2 + np.fft.rfftfreq(mid.shape[1])[None, :] ** 2)
        edges = np.linspace(0, 0.5, 11)
        bands = np.array([power[(k >= a) & (k < b)].sum() for a, b in itertools.pairwise(edges)])
        return np.array(f + list(bands / (bands.sum() + 1e-9)))

    x = np.stack([feats(sv) for sv in subs])
    tr, te = vol == "vol0", vol == "vol1"
    sc = StandardScaler().fit(x[tr])
    pred = Ridge(alpha=1.0).fit(sc.transform(x[tr]), y[tr]).predict(sc.transform(x[te]))

    def pearson(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.nanmean([np.corrcoef(a[:, g], b[:, g])[0, 1] for g in range(a.shape[1])]))

    print(f"pairs: {tr.sum()} train (vol0, 3 sections), {te.sum()} test (vol1, 3 sections), {len(view.genes)} genes")
    print("| mean per-gene Pearson | value |")
    print("|---|---|")
    print(f"| features + ridge vs measured counts | {pearson(pred, y[te]):.3f} |")
    print(f"| features + ridge vs truth | {pearson(pred, truth[te]):.3f} |")
    print(f"| measured counts vs truth (noise ceiling) | {pearson(y[te], truth[te]):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    a = sub.add_parser("ingest")
    a.add_argument("--shapes", nargs="+", default=["50x1000x1000", "200x2000x2000"])
    a.add_argument("--tmp", type=Path, default=None, help="folder for the temporary files (default: system temp)")
    b = sub.add_parser("extract")
    b.add_argument("--shape", default="100x1000x1000")
    b.add_argument("--n", type=int, default=256)
    c = sub.add_parser("learn")
    c.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.what == "ingest":
        bench_ingest(args.shapes, args.tmp)
    elif args.what == "extract":
        bench_extract(args.shape, args.n)
    else:
        bench_learn(args.seed)


if __name__ == "__main__":
    main()
