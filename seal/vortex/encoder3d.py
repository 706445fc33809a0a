"""Native 3D encoders: a ViT over 3D patches (tubelets) and a small 3D CNN.

Both take the sub-volumes every VORTEX encoder takes, ``(B, S, C, H, W)`` intensities in
[0, 1] (``S`` slab-averaged planes in depth), and return ``(B, D)`` embeddings, beside the
default slice encoder (:class:`seal.vortex.encoder.VolumeEncoder`: a 2D backbone per plane,
then a learned aggregation over depth).

``vit3d``
    A Vision Transformer whose tokens are 3D patches: ``tubelet`` planes x ``p`` x ``p``
    pixels (``p`` the 2D backbone's patch size), embedded by a 3D convolution, plus the 2D
    backbone's spatial position embedding and a learned depth embedding (zero at start),
    then the backbone's own transformer blocks, final norm and [CLS] output. It is built
    from any timm ViT (random, local weights, a named preset or a ``seal fit`` encoder): the
    2D patch embedding is *inflated* to 3D (each 2D filter repeated over the tubelet's depth
    and divided by it, as video ViTs are initialised from image ViTs), so at start every
    tubelet of a sub-volume constant in depth embeds exactly as the 2D patch embedding of
    that plane (the output then stays close to the 2D model's: the [CLS] token sees each
    patch token once per tubelet). LoRA / full /
    frozen tuning apply to the blocks as for the slice encoder; the tubelet embedding and
    the depth embedding always train.
``cnn3d``
    A small 3D CNN for CPU-scale work: four stages of 3D convolution (stride 2 in-plane;
    in depth only while more than one plane is left) with GroupNorm and GELU, then global
    average pooling to ``width x 8`` features. Channels go in as they are (no RGB mapping),
    standardised; it trains from scratch (``tuning="full"``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hestkit.errors import Opt, fix

from .channels import ChannelMapper
from .errors import VortexConfigError, VortexShapeError

__all__ = ["Cnn3DEncoder", "Vit3DEncoder", "inflate_patch_embedding"]


def _unwrap(backbone: nn.Module) -> nn.Module:
    """The timm model inside a PEFT wrapper (LoRA layers are replaced in place, so its blocks adapt)."""
    base = getattr(backbone, "base_model", None)
    inner = getattr(base, "model", None)
    return inner if isinstance(inner, nn.Module) else backbone


def inflate_patch_embedding(proj: nn.Conv2d, tubelet: int) -> nn.Conv3d:
    """A 3D patch embedding from a 2D one: weights repeated over ``tubelet`` planes / ``tubelet``."""
    w = proj.weight.detach()
    sy, sx = (int(v) for v in proj.stride)
    out = nn.Conv3d(
        w.shape[1], w.shape[0], kernel_size=(tubelet, w.shape[2], w.shape[3]), stride=(tubelet, sy, sx), bias=proj.bias is not None
    )
    with torch.no_grad():
        out.weight.copy_(w[:, :, None].repeat(1, 1, tubelet, 1, 1) / tubelet)
        if proj.bias is not None and out.bias is not None:
            out.bias.copy_(proj.bias.detach())
    return out


class Vit3DEncoder(nn.Module):
    """``(B, S, C, H, W)`` -> ``(B, D)``: a timm ViT over tubelets (see the module doc)."""

    def __init__(self, backbone: nn.Module, channels: int, n_slices: int, tubelet: int, channel_rule: Any, dcfg: dict[str, Any]) -> None:
        super().__init__()
        vit = _unwrap(backbone)
        pe = getattr(vit, "patch_embed", None)
        if pe is None or not isinstance(getattr(pe, "proj", None), nn.Conv2d) or not hasattr(vit, "blocks"):
            vit3d, slice_ = Opt("encoder3d", "'vit3d'", cli="vit3d"), Opt("encoder3d", "'slice'", cli="slice")
            raise VortexConfigError(
                f"{vit3d} needs a timm VisionTransformer backbone (patch_embed.proj + blocks); {type(vit).__name__} is not one",
                fix=fix(f"use {slice_} for this backbone", slice_, vit3d),
            )
        if tubelet < 1 or n_slices % tubelet:
            raise VortexConfigError(f"tubelet must divide n_slices: {n_slices} planes cannot be cut into tubelets of {tubelet}")
        self.backbone = backbone  # registered so LoRA / tuning state and weights are saved with the model
        self.channels = channels
        self.n_slices = n_slices
        self.tubelet = tubelet
        self.mapper = ChannelMapper(channels, channel_rule)
        self.tubelet_embed = inflate_patch_embedding(pe.proj, tubelet)
        self.dim = int(getattr(vit, "embed_dim", 0) or getattr(vit, "num_features", 0))
        self.depth_embed = nn.Parameter(torch.zeros(1, n_slices // tubelet, 1, self.dim))
        self.register_buffer("mean", torch.tensor(dcfg["mean"], dtype=torch.float32).view(1, 3, 1, 1, 1))
        self.register_buffer("std", torch.tensor(dcfg["std"], dtype=torch.float32).view(1, 3, 1, 1, 1))
        for p in (*self.tubelet_embed.parameters(), self.depth_embed):
            p.requires_grad_(True)

    def _vit(self) -> Any:
        return _unwrap(self.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise VortexShapeError(f"expected sub-volumes (B, S, C, H, W), got shape {tuple(x.shape)}")
        b, s, c, h, w = x.shape
        if c != self.channels or s != self.n_slices:
            raise VortexShapeError(f"sub-volumes have {s} planes x {c} channels; the encoder was built for {self.n_slices} x {self.channels}")
        vit = self._vit()
        rgb = self.mapper(x.reshape(b * s, c, h, w)).reshape(b, s, 3, h, w).permute(0, 2, 1, 3, 4)
        rgb = (rgb - self.mean.to(rgb.dtype)) / self.std.to(rgb.dtype)  # type: ignore[operator]
        tok = self.tubelet_embed(rgb)  # (B, D, T, h', w')
        t, gh, gw = tok.shape[2:]
        tok = tok.permute(0, 2, 3, 4, 1).reshape(b, t, gh * gw, self.dim)
        prefix = int(getattr(vit, "num_prefix_tokens", 1))
        pos = vit.pos_embed
        no_embed_class = bool(getattr(vit, "no_embed_class", False))
        spatial = pos if no_embed_class else pos[:, prefix:]
        n_side = round(spatial.shape[1] ** 0.5)
        if (n_side, n_side) != (gh, gw):
            grid = spatial.reshape(1, n_side, n_side, -1).permute(0, 3, 1, 2)
            spatial = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        tok = (tok + spatial[:, None] + self.depth_embed).reshape(b, t * gh * gw, self.dim)
        pre = []
        if getattr(vit, "cls_token", None) is not None:
            cls = vit.cls_token.expand(b, -1, -1)
            pre.append(cls if no_embed_class else cls + pos[:, :1])
        if getattr(vit, "reg_token", None) is not None:
            pre.append(vit.reg_token.expand(b, -1, -1))
        z = torch.cat([*pre, tok], dim=1)
        for name in ("pos_drop", "patch_drop", "norm_pre"):
            mod = getattr(vit, name, None)
            if mod is not None:
                z = mod(z)
        z = vit.blocks(z)
        z = vit.norm(z)
        pool = str(getattr(vit, "global_pool", "token"))
        out: torch.Tensor = z[:, prefix:].mean(dim=1) if pool == "avg" or not pre else z[:, 0]
        fc_norm = getattr(vit, "fc_norm", None)
        return fc_norm(out) if isinstance(fc_norm, nn.Module) else out


class Cnn3DEncoder(nn.Module):
    """``(B, S, C, H, W)`` -> ``(B, 8 * width)``: a small 3D CNN (see the module doc)."""

    def __init__(self, channels: int, n_slices: int, width: int = 32) -> None:
        super().__init__()
        self.channels = channels
        self.n_slices = n_slices
        layers: list[nn.Module] = []
        c_in, depth = channels, n_slices
        for k, c_out in enumerate((width, 2 * width, 4 * width, 8 * width)):
            dz = 2 if depth > 1 else 1
            depth = (depth + 1) // 2 if dz == 2 else depth
            kz = 3 if n_slices > 1 else 1
            layers += [
                nn.Conv3d(c_in, c_out, kernel_size=(kz, 5 if k == 0 else 3, 5 if k == 0 else 3), stride=(dz, 2, 2),
                          padding=(kz // 2, 2 if k == 0 else 1, 2 if k == 0 else 1)),
                nn.GroupNorm(min(8, c_out), c_out),
                nn.GELU(),
                nn.Conv3d(c_out, c_out, kernel_size=(kz, 3, 3), padding=(kz // 2, 1, 1)),
                nn.GroupNorm(min(8, c_out), c_out),
                nn.GELU(),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.dim = 8 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise VortexShapeError(f"expected sub-volumes (B, S, C, H, W), got shape {tuple(x.shape)}")
        s, c = x.shape[1], x.shape[2]
        if c != self.channels or s != self.n_slices:
            raise VortexShapeError(f"sub-volumes have {s} planes x {c} channels; the encoder was built for {self.n_slices} x {self.channels}")
        z = (x.permute(0, 2, 1, 3, 4) - 0.5) / 0.25
        out: torch.Tensor = self.features(z).mean(dim=(2, 3, 4))
        return out
