"""Peak memory and time of ``hestkit compact`` (TileDB consolidation of the SOMA arrays):
TileDB's default merge buffers against hestkit's setting, in one run.

Builds a catalog of ``--samples`` HEST-1k metadata rows with one SOMA commit per sample
(as ``hestkit ingest`` writes: one fragment per commit; ``bench/_hest1k_scale.py``, no
patches), copies it once per setting, and compacts each copy in a fresh process whose
``VmHWM`` is the peak RSS::

    .venv/bin/python bench/bench_compact_memory.py --samples 200 --density-scale 0.1
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _hest1k_scale as scale

_CHILD = """
import json, sys, time
from catalog import _soma
_soma.CONSOLIDATION_CONFIG = json.loads(sys.argv[2])
t = time.perf_counter()
_soma.consolidate(sys.argv[1])
dt = time.perf_counter() - t
peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(f"{dt:.1f} {int(peak) / 1024:.0f}")
"""


def main() -> None:
    from catalog import _soma

    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metadata", type=Path, default=here.parent.parent / "shared" / "hest1k_metadata_v1_1_0.csv")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--density-scale", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    settings = {"TileDB defaults": {}, "hestkit (CONSOLIDATION_CONFIG)": dict(_soma.CONSOLIDATION_CONFIG)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "catalog"
        md = scale.read_metadata(args.metadata, args.samples, seed=args.seed)
        st = scale.build_scale_catalog(root, md, patch_fraction=0.0, density_scale=args.density_scale, samples_per_commit=1)
        soma_mib = sum(f.stat().st_size for f in (root / "soma").rglob("*") if f.is_file()) / 2**20
        print(f"catalog: {st.n_samples} samples (one commit each), {st.n_spots:,} spots, {st.n_nonzero / 1e6:.0f} M non-zeros, SOMA {soma_mib:.0f} MiB")
        print("| setting | compact time | peak RSS |")
        print("|---|---|---|")
        for label, cfg in settings.items():
            copy = Path(tmp) / "copy"
            shutil.copytree(root / "soma", copy)
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(copy), json.dumps(cfg)],
                check=True,
                capture_output=True,
                text=True,
                env={"PYTHONPATH": str(here.parent), "PATH": "/usr/bin:/bin"},
            ).stdout.split()
            print(f"| {label} {cfg} | {out[0]} s | {out[1]} MiB |", flush=True)
            shutil.rmtree(copy)


if __name__ == "__main__":
    main()
