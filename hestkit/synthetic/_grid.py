"""Visium spot grid geometry, the seeded tissue blob and 10x-style barcodes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import OptionError

VISIUM_SPOT_DIAMETER_UM = 55.0
VISIUM_SPOT_SPACING_UM = 100.0
VISIUM_FIDUCIAL_DIAMETER_UM = 89.0
IMAGE_MARGIN_UM = 150.0


@dataclass(frozen=True, eq=False)
class TissueBlob:
    """A wobbly ellipse in level-0 pixels; tissue where ``rho(x, y) < threshold``."""

    cx: float
    cy: float
    ax: float
    ay: float
    wobble: float
    phase: float
    threshold: float

    def rho(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        """Normalised blob radius of points ``(x, y)`` (level-0 px, centre convention).

        ``rho = r / (1 + wobble sin(3 theta + phase))`` in ellipse-normalised polar
        coordinates, with ``sin(3 theta)`` expanded so that no trigonometry is needed.
        """
        u = (np.asarray(x, dtype=np.float64) - self.cx) / self.ax
        v = (np.asarray(y, dtype=np.float64) - self.cy) / self.ay
        r = np.sqrt(u * u + v * v)
        safe = np.maximum(r, 1e-12)
        c, s = u / safe, v / safe
        sin3 = s * (3.0 - 4.0 * s * s)
        cos3 = c * (4.0 * c * c - 3.0)
        wave = sin3 * math.cos(self.phase) + cos3 * math.sin(self.phase)
        out: NDArray[np.float64] = r / (1.0 + self.wobble * wave)
        return out

    def contains(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Whether points ``(x, y)`` lie inside the tissue."""
        inside: NDArray[np.bool_] = self.rho(x, y) < self.threshold
        return inside

    def contains_grid(self, xs: NDArray[np.float64], ys: NDArray[np.float64]) -> NDArray[np.bool_] | bool:
        """:meth:`contains` on the grid ``ys x xs`` (shape ``(len(ys), len(xs))``).

        Returns a plain ``bool`` when the whole grid is on one side of the boundary.
        """
        u = (xs - self.cx) / self.ax
        v = (ys - self.cy) / self.ay
        u_abs, v_abs = np.abs(u), np.abs(v)
        u_min = 0.0 if u[0] <= 0.0 <= u[-1] else float(u_abs.min())
        v_min = 0.0 if v[0] <= 0.0 <= v[-1] else float(v_abs.min())
        r_min = math.hypot(u_min, v_min)
        r_max = math.hypot(float(u_abs.max()), float(v_abs.max()))
        if r_max < self.threshold * (1.0 - self.wobble) * (1.0 - 1e-9):
            return True
        if r_min > self.threshold * (1.0 + self.wobble) * (1.0 + 1e-9):
            return False
        gx, gy = np.meshgrid(xs, ys)
        return self.contains(gx, gy)


@dataclass(frozen=True, eq=False)
class VisiumGrid:
    """All spots of a Visium-like hexagonal grid.

    ``centres_px`` are spot centres ``(x, y)`` in level-0 pixels, rounded to integers
    (as written to ``tissue_positions``); ``centres_um`` are the exact array-frame
    positions in micrometres.
    """

    array_row: NDArray[np.int64]
    array_col: NDArray[np.int64]
    centres_um: NDArray[np.float64]
    centres_px: NDArray[np.float64]
    height: int
    width: int

    @property
    def n_spots(self) -> int:
        return int(self.array_row.shape[0])


def visium_grid(n_rows: int, n_cols: int, pixel_size_um: float, origin_px: tuple[float, float]) -> VisiumGrid:
    """Hexagonal grid: ``array_col = 2k + row % 2``; x = 50 col um, y = 50 sqrt(3) row um.

    ``n_cols`` is the number of spots per row. The image is sized so that every spot
    centre has at least ``max(150 um, origin)`` of margin on the right and bottom.
    """
    if n_rows < 1 or n_cols < 1:
        raise OptionError(f"grid must be non-empty, got {n_rows}x{n_cols}")
    if not pixel_size_um > 0:
        raise OptionError(f"pixel_size_um must be positive, got {pixel_size_um}")
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), n_cols)
    ks = np.tile(np.arange(n_cols, dtype=np.int64), n_rows)
    cols = 2 * ks + rows % 2
    half = VISIUM_SPOT_SPACING_UM / 2.0
    x_um = cols.astype(np.float64) * half
    y_um = rows.astype(np.float64) * half * math.sqrt(3.0)
    ox, oy = origin_px
    x_px = np.round(ox + x_um / pixel_size_um)
    y_px = np.round(oy + y_um / pixel_size_um)
    margin_px = IMAGE_MARGIN_UM / pixel_size_um
    width = math.ceil(float(x_px.max()) + max(margin_px, ox)) + 1
    height = math.ceil(float(y_px.max()) + max(margin_px, oy)) + 1
    return VisiumGrid(
        array_row=rows,
        array_col=cols,
        centres_um=np.stack([x_um, y_um], axis=1),
        centres_px=np.stack([x_px, y_px], axis=1),
        height=height,
        width=width,
    )


def tissue_blob(
    centres_px: NDArray[np.float64], fraction: float, rng: np.random.Generator
) -> tuple[TissueBlob, NDArray[np.bool_]]:
    """A seeded blob covering about ``fraction`` of the spots, and the tissue mask."""
    if not 0.0 < fraction <= 1.0:
        raise OptionError(f"in_tissue_fraction must be in (0, 1], got {fraction}")
    x, y = centres_px[:, 0], centres_px[:, 1]
    span_x = max(float(np.ptp(x)), 1.0)
    span_y = max(float(np.ptp(y)), 1.0)
    cx = float(x.mean()) + rng.uniform(-0.08, 0.08) * span_x
    cy = float(y.mean()) + rng.uniform(-0.08, 0.08) * span_y
    aspect = rng.uniform(0.75, 1.3)
    blob = TissueBlob(
        cx=cx,
        cy=cy,
        ax=span_x / 2.0 * aspect,
        ay=span_y / 2.0 / aspect,
        wobble=float(rng.uniform(0.05, 0.15)),
        phase=float(rng.uniform(0.0, 2.0 * math.pi)),
        threshold=1.0,
    )
    rho = np.sort(blob.rho(x, y))
    n_in = max(1, round(fraction * rho.size))
    if n_in >= rho.size:
        threshold = float(rho[-1]) * 1.05 + 1e-6
    else:
        threshold = float(0.5 * (rho[n_in - 1] + rho[n_in]))
    blob = TissueBlob(blob.cx, blob.cy, blob.ax, blob.ay, blob.wobble, blob.phase, threshold)
    return blob, blob.contains(x, y)


def random_barcodes(n: int, rng: np.random.Generator, suffix: str = "-1") -> list[str]:
    """``n`` unique 10x-style barcodes: 16 random bases of ACGT plus ``suffix``."""
    letters = np.array(list("ACGT"))
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        draws = rng.integers(0, 4, size=(n - len(out), 16))
        for row in letters[draws]:
            code = "".join(row.tolist()) + suffix
            if code not in seen:
                seen.add(code)
                out.append(code)
    return out
