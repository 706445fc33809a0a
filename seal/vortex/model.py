"""The VORTEX model (3D encoder + SEAL's expression VAE and image head) and its directory.

Model directory (written by ``seal vortex pretrain`` / ``finetune``)::

    MODEL/
      config.json            {"model": ModelConfig, "train": TrainConfig, "stage", "channels",
                              "dim", "size_px", "n_genes", "volumes", "sections", "parent", ...}
      model.safetensors      the whole model's state (backbone incl. LoRA adapters, channel
                             mapper, aggregator, VAE, head)
      preprocess.json        genes, per-gene mean/std, smoothing, target sum (seal.data.ExpressionPrep)
      genes.txt              output genes in order
      train_log.jsonl, loss_curve.png, checkpoint.pt
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import ExpressionPrep
from ..models import ExpressionVAE, ImageHead
from .config import ModelConfig, TrainConfig
from .context import ContextEncoder
from .encoder import VolumeEncoder, backbone_data_config, build_backbone, prepare_backbone
from .encoder3d import Cnn3DEncoder, Vit3DEncoder
from .errors import ChannelMismatchError, ModelDirError

__all__ = ["LoadedModel", "VortexModel", "build_model", "is_vortex_dir", "load_model", "save_model"]


class VortexModel(nn.Module):
    """3D volume encoder, expression VAE (latent = embedding size) and image-to-expression head."""

    backbone_name: str = ""
    backbone_kwargs: dict[str, Any]

    def __init__(self, encoder: VolumeEncoder | Vit3DEncoder | Cnn3DEncoder | ContextEncoder, n_genes: int) -> None:
        super().__init__()
        self.backbone_kwargs = {}
        self.n_genes = int(n_genes)
        self.encoder = encoder
        self.vae = ExpressionVAE(n_genes, encoder.dim)
        self.head = ImageHead(encoder.dim, n_genes)

    @property
    def channels(self) -> int:
        return self.encoder.channels

    @property
    def input_groups(self) -> int:
        """Sub-volumes stacked along the slice axis of the input: 2 with multi-scale context."""
        return 2 if isinstance(self.encoder, ContextEncoder) else 1

    def embed_volume(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(x)
        return out

    def embed_expression(self, expression: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(expression)[0]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Expression (log-normalised, model genes) from sub-volumes ``(B, S, C, H, W)``."""
        out: torch.Tensor = self.head(self.encoder(x))
        return out


def build_model(
    cfg: ModelConfig, n_genes: int, channels: int, *, load_weights: bool = True, seed: int = 0
) -> tuple[VortexModel, int]:
    """A new model (and its in-plane input size in px). ``load_weights=False`` leaves the
    backbone randomly initialised (a saved state is loaded afterwards)."""
    if cfg.encoder3d == "cnn3d":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            cnn: Cnn3DEncoder | ContextEncoder = Cnn3DEncoder(channels, cfg.n_slices, cfg.cnn_width)
            model = VortexModel(ContextEncoder(cnn) if cfg.context_scale > 1 else cnn, n_genes)
        model.backbone_name = "cnn3d"
        return model, int(cfg.size_px or 64)
    backbone, name, kwargs = build_backbone(cfg, load=load_weights, seed=seed)
    dcfg = backbone_data_config(backbone)
    img = kwargs.get("img_size")
    native = int(img if isinstance(img, int) else img[-1]) if img is not None else int(dcfg["input_size"][-1])
    size_px = int(cfg.size_px or native)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # LoRA adapters, aggregator, VAE and head: seeded
        backbone = prepare_backbone(backbone, cfg)
        enc: VolumeEncoder | Vit3DEncoder | ContextEncoder
        if cfg.encoder3d == "vit3d":
            enc = Vit3DEncoder(backbone, channels, cfg.n_slices, cfg.tubelet, cfg.channel_rule, dcfg)
        else:
            enc = VolumeEncoder(backbone, channels, cfg, dcfg)
        if cfg.context_scale > 1:
            enc = ContextEncoder(enc)
        model = VortexModel(enc, n_genes)
    model.backbone_name = name
    model.backbone_kwargs = dict(kwargs)
    return model, size_px


def is_vortex_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "config.json").exists() and (p / "model.safetensors").exists() and (p / "preprocess.json").exists()


class LoadedModel:
    """A model directory read back: model, preprocessing, configs and metadata."""

    def __init__(self, path: Path, model: VortexModel, prep: ExpressionPrep, meta: dict[str, Any]) -> None:
        self.path = path
        self.model = model
        self.prep = prep
        self.meta = meta
        self.model_cfg = ModelConfig.from_dict(meta["model"])
        self.train_cfg = TrainConfig.from_dict(meta["train"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def size_px(self) -> int:
        return int(self.meta["size_px"])

    def check_channels(self, channels: int, what: str) -> None:
        """Raise :class:`ChannelMismatchError` when ``what`` has another channel count."""
        if channels != self.channels:
            raise ChannelMismatchError(
                f"{what} has {channels} channel(s) but the model {self.path} was trained on {self.channels}-channel volumes; "
                f"use a model pretrained on {channels}-channel volumes (seal vortex pretrain on such volumes), "
                "or ingest the volume with the channels the model expects"
            )


def save_model(out: Path, model: VortexModel, prep: ExpressionPrep, meta: dict[str, Any]) -> None:
    """Write the model directory files (config, state, preprocessing, gene list)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "preprocess.json").write_text(json.dumps(prep.to_dict()))
    (out / "genes.txt").write_text("\n".join(prep.genes) + "\n")
    (out / "config.json").write_text(json.dumps(meta, indent=1))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Read a VORTEX model directory (eval mode). Weight files named in its config are not
    needed: the saved state holds the whole model."""
    from safetensors.torch import load_file

    p = Path(path)
    if not is_vortex_dir(p):
        raise ModelDirError(
            f"{p}: not a VORTEX model directory (expected config.json, model.safetensors and preprocess.json); "
            "create one with `seal vortex pretrain` or `seal vortex finetune`"
        )
    meta: dict[str, Any] = json.loads((p / "config.json").read_text())
    prep = ExpressionPrep.from_dict(json.loads((p / "preprocess.json").read_text()))
    cfg = replace(
        ModelConfig.from_dict(meta["model"]),
        backbone=str(meta["backbone_name"]),
        seal_model=None,
        weights=None,
        create_kwargs=dict(meta.get("backbone_kwargs", {})),
    )
    model, _ = build_model(cfg, len(prep.genes), int(meta["channels"]), load_weights=False)
    model.load_state_dict(load_file(str(p / "model.safetensors")), strict=True)
    return LoadedModel(p, model.to(device).eval(), prep, meta)
