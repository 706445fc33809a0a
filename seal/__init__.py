"""SEAL: ST-guided parameter-efficient (LoRA) finetuning of pathology vision encoders on
catalog pairs, with a HEST-Benchmark style evaluator and gene-to-image retrieval."""

from __future__ import annotations

from hestkit.extras import require as _require

_require("seal (models, training, evaluation)")  # torch, torchvision, timm, peft: the train extra

from .errors import BackboneError, EvalError, GeneListError, SealError, SelectionError, WeightsError  # noqa: E402
from .io import load_encoder, load_seal  # noqa: E402
from .models import LoraSpec, create_backbone, wrap_lora  # noqa: E402
from .train import FitConfig, fit  # noqa: E402

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
