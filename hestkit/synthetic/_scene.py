"""The synthetic H&E image model: glass, a pink tissue blob, flat-coloured spot disks.

Every pixel is point-sampled at its centre: level pixel ``(y, x)`` at downsample
``ds`` is evaluated at level-0 position ``((x + 0.5) ds, (y + 0.5) ds)``. So any
window of any level (or any scale of a flat thumbnail) is rendered independently and
consistently, tile by tile.

- Glass (outside the tissue blob): near-white, noise +-2.
- Tissue: light pink ``TISSUE_RGB`` with seeded per-pixel texture noise +-6 (hashed
  from the level-0 pixel under the sample point, so identical across tiles).
- Spot disks (in-tissue spots only): a flat colour (no noise) where the distance from
  the pixel centre to the spot centre is ``< radius_px``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from ..errors import OptionError
from ._grid import TissueBlob

TISSUE_RGB = (232, 200, 215)
GLASS_RGB = (243, 241, 242)
TISSUE_NOISE = 6
GLASS_NOISE = 2

_M1 = np.uint32(0x9E3779B1)
_M2 = np.uint32(0x85EBCA77)
_M3 = np.uint32(0xC2B2AE3D)


def _hash_noise(ix: NDArray[np.int64], iy: NDArray[np.int64], seed: int, amplitude: int) -> NDArray[np.int16]:
    """Deterministic integer noise in ``[-amplitude, amplitude]`` on grid ``iy x ix``.

    A function of the level-0 pixel ``(ix, iy)`` and ``seed`` only.
    """
    with np.errstate(over="ignore"):
        hx = ix.astype(np.uint32) * _M1
        hy = iy.astype(np.uint32) * _M2 + np.uint32(seed & 0xFFFFFFFF)
        h = hy[:, None] ^ hx[None, :]
        h ^= h >> np.uint32(15)
        h *= _M3
        h ^= h >> np.uint32(13)
        h *= _M1
        h ^= h >> np.uint32(16)
    out: NDArray[np.int16] = (h % np.uint32(2 * amplitude + 1)).astype(np.int16)
    out -= np.int16(amplitude)
    return out


class TissueRenderer(Protocol):
    """Whole-tissue rendering (the histology morphologies): float RGB at pixel centres."""

    def render(self, x_um: NDArray[np.float64], y_um: NDArray[np.float64]) -> NDArray[np.float64]: ...


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything needed to render any window of the synthetic slide.

    Attributes:
        height, width: level-0 size in pixels.
        centres_px: ``(N, 2)`` spot centres ``(x, y)``, level-0 px.
        radius_px: disk radius in level-0 px.
        colours: ``(N, 3)`` uint8 flat disk colour of each spot.
        painted: ``(N,)`` bool, which spots get a disk (the in-tissue ones).
        blob: the tissue region.
        seed: texture-noise seed.
        stripe_period_px: optional ``(N,)`` level-0 period of vertical stripes inside each
            disk (the "texture" morphology: the disk colour is modulated by
            ``0.6 + 0.4 cos(2 pi (x - centre_x) / period)``); None = flat disks.
        plaid_px: optional ``(N, 5)`` "plaid" texture of each disk (see
            :func:`plaid_parameters`, periods in level-0 px): with ``u, v`` the offsets
            from the centre rotated by the angle, the colour is scaled by
            ``1 - contrast (g(u, period_1) + g(v, period_2)) / 2`` with
            ``g(t, p) = (1 + cos(2 pi t / p + phase)) / 2``.
        histology: optional whole-tissue renderer (``"nuclei"``, ``"glands"``): tissue
            pixels are its RGB (plus the tissue noise) at the pixel centre in micrometres
            (``level-0 px x pixel_size_um``); no spot disks are drawn.
        pixel_size_um: level-0 pixel size, for ``histology``.
    """

    height: int
    width: int
    centres_px: NDArray[np.float64]
    radius_px: float
    colours: NDArray[np.uint8]
    painted: NDArray[np.bool_]
    blob: TissueBlob
    seed: int
    stripe_period_px: NDArray[np.float64] | None = None
    plaid_px: NDArray[np.float64] | None = None
    histology: TissueRenderer | None = None
    pixel_size_um: float = 1.0
    _tree: cKDTree | None = field(init=False, repr=False, default=None)
    _index: NDArray[np.int64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        index = np.flatnonzero(self.painted).astype(np.int64)
        tree = cKDTree(self.centres_px[index]) if index.size else None
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_tree", tree)

    def spots_in_window(self, x_lo: float, y_lo: float, x_hi: float, y_hi: float) -> NDArray[np.int64]:
        """Painted spots whose disk may intersect the level-0 box ``[lo, hi)``."""
        if self._tree is None:
            return np.empty(0, dtype=np.int64)
        cx, cy = 0.5 * (x_lo + x_hi), 0.5 * (y_lo + y_hi)
        reach = 0.5 * float(np.hypot(x_hi - x_lo, y_hi - y_lo)) + self.radius_px + 1.0
        hits = self._tree.query_ball_point([cx, cy], r=reach)
        out: NDArray[np.int64] = np.sort(self._index[np.asarray(hits, dtype=np.int64)])
        return out

    def render(self, downsample: float, y0: int, x0: int, h: int, w: int) -> NDArray[np.uint8]:
        """Window ``(h, w, 3)`` uint8, top-left ``(y0, x0)``, of level ``downsample``."""
        ds = float(downsample)
        if h <= 0 or w <= 0:
            return np.zeros((max(h, 0), max(w, 0), 3), dtype=np.uint8)
        xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * ds
        ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * ds
        tissue = self.blob.contains_grid(xs, ys)
        noise = _hash_noise(
            np.floor(xs).astype(np.int64),
            np.floor(ys).astype(np.int64),
            self.seed,
            TISSUE_NOISE,
        )
        out = np.empty((h, w, 3), dtype=np.uint8)
        if tissue is True:
            for c in range(3):
                out[..., c] = noise + np.int16(TISSUE_RGB[c])
        else:
            glass_noise = np.clip(noise, -GLASS_NOISE, GLASS_NOISE)
            for c in range(3):
                out[..., c] = glass_noise + np.int16(GLASS_RGB[c])
            if tissue is not False:
                mask = np.asarray(tissue)
                for c in range(3):
                    out[..., c][mask] = (noise[mask] + np.int16(TISSUE_RGB[c])).astype(np.uint8)
        if self.histology is not None:
            if tissue is not False:
                px = self.pixel_size_um
                rgb = self.histology.render(xs * px, ys * px) + noise[..., None]
                tex = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
                if tissue is True:
                    out[:] = tex
                else:
                    out[np.asarray(tissue)] = tex[np.asarray(tissue)]
            return out
        r2 = self.radius_px**2
        for i in self.spots_in_window(xs[0] - ds, ys[0] - ds, xs[-1] + ds, ys[-1] + ds):
            sx, sy = self.centres_px[i]
            # Columns / rows whose pixel centres can fall inside the disk.
            c_lo = int(np.searchsorted(xs, sx - self.radius_px, side="left"))
            c_hi = int(np.searchsorted(xs, sx + self.radius_px, side="right"))
            r_lo = int(np.searchsorted(ys, sy - self.radius_px, side="left"))
            r_hi = int(np.searchsorted(ys, sy + self.radius_px, side="right"))
            if c_lo >= c_hi or r_lo >= r_hi:
                continue
            dx2 = (xs[c_lo:c_hi] - sx) ** 2
            dy2 = (ys[r_lo:r_hi] - sy) ** 2
            inside = dy2[:, None] + dx2[None, :] < r2
            if self.plaid_px is not None:
                p1, angle, contrast, p2, phase = (float(v) for v in self.plaid_px[i])
                dx = (xs[c_lo:c_hi] - sx)[None, :]
                dy = (ys[r_lo:r_hi] - sy)[:, None]
                u = dx * np.cos(angle) + dy * np.sin(angle)
                v = -dx * np.sin(angle) + dy * np.cos(angle)
                g = 0.5 * (1.0 + np.cos(2.0 * np.pi * u / p1 + phase)) + 0.5 * (1.0 + np.cos(2.0 * np.pi * v / p2 + phase))
                factor2d = 1.0 - 0.5 * contrast * g
                shade2d = np.clip(self.colours[i][None, None, :] * factor2d[..., None], 0, 255).astype(np.uint8)
                block = out[r_lo:r_hi, c_lo:c_hi]
                block[inside] = shade2d[inside]
            elif self.stripe_period_px is None:
                out[r_lo:r_hi, c_lo:c_hi][inside] = self.colours[i]
            else:
                phase = 2.0 * np.pi * (xs[c_lo:c_hi] - sx) / float(self.stripe_period_px[i])
                factor = 0.6 + 0.4 * np.cos(phase)
                shade = np.clip(self.colours[i][None, :].astype(np.float64) * factor[:, None], 0, 255).astype(np.uint8)
                block = out[r_lo:r_hi, c_lo:c_hi]
                rows, cols = np.nonzero(inside)
                block[rows, cols] = shade[cols]
        return out

    def render_scaled(self, scale: float) -> NDArray[np.uint8]:
        """The whole slide at ``scale`` (< 1 shrinks), as a flat thumbnail array.

        The result has ``max(1, round(height * scale))`` rows and likewise columns;
        pixel ``(y, x)`` samples level-0 ``((x + 0.5) / scale, (y + 0.5) / scale)``.
        """
        if not scale > 0:
            raise OptionError(f"scale must be positive, got {scale}")
        h = max(1, round(self.height * scale))
        w = max(1, round(self.width * scale))
        return self.render(1.0 / scale, 0, 0, h, w)
