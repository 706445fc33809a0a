"""Real data on a real full disk: the Seurat Visium mouse brain (2,695 spots, lowres image)
ingested into a catalog on a 96 MiB tmpfs that is filled right before the commit appends
its rows; then space is freed, `check`, re-ingest, `check`, read, compact. Needs root
(it mounts a tmpfs).

    PYTHONPATH=. python bench/full_disk_recovery.py [REALDATA_DIR] [MOUNT_POINT]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import catalog
from catalog import _faults
from catalog.check import check_catalog
from hestkit.sample import ReadOptions


def main() -> None:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/realdata/visium_seurat_mousebrain")
    mnt = Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/hestkit-full-disk")
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mnt)], check=True)
    # the run ships only Space Ranger's lowres PNG (~14 um/px): accepted explicitly (and recorded as
    # upsampled), since this bench is about the disk filling, not the image
    opts = ReadOptions(sample_id="mousebrain", image=src / "spatial" / "tissue_lowres_image.png", allow_upsampling=True)
    filler = mnt / "filler"
    try:
        cat = catalog.create(mnt / "cat")
        _faults.set_fault_hook(_faults.fill_disk_at("before-soma", filler))
        t0 = time.perf_counter()
        rep = cat.ingest([src], options=opts, workers=2)
        _faults.set_fault_hook(None)
        r = rep.results[0]
        print(f"full disk: {r.status} | {r.message} | {time.perf_counter() - t0:.1f} s")
        zero = [p for p in (mnt / "cat" / "soma").rglob("__schema/*") if p.is_file() and p.stat().st_size == 0]
        print("zero-byte schema files left:", len(zero))
        os.remove(filler)
        t0 = time.perf_counter()
        print(f"check after freeing: ok={check_catalog(str(mnt / 'cat')).ok} ({time.perf_counter() - t0:.2f} s)")
        t0 = time.perf_counter()
        r = cat.ingest([src], options=opts, workers=2).results[0]
        print(f"re-ingest: {r.status} {r.n_pairs} pairs | {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        chk = check_catalog(str(mnt / "cat"))
        print(f"check: ok={chk.ok} {chk.counts} ({time.perf_counter() - t0:.2f} s)")
        print("expression:", cat.pairs().expression().shape, "compact:", cat.compact())
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


if __name__ == "__main__":
    main()
