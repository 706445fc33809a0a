"""Peak memory of a slide thumbnail as the slide grows, with and without pyramid levels.

For each side W: write a W x W px RGB tiled TIFF (512 px tiles, zlib; each tile one
flat colour, so writing and decoding cost little beyond moving the pixels) as a single
level and as a pyramid (levels halving down to < 1,024 px; written tile by tile, no
level held whole), then in a fresh process open it and build the 1,024 px thumbnail
ingest stores (``Slide.thumbnail(1024)``), reporting the process's peak RSS
(``VmHWM``), what the thumbnail added to it (``ru_maxrss`` after minus before), and
the time. ``--whole-up-to`` also runs the pre-fix way (decode the level whole, then
resize) on single-level slides up to that side; beyond ~30k px it needs more memory
than a small machine has (W * W * 3 bytes for the level alone).

    .venv/bin/python bench/bench_thumbnail_memory.py --sides 25000 50000 100000 --whole-up-to 25000
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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TILE = 512

_CHILD = """
import json, resource, sys, time
import numpy as np
from PIL import Image
from hestkit.slide import open_slide

def vmhwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))

path, mode = sys.argv[1], sys.argv[2]
s = open_slide(path)
s.read_region(0, 0, 0, 64, 64)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
if mode == "whole":  # the pre-fix thumbnail of a slide without a small level
    lvl = s.levels[-1]
    a = s.read_region(len(s.levels) - 1, 0, 0, lvl.width, lvl.height)
    scale = max(lvl.width, lvl.height) / 1024
    thumb = np.asarray(Image.fromarray(a).resize((round(lvl.width / scale), round(lvl.height / scale)), Image.Resampling.BOX))
else:
    thumb, _ = s.thumbnail(1024)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "vmhwm_mib": vmhwm(), "added_mib": peak - base, "levels": len(s.levels),
                  "shape": list(thumb.shape)}))
"""


def _colour(ds: int, ty: int, tx: int) -> tuple[int, int, int]:
    return (ty * ds * 7) % 256, (tx * ds * 13) % 256, 128


def _tiles(h: int, w: int, ds: int) -> Iterator[np.ndarray]:
    for ty in range(-(-h // TILE)):
        for tx in range(-(-w // TILE)):
            yield np.broadcast_to(np.array(_colour(ds, ty, tx), np.uint8), (TILE, TILE, 3))


def write_tiff(path: Path, side: int, pyramid: bool) -> None:
    import tifffile

    shapes = [(side, side)]
    while pyramid and max(shapes[-1]) >= 1024:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, (h, w) in enumerate(shapes):
            tw.write(
                data=_tiles(h, w, 2**i),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="zlib",
                compressionargs={"level": 1},
                subfiletype=1 if i else 0,
                metadata=None,
            )


def run_child(path: Path, mode: str) -> dict[str, float]:
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode], capture_output=True, text=True, env=env)
    if out.returncode:
        return {"error": out.returncode, "stderr": out.stderr[-300:]}  # type: ignore[dict-item]
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", type=int, nargs="+", default=[25000, 50000, 100000])
    ap.add_argument("--whole-up-to", type=int, default=25000, help="also run the pre-fix whole-level decode up to this side")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="hestkit-thumb-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
        f"free disk {shutil.disk_usage(tmp).free / 2**30:.0f} GiB"
    )
    print("| slide (px) | levels | TIFF | write | thumbnail: time | peak RSS (VmHWM) | added by the thumbnail | way |")
    print("|---|---|---|---|---|---|---|---|")
    for side in args.sides:
        for pyramid in (False, True):
            path = tmp / f"{'pyr' if pyramid else 'flat'}_{side}.tif"
            t = time.perf_counter()
            write_tiff(path, side, pyramid)
            wt = time.perf_counter() - t
            modes = ["blocks"] + (["whole"] if not pyramid and side <= args.whole_up_to else [])
            for mode in modes:
                r = run_child(path, mode)
                if "error" in r:
                    print(f"| {side:,} | {'pyramid' if pyramid else 'single'} | | | failed: {r} | | | {mode} |", flush=True)
                    continue
                way = "this hestkit" if mode == "blocks" else "pre-fix (decode the level whole)"
                print(
                    f"| {side:,} x {side:,} | {int(r['levels'])} | {path.stat().st_size / 2**20:,.0f} MiB | {wt:.0f} s | "
                    f"{r['seconds']:.1f} s | {r['vmhwm_mib']:,.0f} MiB | {r['added_mib']:,.0f} MiB | {way} |",
                    flush=True,
                )
            path.unlink()
    if args.workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
