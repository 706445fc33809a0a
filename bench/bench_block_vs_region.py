"""Patch extraction from one slide, two ways, in one run.

1. hestkit: tile-aligned blocks of the best pyramid level are decoded once and every
   patch centred in a block is resampled from it (``hestkit.patches``).
2. The HEST-Library way: one OpenSlide ``read_region`` per spot at the same level,
   then a resize to the target size.

Both resize with OpenCV and write the same patches with the same writer to the same kind
of zarr array (sharded, JPEG q90), on one thread. Prints pairs/s for both and the ratio, and checks that both give the
same patches (mean absolute difference in grey levels).

    .venv/bin/python bench/bench_block_vs_region.py [--rows 40 --cols 32 --pixel-size 0.25]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import openslide
import zarr

import catalog  # noqa: F401 - registers the JPEG codec
from catalog._jpeg import JpegCodec
from catalog._shards import write_patches
from hestkit.patches import PairSpec, cut_block, plan_patches
from hestkit.slide import open_slide
from hestkit.synthetic import make_visium


def _array(path: Path, n: int, size: int) -> zarr.Array:
    return zarr.create_array(
        str(path),
        shape=(n, size, size, 3),
        chunks=(1, size, size, 3),
        shards=(64, size, size, 3),
        dtype="uint8",
        serializer=JpegCodec(quality=90),
        compressors=None,
        fill_value=0,
        overwrite=True,
    )


def main() -> None:
    cv2.setNumThreads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--cols", type=int, default=32)
    ap.add_argument("--pixel-size", type=float, default=0.25, help="um/px of the generated slide")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="hestkit-bench-"))
    t = time.perf_counter()
    truth = make_visium(
        tmp / "sample", n_rows=args.rows, n_cols=args.cols, pixel_size_um=args.pixel_size, in_tissue_fraction=1.0, seed=0
    )
    gen_s = time.perf_counter() - t
    h, w = truth.image_shape
    spec = PairSpec()
    centres = truth.centres_px[truth.in_tissue]

    with open_slide(truth.image_path) as slide:
        plan = plan_patches(slide, centres, args.pixel_size, spec)
        n = plan.n_pairs
        level = plan.level
        # 1. block reading
        arr_a = _array(tmp / "a.zarr", plan.n_slots, spec.patch_size_px)
        t = time.perf_counter()
        for block in plan.blocks:
            patches = cut_block(slide, plan, block, centres, spec)
            write_patches(tmp / "a.zarr", block.slot_start, patches)
        block_s = time.perf_counter() - t

    # 2. one read_region per spot (OpenSlide), same level, then resize
    osl = openslide.OpenSlide(str(truth.image_path))
    ds = osl.level_downsamples[level]
    win_l0 = spec.patch_size_px * spec.pixel_size_um / args.pixel_size
    win = round(win_l0 / ds)
    arr_b = _array(tmp / "b.zarr", n, spec.patch_size_px)
    kept = centres[plan.kept]
    t = time.perf_counter()
    buf = np.empty((64, spec.patch_size_px, spec.patch_size_px, 3), np.uint8)
    for start in range(0, n, 64):
        stop = min(start + 64, n)
        for k, (cx, cy) in enumerate(kept[start:stop]):
            x0, y0 = round(cx - win_l0 / 2), round(cy - win_l0 / 2)
            im = osl.read_region((x0, y0), level, (win, win)).convert("RGB")
            buf[k] = cv2.resize(np.asarray(im), (spec.patch_size_px, spec.patch_size_px), interpolation=cv2.INTER_LINEAR)
        write_patches(tmp / "b.zarr", start, buf[: stop - start])
    region_s = time.perf_counter() - t
    osl.close()

    a = np.stack([arr_a[int(plan.slots[i])] for i in range(0, n, max(1, n // 50))]).astype(int)
    b = np.stack([arr_b[i] for i in range(0, n, max(1, n // 50))]).astype(int)
    mad = float(np.abs(a - b).mean())

    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"slide: {w} x {h} px at {args.pixel_size} um/px, JPEG pyramidal TIFF; generated in {gen_s:.1f} s")
    print(f"pairs: {n} (224 px at 0.5 um/px) from level {level} (downsample {ds:g}); blocks: {len(plan.blocks)}")
    print(f"block reading (hestkit):        {block_s:7.2f} s  {n / block_s:8.1f} pairs/s")
    print(f"read_region per spot (HEST way): {region_s:7.2f} s  {n / region_s:8.1f} pairs/s")
    print(f"ratio block / per-spot: {region_s / block_s:.2f}x")
    print(f"mean |difference| between the two ways' patches: {mad:.2f} grey levels")
    if args.workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
