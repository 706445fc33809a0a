"""``seal eval``: the HEST-Benchmark protocol and gene-to-image retrieval on a catalog subset."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .encoders import EncoderSpec, embed_view
from .errors import ConfigError
from .evaluate import hest_benchmark, patient_folds, retrieval_metrics, select_genes, write_report
from .hest_bench import ProbeConfig, catalog_folds, match_genes, score_folds
from .train import resolve_device, select_view

__all__ = ["EvalConfig", "evaluate_catalog"]


@dataclass(frozen=True)
class EvalConfig:
    """Selection and protocol settings of ``seal eval``."""

    organ: tuple[str, ...] | None = None
    technology: tuple[str, ...] | None = None
    species: tuple[str, ...] | None = None
    samples: tuple[str, ...] | None = None
    exclude_samples: tuple[str, ...] | None = None
    n_genes: int = 50
    n_components: int = 256
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    seed: int = 0
    cache: bool = True
    #: Given genes (e.g. a HEST task's var_50genes.json) instead of the top-``n_genes`` HVG.
    genes: tuple[str, ...] | None = None
    #: A folder of HEST-style train_K.csv / test_K.csv: those sample splits and HEST's exact
    #: probe (seal.hest_bench) instead of leave-one-patient-out folds.
    splits: str | None = None


@torch.no_grad()
def _expression_embeddings(spec: EncoderSpec, view: Any, device: torch.device) -> np.ndarray:
    from .data import apply_preprocessing
    from .io import load_seal

    _, heads, prep = load_seal(spec.model_dir, device)  # type: ignore[arg-type]
    values = apply_preprocessing(view, prep)
    out = []
    for s in range(0, len(values), 1024):
        out.append(heads["vae"].encode(torch.from_numpy(values[s : s + 1024]).to(device))[0].float().cpu().numpy())
    return np.concatenate(out)


def evaluate_catalog(
    catalog_path: str | Path, encoders: Sequence[EncoderSpec], out: str | Path, cfg: EvalConfig | None = None
) -> dict[str, Any]:
    """Run the protocol for every encoder on the selected pairs; writes results.json,
    results.md and results.png to ``out`` and returns the results dictionary."""
    import catalog

    cfg = cfg or EvalConfig()
    device = resolve_device(cfg.device)
    cat = catalog.open(catalog_path)
    view = select_view(cat, cfg)
    counts = view.expression()
    sample_ids = view.obs["sample_id"].astype(str).to_numpy()
    if cfg.genes:
        genes = match_genes(list(view.genes), list(cfg.genes), source="genes")
    else:
        genes = select_genes(counts, view.genes, sample_ids, n_top=cfg.n_genes)
    gpos = {g: i for i, g in enumerate(view.genes)}
    targets = np.log1p(np.asarray(counts[:, [gpos[g] for g in genes]].toarray(), dtype=np.float64))
    if cfg.splits:
        folds, level = catalog_folds(sample_ids, cfg.splits), f"given splits ({cfg.splits})"
    else:
        patients = view.obs["patient"].astype(str).replace({"": None}).to_numpy()
        folds, level = patient_folds(patients, sample_ids)
    embeddings: dict[str, np.ndarray] = {}
    retrieval: dict[str, dict[str, float]] = {}
    for spec in encoders:
        if spec.label in embeddings:
            raise ConfigError(f"encoder label {spec.label!r} given twice")
        embeddings[spec.label] = embed_view(
            cat, view, spec, device=device, batch_size=cfg.batch_size, num_workers=cfg.num_workers, cache=cfg.cache
        )
        if spec.model_dir is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                expr_emb = _expression_embeddings(spec, view, device)
            retrieval[spec.label] = retrieval_metrics(embeddings[spec.label], expr_emb, centre=_trained_centred(spec.model_dir))
    if cfg.splits:
        result, _ = score_folds(embeddings, targets, folds, genes, ProbeConfig(latent_dim=cfg.n_components))
    else:
        result = hest_benchmark(embeddings, targets, folds, genes, n_components=cfg.n_components, seed=cfg.seed)
    report: dict[str, Any] = result.to_dict()
    for label, metrics in retrieval.items():
        report["encoders"][label].update(metrics)
    report["split_level"] = level
    report["n_pairs"] = len(view)
    report["samples"] = sorted(set(sample_ids))
    write_report(report, Path(out))
    return report


def _trained_centred(model_dir: Any) -> bool:
    """Whether a ``seal fit`` model aligned centred embeddings (then retrieval centres too)."""
    import json
    from pathlib import Path

    cfg = Path(model_dir) / "config.json"
    try:
        return bool(json.loads(cfg.read_text()).get("fit", {}).get("centre_embeddings", False))
    except (OSError, ValueError):
        return False
