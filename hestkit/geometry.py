"""Coordinate maths: affines between frames, and pixel size from spot geometry.

Conventions: points are ``(x, y)`` with x the image column and y the image row, in
level-0 pixels of the sample's whole-slide image unless a name says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import OptionError, PixelSizeError, fix
from .fixes import PIXEL_SIZE_UM

__all__ = [
    "PIXEL_SIZE_TOLERANCE",
    "Affine",
    "PixelSizeDecision",
    "estimate_pixel_size_from_grid",
    "fit_affine",
    "resolve_pixel_size",
    "visium_array_to_um",
]

#: Relative disagreement between embedded and estimated pixel size above which the
#: estimate wins (and a warning is recorded).
PIXEL_SIZE_TOLERANCE = 0.05

#: Visium: centre-to-centre distance of neighbouring spots, in micrometres.
VISIUM_SPOT_PITCH_UM = 100.0


@dataclass(frozen=True)
class Affine:
    """A 2D affine transform stored as a 3x3 matrix acting on column vectors (x, y, 1)."""

    matrix: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]

    @classmethod
    def from_array(cls, m: ArrayLike) -> Affine:
        a = np.asarray(m, dtype=float)
        if a.shape == (2, 3):
            a = np.vstack([a, [0.0, 0.0, 1.0]])
        if a.shape != (3, 3):
            raise OptionError(f"an affine needs a 3x3 or 2x3 matrix, got shape {a.shape}")
        rows = tuple(tuple(float(v) for v in row) for row in a)
        return cls(rows)  # type: ignore[arg-type]

    @classmethod
    def identity(cls) -> Affine:
        return cls.from_array(np.eye(3))

    @classmethod
    def scale(cls, sx: float, sy: float | None = None) -> Affine:
        return cls.from_array(np.diag([sx, sx if sy is None else sy, 1.0]))

    def to_array(self) -> NDArray[np.float64]:
        return np.array(self.matrix, dtype=float)

    def apply(self, points: ArrayLike) -> NDArray[np.float64]:
        """Map an (N, 2) array of (x, y) points."""
        p = np.asarray(points, dtype=float).reshape(-1, 2)
        m = self.to_array()
        return p @ m[:2, :2].T + m[:2, 2]

    def inverse(self) -> Affine:
        return Affine.from_array(np.linalg.inv(self.to_array()))

    def __matmul__(self, other: Affine) -> Affine:
        """``a @ b`` applies ``b`` first, then ``a``."""
        return Affine.from_array(self.to_array() @ other.to_array())

    @property
    def linear_scale(self) -> float:
        """Geometric mean scale factor: sqrt(|det|) of the linear part."""
        return math.sqrt(abs(float(np.linalg.det(self.to_array()[:2, :2]))))


def fit_affine(src: ArrayLike, dst: ArrayLike) -> tuple[Affine, NDArray[np.float64]]:
    """Least-squares affine mapping ``src`` (N, 2) points onto ``dst`` (N, 2).

    Returns the affine and the per-point residual distances (in ``dst`` units).
    Raises ``ValueError`` if the points do not span two dimensions.
    """
    s = np.asarray(src, dtype=float).reshape(-1, 2)
    d = np.asarray(dst, dtype=float).reshape(-1, 2)
    if s.shape != d.shape:
        raise OptionError(f"src and dst differ in shape: {s.shape} vs {d.shape}")
    design = np.hstack([s, np.ones((len(s), 1))])
    if len(s) < 3 or np.linalg.matrix_rank(design) < 3:
        raise OptionError("need at least 3 points that are not collinear to fit an affine")
    coef, *_ = np.linalg.lstsq(design, d, rcond=None)
    m = np.vstack([coef.T, [0.0, 0.0, 1.0]])
    aff = Affine.from_array(m)
    resid = np.linalg.norm(aff.apply(s) - d, axis=1)
    return aff, resid


def visium_array_to_um(array_row: ArrayLike, array_col: ArrayLike) -> NDArray[np.float64]:
    """Visium array indices to micrometres in the array's own frame, (N, 2) as (x, y).

    Along one ``array_row``, ``array_col`` steps by 2 between neighbours 100 um apart;
    rows of the hexagonal lattice are 100 * sqrt(3) / 2 um apart.
    """
    r = np.asarray(array_row, dtype=float)
    c = np.asarray(array_col, dtype=float)
    half = VISIUM_SPOT_PITCH_UM / 2.0
    return np.column_stack([c * half, r * half * math.sqrt(3.0)])


def estimate_pixel_size_from_grid(grid_um: ArrayLike, centres_px: ArrayLike, *, max_residual_um: float = 10.0) -> float | None:
    """Estimate micrometres per pixel from spots whose positions on a known grid are given.

    ``grid_um`` are spot positions in the technology's micrometre frame (e.g. from
    :func:`visium_array_to_um`) and ``centres_px`` their centres in image pixels.
    An affine is fitted from micrometres to pixels; the pixel size is 1 / sqrt(|det|).
    This uses the spacing of the whole grid, which is far more reliable than a spot
    diameter. Returns ``None`` when the spots are too few or too degenerate, or when
    the fit is poor (median residual above ``max_residual_um``).
    """
    g = np.asarray(grid_um, dtype=float).reshape(-1, 2)
    p = np.asarray(centres_px, dtype=float).reshape(-1, 2)
    ok = np.isfinite(g).all(axis=1) & np.isfinite(p).all(axis=1)
    g, p = g[ok], p[ok]
    try:
        aff, resid_px = fit_affine(g, p)
    except ValueError:
        return None
    scale = aff.linear_scale  # px per um
    if not np.isfinite(scale) or scale <= 0:
        return None
    um_per_px = 1.0 / scale
    if float(np.median(resid_px)) * um_per_px > max_residual_um:
        return None
    return um_per_px


@dataclass(frozen=True)
class PixelSizeDecision:
    """Which pixel size a sample uses, and why."""

    value: float
    source: Literal["override", "embedded", "estimated", "metadata"]
    embedded: float | None
    estimated: float | None
    warning: str | None = None


def resolve_pixel_size(
    *,
    embedded: float | None,
    estimated: float | None,
    override: float | None = None,
    metadata: float | None = None,
    tolerance: float = PIXEL_SIZE_TOLERANCE,
    subject: str = "sample",
) -> PixelSizeDecision:
    """Choose the pixel size (um/px) of a sample.

    Order: a user ``override`` wins. Otherwise the value embedded in the image is used
    when it agrees with the estimate from spot geometry within ``tolerance``
    (relative); when they disagree, the estimate wins and ``warning`` says so. With only
    one of them, that one is used; ``metadata`` (e.g. HEST-1k's table) is the last resort.
    """
    for name, v in (("override", override), ("embedded", embedded), ("estimated", estimated)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise PixelSizeError(f"{subject}: {name} pixel size {v!r} is not a positive number")
    if override is not None:
        return PixelSizeDecision(override, "override", embedded, estimated)
    if embedded is not None and estimated is not None:
        rel = abs(embedded - estimated) / estimated
        if rel > tolerance:
            msg = (
                f"{subject}: the image says {embedded:.4g} um/px but the spot spacing gives "
                f"{estimated:.4g} um/px ({rel:.0%} apart, more than {tolerance:.0%}); using the "
                f"estimate from spot spacing. Pass {PIXEL_SIZE_UM} to override."
            )
            return PixelSizeDecision(estimated, "estimated", embedded, estimated, msg)
        return PixelSizeDecision(embedded, "embedded", embedded, estimated)
    if embedded is not None:
        return PixelSizeDecision(embedded, "embedded", embedded, estimated)
    if estimated is not None:
        return PixelSizeDecision(estimated, "estimated", embedded, estimated)
    if metadata is not None and math.isfinite(metadata) and metadata > 0:
        return PixelSizeDecision(metadata, "metadata", embedded, estimated)
    raise PixelSizeError(
        f"{subject}: no pixel size: the image embeds none and it could not be estimated from the spot positions",
        fix=fix(f"pass {PIXEL_SIZE_UM} (micrometres per level-0 pixel).", PIXEL_SIZE_UM),
    )
