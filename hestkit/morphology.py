"""Xenium morphology images (DAPI and other stains) rendered as RGB slides.

A Xenium run without a post-Xenium H&E can still be paired with its own morphology
image. 10x writes it as ``morphology_focus.ome.tif`` (Xenium Onboarding Analysis 1.x:
one channel, DAPI, uint16) or as the folder ``morphology_focus/`` (XOA >= 2: a multi-file
OME-TIFF, ``morphology_focus_0000.ome.tif`` ... ``_0003``: DAPI, boundary stain, interior
RNA stain, interior protein stain). Its pixels are the Xenium frame scaled by
``experiment.xenium``'s ``pixel_size`` (um per pixel), so no alignment is needed.

Rendering rule (documented in README): each channel is windowed to its own
[0.5th, 99.5th] percentile, measured once on the image's smallest pyramid level, and
mapped linearly to [0, 1]. One channel is drawn grey (bright nuclei on black); with
several, DAPI is blue, channel 1 green, channel 2 red, channel 3 yellow (red + green),
added and clipped to 255. Further channels are not drawn. Backgrounds are black.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ImageError

__all__ = ["CHANNEL_COLOURS", "MorphologyBackend", "find_morphology_image", "is_morphology_image"]

#: RGB weight of channel k when several are drawn (DAPI, boundary, interior RNA, interior protein).
CHANNEL_COLOURS = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (1.0, 1.0, 0.0))
_PERCENTILES = (0.5, 99.5)


def is_morphology_image(path: Path) -> bool:
    """A Xenium morphology OME-TIFF by its name (``morphology*.ome.tif``)."""
    n = Path(path).name.lower()
    return n.startswith("morphology") and (n.endswith(".ome.tif") or n.endswith(".ome.tiff"))


def find_morphology_image(folder: Path) -> Path | None:
    """The bundle's 2D morphology image: ``morphology_focus/morphology_focus_0000.ome.tif``
    (XOA >= 2), ``morphology_focus.ome.tif``, else ``morphology_mip.ome.tif``."""
    for cand in (
        folder / "morphology_focus" / "morphology_focus_0000.ome.tif",
        folder / "morphology_focus.ome.tif",
        folder / "morphology_mip.ome.tif",
    ):
        if cand.is_file():
            return cand
    return None


class MorphologyBackend:
    """A slide backend over a (multi-channel, uint16) morphology OME-TIFF that returns
    RGB uint8 blocks by the module's rendering rule."""

    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        from .slide import Level

        self._tf = tifffile.TiffFile(path)
        series = self._tf.series[0]
        group = zarr.open(series.aszarr(), mode="r")
        self._axes = [lvl.axes for lvl in series.levels]
        self._arrays: list[Any] = []
        levels: list[Level] = []
        base_w = 0
        for i, lvl in enumerate(series.levels):
            axes = lvl.axes
            if "Y" not in axes or "X" not in axes:
                raise ImageError(path, f"level {i} has axes {axes!r}", "give a 2D morphology image (Y, X, optional C)")
            h, w = lvl.shape[axes.index("Y")], lvl.shape[axes.index("X")]
            base_w = base_w or w
            levels.append(Level(int(w), int(h), base_w / w if w else 1.0))
            self._arrays.append(group if isinstance(group, zarr.Array) else group[str(i)])
        self.levels = levels
        axes0 = self._axes[0]
        self.n_channels = int(series.levels[0].shape[axes0.index("C")]) if "C" in axes0 else 1
        from .slide import _TiffBackend

        self.embedded_pixel_size_um = _TiffBackend._pixel_size(self)  # type: ignore[arg-type]
        small = self._raw(len(levels) - 1, 0, 0, levels[-1].width, levels[-1].height)
        flat = small.reshape(-1, small.shape[-1]).astype(np.float64)
        lo = np.percentile(flat, _PERCENTILES[0], axis=0)
        hi = np.percentile(flat, _PERCENTILES[1], axis=0)
        self.window = [(float(a), float(max(b, a + 1.0))) for a, b in zip(lo, hi, strict=True)]

    def _raw(self, level: int, x0: int, y0: int, w: int, h: int) -> NDArray[Any]:
        """(h, w, channels) raw values."""
        axes = self._axes[level]
        index: list[Any] = []
        kept: list[str] = []
        for ax in axes:
            if ax == "Y":
                index.append(slice(y0, y0 + h))
                kept.append(ax)
            elif ax == "X":
                index.append(slice(x0, x0 + w))
                kept.append(ax)
            elif ax in ("C", "S"):
                index.append(slice(None))
                kept.append("C")
            else:
                index.append(0)
        a = np.asarray(self._arrays[level][tuple(index)])
        if "C" not in kept:
            return a[..., None]
        order = [kept.index("Y"), kept.index("X"), kept.index("C")]
        return np.transpose(a, order)

    def render(self, raw: NDArray[Any]) -> NDArray[np.uint8]:
        """RGB uint8 of raw (h, w, channels) values (module rule)."""
        h, w, c = raw.shape
        if c == 1:
            lo, hi = self.window[0]
            g = np.clip((raw[..., 0].astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) * 255.0
            return np.repeat(np.round(g).astype(np.uint8)[..., None], 3, axis=2)
        out = np.zeros((h, w, 3), dtype=np.float32)
        for k in range(min(c, len(CHANNEL_COLOURS))):
            lo, hi = self.window[k]
            v = np.clip((raw[..., k].astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
            out += v[..., None] * np.asarray(CHANNEL_COLOURS[k], dtype=np.float32)
        return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> NDArray[np.uint8]:
        return self.render(self._raw(level, x0, y0, w, h))

    def describe(self) -> dict[str, Any]:
        """The rendering applied, for the sample's metadata."""
        return {
            "channels": self.n_channels,
            "window_percentiles": list(_PERCENTILES),
            "windows": [list(w) for w in self.window],
            "colours": "grey" if self.n_channels == 1 else [list(c) for c in CHANNEL_COLOURS[: self.n_channels]],
        }

    def close(self) -> None:
        self._tf.close()
