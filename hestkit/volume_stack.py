"""A volume assembled from registered serial-section H&E images.

Plane ``k`` of the volume is section image ``k`` warped into the volume frame by its 2D
affine (section level-0 pixel ``(x, y, 1)`` -> volume in-plane micrometres ``(x, y, 1)``),
sampled at in-plane voxels of ``pixel_size_um``; planes are ``section_spacing_um`` apart
(plane ``k`` spans depth ``[k s, (k + 1) s)``). Only the region of each section that a
read touches is decoded, from the slide's best pyramid level. Volume voxels that no
section covers are white (255, glass).

A stack CSV (for ``hestkit ingest-volume STACK.csv --modality he-stack``) has one row per
section in depth order and the columns ``image`` and either ``affine`` (path of a 3x3
matrix file) or ``a00,a01,a02,a10,a11,a12`` (the first two rows of the matrix); relative
paths are relative to the CSV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ReaderError, VolumeError, fix
from .fixes import VOXEL_SIZE_UM
from .geometry import Affine
from .slide import open_slide
from .volume import VolumeLevel

__all__ = ["SectionStackVolume", "open_section_stack"]

GLASS = 255


class SectionStackVolume:
    """A :class:`~hestkit.volume.VolumeLike` over registered section images (see module doc)."""

    def __init__(
        self,
        images: Sequence[str | Path],
        affines: Sequence[Any],
        section_spacing_um: float,
        *,
        pixel_size_um: float,
        shape_yx: tuple[int, int] | None = None,
    ) -> None:
        self.images = [Path(p) for p in images]
        if not self.images:
            raise VolumeError("a section stack needs at least one section image")
        if len(affines) != len(self.images):
            raise VolumeError(f"{len(self.images)} section images but {len(affines)} affines; give one affine per section")
        if not (math.isfinite(section_spacing_um) and section_spacing_um > 0):
            raise VolumeError(f"section spacing must be a positive number of micrometres, got {section_spacing_um}")
        if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
            raise VolumeError(f"in-plane voxel size must be a positive number of micrometres, got {pixel_size_um}")
        self.affines = [a if isinstance(a, Affine) else Affine.from_array(a) for a in affines]
        self.path = self.images[0].parent
        sizes = []
        for p, aff in zip(self.images, self.affines, strict=True):
            m = aff.to_array()
            if not np.isfinite(m).all() or abs(np.linalg.det(m[:2, :2])) < 1e-12:
                raise VolumeError(f"{p}: its affine is degenerate or not finite ({m.tolist()}); give a full-rank 3x3 matrix")
            if not p.exists():
                raise ReaderError(p, "does not exist", "check the image paths of the section stack")
            with open_slide(p) as s:
                sizes.append((s.width, s.height, s.levels))
        self._sizes = sizes
        self.embedded_voxel_size_um = None
        vs = (float(section_spacing_um), float(pixel_size_um), float(pixel_size_um))
        self._vs = vs
        if shape_yx is None:
            corners = []
            for (w, h, _), aff in zip(sizes, self.affines, strict=True):
                corners.append(aff.apply([[0, 0], [w, 0], [0, h], [w, h]]))
            c = np.concatenate(corners)
            ny = max(1, math.ceil(float(c[:, 1].max()) / pixel_size_um))
            nx = max(1, math.ceil(float(c[:, 0].max()) / pixel_size_um))
            shape_yx = (ny, nx)
        self._shape = (len(self.images), int(shape_yx[0]), int(shape_yx[1]))
        self.levels = [VolumeLevel(self._shape, (1.0, 1.0, 1.0))]
        self.channels = 3
        self.dtype = np.dtype(np.uint8)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        return self._vs

    def _plane(self, k: int, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.uint8]:
        import cv2

        h, w = y1 - y0, x1 - x0
        out = np.full((h, w, 3), GLASS, dtype=np.uint8)
        if h <= 0 or w <= 0:
            return out
        v = self._vs[1]
        # volume voxel (row j, col i) centre in um -> section level-0 px
        inv = self.affines[k].inverse()
        corners_um = np.array([[x0 * v, y0 * v], [x1 * v, y0 * v], [x0 * v, y1 * v], [x1 * v, y1 * v]])
        src = inv.apply(corners_um)
        levels = self._sizes[k][2]
        px_per_voxel = v * inv.linear_scale  # section px per volume voxel
        best = 0
        for li, lv in enumerate(levels):
            if lv.downsample <= max(px_per_voxel, 1.0) * 1.01:
                best = li
        ds = levels[best].downsample
        lo = np.floor(src.min(axis=0) / ds).astype(int) - 2
        hi = np.ceil(src.max(axis=0) / ds).astype(int) + 2
        lv = levels[best]
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [lv.width, lv.height])
        if (hi <= lo).any():
            return out
        with open_slide(self.images[k]) as s:
            region = s.read_region(best, int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        scale_down = px_per_voxel / ds
        if scale_down > 1.01:
            sigma = float(np.sqrt(scale_down**2 - 1.0) / 2.0)
            region = np.asarray(cv2.GaussianBlur(region, (0, 0), sigmaX=sigma, sigmaY=sigma), dtype=np.uint8)
        # output pixel (u, v) centre -> volume um ((x0 + u + 0.5) v, ...) -> section px -> region index
        m_out = np.array([[v, 0.0, (x0 + 0.5) * v], [0.0, v, (y0 + 0.5) * v], [0.0, 0.0, 1.0]])
        to_region = np.array([[1.0 / ds, 0.0, -lo[0] - 0.5], [0.0, 1.0 / ds, -lo[1] - 0.5], [0.0, 0.0, 1.0]])
        m = to_region @ inv.to_array() @ m_out
        res = cv2.warpAffine(
            region,
            m[:2],
            (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(GLASS, GLASS, GLASS),
        )
        return np.asarray(res, dtype=np.uint8).reshape(h, w, 3)

    def read(self, z: slice, y: slice, x: slice, level: int = 0) -> NDArray[np.uint8]:
        if level != 0:
            raise VolumeError("a section stack has one level; ingest it to get a pyramid")
        nz, ny, nx = self._shape
        zs = range(*z.indices(nz))
        y0, y1, _ = y.indices(ny)
        x0, x1, _ = x.indices(nx)
        out = np.empty((len(zs), max(y1 - y0, 0), max(x1 - x0, 0), 3), dtype=np.uint8)
        for i, k in enumerate(zs):
            out[i] = self._plane(k, y0, y1, x0, x1)
        return out


def open_section_stack(csv_path: str | Path, voxel_size_um: Sequence[float] | None) -> SectionStackVolume:
    """Read a stack CSV (see the module docstring); ``voxel_size_um`` = (section spacing,
    in-plane voxel, in-plane voxel) micrometres, required."""
    import pandas as pd

    p = Path(csv_path)
    if voxel_size_um is None:
        raise VolumeError(
            f"{p}: a section stack has no voxel size of its own",
            fix=fix(
                f"pass {VOXEL_SIZE_UM} (Z = section spacing, Y = X = in-plane voxel size of the assembled volume, um)",
                VOXEL_SIZE_UM,
            ),
        )
    vz, vy, vx = (float(v) for v in voxel_size_um)
    if abs(vy - vx) > 1e-9 * max(vy, vx):
        raise VolumeError(f"{p}: a section stack needs square in-plane voxels, got y {vy} um and x {vx} um")
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError) as exc:
        raise ReaderError(p, f"cannot be read as CSV ({exc})", "write one row per section: image and its affine") from exc
    if "image" not in df.columns:
        raise ReaderError(p, f"has no 'image' column (columns: {', '.join(map(str, df.columns))})", "add the image path column")
    coef = ["a00", "a01", "a02", "a10", "a11", "a12"]
    affines: list[Affine] = []
    for i, row in df.iterrows():
        if "affine" in df.columns and isinstance(row["affine"], str) and row["affine"]:
            from numpy import loadtxt

            ap = Path(row["affine"]) if Path(row["affine"]).is_absolute() else p.parent / row["affine"]
            try:
                affines.append(Affine.from_array(loadtxt(ap, delimiter=",")))
            except (OSError, ValueError) as exc:
                raise ReaderError(ap, f"is not a 3x3 comma-separated matrix ({exc})", "write 3 rows of 3 numbers") from exc
        elif all(c in df.columns for c in coef):
            vals = [float(row[c]) for c in coef]
            affines.append(Affine.from_array([vals[:3], vals[3:], [0.0, 0.0, 1.0]]))
        else:
            raise ReaderError(p, f"row {i} has no affine", "give an 'affine' file column or the a00..a12 columns")
    images = [Path(s) if Path(s).is_absolute() else p.parent / s for s in df["image"].astype(str)]
    return SectionStackVolume(images, affines, vz, pixel_size_um=vy)
