"""Pre-cut patches (a HEST patch file: ``img`` (N, P, P, 3) in an ``.h5``) seen as a slide.

Patch ``i`` sits in cell ``(i % cols, i // cols)`` of a grid of square cells of side
``pitch`` px; inside its cell it is centred and surrounded by a gutter that repeats its
edge pixels, so resampling near a patch border never mixes in a neighbour. The mosaic is
not tissue: its coordinates only say which patch is where. :attr:`max_window_px` is the
patch side: :func:`hestkit.patches.plan_patches` refuses windows larger than a patch
(that would cut across patches). Coarser levels (2x, 4x, ...) are resized per cell on
read, so thumbnails never decode the whole mosaic at full resolution.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DataError

__all__ = ["GUTTER_PX", "MosaicGrid", "PatchMosaicBackend", "mosaic_grid"]

#: Minimum gutter (px) around each patch in its cell.
GUTTER_PX = 16
_MAX_COARSE_SIDE = 4096


class MosaicGrid:
    """Where patch ``i`` of ``n`` patches of side ``patch_px`` lies in the mosaic."""

    def __init__(self, n: int, patch_px: int) -> None:
        self.n = int(n)
        self.patch_px = int(patch_px)
        self.cols = max(1, math.ceil(math.sqrt(self.n)))
        self.rows = max(1, math.ceil(self.n / self.cols))
        n_levels = 1
        while True:
            step = 2 ** (n_levels - 1)
            pitch = math.ceil((self.patch_px + 2 * GUTTER_PX) / step) * step
            if max(self.cols, self.rows) * pitch / step <= _MAX_COARSE_SIDE or pitch // step <= 8:
                break
            n_levels += 1
        self.n_levels = n_levels
        self.pitch = pitch
        self.offset = (pitch - self.patch_px) // 2

    @property
    def width(self) -> int:
        return self.cols * self.pitch

    @property
    def height(self) -> int:
        return self.rows * self.pitch

    def centres_px(self) -> NDArray[np.float64]:
        """(n, 2) centres (x, y) of the patches in level-0 mosaic px (continuous coordinates)."""
        i = np.arange(self.n)
        x = (i % self.cols) * self.pitch + self.offset + self.patch_px / 2.0
        y = (i // self.cols) * self.pitch + self.offset + self.patch_px / 2.0
        return np.stack([x, y], axis=1).astype(np.float64)


def mosaic_grid(n: int, patch_px: int) -> MosaicGrid:
    return MosaicGrid(n, patch_px)


def patch_file_pixel_size(attrs: dict[str, Any]) -> float | None:
    """Patch resolution (um/px) from HEST's attributes: ``pixel_size`` (level-0 um/px of the
    source slide) x ``downsample`` (hestcore's convention), or None."""
    try:
        px = float(attrs["pixel_size"]) * float(np.asarray(attrs["downsample"]).ravel()[0])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return px if math.isfinite(px) and px > 0 else None


def read_patch_attrs(f: Any) -> dict[str, Any]:
    """HEST's patch attributes (on ``img`` in recent files, on ``coords`` in older ones)."""
    for key in ("img", "coords"):
        if key in f and "pixel_size" in f[key].attrs:
            return {k: f[key].attrs[k] for k in f[key].attrs}
    return {}


class PatchMosaicBackend:
    """A :class:`hestkit.slide.Slide` backend over a HEST patch file."""

    def __init__(self, path: Path) -> None:
        import h5py

        self._f = h5py.File(path, "r")
        if "img" not in self._f:
            keys = sorted(self._f.keys())
            self._f.close()
            raise DataError(f"no 'img' dataset (found {keys}); not a HEST patch file")
        img = self._f["img"]
        if img.ndim != 4 or img.shape[3] != 3 or img.shape[1] != img.shape[2] or img.dtype != np.uint8:
            shape, dtype = img.shape, img.dtype
            self._f.close()
            raise DataError(f"'img' is {dtype} {shape}; expected square uint8 RGB patches (N, P, P, 3)")
        self._img = img
        self.grid = MosaicGrid(img.shape[0], img.shape[1])
        g = self.grid
        self.levels = [_level(g.width // 2**k, g.height // 2**k, float(2**k)) for k in range(g.n_levels)]
        self.embedded_pixel_size_um = patch_file_pixel_size(read_patch_attrs(self._f))
        self.max_window_px = float(g.patch_px)

    def _cell(self, patch: NDArray[np.uint8], step: int) -> NDArray[np.uint8]:
        g = self.grid
        after = g.pitch - g.patch_px - g.offset
        cell = np.pad(patch, ((g.offset, after), (g.offset, after), (0, 0)), mode="edge")
        if step == 1:
            return cell
        import cv2

        side = g.pitch // step
        return np.asarray(cv2.resize(cell, (side, side), interpolation=cv2.INTER_AREA), dtype=np.uint8)

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> NDArray[np.uint8]:
        g = self.grid
        step = 2**level
        side = g.pitch // step
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        cx0, cx1 = x0 // side, (x0 + w - 1) // side
        cy0, cy1 = y0 // side, (y0 + h - 1) // side
        wanted = [cy * g.cols + cx for cy in range(cy0, cy1 + 1) for cx in range(cx0, cx1 + 1) if cy * g.cols + cx < g.n]
        wanted = [i for i in wanted if 0 <= i // g.cols < g.rows]
        if not wanted:
            return out
        idx = np.array(sorted(wanted))
        patches = self._img[idx] if len(idx) > 1 else self._img[int(idx[0])][None]
        for i, patch in zip(idx.tolist(), patches, strict=True):
            cx, cy = i % g.cols, i // g.cols
            cell = self._cell(np.asarray(patch), step)
            ax, ay = cx * side, cy * side
            xa, ya = max(ax, x0), max(ay, y0)
            xb, yb = min(ax + side, x0 + w), min(ay + side, y0 + h)
            if xb > xa and yb > ya:
                out[ya - y0 : yb - y0, xa - x0 : xb - x0] = cell[ya - ay : yb - ay, xa - ax : xb - ax]
        return out

    def close(self) -> None:
        self._f.close()


def _level(width: int, height: int, downsample: float) -> Any:
    from .slide import Level

    return Level(width, height, downsample)
