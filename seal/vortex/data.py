"""Sub-volumes as tensors, and datasets over a ``VolumePairView``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import VortexShapeError

__all__ = ["PairSource", "SubvolumeTransform", "VolumeDataset", "spatial_holdout"]


class PairSource(Protocol):
    """What training and evaluation read: a ``catalog`` ``VolumePairView`` (or any
    object with the same shape of API)."""

    @property
    def obs(self) -> Any: ...

    @property
    def genes(self) -> Sequence[str]: ...

    def expression(self) -> Any: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> tuple[np.ndarray, Any]: ...


class SubvolumeTransform:
    """uint8 ``(S, H, W, C)`` -> float ``(S, C, size, size)`` in [0, 1].

    Resized in-plane to ``size`` px when needed (bilinear, antialiased). Augmentation
    (training only) applies ONE random flip / 90-degree rotation to every slice of a
    sub-volume, optionally reverses the slice order (``depth_flip``), and jitters
    brightness and contrast by up to +-10 %. ``groups`` sub-volumes stacked along the slice
    axis (multi-scale context: 2) are flipped in depth each within itself.
    """

    def __init__(self, size: int, *, augment: bool = False, depth_flip: bool = True, groups: int = 1) -> None:
        self.size = int(size)
        self.augment = augment
        self.depth_flip = depth_flip
        self.groups = int(groups)

    def __call__(self, sub: np.ndarray) -> torch.Tensor:
        if sub.ndim == 3:
            sub = sub[..., None]
        if sub.ndim != 4:
            raise VortexShapeError(f"expected a sub-volume (slices, H, W, channels), got shape {sub.shape}")
        x = torch.from_numpy(np.ascontiguousarray(sub)).permute(0, 3, 1, 2).float().div_(255.0)
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(3)
            if torch.rand(()) < 0.5:
                x = x.flip(2)
            x = torch.rot90(x, int(torch.randint(0, 4, ())), dims=(2, 3))
            if self.depth_flip and torch.rand(()) < 0.5:
                x = x.reshape(self.groups, -1, *x.shape[1:]).flip(1).reshape(x.shape)
            b = 1.0 + (torch.rand(()) - 0.5) * 0.2
            c = 1.0 + (torch.rand(()) - 0.5) * 0.2
            m = x.mean()
            x = (((x - m) * c + m) * b).clamp_(0.0, 1.0)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        return x.contiguous()


class VolumeDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(sub-volume, expression)``: sub-volumes read lazily from the pair source,
    expression preprocessed once (``values`` rows align with the source's rows).
    ``cache`` keeps each uint8 sub-volume after its first read (n_pairs x n_slices x
    size_px^2 x C bytes): for small runs that go over the same pairs many times."""

    def __init__(self, source: PairSource, values: np.ndarray, transform: SubvolumeTransform, *, cache: bool = False) -> None:
        if len(values) != len(source):
            raise VortexShapeError(f"{len(values)} expression rows for {len(source)} pairs")
        self.source = source
        self.values = np.asarray(values, dtype=np.float32)
        self.transform = transform
        self.cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = int(i)
        if self.cache is not None and i in self.cache:
            sub = self.cache[i]
        else:
            sub = np.asarray(self.source[i][0])
            if self.cache is not None:
                self.cache[i] = sub
        return self.transform(np.asarray(sub)), torch.from_numpy(self.values[int(i)])


def spatial_holdout(obs: Any, fraction: float, block_um: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(train, held out)``: whole square blocks of ``block_um`` (per section,
    on the spots' ``y_um``/``x_um`` volume coordinates) are held out, in a seeded random
    order, until at least ``fraction`` of the spots are; at least 2 spots stay on each side.
    Neighbouring spots correlate, so a random spot split would flatter the held-out score."""
    n = len(obs)
    if fraction <= 0 or n < 4:
        return np.arange(n), np.zeros(0, dtype=np.int64)
    sec = obs["sample_id"].astype(str).to_numpy() if "sample_id" in obs.columns else np.zeros(n, dtype=str)
    by = np.floor(obs["y_um"].to_numpy(dtype=float) / block_um).astype(np.int64)
    bx = np.floor(obs["x_um"].to_numpy(dtype=float) / block_um).astype(np.int64)
    keys = np.array([f"{s}|{y}|{x}" for s, y, x in zip(sec, by, bx, strict=True)])
    uniq = np.unique(keys)
    order = np.random.default_rng(seed).permutation(len(uniq))
    want = min(max(2, int(np.ceil(fraction * n))), n - 2)
    held = np.zeros(n, dtype=bool)
    for k in order:
        if held.sum() >= want:
            break
        cand = held | (keys == uniq[k])
        if n - cand.sum() < 2:
            continue
        held = cand
    return np.flatnonzero(~held), np.flatnonzero(held)
