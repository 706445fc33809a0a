"""SEAL's models: a timm vision encoder with LoRA, an expression VAE, and heads.

The vision encoder is any ``timm.create_model`` name (``pretrained=False``) with optional
local weights; LoRA (HF PEFT) wraps the last N blocks' linear layers and never forks
timm's code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hestkit.errors import Opt, fix

from .errors import BackboneError, ConfigError, WeightsError

__all__ = [
    "ExpressionVAE",
    "ImageHead",
    "LoraSpec",
    "SealModel",
    "block_names",
    "create_backbone",
    "data_config",
    "load_weights",
    "lora_targets",
    "wrap_lora",
]

_HEAD_PREFIXES = ("head.", "fc.", "classifier.", "head_dist.", "last_linear.")

_BACKBONE = Opt("backbone", "NAME")


@dataclass(frozen=True)
class LoraSpec:
    """LoRA settings: rank, alpha, dropout and how many final blocks to adapt (0 = all)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.15
    blocks: int = 1

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {self.rank}")
        if self.blocks < 0:
            raise ConfigError(f"LoRA blocks must be a positive number or 0 for all, got {self.blocks}")


def create_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    global_pool: str | None = None,
    seed: int = 0,
    create_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), ``pretrained=False``; weights,
    if given, come from a local file. Random initialisation is seeded. ``create_kwargs``
    go to ``timm.create_model`` (e.g. ``{"img_size": 64}`` for a ViT at another input size)."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise BackboneError(f"unknown backbone {name!r}: not a timm model name.{hint} See timm.list_models().")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    if global_pool is not None:
        kwargs["global_pool"] = global_pool
    kwargs.update(create_kwargs or {})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise WeightsError(f"{path}: weights file not found; give a local .safetensors, .pth or .bin file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot be read as a state dict ({exc}); expected .safetensors, .pth, .pt or .bin") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = re.sub(r"^(module\.|model\.|encoder\.)", "", k)
        out[k] = v
    return out


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``model``; classifier heads in the file are ignored.
    Missing or unexpected keys and shape mismatches raise :class:`WeightsError`."""
    p = Path(path)
    sd = {k: v for k, v in _read_state_dict(p).items() if not k.startswith(_HEAD_PREFIXES)}
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if mismatched or missing or unexpected:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise WeightsError(
            f"{p}: these weights do not fit {type(model).__name__}: "
            + "; ".join(parts)
            + ".",
            fix=fix(f"check that {_BACKBONE} names the architecture the weights were trained with.", _BACKBONE),
        )
    model.load_state_dict(sd, strict=True)


def data_config(model: nn.Module) -> dict[str, Any]:
    """Input size, mean and std: a zoo preset's own, else the timm model's pretrained config."""
    import timm

    own = getattr(model, "data_config", None)
    if isinstance(own, dict) and own:
        return dict(own)
    cfg = timm.data.resolve_data_config({}, model=model)
    return {"input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"])}


def block_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's sequential blocks, in order (ViT ``blocks.i``,
    hierarchical ``stages.s.blocks.i`` / ``layers.s.blocks.i``, ResNet ``layerK.i``)."""
    names: list[str] = []
    trunk = getattr(model, "trunk", None)
    if isinstance(trunk, nn.Module) and hasattr(model, "lora_modules"):  # a zoo encoder (seal.zoo.ZooEncoder)
        return [f"trunk.{n}" for n in block_names(trunk)]
    if isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)):
        names = [f"blocks.{i}" for i in range(len(model.blocks))]  # type: ignore[arg-type]
    for attr in ("stages", "layers"):
        seq = getattr(model, attr, None)
        if not names and isinstance(seq, (nn.Sequential, nn.ModuleList)):
            for s, stage in enumerate(seq):
                inner = getattr(stage, "blocks", None)
                if isinstance(inner, (nn.Sequential, nn.ModuleList)):
                    names += [f"{attr}.{s}.blocks.{i}" for i in range(len(inner))]
                else:
                    names.append(f"{attr}.{s}")
    if not names:
        for k in range(1, 5):
            seq = getattr(model, f"layer{k}", None)
            if isinstance(seq, nn.Sequential):
                names += [f"layer{k}.{i}" for i in range(len(seq))]
    return names


def lora_targets(model: nn.Module, n_blocks: int) -> list[str]:
    """Linear layers (or, for CNNs, convolutions) inside the last ``n_blocks`` blocks (0 = all);
    for a zoo preset, the preset's LoRA modules (e.g. ``attn.qkv``, ``mlp.fc1``) in those blocks."""
    blocks = block_names(model)
    if not blocks:
        raise BackboneError(f"cannot find the blocks of {type(model).__name__} to place LoRA on")
    chosen = blocks if n_blocks == 0 else blocks[-n_blocks:]
    modules = dict(model.named_modules())
    targets: list[str] = []
    wanted = tuple(getattr(model, "lora_modules", ()) or ())
    if wanted:
        for b in chosen:
            targets += [n for n, m in modules.items() if n.startswith(b + ".") and n[len(b) + 1 :] in wanted and isinstance(m, (nn.Linear, nn.Conv2d))]
        if not targets:
            raise BackboneError(f"none of the LoRA modules {', '.join(wanted)} found in {', '.join(chosen)}")
        return targets
    for b in chosen:
        for name, mod in modules.items():
            if name.startswith(b + ".") and isinstance(mod, nn.Linear):
                targets.append(name)
    if not targets:
        for b in chosen:
            for name, mod in modules.items():
                if name.startswith(b + ".") and isinstance(mod, nn.Conv2d) and mod.groups == 1:
                    targets.append(name)
    if not targets:
        raise BackboneError(f"no linear or convolution layers found in {', '.join(chosen)} for LoRA")
    return targets


def wrap_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Freeze ``model`` and add LoRA adapters (PEFT) to the chosen layers."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, spec.blocks)
    for p in model.parameters():
        p.requires_grad_(False)
    alpha: Any = spec.alpha
    cfg = LoraConfig(r=spec.rank, lora_alpha=alpha, lora_dropout=spec.dropout, target_modules=targets, bias="none")
    return get_peft_model(model, cfg)  # type: ignore[arg-type]


class ExpressionVAE(nn.Module):
    """MLP VAE over preprocessed expression: G -> 1024 -> 512 -> latent, mirrored decoder."""

    def __init__(self, n_genes: int, latent: int, hidden: Sequence[int] = (1024, 512), dropout: float = 0.1) -> None:
        super().__init__()
        h1, h2 = hidden
        self.encoder = nn.Sequential(
            nn.Linear(n_genes, h1),
            nn.LayerNorm(h1),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(h1, h2),
            nn.LayerNorm(h2),
            nn.GELU(),
        )
        self.mu = nn.Linear(h2, latent)
        self.logvar = nn.Linear(h2, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, h2),
            nn.GELU(),
            nn.Linear(h2, h1),
            nn.GELU(),
            nn.Linear(h1, n_genes),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(mu, logvar, reconstruction)``; the latent is sampled in training."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        return mu, logvar, self.decoder(z)


class ImageHead(nn.Module):
    """Expression from the image embedding: Linear d->512, ReLU, Dropout, Linear 512->G."""

    def __init__(self, dim: int, n_genes: int, hidden: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_genes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class SealModel(nn.Module):
    """The vision encoder (LoRA-wrapped), the expression VAE and the image-to-expression head."""

    def __init__(self, encoder: nn.Module, n_genes: int, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.vae = ExpressionVAE(n_genes, dim)
        self.head = ImageHead(dim, n_genes)

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(images)
        return out

    def embed_expression(self, expression: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(expression)[0]
