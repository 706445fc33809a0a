"""First query in a fresh process: shared gene lists with their var-joinid indexes
(manifest 2.0.0 + ``genes/*.joinids-v1.npy``), the same without the indexes, and gene
lists inline in the manifests (1.0.0).

Takes a catalog built by ``bench_hest1k_scale.py --build-only``, makes two twins next to
it (``soma``, ``patches`` and the other elements are symlinks, nothing else is copied):
one whose ``genes/`` holds the lists but not their indexes, one whose manifests carry their
gene lists inline (the 1.0.0 form); then times ``catalog.open`` + ``pairs(organ=...,
technology=...)`` in fresh Python processes, alternating the catalogs::

    .venv/bin/python bench/bench_gene_lists.py --workdir /tmp/hestkit-scale --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

_CHILD = """
import sys, time
from catalog import _soma
_soma._soma()  # tiledbsoma's import is not part of the query
import catalog
t = time.perf_counter()
v = catalog.open(sys.argv[1]).pairs(organ=sys.argv[2], technology=sys.argv[3])
print(f"{time.perf_counter() - t:.3f} {len(v)}")
"""


def make_v1_twin(root: Path, twin: Path) -> None:
    """``twin``: ``root`` with 1.0.0 manifests (inline ``genes``), sharing its SOMA and patches."""
    import catalog

    cat = catalog.open(root)
    (twin / "manifest").mkdir(parents=True)
    for name in ("soma", "patches"):
        os.symlink(root / name, twin / name)
    (twin / "catalog.json").write_text((root / "catalog.json").read_text())
    for m in cat.manifests():
        old = {k: v for k, v in m.items() if k != "genes_ref"}
        old["encoding-version"] = "1.0.0"
        old["genes"] = cat.sample_genes(m)
        (twin / "manifest" / f"{m['sample_id']}.json").write_text(json.dumps(old, indent=1))


def make_noindex_twin(root: Path, twin: Path) -> None:
    """``twin``: ``root`` without the gene lists' var-joinid indexes."""
    (twin / "genes").mkdir(parents=True)
    for name in ("soma", "patches", "manifest", "catalog.json"):
        os.symlink(root / name, twin / name)
    for f in (root / "genes").glob("*.json"):
        os.symlink(f, twin / "genes" / f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hestkit-scale"))
    ap.add_argument("--organ", default="Spinal cord")
    ap.add_argument("--technology", default="st")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root, twin, plain = args.workdir / "catalog", args.workdir / "catalog-v1", args.workdir / "catalog-noindex"
    if not twin.exists():
        make_v1_twin(root, twin)
    if not plain.exists():
        make_noindex_twin(root, plain)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    times: dict[str, list[float]] = {
        "2.0.0, genes/ shared + var-joinid indexes": [],
        "2.0.0, genes/ shared, no indexes": [],
        "1.0.0 (inline)": [],
    }
    for _ in range(args.runs):
        for label, path in zip(times, (root, plain, twin), strict=True):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), args.organ, args.technology],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            times[label].append(float(out[0]))
            print(f"{label}: {out[0]} s, {int(out[1]):,} pairs", flush=True)
    best = {k: min(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"| {k} | {', '.join(f'{t:.2f}' for t in v)} s | best {best[k]:.2f} s |")
    a, b, c = best.values()
    print(f"first query, no indexes / indexes (best of {args.runs}): {b / a:.2f}x")
    print(f"first query, inline / indexes (best of {args.runs}): {c / a:.2f}x")


if __name__ == "__main__":
    main()
