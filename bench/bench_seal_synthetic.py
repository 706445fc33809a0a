"""SEAL on a synthetic cohort, on CPU: fit on 3 patients, evaluate frozen vs tuned on 3 others.

.venv/bin/python bench/bench_seal_synthetic.py --epochs 40 --lora-blocks 1 --lr 1e-3
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import catalog
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium
from hestkit.synthetic._expression import gene_programs, gene_table
from seal.benchmark import EvalConfig, evaluate_catalog
from seal.encoders import parse_encoder
from seal.models import LoraSpec
from seal.train import FitConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lora-blocks", type=int, default=1, help="0 = all")
    ap.add_argument("--backbone", default="test_vit")
    ap.add_argument("--train-patients", type=int, default=3)
    ap.add_argument("--test-patients", type=int, default=3)
    ap.add_argument("--grid", type=int, default=10, help="spots per side of each sample")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--morphology", choices=["colour", "texture", "plaid"], default="colour")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cohort and of training")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = Path(tempfile.mkdtemp(prefix="hestkit-seal-"))
    cat = catalog.create(root / "cat")
    t = time.perf_counter()
    n_tr, n_te = args.train_patients, args.test_patients
    for i in range(n_tr + n_te):
        make_visium(
            root / f"s{i}",
            n_rows=args.grid,
            n_cols=args.grid,
            seed=100 + i + 1000 * args.seed,
            pixel_size_um=1.0,
            morphology=args.morphology,
        )
        cat.ingest([root / f"s{i}"], options=ReadOptions(sample_id=f"s{i}", organ="Breast", patient=f"P{i}"), workers=2)
    print(f"ingest: {time.perf_counter() - t:.1f} s, {len(cat.pairs())} pairs")
    train = tuple(f"s{i}" for i in range(n_tr))
    test = tuple(f"s{i}" for i in range(n_tr, n_tr + n_te))
    cfg = FitConfig(
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        num_workers=0,
        samples=train,
        lora=LoraSpec(blocks=args.lora_blocks),
        val_fraction=1.0 / n_tr,
    )
    t = time.perf_counter()
    fit(root / "cat", cfg, root / "model", progress=False)
    print(f"fit: {time.perf_counter() - t:.1f} s")
    _, symbols = gene_table(60, "Homo sapiens")
    program_of = {g.upper(): k for g, k in zip(symbols, gene_programs(60), strict=True)}
    res = evaluate_catalog(
        root / "cat",
        [parse_encoder(f"timm:{args.backbone}"), parse_encoder(str(root / "model"))],
        root / "eval",
        EvalConfig(samples=test),
    )
    for label, r in res["encoders"].items():
        extra = (
            f", recall@10 {r['recall_at_10']:.3f} (chance {r['chance_recall_at_10']:.3f}), median rank {r['median_rank']:.0f} (chance {r['chance_median_rank']:.0f})"
            if "recall_at_10" in r
            else ""
        )
        print(f"{label}: Pearson {r['pearson_mean']:.3f} +- {r['pearson_std']:.3f}{extra}")
        by_program: dict[int, list[float]] = {}
        for gene, value in r["per_gene"].items():
            if value is not None:
                by_program.setdefault(int(program_of[gene.upper()]), []).append(float(value))
        print("    per program: " + ", ".join(f"{k}: {np.mean(v):.3f} ({len(v)} genes)" for k, v in sorted(by_program.items())))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
