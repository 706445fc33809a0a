"""Tissue threshold of a volume (Otsu on its coarsest level, streamed plane by plane)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

__all__ = ["Background", "otsu_threshold", "tissue_fraction", "volume_threshold"]

Background = Literal["auto", "dark", "bright"]


def otsu_threshold(hist: np.ndarray) -> float:
    """Otsu's threshold of a 256-bin histogram (the value v splits ``<= v`` from ``> v``)."""
    h = np.asarray(hist, dtype=np.float64)
    total = h.sum()
    if total <= 0:
        return 0.0
    p = h / total
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(len(p)))
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * omega - mu) ** 2 / (omega * (1.0 - omega))
    between[~np.isfinite(between)] = -1.0
    return float(np.argmax(between))


def volume_threshold(volume: Any, *, max_planes: int = 32) -> float:
    """Otsu threshold of the channel-mean intensity over up to ``max_planes`` evenly spaced
    planes of the volume's coarsest level (one plane in memory at a time)."""
    lvl = len(volume.levels) - 1
    nz, ny, nx = volume.levels[lvl].shape_zyx
    hist = np.zeros(256, dtype=np.int64)
    for k in sorted({round(v) for v in np.linspace(0, nz - 1, min(nz, max_planes))}):
        step = max(1, int(np.ceil(max(ny, nx) / 1024)))
        for y0 in range(0, ny, 1024 * step):
            plane = np.asarray(volume.read(slice(k, k + 1), slice(y0, min(y0 + 1024 * step, ny)), slice(0, nx), lvl))
            sig = plane[0, ::step, ::step].mean(axis=-1)
            hist += np.bincount(np.clip(np.rint(sig), 0, 255).astype(np.int64).ravel(), minlength=256)[:256]
    return otsu_threshold(hist)


def tissue_fraction(planes: np.ndarray, threshold: float, background: Literal["dark", "bright"]) -> np.ndarray:
    """Fraction of tissue pixels of ``(N, H, W, C)`` uint8 planes (channel mean above the
    threshold on a dark background, below it on a bright one)."""
    sig = planes.astype(np.float32).mean(axis=-1)
    tissue = sig > threshold if background == "dark" else sig <= threshold
    out: np.ndarray = tissue.reshape(len(planes), -1).mean(axis=1)
    return out
