"""SEAL on the histology-like synthetic cohorts (``nuclei``, ``glands``), on CPU.

Fits a random-init tiny ViT on some patients, then evaluates the frozen and the SEAL-tuned
encoder on held-out patients (HEST protocol, leave-one-patient-out over the test patients)
and gene-to-image retrieval. The frozen encoder is the fit's own starting point (the same
seeded random init, saved to a weights file), so each seed compares like with like. One JSON
line per run (``--json FILE`` appends it).

With few held-out patients the protocol's ridge probe is trained on one or two patients'
spots (64-d embeddings, ~70 spots each, alpha ~0.03: nearly least squares) and its score
is mostly noise; ``tuned_2``/``frozen_2`` also report the two-patient protocol on the first
two test patients, for comparison (docs/benchmarks.md).

.venv/bin/python bench/bench_seal_cohorts.py --morphology nuclei --seed 0          # lr 5e-3, LoRA on all blocks, 12 epochs
.venv/bin/python bench/bench_seal_cohorts.py --morphology glands --seed 0 --set std_floor=0 --set centre_heads=false

``--set KEY=VALUE`` overrides any FitConfig field (ablations); ``--legacy`` starts from the
settings before issue 18 (no std floor, no gene filter, heads not centred, probe by patient).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

import catalog
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium
from seal.benchmark import EvalConfig, evaluate_catalog
from seal.encoders import parse_encoder
from seal.models import LoraSpec, create_backbone
from seal.train import FitConfig, fit

LEGACY = {
    "std_floor": 0.0,
    "min_gene_fraction": 0.0,
    "min_gene_std": 0.0,
    "centre_heads": False,
    "centre_embeddings": False,
    "probe": "patients",
}


def _value(field: dataclasses.Field[Any], text: str) -> Any:
    kind = str(field.type)
    if "bool" in kind:
        return text.lower() in ("1", "true", "yes")
    if "int" in kind and "." not in text:
        return int(text)
    if "float" in kind:
        return float(text)
    return text


def build_cohort(root: Path, morphology: str, n: int, grid: int, pixel_size: float, seed: int) -> Path:
    """``n`` samples (one patient each) in a catalog under ``root`` (reused when present)."""
    cat_path = root / "cat"
    if (root / "done").exists():
        return cat_path
    cat = catalog.create(cat_path)
    for i in range(n):
        make_visium(root / f"s{i}", n_rows=grid, n_cols=grid, seed=1000 * seed + 500 + i, pixel_size_um=pixel_size, morphology=morphology)  # type: ignore[arg-type]
        cat.ingest([root / f"s{i}"], options=ReadOptions(sample_id=f"s{i}", organ="Breast", patient=f"P{i}"), workers=1)
        shutil.rmtree(root / f"s{i}", ignore_errors=True)
    (root / "done").write_text("ok")
    return cat_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--morphology", choices=["nuclei", "glands", "plaid"], default="nuclei")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cohort and of training")
    ap.add_argument("--train-patients", type=int, default=4)
    ap.add_argument("--test-patients", type=int, default=8)
    ap.add_argument("--grid", type=int, default=9, help="spots per side of each sample")
    ap.add_argument("--pixel-size", type=float, default=1.0)
    ap.add_argument("--backbone", default="test_vit")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--lora-blocks", type=int, default=0, help="0 = all")
    ap.add_argument("--legacy", action="store_true", help="the settings before issue 18")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cache", type=Path, default=None, help="keep/reuse the cohort catalog here")
    ap.add_argument("--json", type=Path, default=None, help="append the result line to this file")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="hestkit-sealc-"))
    n_tr, n_te = args.train_patients, args.test_patients
    croot = args.cache or tmp / "cohort"
    croot.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cat_path = build_cohort(croot, args.morphology, n_tr + n_te, args.grid, args.pixel_size, args.seed)
    t_build = time.perf_counter() - t
    fields = {f.name: f for f in dataclasses.fields(FitConfig)}
    over: dict[str, Any] = dict(LEGACY) if args.legacy else {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        if k == "lora_blocks":
            continue
        over[k] = _value(fields[k], v)
    lora_blocks = next((int(kv.split("=")[1]) for kv in args.set if kv.startswith("lora_blocks=")), args.lora_blocks)
    cfg = FitConfig(
        backbone=args.backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        num_workers=0,
        samples=tuple(f"s{i}" for i in range(n_tr)),
        lora=LoraSpec(blocks=lora_blocks),
        **over,
    )
    t = time.perf_counter()
    model = fit(cat_path, cfg, tmp / "model", progress=False)
    t_fit = time.perf_counter() - t
    log = [json.loads(x) for x in (model / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "lr" in r]
    epochs = [r for r in log if "lr" not in r]
    summary = json.loads((model / "summary.json").read_text())
    init = tmp / f"init_seed{args.seed}.safetensors"
    save_file(create_backbone(args.backbone, seed=args.seed).state_dict(), str(init))  # what fit() started from
    specs = [parse_encoder(f"timm:{args.backbone}@{init}"), parse_encoder(str(model))]
    test = tuple(f"s{i}" for i in range(n_tr, n_tr + n_te))
    res = evaluate_catalog(cat_path, specs, tmp / "eval", EvalConfig(samples=test, cache=False))
    enc = res["encoders"]
    frozen = next(v for k, v in enc.items() if not k.startswith("seal:"))
    tuned = next(v for k, v in enc.items() if k.startswith("seal:"))
    two: dict[str, Any] = {}
    if n_te > 2:
        res2 = evaluate_catalog(cat_path, specs, tmp / "eval2", EvalConfig(samples=test[:2], cache=False))["encoders"]
        two = {
            "frozen_2": round(next(v for k, v in res2.items() if not k.startswith("seal:"))["pearson_mean"], 4),
            "tuned_2": round(next(v for k, v in res2.items() if k.startswith("seal:"))["pearson_mean"], 4),
        }
    out = {
        "label": args.label,
        "morphology": args.morphology,
        "seed": args.seed,
        "settings": {k: (v if not isinstance(v, tuple) else list(v)) for k, v in over.items()} | {"lora_blocks": lora_blocks},
        "epochs": args.epochs,
        "n_train_pairs": summary["n_train_pairs"],
        "n_genes": summary["n_genes"],
        "first_step": {k: round(steps[0][k], 3) for k in ("clip", "recon", "pred")},
        "clip_per_epoch": [round(r.get("clip_epoch", math.nan), 3) for r in epochs],
        "clip_chance": round(math.log(min(args.batch_size, summary["n_train_pairs"])), 3),
        "probe": summary["probe"],
        "probe_pearson": summary["probe_pearson"],
        "frozen": round(frozen["pearson_mean"], 4),
        "tuned": round(tuned["pearson_mean"], 4),
        "gain": round(tuned["pearson_mean"] - frozen["pearson_mean"], 4),
        "test_patients": n_te,
        "frozen_per_fold": {k: round(v, 4) for k, v in frozen["per_fold"].items()},
        "tuned_per_fold": {k: round(v, 4) for k, v in tuned["per_fold"].items()},
        **two,
        "recall_at_10": round(tuned["recall_at_10"], 4),
        "chance_recall_at_10": round(tuned["chance_recall_at_10"], 4),
        "median_rank": tuned["median_rank"],
        "chance_median_rank": tuned["chance_median_rank"],
        "fit_s": round(t_fit, 1),
        "build_s": round(t_build, 1),
    }
    line = json.dumps(out)
    print(line)
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(line + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
