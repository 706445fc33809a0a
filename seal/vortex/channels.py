"""Mapping a volume's 1, 2 or 3 channels to the 3 RGB channels a 2D backbone expects.

Three rules (``ChannelRule``), chosen with ``--channel-rule``:

``pseudo_he`` (default, fixed)
    Virtual H&E by Beer-Lambert false colouring (Giacomelli et al. 2016, the rule used to
    show open-top light-sheet data as H&E): ``RGB = exp(-k * sum_c I_c * beta_c)`` with the
    hematoxylin absorption ``beta_H = (0.86, 1.00, 0.30)`` and eosin ``beta_E = (0.05, 1.00,
    0.544)``, ``k = 2.5``, intensities in [0, 1]. Two channels are (nuclear, cytoplasm) ->
    (H, E); a single channel (microCT grey level) is rendered as eosin (tissue density).
    Three-channel volumes (H&E stacks) pass unchanged.
``learned``
    A learned 1x1 convolution ``C -> 3``, initialised to the linearisation of the
    pseudo-H&E rule around zero stain (``RGB = 1 - k * sum_c I_c * beta_c``), so training
    starts from the same picture; identity for three channels.
``gray``
    Each channel's mean replicated to RGB (three channels pass unchanged).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .errors import VortexConfigError, VortexShapeError

__all__ = ["BETA_EOSIN", "BETA_HEMATOXYLIN", "CHANNEL_RULES", "ChannelMapper", "ChannelRule", "stain_matrix"]

ChannelRule = Literal["pseudo_he", "learned", "gray"]
CHANNEL_RULES: tuple[str, ...] = ("pseudo_he", "learned", "gray")

BETA_HEMATOXYLIN = (0.86, 1.0, 0.30)
BETA_EOSIN = (0.05, 1.0, 0.544)
_K = 2.5


def stain_matrix(channels: int) -> torch.Tensor:
    """``(channels, 3)`` absorption of each input channel (k * beta)."""
    if channels == 1:
        rows = [BETA_EOSIN]
    elif channels == 2:
        rows = [BETA_HEMATOXYLIN, BETA_EOSIN]
    else:
        raise VortexConfigError(f"the stain rule covers 1 or 2 channels, got {channels}")
    return torch.tensor(rows, dtype=torch.float32) * _K


class ChannelMapper(nn.Module):
    """``(N, C, H, W)`` intensities in [0, 1] -> ``(N, 3, H, W)`` RGB in [0, 1] (see module doc)."""

    def __init__(self, channels: int, rule: ChannelRule = "pseudo_he") -> None:
        super().__init__()
        if channels not in (1, 2, 3):
            raise VortexConfigError(f"volumes with {channels} channels are not supported: expected 1, 2 or 3")
        if rule not in CHANNEL_RULES:
            raise VortexConfigError(f"unknown channel rule {rule!r}: expected one of {', '.join(CHANNEL_RULES)}")
        self.channels = channels
        self.rule = rule
        self.proj: nn.Conv2d | None = None
        if rule == "learned":
            proj = nn.Conv2d(channels, 3, kernel_size=1)
            with torch.no_grad():
                if channels == 3:
                    proj.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
                    nn.init.zeros_(proj.bias)  # type: ignore[arg-type]
                else:
                    proj.weight.copy_((-stain_matrix(channels)).t().reshape(3, channels, 1, 1))
                    nn.init.ones_(proj.bias)  # type: ignore[arg-type]
            self.proj = proj
        elif rule == "pseudo_he" and channels < 3:
            self.register_buffer("absorb", stain_matrix(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise VortexShapeError(f"input has {x.shape[1]} channels, the mapper expects {self.channels}")
        if self.proj is not None:
            out: torch.Tensor = self.proj(x)
            return out
        if self.channels == 3:
            return x
        if self.rule == "gray":
            return x.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
        absorb: torch.Tensor = self.absorb  # type: ignore[assignment]
        od = torch.einsum("nchw,cr->nrhw", x, absorb.to(x.dtype))
        return torch.exp(-od)
