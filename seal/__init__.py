"""SEAL: ST-guided parameter-efficient (LoRA) finetuning of pathology vision encoders on
catalog pairs, with a HEST-Benchmark style evaluator and gene-to-image retrieval."""

from __future__ import annotations

from .errors import BackboneError, EvalError, GeneListError, SealError, SelectionError, WeightsError
from .io import load_encoder, load_seal
from .models import LoraSpec, create_backbone, wrap_lora
from .train import FitConfig, fit

__all__ = [
    "BackboneError",
    "EvalError",
    "FitConfig",
    "GeneListError",
    "LoraSpec",
    "SealError",
    "SelectionError",
    "WeightsError",
    "create_backbone",
    "fit",
    "load_encoder",
    "load_seal",
    "wrap_lora",
]
