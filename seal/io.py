"""The SEAL model directory, and loading encoders from it.

Layout written by ``seal fit``::

    MODEL/
      config.json              FitConfig, backbone, data config, LoRA spec, hestkit version
      encoder.safetensors      merged encoder: a plain timm state dict (num_classes=0)
      encoder.json             {"backbone": SPEC, "create_kwargs": {...}, "data_config": {...}, "dim": D,
                                "recipe": {...}}  (recipe: zoo presets, see seal.zoo.recipe)
      adapter/                 the PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors)
      expression.safetensors   expression VAE + image head
      preprocess.json          gene list, per-gene mean/std, smoothing, target sum
      genes.txt                the output genes, one per line, in model order
      train_log.jsonl, loss_curve.png, checkpoint.pt

``load_encoder`` needs only timm and safetensors: the merged encoder is a drop-in timm model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import WeightsError

__all__ = ["is_model_dir", "load_encoder", "load_seal", "read_encoder_info"]


def is_model_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "encoder.safetensors").exists() and (p / "encoder.json").exists()


def read_encoder_info(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not is_model_dir(p):
        raise WeightsError(f"{p}: not a SEAL model directory (no encoder.safetensors/encoder.json); run `seal fit` first")
    info: dict[str, Any] = json.loads((p / "encoder.json").read_text())
    return info


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The SEAL-tuned vision encoder (LoRA merged), in eval mode.

    A timm backbone is a plain timm model; equivalent without hestkit::

        model = timm.create_model(info["backbone"], pretrained=False, num_classes=0, **info["create_kwargs"])
        model.load_state_dict(safetensors.torch.load_file("MODEL/encoder.safetensors"))

    A zoo preset is rebuilt from ``info["recipe"]`` (:func:`seal.zoo.build_from_recipe`;
    ``docs/models.md`` shows the same in plain timm + torch).
    """
    import timm
    from safetensors.torch import load_file

    info = read_encoder_info(path)
    state = load_file(str(Path(path) / "encoder.safetensors"))
    model: nn.Module
    if info.get("recipe"):
        from .zoo import build_from_recipe

        model = build_from_recipe(info["recipe"])
    else:
        model = timm.create_model(info["backbone"], pretrained=False, num_classes=0, **info.get("create_kwargs", {}))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{Path(path) / 'encoder.safetensors'}: does not fit the encoder described by encoder.json ({exc})") from exc
    return model.to(device).eval()


def load_seal(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Any, Any]:
    """The merged encoder plus the expression VAE/head and the preprocessing of a model dir."""
    from safetensors.torch import load_file

    from .data import ExpressionPrep
    from .models import ExpressionVAE, ImageHead

    p = Path(path)
    enc = load_encoder(p, device)
    prep = ExpressionPrep.from_dict(json.loads((p / "preprocess.json").read_text()))
    info = read_encoder_info(p)
    dim = int(info["dim"])
    vae = ExpressionVAE(len(prep.genes), dim)
    head = ImageHead(dim, len(prep.genes))
    sd = load_file(str(p / "expression.safetensors"))
    vae.load_state_dict({k[4:]: v for k, v in sd.items() if k.startswith("vae.")})
    head.load_state_dict({k[5:]: v for k, v in sd.items() if k.startswith("head.")})
    heads = nn.ModuleDict({"vae": vae, "head": head}).to(device).eval()
    return enc, heads, prep
