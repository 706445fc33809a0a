"""Peak memory of ingesting one Visium sample as its slide grows to 100,000 x 100,000 px.

For each slide side W: write a JPEG pyramidal tiled BigTIFF of W x W px (0.25 um/px,
tile by tile through ``hestkit.synthetic.write_pyramidal_tiff``: no level is ever held
whole) with a Space Ranger-like ``outs/`` folder (``tissue_positions.csv``,
``filtered_feature_bc_matrix.h5``, ``scalefactors_json.json``) whose Visium spot grid (the
same number of spots for every W) sits in the middle of the slide; then ingest it with
``catalog.create(...).ingest`` in a fresh process and report that process's peak RSS
(``VmHWM``). The generator's own peak RSS is reported too. The spot count is fixed so the
only thing that grows is the slide.

    .venv/bin/python bench/bench_big_slide_memory.py --sides 25000 50000 100000
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
from pathlib import Path

_VMHWM = """
def vmhwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
"""

_GEN = (
    _VMHWM
    + """
import json, sys, time
from pathlib import Path
import numpy as np
from hestkit.synthetic._build import build_visium_sample
from hestkit.synthetic._grid import VISIUM_FIDUCIAL_DIAMETER_UM, VISIUM_SPOT_DIAMETER_UM
from hestkit.synthetic._tenx import write_10x_h5, write_scalefactors, write_tissue_positions
from hestkit.synthetic import write_pyramidal_tiff
out, side, rows, cols, px = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
t = time.perf_counter()
span_x, span_y = cols * 100.0 / px, rows * 100.0 * 0.866 / px
origin = ((side - span_x) / 2.0, (side - span_y) / 2.0)
b = build_visium_sample(n_rows=rows, n_cols=cols, n_genes=200, pixel_size_um=px, origin_px=origin,
                        in_tissue_fraction=0.85, species="Homo sapiens", seed=7)
(out / "spatial").mkdir(parents=True, exist_ok=True)
keep = b.in_tissue
write_10x_h5(out / "filtered_feature_bc_matrix.h5", b.counts[keep], [x for x, k in zip(b.barcodes, keep) if k],
             b.gene_ids, b.genes, "Homo sapiens")
write_tissue_positions(out / "spatial" / "tissue_positions.csv", barcodes=b.barcodes, in_tissue=b.in_tissue,
                       array_row=b.grid.array_row, array_col=b.grid.array_col, centres_px=b.grid.centres_px, header=True)
write_scalefactors(out / "spatial" / "scalefactors_json.json", hires=2000 / side, lowres=600 / side,
                   spot_diameter_px=VISIUM_SPOT_DIAMETER_UM / px, fiducial_diameter_px=VISIUM_FIDUCIAL_DIAMETER_UM / px)
scene = b.scene
glass = {}

def render(ds, y0, x0, h, w):
    xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * ds
    ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * ds
    if scene.blob.contains_grid(xs, ys) is False:  # all glass: no spot is painted there
        key = (ds, h, w)  # glass noise is the same everywhere: render one such tile per level and size
        if key not in glass:
            glass[key] = scene.render(ds, y0, x0, h, w)
        return glass[key]
    return scene.render(ds, y0, x0, h, w)

write_pyramidal_tiff(out / "slide.tif", height=side, width=side, render=render, pixel_size_um=px, bigtiff=True)
print(json.dumps({"seconds": time.perf_counter() - t, "peak_rss_mib": vmhwm(), "spots": int(keep.sum())}))
"""
)

_INGEST = (
    _VMHWM
    + """
import json, sys, time
import catalog
t = time.perf_counter()
cat = catalog.create(sys.argv[2])
rep = cat.ingest([sys.argv[1]], workers=int(sys.argv[3]))
dt = time.perf_counter() - t
if rep.failed:
    raise SystemExit(rep.failed[0].message)
v = cat.pairs()
print(json.dumps({"seconds": dt, "peak_rss_mib": vmhwm(), "pairs": len(v), "level": cat.manifests()[0]["source_level"]}))
"""
)


def run_child(code: str, *argv: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    res: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sides", type=int, nargs="+", default=[25000, 50000, 100000])
    ap.add_argument("--rows", type=int, default=48, help="Visium array rows (same for every slide)")
    ap.add_argument("--cols", type=int, default=48, help="spots per Visium array row")
    ap.add_argument("--pixel-size", type=float, default=0.25, help="um/px of level 0 (0.25 ~ 40x)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="hestkit-bigslide-"))
    tmp.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
        f"free disk {shutil.disk_usage(tmp).free / 2**30:.0f} GiB"
    )
    print("| slide (px) | TIFF | generate: time, peak RSS | spots in tissue | ingest: time, peak RSS | pairs | source level |")
    print("|---|---|---|---|---|---|---|")
    for side in args.sides:
        outs = tmp / f"visium_{side}"
        shutil.rmtree(outs, ignore_errors=True)
        gen = run_child(_GEN, str(outs), str(side), str(args.rows), str(args.cols), str(args.pixel_size))
        size = (outs / "slide.tif").stat().st_size
        cat_dir = tmp / f"catalog_{side}"
        shutil.rmtree(cat_dir, ignore_errors=True)
        ing = run_child(_INGEST, str(outs), str(cat_dir), str(args.workers))
        print(
            f"| {side:,} x {side:,} | {size / 2**20:,.0f} MiB | {gen['seconds']:.0f} s, {gen['peak_rss_mib']:.0f} MiB | "
            f"{int(gen['spots']):,} | {ing['seconds']:.1f} s, {ing['peak_rss_mib']:.0f} MiB | {int(ing['pairs']):,} | {int(ing['level'])} |",
            flush=True,
        )
        shutil.rmtree(outs, ignore_errors=True)
        shutil.rmtree(cat_dir, ignore_errors=True)
    if args.workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
