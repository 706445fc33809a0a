"""Acceptance (issue 18): on the histology-like cohorts, built independently of "plaid", a short
CPU fit of a random-init tiny ViT with the documented small-backbone settings beats the same
frozen encoder on held-out patients, and gene-to-image retrieval there is above chance.

Held-out patients are never seen by ``seal fit``. With two held-out patients ``seal eval``'s
protocol (leave-one-patient-out among them) fits its ridge on one patient's ~70 spots with a
64-d embedding, and its score is mostly noise (gain sd ~0.06 over pairs of held-out patients,
docs/benchmarks.md). So:

- the default-suite test (small seeded cohort per morphology) runs ``seal eval``'s
  leave-one-patient-out probe over every sample and scores only the folds whose test patient
  is held out: each held-out patient is predicted by a ridge fitted on all the other patients;
- the opt-in ``slow`` test (``HESTKIT_LONG_TESTS=1``) is the full-strength run of
  bench/bench_seal_cohorts.py: eight held-out patients, the protocol among them only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import catalog
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium
from seal.benchmark import EvalConfig, evaluate_catalog
from seal.encoders import parse_encoder
from seal.models import LoraSpec
from seal.train import FitConfig, fit

LR = 5e-3  # docs/seal.md, "Small backbones on CPU"
FROZEN = "test_vit"  # timm:test_vit is the seed-0 random init, fit()'s starting point at seed 0


def _cohort(root: Path, morphology: str, n: int, grid: int) -> Path:
    """``n`` samples, one patient each, seeded as in bench/bench_seal_cohorts.py (seed 0)."""
    cat = catalog.create(root / "cat")
    for i in range(n):
        make_visium(root / f"s{i}", n_rows=grid, n_cols=grid, pixel_size_um=1.0, seed=500 + i, morphology=morphology)  # type: ignore[arg-type]
        rep = cat.ingest([root / f"s{i}"], options=ReadOptions(sample_id=f"s{i}", organ="Breast", patient=f"P{i}"), workers=1)
        assert not rep.failed
    return root / "cat"


def _fit(cat: Path, n_train: int, epochs: int, out: Path) -> Path:
    """The documented small-backbone settings (docs/seal.md), other settings at their defaults."""
    cfg = FitConfig(
        backbone="test_vit",
        epochs=epochs,
        batch_size=16,
        lr=LR,
        num_workers=0,
        seed=0,
        lora=LoraSpec(blocks=0),
        samples=tuple(f"s{i}" for i in range(n_train)),
    )
    return fit(cat, cfg, out, progress=False)


def _scores(res: dict[str, Any], model: Path, folds: list[str]) -> tuple[float, float]:
    enc = res["encoders"]
    frozen, tuned = enc[FROZEN], enc[f"seal:{model.name}"]
    return float(np.mean([frozen["per_fold"][f] for f in folds])), float(np.mean([tuned["per_fold"][f] for f in folds]))


# small seeded cohorts: 4 training + 2 held-out patients of 9 x 9 spots (~69 pairs each), 4
# epochs (52 steps). Measured on these cohorts (the test's own computation): held-out Pearson
# nuclei 0.201 -> 0.237 (+0.036), glands 0.120 -> 0.132 (+0.012); recall@10 among the 138
# held-out pairs 2.5x (nuclei) and 1.6x (glands) chance. A fit that learns nothing (e.g. lr
# 1e-7) leaves the tuned encoder where the frozen one is and fails both asserts.
N_TRAIN, N_HELD, GRID, EPOCHS = 4, 2, 9, 4
MARGIN = {"nuclei": 0.015, "glands": 0.005}
RECALL_FACTOR = {"nuclei": 1.8, "glands": 1.3}


@pytest.mark.parametrize("morphology", ["nuclei", "glands"])
def test_seal_beats_frozen_on_held_out_patients(morphology: str, tmp_path: Path) -> None:
    cat = _cohort(tmp_path, morphology, N_TRAIN + N_HELD, GRID)
    model = _fit(cat, N_TRAIN, EPOCHS, tmp_path / "model")
    specs = [parse_encoder(f"timm:{FROZEN}"), parse_encoder(str(model))]
    samples = tuple(f"s{i}" for i in range(N_TRAIN + N_HELD))
    held = [f"P{i}" for i in range(N_TRAIN, N_TRAIN + N_HELD)]
    every = evaluate_catalog(cat, specs, tmp_path / "all", EvalConfig(samples=samples))
    frozen, tuned = _scores(every, model, held)
    # retrieval among the held-out pairs only (embeddings come from the catalog's cache)
    ret = evaluate_catalog(cat, specs, tmp_path / "held", EvalConfig(samples=samples[N_TRAIN:]))["encoders"][f"seal:{model.name}"]
    print(f"{morphology}: held-out frozen {frozen:.3f}, tuned {tuned:.3f}; recall@10 {ret['recall_at_10']:.3f} (chance {ret['chance_recall_at_10']:.3f})")
    assert tuned > frozen + MARGIN[morphology]
    assert ret["recall_at_10"] > RECALL_FACTOR[morphology] * ret["chance_recall_at_10"]


# the full-strength run: bench/bench_seal_cohorts.py --seed 0 (figures in docs/benchmarks.md)
FULL = {"train": 4, "held": 8, "epochs": 12}
FULL_MARGIN = {"nuclei": 0.03, "glands": 0.03}  # bench seed 0 at lr 5e-3: +0.050, +0.081


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("HESTKIT_LONG_TESTS"),
    reason="12 epochs of 4 patients and 8 held-out patients: minutes on 2 cores, over the CI budget; set HESTKIT_LONG_TESTS=1",
)
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("morphology", ["nuclei", "glands"])
def test_seal_learns_on_histology_cohorts_full(morphology: str, tmp_path: Path) -> None:
    n_tr, n_he = FULL["train"], FULL["held"]
    cat = _cohort(tmp_path, morphology, n_tr + n_he, 9)
    model = _fit(cat, n_tr, FULL["epochs"], tmp_path / "model")
    test = tuple(f"s{i}" for i in range(n_tr, n_tr + n_he))
    res = evaluate_catalog(cat, [parse_encoder(f"timm:{FROZEN}"), parse_encoder(str(model))], tmp_path / "eval", EvalConfig(samples=test))
    frozen, tuned = res["encoders"][FROZEN], res["encoders"][f"seal:{model.name}"]
    print(f"{morphology}: frozen {frozen['pearson_mean']:.3f}, tuned {tuned['pearson_mean']:.3f}, recall@10 {tuned['recall_at_10']:.3f} (chance {tuned['chance_recall_at_10']:.3f})")
    assert tuned["pearson_mean"] > frozen["pearson_mean"] + FULL_MARGIN[morphology]
    assert tuned["recall_at_10"] > 1.5 * tuned["chance_recall_at_10"]  # bench: 3.7x, 2.1x
