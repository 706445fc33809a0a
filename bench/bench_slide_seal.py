"""The slide path end to end through the CLI, as a user runs it: SEAL-tune a small encoder
on spatial transcriptomics, then compare it with its frozen self on slide-level labels.

1. ST cohort: ``--st-samples`` histology-like Visium samples
   (``hestkit.synthetic.make_visium(..., morphology=...)``, one patient each), ``hestkit
   ingest``, then ``seal fit`` of the random-init ``timm:test_vit`` with the documented
   small-backbone settings (LoRA on all blocks, lr 5e-3, batch 16, 12 epochs, ``--seed``).
2. Slide cohort: ``hestkit.synthetic.slides.make_slide_cohort`` (WSIs without ST: a binary
   ``label`` shown by a gland texture over < 10 % of the tissue of half the slides and a
   continuous ``score``), ``hestkit add-slides``, ``seal slide-embed`` with three encoders:
   the frozen ``timm:test_vit`` (random init, seed 0: the seed-0 fit's own starting point),
   the SEAL-tuned model directory, and ``texture`` (classical features, the yardstick).
3. ``seal slide-eval --model both`` over the three encoders in one run per task and fold
   seed; the ``results.md`` tables are printed and a summary (mean over fold seeds) is
   written to ``OUT/summary.md`` and ``OUT/summary.json``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_slide_seal.py --out /tmp/slide_seal

Every step is a subprocess of the installed ``hestkit`` / ``seal`` commands (next to the
running interpreter); a failing command stops the bench with its output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FROZEN = "timm:test_vit"  # random init, seed 0 (the seed-0 fit starts from exactly this)


def _cli(name: str, *args: object, log: Path) -> float:
    """Run ``name args`` (an installed entry point), append its output to ``log``; seconds."""
    exe = Path(sys.executable).parent / name
    cmd = [str(exe), *(str(a) for a in args)]
    print("$", " ".join([name, *cmd[1:]]), flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    dt = time.perf_counter() - t
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    if proc.returncode != 0:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/hestkit_slide_seal"))
    ap.add_argument("--morphology", choices=["glands", "nuclei"], default="glands")
    ap.add_argument("--st-samples", type=int, default=4, help="ST samples (one patient each) for seal fit")
    ap.add_argument("--grid", type=int, default=9, help="spots per side of each ST sample")
    ap.add_argument("--seed", type=int, default=0, help="seed of the ST cohort, the slide cohort and the fit")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--slide-seed", type=int, default=None, help="seed of the slide cohort (default: --seed)")
    ap.add_argument("--n-slides", type=int, default=64)
    ap.add_argument("--size", type=int, default=1536, help="slide side in px (0.5 um/px)")
    ap.add_argument("--tile-px", type=int, default=64)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--min-tissue", type=float, default=0.75)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3, help="fold/training seeds of slide-eval")
    ap.add_argument("--tasks", default="label,score")
    args = ap.parse_args()
    if args.seed != 0:
        sys.exit("the frozen encoder timm:test_vit is the seed-0 init; run the fit with --seed 0")

    import numpy as np
    import pandas as pd

    from hestkit.synthetic import make_visium
    from hestkit.synthetic.slides import make_slide_cohort

    slide_seed = args.seed if args.slide_seed is None else args.slide_seed
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "commands.log"
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. ST cohort -> ingest -> seal fit
    st_cat = out / "st_cat"
    t = time.perf_counter()
    for i in range(args.st_samples):
        make_visium(out / "st" / f"s{i}", n_rows=args.grid, n_cols=args.grid, seed=1000 * args.seed + 500 + i, pixel_size_um=1.0, morphology=args.morphology)
    times["st_generate_s"] = time.perf_counter() - t
    times["ingest_s"] = sum(
        _cli("hestkit", "ingest", out / "st" / f"s{i}", "--catalog", st_cat, "--sample-id", f"s{i}", "--patient", f"P{i}", "--organ", "Breast", "--workers", 1, log=log)
        for i in range(args.st_samples)
    )
    model = out / "seal_model"
    times["fit_s"] = _cli(
        "seal", "fit", st_cat, "--backbone", FROZEN, "--out", model, "--epochs", args.epochs, "--batch-size", 16, "--lr", args.lr,
        "--lora-blocks", "all", "--workers", 0, "--device", "cpu", "--seed", args.seed, log=log,
    )
    summary = json.loads((model / "summary.json").read_text())

    # 2. slide cohort -> add-slides -> slide-embed (frozen, tuned, texture)
    t = time.perf_counter()
    df = make_slide_cohort(out / "slides", n_slides=args.n_slides, size_px=args.size, seed=slide_seed, region_share=(0.07, 0.095))
    times["slides_generate_s"] = time.perf_counter() - t
    cat = out / "slide_cat"
    times["add_slides_s"] = _cli("hestkit", "add-slides", out / "slides" / "slides.csv", "--catalog", cat, log=log)
    encoders = [FROZEN, str(model), "texture"]
    tiling = ("--mpp", args.mpp, "--tile-px", args.tile_px)
    for enc in encoders:
        key = {FROZEN: "frozen", str(model): "tuned"}.get(enc, enc)
        times[f"embed_{key}_s"] = _cli(
            "seal", "slide-embed", cat, "--encoder", enc, *tiling, "--min-tissue", args.min_tissue, "--workers", 1, "--device", "cpu", log=log
        )

    # 3. slide-eval, the three encoders in one run per task and seed
    metric = {"label": "auc_mean", "score": "pearson_mean"}
    rows: list[dict[str, Any]] = []
    tasks = args.tasks.split(",")
    for task in tasks:
        for s in range(args.seeds):
            ev = out / f"eval_{task}_seed{s}"
            times[f"eval_{task}_seed{s}_s"] = _cli(
                "seal", "slide-eval", cat, "--task", task, *(x for e in encoders for x in ("--encoder", e)), "--model", "both",
                "--folds", args.folds, *tiling, "--lr", 1e-3, "--max-epochs", 40, "--min-epochs", 20, "--patience", 10,
                "--threads", 1, "--seed", s, "--device", "cpu", "--heatmaps", 2, "--out", ev, log=log,
            )
            print((ev / "results.md").read_text(), flush=True)
            res = json.loads((ev / "results.json").read_text())
            rows.extend({"task": task, "seed": s, **r} for r in _summary_rows(res, encoders))
    times["total_s"] = time.perf_counter() - t0

    tab = pd.DataFrame(rows)
    names = {FROZEN: "frozen test_vit (random init, seed 0)", str(model): "SEAL-tuned test_vit", "texture": "texture (classical)"}
    lines = [
        "| encoder | model | " + " | ".join(f"{t} {metric.get(t, 'metric').removesuffix('_mean')} (per seed)" for t in tasks) + " |",
        "|---|---|" + "---|" * len(tasks),
    ]
    for enc in encoders:
        for m in ("abmil", "mean"):
            cells = []
            for task in tasks:
                g = tab[(tab["task"] == task) & (tab["encoder"] == enc) & (tab["model"] == m)]
                col = metric.get(task, "")
                v = g[col].to_numpy(dtype=float) if col in g else np.array([np.nan])
                cells.append(f"{np.nanmean(v):.3f} ({', '.join(f'{x:.3f}' for x in v)})")
            lines.append(f"| {names[enc]} | {m} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    info = {
        "st_cohort": f"{args.st_samples} x make_visium(grid {args.grid}, morphology={args.morphology}), {summary['n_train_pairs']} training pairs",
        "fit": f"timm:test_vit, LoRA all blocks, lr {args.lr}, batch 16, {args.epochs} epochs, seed {args.seed}",
        "slides": f"make_slide_cohort(n_slides={args.n_slides}, size_px={args.size}, seed={slide_seed}, region_share=(0.07, 0.095))",
        "positives": int(df["label"].sum()),
        "tiling": f"{args.tile_px} px at {args.mpp} um/px, min tissue {args.min_tissue}",
        "eval": f"{args.folds} patient-level folds x {args.seeds} seeds, ABMIL/mean, lr 1e-3, 40 epochs max, min 20, patience 10",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "times_s": {k: round(v, 1) for k, v in times.items()},
    }
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps({**info, "rows": rows}, indent=1, default=str))
    print(json.dumps(info, indent=1))
    print(table)


def _summary_rows(res: dict[str, Any], encoders: list[str]) -> list[dict[str, Any]]:
    """Rows of a slide-eval ``results.json`` summary, keyed by the encoder spec given (its
    ``encoders`` map feature sets to labels in the order the specs were given)."""
    spec = dict(zip(res["encoders"], encoders, strict=True))
    return [{**r, "label": r["encoder"], "encoder": spec[r["feature_set"]]} for r in res["summary"]]


if __name__ == "__main__":
    main()
