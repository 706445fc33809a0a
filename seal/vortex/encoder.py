"""The 3D encoder: a 2D timm backbone applied slice by slice, then a learned aggregation over depth."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..models import create_backbone, data_config, load_weights, wrap_lora
from .aggregate import DepthAggregator, make_aggregator
from .channels import ChannelMapper
from .config import ModelConfig
from .errors import VortexConfigError, VortexShapeError

__all__ = ["VolumeEncoder", "backbone_data_config", "build_backbone", "prepare_backbone", "trainable_parameters"]


def build_backbone(cfg: ModelConfig, *, load: bool = True, seed: int = 0) -> tuple[nn.Module, str, dict[str, Any]]:
    """The 2D backbone of ``cfg`` (and its name and create kwargs). ``cfg.backbone`` is an
    encoder spec (a zoo preset ``PRESET[@WEIGHTS]``, ``timm:NAME[@WEIGHTS]`` or a bare timm
    name). ``load=False`` skips reading the weights file (when a saved VORTEX state follows)."""
    from ..encoders import _split
    from ..zoo import PRESETS, build_from_recipe

    kwargs = dict(cfg.create_kwargs)
    name = cfg.backbone
    weights: str | None = cfg.weights
    if cfg.seal_model is not None:
        from pathlib import Path

        from ..io import read_encoder_info

        info = read_encoder_info(cfg.seal_model)
        weights = str(Path(cfg.seal_model) / "encoder.safetensors")
        if info.get("recipe"):
            zmodel = build_from_recipe(info["recipe"], seed=seed)
            if load:
                from safetensors.torch import load_file

                zmodel.load_state_dict(load_file(weights), strict=True)
            return zmodel, str(info["backbone"]), {}
        name = str(info["backbone"])
        kwargs = {**info.get("create_kwargs", {}), **kwargs}
    if name is None:
        raise VortexConfigError("a backbone name or a SEAL model directory is needed")
    if name.startswith("timm:"):
        name, w = _split(name[5:])
        weights = weights or (str(w) if w else None)
    elif _split(name)[0] in PRESETS or name.startswith("seal-release:"):
        from ..encoders import build_backbone as build_spec
        from ..errors import BackboneError

        if kwargs:
            raise BackboneError(
                f"{name}: a model-zoo preset is built with its published architecture; "
                f"create kwargs {sorted(kwargs)} (e.g. img_size) apply to timm backbones only"
            )
        spec = name
        if not load:
            from .._zoo_layouts import SEAL_BACKBONES

            base = _split(name[len("seal-release:") :] if name.startswith("seal-release:") else name)[0]
            spec = SEAL_BACKBONES.get(base, base)
        zm, _, _, _ = build_spec(spec, weights if load else None, seed=seed)
        return zm, spec, {}
    model = create_backbone(name, seed=seed, create_kwargs=kwargs)
    if load and weights is not None:
        load_weights(model, weights)
    return model, name, kwargs


class VolumeEncoder(nn.Module):
    """``(B, S, C, H, W)`` float intensities in [0, 1] -> ``(B, D)`` volume embedding.

    Channels are mapped to RGB (:class:`ChannelMapper`), normalised with the backbone's
    mean/std, embedded slice by slice by the backbone (``B * S`` images in one batch) and
    aggregated over depth (:mod:`seal.vortex.aggregate`).
    """

    def __init__(self, backbone: nn.Module, channels: int, cfg: ModelConfig, dcfg: dict[str, Any]) -> None:
        super().__init__()
        self.channels = channels
        self.n_slices = cfg.n_slices
        self.mapper = ChannelMapper(channels, cfg.channel_rule)
        self.backbone = backbone
        self.dim = int(getattr(backbone, "num_features", 0) or getattr(getattr(backbone, "base_model", None), "num_features", 0))
        self.aggregator: DepthAggregator = make_aggregator(
            cfg.aggregation, cfg.n_slices, self.dim, layers=cfg.transformer_layers, heads=cfg.transformer_heads
        )
        self.register_buffer("mean", torch.tensor(dcfg["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(dcfg["std"], dtype=torch.float32).view(1, 3, 1, 1))

    def slice_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice embeddings ``(B, S, D)``."""
        if x.ndim != 5:
            raise VortexShapeError(f"expected sub-volumes (B, S, C, H, W), got shape {tuple(x.shape)}")
        b, s, c, h, w = x.shape
        if c != self.channels:
            raise VortexShapeError(f"sub-volumes have {c} channels, the encoder was built for {self.channels}")
        if s != self.n_slices:
            raise VortexShapeError(f"sub-volumes have {s} slices, the encoder was built for {self.n_slices}")
        rgb = self.mapper(x.reshape(b * s, c, h, w))
        rgb = (rgb - self.mean.to(rgb.dtype)) / self.std.to(rgb.dtype)  # type: ignore[operator]
        f: torch.Tensor = self.backbone(rgb)
        return f.reshape(b, s, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.aggregator(self.slice_tokens(x))
        return out


def prepare_backbone(backbone: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Apply the tuning mode: LoRA adapters (backbone frozen), full finetuning, or frozen."""
    if cfg.tuning == "lora":
        return wrap_lora(backbone, cfg.lora)
    if cfg.tuning == "frozen":
        for p in backbone.parameters():
            p.requires_grad_(False)
    return backbone


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def backbone_data_config(backbone: nn.Module) -> dict[str, Any]:
    return data_config(backbone)
