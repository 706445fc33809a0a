"""3D morphology volumes: the :class:`VolumeLike` protocol, the sub-volume spec, and cutting
sub-volumes centred on points of the volume frame.

Volume frame (every ``*_um`` coordinate of a volume): micrometres along ``(z, y, x)``
from the outer CORNER of voxel ``(0, 0, 0)`` of level 0; voxel ``(k, j, i)`` spans
``[k vz, (k + 1) vz) x [j vy, (j + 1) vy) x [i vx, (i + 1) vx)``, so its centre is at
``((k + 0.5) vz, (j + 0.5) vy, (i + 0.5) vx)``. This is the 2D patches' "continuous
pixel" convention (pixel ``i`` spans ``[i, i + 1)``) carried to 3D.

A sub-volume (:class:`VolumePairSpec`) is ``n_slices`` planes, each ``size_px x size_px``
at ``size_um / size_px`` um/px, CENTRED in-plane on the centre point; plane ``k`` is
centred at depth ``z_c + (k - (n_slices - 1) / 2) * depth_um / n_slices`` and averages
the slab of thickness ``depth_um / n_slices`` around it (box filter in z, bilinear
in-plane, Gaussian low-pass when downsampling). Only the block of the best pyramid level
that the window touches is read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import OptionError, VolumeError

__all__ = [
    "VolumeLevel",
    "VolumeLike",
    "VolumePairSpec",
    "best_volume_level",
    "extract_subvolume",
    "extract_subvolumes",
    "level_voxel_size_um",
    "read_padded",
    "volume_extent_um",
    "voxel_centre_um",
]


@dataclass(frozen=True)
class VolumePairSpec:
    """Geometry of a 3D pair: the sub-volume cut around a spot centre.

    ``size_um`` x ``size_um`` in-plane (centred on the spot), resampled to ``size_px`` px
    (default 112 um at 224 px = 0.5 um/px, the 2D pairs' "20x"); ``n_slices`` planes
    spread evenly over ``depth_um`` centred on the section plane (default 9 planes over
    36 um: one plane every 4 um, each a 4 um slab average, the centre plane ``n_slices // 2``
    exactly on the section when ``n_slices`` is odd).
    """

    size_um: float = 112.0
    size_px: int = 224
    depth_um: float = 36.0
    n_slices: int = 9

    def __post_init__(self) -> None:
        if not (math.isfinite(self.size_um) and self.size_um > 0):
            raise OptionError(f"size_um must be a positive number, got {self.size_um}")
        if self.size_px < 8:
            raise OptionError(f"size_px must be >= 8, got {self.size_px}")
        if not (math.isfinite(self.depth_um) and self.depth_um > 0):
            raise OptionError(f"depth_um must be a positive number, got {self.depth_um}")
        if self.n_slices < 1:
            raise OptionError(f"n_slices must be >= 1, got {self.n_slices}")

    @property
    def pixel_size_um(self) -> float:
        """In-plane pixel size of a sub-volume (um/px)."""
        return self.size_um / self.size_px

    @property
    def slice_spacing_um(self) -> float:
        """Distance between neighbouring planes, and each plane's slab thickness (um)."""
        return self.depth_um / self.n_slices

    @property
    def centre_slice(self) -> int:
        """Index of the plane through the centre point (exact for odd ``n_slices``)."""
        return self.n_slices // 2

    def slice_offsets_um(self) -> NDArray[np.float64]:
        """Depth of each plane's centre relative to the centre point (um)."""
        k = np.arange(self.n_slices, dtype=np.float64)
        out: NDArray[np.float64] = (k - (self.n_slices - 1) / 2.0) * self.slice_spacing_um
        return out


@dataclass(frozen=True)
class VolumeLevel:
    """One pyramid level: its shape and its downsample from level 0 along (z, y, x)."""

    shape_zyx: tuple[int, int, int]
    scale_zyx: tuple[float, float, float]


@runtime_checkable
class VolumeLike(Protocol):
    """What every 3D volume offers: an input reader, a catalog volume, an in-memory array.

    ``read(z, y, x, level)`` returns the ``(z, y, x, c)`` uint8 block of that level
    (slices in that level's voxel indices; steps are not supported).
    """

    @property
    def shape_zyx(self) -> tuple[int, int, int]: ...

    @property
    def channels(self) -> int: ...

    @property
    def voxel_size_um(self) -> tuple[float, float, float]: ...

    @property
    def levels(self) -> Sequence[VolumeLevel]: ...

    def read(self, z: slice, y: slice, x: slice, level: int = 0) -> NDArray[np.uint8]: ...


def volume_extent_um(volume: VolumeLike) -> tuple[float, float, float]:
    """Size of the volume along (z, y, x) in micrometres."""
    s, v = volume.shape_zyx, volume.voxel_size_um
    return (s[0] * v[0], s[1] * v[1], s[2] * v[2])


def level_voxel_size_um(volume: VolumeLike, level: int) -> tuple[float, float, float]:
    sc = volume.levels[level].scale_zyx
    v = volume.voxel_size_um
    return (v[0] * sc[0], v[1] * sc[1], v[2] * sc[2])


def best_volume_level(volume: VolumeLike, spec: VolumePairSpec, *, tolerance: float = 0.01) -> int:
    """The coarsest level whose in-plane voxels are no coarser than the sub-volume's pixels
    and whose z voxels are no thicker than one plane's slab (level 0 when none is)."""
    best = 0
    ps, dz = spec.pixel_size_um, spec.slice_spacing_um
    for i in range(len(volume.levels)):
        vz, vy, vx = level_voxel_size_um(volume, i)
        z_ok = spec.n_slices == 1 or vz <= dz * (1 + tolerance) or volume.levels[i].scale_zyx[0] == 1.0
        if max(vy, vx) <= ps * (1 + tolerance) and z_ok:
            best = i
    return best


def read_padded(
    volume: VolumeLike, level: int, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int, *, fill: int = 0
) -> NDArray[np.uint8]:
    """The block ``[z0, z1) x [y0, y1) x [x0, x1)`` of a level, ``(z, y, x, c)`` uint8;
    the part outside the volume is ``fill``."""
    nz, ny, nx = volume.levels[level].shape_zyx
    out = np.full((max(z1 - z0, 0), max(y1 - y0, 0), max(x1 - x0, 0), volume.channels), fill, dtype=np.uint8)
    cz0, cz1 = max(z0, 0), min(z1, nz)
    cy0, cy1 = max(y0, 0), min(y1, ny)
    cx0, cx1 = max(x0, 0), min(x1, nx)
    if cz1 > cz0 and cy1 > cy0 and cx1 > cx0:
        block = np.asarray(volume.read(slice(cz0, cz1), slice(cy0, cy1), slice(cx0, cx1), level))
        if block.ndim == 3:
            block = block[..., None]
        out[cz0 - z0 : cz1 - z0, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = block
    return out


def _z_weights(z_centres_um: NDArray[np.float64], slab_um: float, vz: float, z0: int, nz: int) -> NDArray[np.float32]:
    """Weights ``(n_planes, nz)`` combining input slices ``z0 .. z0 + nz - 1`` (thickness
    ``vz``) into planes centred at ``z_centres_um`` with slab thickness ``slab_um``: the
    overlap of each slice with the slab when the slab is thicker than a slice (box filter),
    linear interpolation between slice centres otherwise."""
    w = np.zeros((len(z_centres_um), nz), dtype=np.float64)
    lo_edges = (z0 + np.arange(nz)) * vz
    for k, zc in enumerate(z_centres_um):
        if slab_um > vz * (1 + 1e-6):
            a, b = zc - slab_um / 2.0, zc + slab_um / 2.0
            ov = np.clip(np.minimum(lo_edges + vz, b) - np.maximum(lo_edges, a), 0.0, None)
            s = ov.sum()
            if s > 0:
                w[k] = ov / s
                continue
        t = zc / vz - 0.5 - z0
        i0 = math.floor(t)
        f = t - i0
        for i, wt in ((i0, 1.0 - f), (i0 + 1, f)):
            if 0 <= i < nz and wt > 0:
                w[k, i] += wt
    return w.astype(np.float32)


def _z_range(z_centres_um: NDArray[np.float64], slab_um: float, vz: float) -> tuple[int, int]:
    lo = float(z_centres_um.min()) - max(slab_um / 2.0, vz)
    hi = float(z_centres_um.max()) + max(slab_um / 2.0, vz)
    return math.floor(lo / vz) - 1, math.ceil(hi / vz) + 1


class _Geometry:
    """Where the window of one centre lies in the continuous index space of one level."""

    def __init__(self, volume: VolumeLike, level: int, spec: VolumePairSpec) -> None:
        self.level = level
        self.vz, self.vy, self.vx = level_voxel_size_um(volume, level)
        self.spec = spec
        self.sy = spec.pixel_size_um / self.vy  # input px per output px
        self.sx = spec.pixel_size_um / self.vx
        s = max(self.sy, self.sx)
        self.sigma = float(np.sqrt(s * s - 1.0) / 2.0) if s > 1.01 else 0.0
        self.margin = math.ceil(3.0 * self.sigma) + 2
        self.offsets = spec.slice_offsets_um()

    def start(self, cy_um: float, cx_um: float) -> tuple[float, float]:
        """Index coordinate (voxel centres at integers) of the window's top-left corner."""
        half = self.spec.size_um / 2.0
        return (cy_um - half) / self.vy - 0.5, (cx_um - half) / self.vx - 0.5

    def yx_window(self, cy_um: float, cx_um: float) -> tuple[int, int, int, int]:
        ys, xs = self.start(cy_um, cx_um)
        p = self.spec.size_px
        return (
            math.floor(ys) - self.margin,
            math.ceil(ys + p * self.sy) + self.margin + 1,
            math.floor(xs) - self.margin,
            math.ceil(xs + p * self.sx) + self.margin + 1,
        )


def _cut(
    block: NDArray[np.uint8],
    origin: tuple[int, int, int],
    centre_um: tuple[float, float, float],
    g: _Geometry,
) -> NDArray[np.uint8]:
    """One sub-volume from a padded block whose voxel ``[0, 0, 0]`` is level index ``origin``."""
    import cv2

    zc, yc, xc = centre_um
    z_centres = zc + g.offsets
    y0, y1, x0, x1 = g.yx_window(yc, xc)
    by, bx = y0 - origin[1], x0 - origin[2]
    local = block[:, by : by + (y1 - y0), bx : bx + (x1 - x0)]
    w = _z_weights(z_centres, g.spec.slice_spacing_um, g.vz, origin[0], block.shape[0])
    used = np.flatnonzero(w.any(axis=0))
    planes = np.tensordot(w[:, used], local[used].astype(np.float32), axes=(1, 0)) if len(used) else None
    p, c = g.spec.size_px, block.shape[3]
    out = np.zeros((len(z_centres), p, p, c), dtype=np.uint8)
    if planes is None:
        return out
    ys, xs = g.start(yc, xc)
    # output pixel u has its centre at index xs + (u + 0.5) * sx of the level (voxel centres
    # at integers); cv2 maps output pixel u (centre at u) through m with WARP_INVERSE_MAP.
    m = np.array([[g.sx, 0.0, xs - x0 + 0.5 * g.sx], [0.0, g.sy, ys - y0 + 0.5 * g.sy]], dtype=np.float64)
    for k in range(len(z_centres)):
        plane = planes[k]
        if g.sigma > 0:
            plane = cv2.GaussianBlur(plane, (0, 0), sigmaX=g.sigma, sigmaY=g.sigma, borderType=cv2.BORDER_REPLICATE)
            if plane.ndim == 2:
                plane = plane[..., None]
        for c0 in range(0, c, 4):
            sub = np.ascontiguousarray(plane[..., c0 : c0 + 4])
            res = cv2.warpAffine(sub, m, (p, p), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
            if res.ndim == 2:
                res = res[..., None]
            out[k, :, :, c0 : c0 + 4] = np.clip(np.rint(res), 0, 255).astype(np.uint8)
    return out


def _check_centres(centres_um: ArrayLike) -> NDArray[np.float64]:
    c = np.asarray(centres_um, dtype=np.float64)
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] != 3:
        raise VolumeError(f"centres must be (z, y, x) micrometres, shape (3,) or (N, 3); got shape {c.shape}")
    if not np.isfinite(c).all():
        raise VolumeError("centres contain NaN or infinite coordinates")
    return c


def extract_subvolume(
    volume: VolumeLike,
    centre_um: tuple[float, float, float] | ArrayLike,
    spec: VolumePairSpec | None = None,
    *,
    level: int | None = None,
    fill: int = 0,
) -> NDArray[np.uint8]:
    """The ``(n_slices, size_px, size_px, C)`` uint8 sub-volume centred on ``centre_um``
    (z, y, x micrometres in the volume frame). Reads only the block it needs from the
    best pyramid level (or ``level``); parts outside the volume are ``fill``."""
    return extract_subvolumes(volume, centre_um, spec, level=level, fill=fill)[0]


def extract_subvolumes(
    volume: VolumeLike,
    centres_um: ArrayLike,
    spec: VolumePairSpec | None = None,
    *,
    level: int | None = None,
    fill: int = 0,
    block_px: int = 1024,
) -> NDArray[np.uint8]:
    """Sub-volumes ``(N, n_slices, size_px, size_px, C)`` uint8 for ``N`` centres.

    Centres are grouped by the in-plane tile of ``block_px`` level voxels (and by depth)
    that holds them; each group's block is read once and every sub-volume in it is cut
    from that block, so a dense sliding window decodes each voxel about once.
    """
    spec = spec or VolumePairSpec()
    c = _check_centres(centres_um)
    lvl = best_volume_level(volume, spec) if level is None else int(level)
    if not 0 <= lvl < len(volume.levels):
        raise VolumeError(f"level {lvl} does not exist (the volume has {len(volume.levels)} levels)")
    g = _Geometry(volume, lvl, spec)
    out = np.zeros((len(c), spec.n_slices, spec.size_px, spec.size_px, volume.channels), dtype=np.uint8)
    if len(c) == 0:
        return out
    depth_block_um = max(spec.depth_um, 8 * g.vz)
    keys = np.stack(
        [
            np.floor(c[:, 0] / depth_block_um),
            np.floor(c[:, 1] / g.vy / block_px),
            np.floor(c[:, 2] / g.vx / block_px),
        ],
        axis=1,
    ).astype(np.int64)
    order = np.lexsort((keys[:, 2], keys[:, 1], keys[:, 0]))
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and (keys[order[j]] == keys[order[i]]).all():
            j += 1
        members = order[i:j]
        zs = np.concatenate([c[m, 0] + g.offsets for m in members])
        z0, z1 = _z_range(zs, spec.slice_spacing_um, g.vz)
        wins = np.array([g.yx_window(c[m, 1], c[m, 2]) for m in members])
        y0, y1 = int(wins[:, 0].min()), int(wins[:, 1].max())
        x0, x1 = int(wins[:, 2].min()), int(wins[:, 3].max())
        block = read_padded(volume, lvl, z0, z1, y0, y1, x0, x1, fill=fill)
        for m in members:
            out[m] = _cut(block, (z0, y0, x0), (float(c[m, 0]), float(c[m, 1]), float(c[m, 2])), g)
        i = j
    return out


def voxel_centre_um(volume: VolumeLike, index_zyx: ArrayLike, level: int = 0) -> NDArray[np.float64]:
    """Volume-frame micrometres of voxel centres given by integer indices ``(N, 3)`` of a level."""
    idx = np.asarray(index_zyx, dtype=np.float64).reshape(-1, 3)
    out: NDArray[np.float64] = (idx + 0.5) * np.asarray(level_voxel_size_um(volume, level))
    return out
