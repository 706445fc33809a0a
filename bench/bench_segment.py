"""Tissue segmentation of a 100,000 x 100,000 px pyramidal slide: time, peak memory, IoU.

1. Generate one synthetic slide with ``hestkit.synthetic.make_slide_cohort`` (BigTIFF,
   JPEG tiles, 0.5 um/px; tissue pieces with holes, pen ink, dust, edge shadows), written
   tile by tile, with its truth tissue mask at downsample 64 (kept in ``--workdir`` and
   reused by later runs).
2. In fresh processes (peak RSS = ``VmHWM``), each reading the slide cold from its file:
   - ``hestkit.tissue.segment_tissue`` at its default 8 um/px, at 16 um/px (the ingest's)
     and at 32 um/px;
   - the CLAM-style pipeline (``WholeSlideImage.segmentTissue`` as CLAM and TRIDENT's
     non-deep path run it, re-implemented here: one OpenSlide ``read_region`` of the whole
     level nearest downsample 64, median-blurred saturation, Otsu, closing, contours with
     holes, area filters; no ink or shadow removal).
3. IoU of each mask against the truth, and the share of the pen ink and shadow pixels it
   calls tissue.

    .venv/bin/python bench/bench_segment.py --side 100000 --workdir /tmp/bench_segment
    .venv/bin/python bench/bench_segment.py --side 50000 --pens green+blue+black
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
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
from hestkit.synthetic.slides import make_slide_cohort
t = time.perf_counter()
pens = tuple(sys.argv[4].split("+")) if sys.argv[4] else None
df = make_slide_cohort(sys.argv[1], n_slides=1, size_px=int(sys.argv[2]), seed=int(sys.argv[3]), mpp=0.5, pens=pens)
row = df.iloc[0].to_dict()
row.update(seconds=time.perf_counter() - t, peak_rss_mib=vmhwm())
print(json.dumps(row))
"""
)

_OURS = (
    _VMHWM
    + """
import json, sys, time
import numpy as np
t = time.perf_counter()
from hestkit.tissue import segment_tissue
mask = segment_tissue(sys.argv[1], target_mpp=float(sys.argv[2]))
dt = time.perf_counter() - t
np.save(sys.argv[3], mask.raster(float(sys.argv[4])))
print(json.dumps({"seconds": dt, "peak_rss_mib": vmhwm(), "pieces": mask.n_pieces,
                  "working_um_per_px": mask.params["working_um_per_px"]}))
"""
)

_CLAM = (
    _VMHWM
    + """
import json, sys, time
import numpy as np
t = time.perf_counter()
import cv2, openslide
s = openslide.OpenSlide(sys.argv[1])
level = s.get_best_level_for_downsample(64)
ds = s.level_downsamples[level]
img = np.asarray(s.read_region((0, 0), level, s.level_dimensions[level]).convert("RGB"))
hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
sat = cv2.medianBlur(hsv[:, :, 1], 7)
_, bw = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
bw = cv2.morphologyEx(bw, cv2.MORPH_CLOSE, np.ones((4, 4), np.uint8))
# CLAM's defaults: a_t = 100, a_h = 16 in units of a 512 x 512 reference patch at level 0,
# scaled to the segmentation level
scale = 512 * 512 / (ds * ds)
contours, hier = cv2.findContours(bw, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
out = np.zeros(bw.shape, np.uint8)
if hier is not None:
    hier = hier[0]
    for i, c in enumerate(contours):
        if hier[i][3] != -1:
            continue
        holes, j = [], hier[i][2]
        while j != -1:
            holes.append(contours[j]); j = hier[j][0]
        area = cv2.contourArea(c) - sum(cv2.contourArea(h) for h in holes)
        if area <= 100 * scale:
            continue
        cv2.drawContours(out, [c], -1, 1, -1)
        big = [h for h in holes if cv2.contourArea(h) > 16 * scale]
        if big:
            cv2.drawContours(out, big, -1, 0, -1)
dt = time.perf_counter() - t
tds = float(sys.argv[3])
th, tw = -(-s.dimensions[1] // int(tds)), -(-s.dimensions[0] // int(tds))
np.save(sys.argv[2], cv2.resize(out, (tw, th), interpolation=cv2.INTER_NEAREST) > 0)
print(json.dumps({"seconds": dt, "peak_rss_mib": vmhwm(), "level_downsample": ds}))
"""
)


def _run(code: str, *args: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    if res.returncode:
        raise SystemExit(f"subprocess failed:\n{res.stderr[-3000:]}")
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--side", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_segment"))
    ap.add_argument("--pens", default="", help="ink colours on the slide, e.g. green+blue+black (default: seeded)")
    args = ap.parse_args()
    import numpy as np
    from PIL import Image

    work = args.workdir / f"side{args.side}_seed{args.seed}{'_' + args.pens if args.pens else ''}"
    meta_file = work / "generated.json"
    if meta_file.exists():
        gen = json.loads(meta_file.read_text())
        gen["reused"] = True
    else:
        work.mkdir(parents=True, exist_ok=True)
        gen = _run(_GEN, str(work), str(args.side), str(args.seed), args.pens)
        meta_file.write_text(json.dumps(gen))
    slide, tds = str(gen["path"]), float(gen["truth_downsample"])  # type: ignore[arg-type]
    truth = np.asarray(Image.open(str(gen["truth_mask"]))) > 0
    classes = np.asarray(Image.open(str(gen["classes_mask"])))
    rows: list[dict[str, object]] = []
    for name, code, extra in [
        ("hestkit threshold, 8 um/px (default)", _OURS, ["8.0"]),
        ("hestkit threshold, 16 um/px (what ingest uses)", _OURS, ["16.0"]),
        ("hestkit threshold, 32 um/px", _OURS, ["32.0"]),
        ("CLAM-style (OpenSlide read_region of the ds-64 level, Otsu)", _CLAM, []),
    ]:
        npy = str(work / f"pred_{len(rows)}.npy")
        t0 = time.perf_counter()
        res = _run(code, slide, *extra, npy, str(tds)) if code is _OURS else _run(code, slide, npy, str(tds))
        wall = time.perf_counter() - t0
        pred = np.load(npy)
        iou = float((pred & truth).sum() / max((pred | truth).sum(), 1))
        pen, shadow = classes == 4, classes == 6
        rows.append(
            {
                "method": name,
                "seconds": res["seconds"],
                "process_wall_s": wall,
                "peak_rss_mib": res["peak_rss_mib"],
                "iou": iou,
                "pen_called_tissue": float((pred & pen).sum() / max(pen.sum(), 1)),
                "shadow_called_tissue": float((pred & shadow).sum() / max(shadow.sum(), 1)),
            }
        )
    tif_mib = Path(slide).stat().st_size / 2**20
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}")
    print(
        f"slide: {args.side} x {args.side} px, {tif_mib:,.0f} MiB BigTIFF, pens {gen['pens']}; generated in "
        f"{float(gen['seconds']):.0f} s, peak RSS {float(gen['peak_rss_mib']):.0f} MiB"  # type: ignore[arg-type]
        + (" (reused)" if gen.get("reused") else "")
    )
    print("| method | time (s) | peak RSS (MiB) | IoU vs truth | pen called tissue | shadow called tissue |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {float(r['seconds']):.1f} | {float(r['peak_rss_mib']):.0f} | {float(r['iou']):.3f} | "  # type: ignore[arg-type]
            f"{float(r['pen_called_tissue']):.1%} | {float(r['shadow_called_tissue']):.1%} |"  # type: ignore[arg-type]
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
