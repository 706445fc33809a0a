"""Write 3D OME-Zarr (OME-NGFF 0.5, zarr v3) multiscale images block by block.

Layout: axes ``(c, z, y, x)`` (channel, then space, as NGFF orders them), level ``i`` in
array ``"i"``, chunks 3D (one channel per chunk). Level 0 is written from a
:class:`~hestkit.volume.VolumeLike` (or by the caller, block by block); each coarser level
is computed from the previous one by 2x mean pooling in y and x (and in z while z voxels
stay no coarser than 1.5x the in-plane ones), one block (a chunk's depth x ~512^2 voxels) at
a time, so memory does not grow with the volume. Scale = voxel size of each level (micrometres); translation = half a
voxel of that level, so voxel centres sit at ``(index + 0.5) * voxel size`` in every level,
matching the volume frame of :mod:`hestkit.volume`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import DataError, OptionError
from .volume import VolumeLike

__all__ = ["NGFF_VERSION", "NgffVolumeWriter", "ngff_to_xarray", "omero_metadata", "pyramid_plan", "write_volume_ngff"]

NGFF_VERSION = "0.5"


def pyramid_plan(
    shape_zyx: Sequence[int], voxel_size_um: Sequence[float], *, min_side: int = 256, max_levels: int = 8
) -> list[tuple[int, int, int]]:
    """Per-level downsample factors (z, y, x) from level 0, level 0 = (1, 1, 1).

    In-plane halves each level until the longest side is below ``min_side``; z halves too
    while it stays no coarser than 1.5 x the in-plane voxel of that level.
    """
    nz, ny, nx = (int(s) for s in shape_zyx)
    vz, vy, vx = (float(v) for v in voxel_size_um)
    out = [(1, 1, 1)]
    fz, fy = 1, 1
    while len(out) < max_levels and max(math.ceil(ny / fy), math.ceil(nx / fy)) >= 2 * min_side:
        fy *= 2
        if math.ceil(nz / fz) >= 2 and 2 * fz * vz <= 1.5 * fy * min(vy, vx):
            fz *= 2
        out.append((fz, fy, fy))
    return out


class NgffVolumeWriter:
    """Create an OME-Zarr multiscale image and fill level 0 block by block.

    >>> w = NgffVolumeWriter(path, (64, 512, 512), channels=2, voxel_size_um=(2, 1, 1))  # doctest: +SKIP
    >>> w.write_block((0, 0, 0), block_zyxc)  # doctest: +SKIP
    >>> w.build_pyramid()  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path,
        shape_zyx: Sequence[int],
        *,
        channels: int,
        voxel_size_um: Sequence[float],
        dtype: str | np.dtype[Any] = "uint8",
        chunks_zyx: Sequence[int] = (16, 256, 256),
        channel_names: Sequence[str] | None = None,
        name: str = "volume",
        attributes: dict[str, Any] | None = None,
        min_side: int = 256,
        fill_value: float = 0,
        mode: str = "w",
    ) -> None:
        import zarr

        self.path = Path(path)
        self.shape_zyx = tuple(int(s) for s in shape_zyx)
        self.channels = int(channels)
        self.voxel_size_um = tuple(float(v) for v in voxel_size_um)
        self.dtype = np.dtype(dtype)
        self.chunks_zyx = tuple(min(int(c), int(s)) if s else int(c) for c, s in zip(chunks_zyx, self.shape_zyx, strict=True))
        self.factors = pyramid_plan(self.shape_zyx, self.voxel_size_um, min_side=min_side)
        if mode == "a" and (self.path / "zarr.json").exists():
            self.group: Any = zarr.open_group(str(self.path), mode="r+")
            return
        self.group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
        for i, (fz, fy, fx) in enumerate(self.factors):
            shape = (self.channels, *(math.ceil(s / f) for s, f in zip(self.shape_zyx, (fz, fy, fx), strict=True)))
            self.group.create_array(
                str(i),
                shape=shape,
                chunks=(1, *(min(c, s) for c, s in zip(self.chunks_zyx, shape[1:], strict=True))),
                dtype=self.dtype,
                fill_value=fill_value,
                dimension_names=["c", "z", "y", "x"],
            )
        vz, vy, vx = self.voxel_size_um
        datasets = []
        for i, (fz, fy, fx) in enumerate(self.factors):
            sc = [1.0, vz * fz, vy * fy, vx * fx]
            datasets.append(
                {
                    "path": str(i),
                    "coordinateTransformations": [
                        {"type": "scale", "scale": sc},
                        {"type": "translation", "translation": [0.0, sc[1] / 2, sc[2] / 2, sc[3] / 2]},
                    ],
                }
            )
        ome: dict[str, Any] = {
            "version": NGFF_VERSION,
            "multiscales": [
                {
                    "name": name,
                    "axes": [
                        {"name": "c", "type": "channel"},
                        {"name": "z", "type": "space", "unit": "micrometer"},
                        {"name": "y", "type": "space", "unit": "micrometer"},
                        {"name": "x", "type": "space", "unit": "micrometer"},
                    ],
                    "datasets": datasets,
                    "type": "mean",
                    "metadata": {"method": "hestkit.ngff: 2x mean pooling", "factors_zyx": [list(f) for f in self.factors]},
                }
            ],
        }
        names = list(channel_names) if channel_names is not None else [f"c{i}" for i in range(self.channels)]
        if len(names) != self.channels:
            raise OptionError(f"{len(names)} channel names for {self.channels} channels")
        ome["omero"] = omero_metadata(names, self.dtype)
        attrs: dict[str, Any] = {"ome": ome}
        if attributes:
            attrs.update(attributes)
        self.group.attrs.update(attrs)

    def set_windows(self, windows: Sequence[tuple[float, float, float, float]]) -> None:
        """Set each channel's display window ``(min, max, start, end)`` in the ``omero`` block."""
        ome = dict(self.group.attrs["ome"])
        omero = dict(ome.get("omero") or omero_metadata([f"c{i}" for i in range(self.channels)], self.dtype))
        if len(windows) != len(omero["channels"]):
            raise OptionError(f"{len(windows)} windows for {len(omero['channels'])} channels")
        omero["channels"] = [
            {**ch, "window": {"min": float(a), "max": float(b), "start": float(c), "end": float(d)}}
            for ch, (a, b, c, d) in zip(omero["channels"], windows, strict=True)
        ]
        ome["omero"] = omero
        self.group.attrs["ome"] = ome

    def windows_from_data(self, *, level: int | None = None, percentiles: tuple[float, float] = (0.5, 99.5)) -> None:
        """Display windows from the written values: min/max of each channel, and ``start``/``end``
        at the given percentiles, read from the coarsest level (or ``level``), never level 0 whole."""
        lvl = len(self.factors) - 1 if level is None else level
        a = np.asarray(self.array(lvl)[:], dtype=np.float64).reshape(self.channels, -1)
        wins: list[tuple[float, float, float, float]] = []
        for row in a:
            v = row[np.isfinite(row)]
            if v.size == 0:
                wins.append((0.0, 1.0, 0.0, 1.0))
                continue
            lo, hi = float(v.min()), float(v.max())
            s, e = (float(x) for x in np.percentile(v, percentiles))
            wins.append((lo, hi if hi > lo else lo + 1.0, s, e if e > s else s + 1.0))
        self.set_windows(wins)

    def array(self, level: int = 0) -> Any:
        return self.group[str(level)]

    def write_block(self, origin_zyx: Sequence[int], block_zyxc: NDArray[Any], level: int = 0) -> None:
        """Write a ``(z, y, x, c)`` block at ``origin_zyx`` of a level."""
        b = np.asarray(block_zyxc)
        if b.ndim == 3:
            b = b[..., None]
        z0, y0, x0 = (int(o) for o in origin_zyx)
        arr = self.array(level)
        arr[:, z0 : z0 + b.shape[0], y0 : y0 + b.shape[1], x0 : x0 + b.shape[2]] = np.moveaxis(b, 3, 0).astype(self.dtype)

    def write_from(
        self,
        source: VolumeLike,
        *,
        tile_yx: int = 1024,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Copy level 0 of ``source`` slab by slab (``chunks_zyx[0]`` planes x ``tile_yx`` tiles)."""
        nz, ny, nx = self.shape_zyx
        cz = self.chunks_zyx[0]
        ty = max(self.chunks_zyx[1], tile_yx // self.chunks_zyx[1] * self.chunks_zyx[1])
        tx = max(self.chunks_zyx[2], tile_yx // self.chunks_zyx[2] * self.chunks_zyx[2])
        total = math.ceil(nz / cz)
        for k, z0 in enumerate(range(0, nz, cz)):
            for y0 in range(0, ny, ty):
                for x0 in range(0, nx, tx):
                    blk = source.read(slice(z0, min(z0 + cz, nz)), slice(y0, min(y0 + ty, ny)), slice(x0, min(x0 + tx, nx)), 0)
                    self.write_block((z0, y0, x0), blk)
            if progress:
                progress(k + 1, total)

    def build_pyramid(self, *, progress: Callable[[int, int], None] | None = None) -> None:
        """Compute levels 1.. from level 0 (2x mean pooling), slab by slab."""
        for i in range(1, len(self.factors)):
            src, dst = self.array(i - 1), self.array(i)
            rz = self.factors[i][0] // self.factors[i - 1][0]
            ry = self.factors[i][1] // self.factors[i - 1][1]
            _, dz_n, dy_n, dx_n = dst.shape
            cz, cy, cx = dst.chunks[1:]
            ty, tx = max(cy, 512 // cy * cy), max(cx, 512 // cx * cx)  # whole chunks, ~512^2 output voxels
            for z0 in range(0, dz_n, cz):
                z1 = min(z0 + cz, dz_n)
                for y0 in range(0, dy_n, ty):
                    y1 = min(y0 + ty, dy_n)
                    for x0 in range(0, dx_n, tx):
                        x1 = min(x0 + tx, dx_n)
                        blk = np.asarray(src[:, z0 * rz : z1 * rz, y0 * ry : y1 * ry, x0 * ry : x1 * ry])
                        dst[:, z0:z1, y0:y1, x0:x1] = _pool(blk, rz, ry, (z1 - z0, y1 - y0, x1 - x0)).astype(self.dtype)
            if progress:
                progress(i, len(self.factors) - 1)


# one colour per channel for viewers (RGB hex, as the NGFF ``omero`` block requires)
_STAIN_COLOURS = {
    "dapi": "0000FF", "nuclear": "0000FF", "hematoxylin": "4B0082", "eosin": "FF00FF", "red": "FF0000",
    "green": "00FF00", "blue": "0000FF", "gray": "FFFFFF", "grey": "FFFFFF", "intensity": "FFFFFF",
    "autofluorescence": "00FF00", "tissue": "FFFFFF",
}
_PALETTE = ("FFFFFF", "00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF", "FF8000")


def _default_window(dtype: np.dtype[Any]) -> dict[str, float]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return {"min": float(info.min), "max": float(info.max), "start": float(info.min), "end": float(info.max)}
    # floats: a provisional unit window; writers replace it from the data (windows_from_data)
    return {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}


def omero_metadata(names: Sequence[str], dtype: str | np.dtype[Any]) -> dict[str, Any]:
    """The NGFF ``omero`` block: a label, a colour and a display window per channel.

    Integer images get their dtype's full range; floating-point images a provisional
    ``[0, 1]`` window that :meth:`NgffVolumeWriter.windows_from_data` replaces.
    """
    dt = np.dtype(dtype)
    single = len(names) == 1
    chans = []
    for i, n in enumerate(names):
        key = str(n).lower()
        colour = "FFFFFF" if single else _STAIN_COLOURS.get(key, _PALETTE[i % len(_PALETTE)])
        chans.append({"label": str(n), "color": colour, "active": True, "window": _default_window(dt)})
    return {"channels": chans, "rdefs": {"model": "color" if len(names) > 1 else "greyscale"}}


def _pool(a: NDArray[Any], rz: int, ry: int, out_zyx: tuple[int, int, int]) -> NDArray[Any]:
    """Mean-pool ``(c, z, y, x)`` by ``rz`` in z and ``ry`` in y and x (edges: replicate)."""
    c, z, y, x = a.shape
    oz, oy, ox = out_zyx
    pad = ((0, 0), (0, oz * rz - z), (0, oy * ry - y), (0, ox * ry - x))
    if any(p[1] > 0 for p in pad):
        a = np.pad(a, [(0, max(p[1], 0)) for p in pad], mode="edge")
    integer = np.issubdtype(a.dtype, np.integer)
    a = a[:, : oz * rz, : oy * ry, : ox * ry].astype(np.float32)
    m: NDArray[Any] = a.reshape(c, oz, rz, oy, ry, ox, ry).mean(axis=(2, 4, 6))
    return np.rint(m) if integer else m


def write_volume_ngff(
    source: VolumeLike,
    path: str | Path,
    *,
    chunks_zyx: Sequence[int] = (16, 256, 256),
    channel_names: Sequence[str] | None = None,
    name: str = "volume",
    attributes: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> NgffVolumeWriter:
    """Stream ``source`` (uint8) into a new OME-Zarr multiscale image at ``path``."""
    w = NgffVolumeWriter(
        path,
        source.shape_zyx,
        channels=source.channels,
        voxel_size_um=source.voxel_size_um,
        chunks_zyx=chunks_zyx,
        channel_names=channel_names,
        name=name,
        attributes=attributes,
    )
    w.write_from(source, progress=progress)
    w.build_pyramid()
    return w


def ngff_to_xarray(path: str | Path, *, level: int = 0) -> Any:
    """An OME-Zarr multiscale image level as a lazy ``xarray.DataArray`` (dask-backed).

    Dimensions are the image's axes (e.g. ``c, z, y, x``); spatial coordinates are voxel
    **centres** in micrometres (``(index + 0.5) * voxel size`` for images this module writes,
    from the level's scale and translation in general); ``c`` is labelled with the channel
    names of the ``omero`` block (gene names of a VORTEX prediction, stain names of a volume).
    Nothing is read until the values are used.
    """
    import dask.array as da
    import xarray as xr
    import zarr

    group: Any = zarr.open_group(str(path), mode="r")
    attrs: dict[str, Any] = dict(group.attrs)
    ome = attrs.get("ome") or attrs
    ms = (ome.get("multiscales") or [None])[0]
    if ms is None:
        raise DataError(f"{path}: not an OME-Zarr multiscale image (no 'multiscales' metadata)")
    if not 0 <= level < len(ms["datasets"]):
        raise OptionError(f"{path}: level {level} does not exist (the image has {len(ms['datasets'])} levels)")
    ds = ms["datasets"][level]
    arr = group[ds["path"]]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms["axes"]]
    scale = [1.0] * len(axes)
    trans = [0.0] * len(axes)
    for t in ds.get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation":
            trans = [float(v) for v in t["translation"]]
    coords: dict[str, Any] = {}
    units: dict[str, str] = {}
    for i, (ax, meta) in enumerate(zip(axes, ms["axes"], strict=True)):
        kind = meta.get("type") if isinstance(meta, dict) else None
        if kind == "space":
            # the translation of a level places its first voxel's centre (this module writes half a voxel)
            coords[ax] = trans[i] + np.arange(arr.shape[i]) * scale[i]
            units[ax] = str(meta.get("unit") or "")
    channels = (ome.get("omero") or {}).get("channels") or []
    if "c" in axes and len(channels) == arr.shape[axes.index("c")]:
        coords["c"] = [str(ch.get("label", f"c{k}")) for k, ch in enumerate(channels)]
    out = xr.DataArray(da.from_zarr(arr), dims=axes, coords=coords, name=ms.get("name"))
    for ax, unit in units.items():
        out[ax].attrs["units"] = unit
    out.attrs.update({"source": str(path), "level": level, "scale": scale, "translation": trans})
    return out
