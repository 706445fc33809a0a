"""Settings of VORTEX models and training runs (frozen; saved with every model)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from hestkit.errors import Opt, fix

from ..models import LoraSpec
from .aggregate import AGGREGATIONS, Aggregation
from .channels import CHANNEL_RULES, ChannelRule
from .errors import VortexConfigError

__all__ = ["ENCODERS_3D", "FINETUNE_DEFAULTS", "Encoder3D", "ModelConfig", "TrainConfig", "TrainedParts", "Tuning", "finetune_config"]

Tuning = Literal["lora", "full", "frozen"]
TrainedParts = Literal["all", "head", "last"]
Encoder3D = Literal["slice", "vit3d", "cnn3d"]
ENCODERS_3D: tuple[str, ...] = ("slice", "vit3d", "cnn3d")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture: backbone, channel rule, depth aggregation, sub-volume geometry.

    The 2D backbone is any timm name (``pretrained=False``) with optional local
    ``weights``, or the merged encoder of a ``seal fit`` model directory (``seal_model``,
    which names its own backbone). ``size_px`` is the in-plane size of the sub-volume
    given to the backbone (None: the backbone's own input size); the sub-volume covers
    ``size_um`` in-plane and ``depth_um`` in depth as ``n_slices`` slab-averaged planes
    centred on the point (see :class:`hestkit.volume.VolumePairSpec`). ``context_scale``
    > 1 adds a coarser, wider sub-volume around the same centre (:mod:`seal.vortex.context`).
    """

    backbone: str | None = "vit_base_patch16_224"
    weights: str | None = None
    seal_model: str | None = None
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    channel_rule: ChannelRule = "pseudo_he"
    aggregation: Aggregation = "attention"
    transformer_layers: int = 1
    transformer_heads: int = 4
    tuning: Tuning = "lora"
    lora: LoraSpec = field(default_factory=LoraSpec)
    size_um: float = 112.0
    size_px: int | None = None
    depth_um: float = 36.0
    n_slices: int = 9
    encoder3d: Encoder3D = "slice"
    tubelet: int = 3
    cnn_width: int = 32
    context_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.context_scale >= 1.0:
            raise VortexConfigError(
                f"context_scale must be >= 1 (1: no context; 2: a second sub-volume of twice the field of view), got {self.context_scale}"
            )
        if self.encoder3d not in ENCODERS_3D:
            raise VortexConfigError(f"unknown 3D encoder {self.encoder3d!r}: expected one of {', '.join(ENCODERS_3D)}")
        if self.seal_model is not None:
            object.__setattr__(self, "backbone", None)  # the SEAL directory names its own backbone
        if self.backbone is None and self.seal_model is None and self.encoder3d != "cnn3d":
            raise VortexConfigError("a backbone name or a SEAL model directory is needed")
        if self.encoder3d == "cnn3d" and self.tuning != "full":
            full = Opt("tuning", "'full'", cli="full")
            raise VortexConfigError(
                f"the 3D CNN trains from scratch: tuning {self.tuning!r} does not apply to it",
                fix=fix(f"use {full} (LoRA and frozen tuning are for pretrained backbones: encoder3d 'slice' or 'vit3d')", full),
            )
        if self.encoder3d == "vit3d" and (self.tubelet < 1 or self.n_slices % self.tubelet):
            raise VortexConfigError(f"tubelet ({self.tubelet}) must divide n_slices ({self.n_slices}) for encoder3d 'vit3d'")
        if self.cnn_width < 4:
            raise VortexConfigError(f"cnn_width must be >= 4, got {self.cnn_width}")
        if self.channel_rule not in CHANNEL_RULES:
            raise VortexConfigError(f"unknown channel rule {self.channel_rule!r}: expected one of {', '.join(CHANNEL_RULES)}")
        if self.aggregation not in AGGREGATIONS:
            raise VortexConfigError(f"unknown aggregation {self.aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")
        if self.tuning not in ("lora", "full", "frozen"):
            raise VortexConfigError(f"unknown tuning {self.tuning!r}: expected lora, full or frozen")
        if self.n_slices < 1 or self.depth_um <= 0 or self.size_um <= 0:
            raise VortexConfigError("n_slices must be >= 1 and depth_um, size_um positive")
        if self.size_px is not None and self.size_px < 8:
            raise VortexConfigError(f"size_px must be >= 8, got {self.size_px}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = asdict(self.lora)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        d["lora"] = LoraSpec(**d.get("lora", {}))
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, objective and data settings of one training stage.

    Objective: ``w_pred`` x expression regression from the volume embedding (per-gene
    1 - Pearson + standardised MSE) + ``w_clip`` x InfoNCE between the volume embedding and
    the expression-VAE mean + ``w_recon`` x the VAE's reconstruction + ``kl_weight`` x KL.

    ``tune``: what this stage trains: ``all`` (every parameter the model's tuning mode
    leaves trainable), ``head`` (the image-to-expression head only; the 3D encoder and the
    VAE stay as they are) or ``last`` (the head's last linear layer only: the pretrained
    model's expression features are re-weighted per gene). ``early_stop_fraction`` > 0 holds out that fraction of the
    training spots (whole spatial blocks of ``holdout_block_um``, so neighbours of a held-out
    spot do not train) and stops when their mean per-gene Pearson has not improved for
    ``patience`` epochs, keeping the best epoch's weights (the starting weights count as a
    candidate). In fine-tuning the held-out spots come from the section; in pretraining the
    validation volumes (``val_fraction``) serve instead.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.2
    warmup_fraction: float = 0.05
    temperature: float = 0.05
    w_clip: float = 1.0
    w_recon: float = 1.0
    w_pred: float = 1.0
    kl_weight: float = 1e-4
    n_genes: int = 2000
    genes: tuple[str, ...] | None = None
    smooth: bool = True
    augment: bool = True
    depth_flip: bool = True
    val_fraction: float = 0.0
    seed: int = 0
    num_workers: int = 0
    cache_pairs: bool = False
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    tune: TrainedParts = "all"
    early_stop_fraction: float = 0.0
    patience: int = 3
    holdout_block_um: float = 200.0

    def __post_init__(self) -> None:
        if self.tune not in ("all", "head", "last"):
            raise VortexConfigError(f"tune must be 'all', 'head' or 'last', got {self.tune!r}")
        if not 0.0 <= self.early_stop_fraction < 0.9:
            raise VortexConfigError(f"early_stop_fraction must be in [0, 0.9), got {self.early_stop_fraction}")
        if self.patience < 1:
            raise VortexConfigError(f"patience must be >= 1 epoch, got {self.patience}")
        if self.holdout_block_um <= 0:
            raise VortexConfigError(f"holdout_block_um must be positive, got {self.holdout_block_um}")
        if self.epochs < 0:
            raise VortexConfigError(f"epochs must be >= 0 (0 writes the untouched model without a step), got {self.epochs}")
        if self.batch_size < 2:
            raise VortexConfigError(f"batch_size must be >= 2 (the contrastive term needs pairs), got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise VortexConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if d.get("genes") is not None:
            d["genes"] = tuple(d["genes"])
        return cls(**d)


#: Fine-tuning defaults, chosen from the bench's shifted-rule measurements (docs/vortex.md,
#: "Fine-tuning on blocks that differ"): see :func:`finetune_config`.
FINETUNE_DEFAULTS: dict[str, Any] = {"epochs": 32, "tune": "all", "early_stop_fraction": 0.2, "patience": 8}


def finetune_config(base: TrainConfig, **overrides: Any) -> TrainConfig:
    """The fine-tuning stage's settings: the pretraining run's (learning rate, batch size,
    loss weights, genes, ...) with :data:`FINETUNE_DEFAULTS` (epochs, what is tuned, early
    stopping on held-out spots of the section), then ``overrides``."""
    from dataclasses import replace

    return replace(base, **{**FINETUNE_DEFAULTS, "val_fraction": 0.0, **overrides})
