"""Multi-scale context: a coarser, wider sub-volume read beside the model's own.

With ``ModelConfig.context_scale`` s > 1, every point is also seen through a second
sub-volume around the same centre covering ``s`` times the field of view in-plane and in
depth (``s x size_um``, ``s x depth_um``) at the same ``size_px`` and ``n_slices``, so
``s`` times coarser (read from the matching coarser pyramid level). The two are stacked
along the slice axis (``(2 S, H, W, C)``: the model's planes first, then the context's),
so datasets, augmentation, caching and batching carry them as one array. The same 3D
encoder embeds both (one batch); the two embeddings are fused by a linear layer that starts
as "the model's own sub-volume only" (``[I | 0]``), so context is added, not imposed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import VortexShapeError

__all__ = ["ContextEncoder", "ContextPairView", "context_spec"]


def context_spec(cfg: Any, size_px: int) -> Any:
    """The context sub-volume's :class:`hestkit.volume.VolumePairSpec`, or None without context."""
    from hestkit.volume import VolumePairSpec

    s = float(cfg.context_scale)
    if s <= 1.0:
        return None
    return VolumePairSpec(size_um=cfg.size_um * s, size_px=int(size_px), depth_um=cfg.depth_um * s, n_slices=cfg.n_slices)


class ContextPairView:
    """A ``VolumePairView`` whose sub-volumes carry their context planes: items are
    ``(concat(main, context) along slices, expression)``; everything else is the view's."""

    def __init__(self, view: Any, spec: Any) -> None:
        self.view = view
        self.context = view.with_spec(spec)

    @property
    def obs(self) -> Any:
        return self.view.obs

    @property
    def genes(self) -> Sequence[str]:
        genes: Sequence[str] = self.view.genes
        return genes

    @property
    def spec(self) -> Any:
        return self.view.spec

    def expression(self, *args: Any, **kwargs: Any) -> Any:
        return self.view.expression(*args, **kwargs)

    def __len__(self) -> int:
        return len(self.view)

    def subset(self, rows: Any) -> ContextPairView:
        out = ContextPairView.__new__(ContextPairView)
        out.view, out.context = self.view.subset(rows), self.context.subset(rows)
        return out

    def subvolumes(self, rows: Any) -> np.ndarray:
        """``(N, 2 S, H, W, C)``: the model's planes, then the context's."""
        return np.concatenate([self.view.subvolumes(rows), self.context.subvolumes(rows)], axis=1)

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]:
        sub, expr = self.view[i]
        return np.concatenate([np.asarray(sub), np.asarray(self.context.subvolume(i))], axis=0), expr


class ContextEncoder(nn.Module):
    """``(B, 2 S, C, H, W)`` -> ``(B, D)``: ``encoder`` on both halves (one batch), then
    ``fuse(concat(own, context))`` with ``fuse`` initialised to ``[I | 0]``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.inner = encoder
        self.dim = int(encoder.dim)  # type: ignore[arg-type]
        self.channels = int(encoder.channels)  # type: ignore[arg-type]
        self.n_slices = int(encoder.n_slices)  # type: ignore[arg-type]
        self.fuse = nn.Linear(2 * self.dim, self.dim)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, : self.dim].copy_(torch.eye(self.dim))
            self.fuse.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 2 * self.n_slices:
            raise VortexShapeError(
                f"expected sub-volumes with their context planes (B, {2 * self.n_slices}, C, H, W), got shape {tuple(x.shape)}"
            )
        b, s = x.shape[0], self.n_slices
        e: torch.Tensor = self.inner(torch.cat([x[:, :s], x[:, s:]], dim=0))
        out: torch.Tensor = self.fuse(torch.cat([e[:b], e[b:]], dim=-1))
        return out
