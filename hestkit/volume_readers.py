"""Readers of 3D morphology inputs, each a :class:`~hestkit.volume.VolumeLike`.

- 3D / multi-page TIFF and OME-TIFF stacks (``tifffile``; planes and tiles are decoded on
  demand through its zarr view, never the whole stack),
- OME-Zarr (OME-NGFF 0.4 on zarr v2, 0.5 on zarr v3) multiscale images,
- folders of 2D slice images (PNG, JPEG, TIFF), one plane per file, sorted by name
  (natural order: ``s2`` before ``s10``),
- :class:`ArrayVolume`, an in-memory array (tests, small synthetic volumes).

Voxel sizes come from the file (OME ``PhysicalSizeZ/Y/X``, ImageJ ``spacing`` + resolution,
NGFF ``scale``) or from the caller; :func:`open_volume` refuses a volume with neither.
Non-uint8 inputs (e.g. 16-bit microCT) are mapped linearly to uint8 over an intensity
window: given, or the 0.1-99.9 percentiles of a strided sample of planes.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import ReaderError, VolumeError, VoxelSizeError, fix
from .fixes import VOXEL_SIZE_UM
from .volume import VolumeLevel

__all__ = [
    "IMAGE_SUFFIXES",
    "ArrayVolume",
    "NgffVolume",
    "SliceFolderVolume",
    "TiffVolume",
    "VolumeSource",
    "open_volume",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_UNITS_UM = {
    "micrometer": 1.0,
    "micron": 1.0,
    "µm": 1.0,
    "um": 1.0,
    "\\u00B5m": 1.0,
    "nanometer": 1e-3,
    "nm": 1e-3,
    "millimeter": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "cm": 1e4,
    "meter": 1e6,
    "m": 1e6,
}


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class VolumeSource:
    """Base of the readers: levels, channels, voxel size, and the uint8 intensity mapping.

    Subclasses set ``path``, ``levels``, ``channels``, ``dtype``, ``embedded_voxel_size_um``
    and implement ``_read_native(z, y, x, level) -> (z, y, x, c)``.
    """

    path: Path
    levels: list[VolumeLevel]
    channels: int
    dtype: np.dtype[Any]
    embedded_voxel_size_um: tuple[float, float, float] | None = None
    _voxel_size_um: tuple[float, float, float] | None = None
    intensity_range: tuple[float, float] | None = None

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.levels[0].shape_zyx

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        v = self._voxel_size_um or self.embedded_voxel_size_um
        if v is None:
            raise VoxelSizeError(
                f"{self.path}: the volume carries no voxel size (no OME PhysicalSize, ImageJ spacing or NGFF scale).",
                fix=fix(f"pass {VOXEL_SIZE_UM} (micrometres per voxel along z, y, x)", VOXEL_SIZE_UM),
            )
        return v

    def set_voxel_size(self, voxel_size_um: Sequence[float] | None) -> None:
        if voxel_size_um is None:
            return
        v = tuple(float(a) for a in voxel_size_um)
        if len(v) != 3 or not all(math.isfinite(a) and a > 0 for a in v):
            raise VoxelSizeError(f"{self.path}: voxel size must be three positive numbers (z, y, x) in um, got {voxel_size_um!r}")
        self._voxel_size_um = (v[0], v[1], v[2])

    def _read_native(self, z: slice, y: slice, x: slice, level: int) -> NDArray[Any]:
        raise NotImplementedError

    def read(self, z: slice, y: slice, x: slice, level: int = 0) -> NDArray[np.uint8]:
        a = np.asarray(self._read_native(z, y, x, level))
        if a.dtype == np.uint8:
            return a
        lo, hi = self.window()
        scaled = (a.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-12))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def window(self) -> tuple[float, float]:
        """The intensity window mapped to 0..255 (uint8 inputs: (0, 255))."""
        if self.dtype == np.uint8:
            return (0.0, 255.0)
        if self.intensity_range is None:
            nz = self.shape_zyx[0]
            lvl = len(self.levels) - 1
            lz = self.levels[lvl].shape_zyx[0]
            picks = sorted({round(float(i)) for i in np.linspace(0, lz - 1, min(lz, 16))})
            vals = [np.asarray(self._read_native(slice(k, k + 1), slice(None), slice(None), lvl)).ravel()[::7] for k in picks]
            sample = np.concatenate(vals).astype(np.float64) if vals else np.zeros(1)
            lo, hi = np.percentile(sample, [0.1, 99.9]) if nz else (0.0, 1.0)
            if hi <= lo:
                hi = lo + 1.0
            self.intensity_range = (float(lo), float(hi))
        return self.intensity_range

    def __repr__(self) -> str:
        v = self._voxel_size_um or self.embedded_voxel_size_um
        return (
            f"{type(self).__name__}({str(self.path)!r}, shape_zyx={self.shape_zyx}, channels={self.channels}, voxel_size_um={v})"
        )


class ArrayVolume(VolumeSource):
    """An in-memory ``(z, y, x)`` or ``(z, y, x, c)`` array as a single-level volume."""

    def __init__(self, array: NDArray[Any], voxel_size_um: Sequence[float], *, name: str = "<array>") -> None:
        a = np.asarray(array)
        if a.ndim == 3:
            a = a[..., None]
        if a.ndim != 4:
            raise VolumeError(f"{name}: an array volume is (z, y, x) or (z, y, x, c), got shape {a.shape}")
        self._a = a
        self.path = Path(name)
        self.channels = int(a.shape[3])
        self.dtype = a.dtype
        self.levels = [VolumeLevel((int(a.shape[0]), int(a.shape[1]), int(a.shape[2])), (1.0, 1.0, 1.0))]
        self.set_voxel_size(voxel_size_um)

    def _read_native(self, z: slice, y: slice, x: slice, level: int) -> NDArray[Any]:
        return np.asarray(self._a[z, y, x])


def _axis_index(axes: str, wanted: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(wanted.get(a, 0) for a in axes)


class TiffVolume(VolumeSource):
    """A 3D TIFF: multi-page (one plane per page), ImageJ hyperstack or OME-TIFF (Z, C, and
    optional sub-resolution levels). Planes are decoded on demand."""

    def __init__(self, path: str | Path) -> None:
        import tifffile
        import zarr

        self.path = Path(path)
        try:
            self._tf = tifffile.TiffFile(self.path)
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise ReaderError(self.path, f"cannot be read as TIFF ({exc})", "check the file is a complete TIFF stack") from exc
        series = self._tf.series[0]
        axes = series.axes.upper()
        self._pages: list[Any] | None = None
        if len(axes) in (2, 3) and "Z" not in axes and len(self._tf.pages) > 1:
            # pages written one by one (each its own series): a plain multi-page stack
            pages = [p for p in self._tf.pages if getattr(p, "subfiletype", 0) == 0]
            if len(pages) > 1 and all(p.shape == pages[0].shape and p.dtype == pages[0].dtype for p in pages):
                self._init_pages(pages)
                return
        # tifffile names the plane axis Z (OME/ImageJ), I (generic image sequence) or Q (unknown)
        plane_axes = [a for a in axes if a in "ZIQ"]
        chan_axes = [a for a in axes if a in "CS"]
        extra = [a for a in axes if a not in "ZIQCSYX"]
        if "Y" not in axes or "X" not in axes or len(plane_axes) != 1 or len(chan_axes) > 2:
            self._tf.close()
            raise ReaderError(
                self.path,
                f"TIFF series axes {series.axes!r} (shape {series.shape}) are not a 3D stack",
                "give a multi-page TIFF (one plane per page) or an OME-TIFF with a Z axis",
            )
        for a in extra:
            if series.shape[axes.index(a)] > 1:
                self._tf.close()
                raise ReaderError(
                    self.path,
                    f"TIFF has a {a!r} axis of size {series.shape[axes.index(a)]} (axes {series.axes})",
                    "export one time point / position per file",
                )
        self._axes = axes
        self._zax = plane_axes[0]
        self._cax = chan_axes
        store = series.aszarr()
        group: Any = zarr.open(store, mode="r")
        self._arrays = [group] if isinstance(group, zarr.Array) else [group[str(i)] for i in range(len(series.levels))]
        shape0 = series.levels[0].shape
        levels = []
        for lv in series.levels:
            sh = lv.shape
            z, y, xx = sh[axes.index(self._zax)], sh[axes.index("Y")], sh[axes.index("X")]
            levels.append(
                VolumeLevel(
                    (int(z), int(y), int(xx)),
                    (
                        shape0[axes.index(self._zax)] / z,
                        shape0[axes.index("Y")] / y,
                        shape0[axes.index("X")] / xx,
                    ),
                )
            )
        self.levels = levels
        self.channels = int(np.prod([shape0[axes.index(a)] for a in chan_axes])) if chan_axes else 1
        self.dtype = np.dtype(series.dtype)
        self.embedded_voxel_size_um = self._embedded()

    def _init_pages(self, pages: list[Any]) -> None:
        self._pages = pages
        shape = pages[0].shape
        self._page_axes = pages[0].axes.upper()
        self.levels = [VolumeLevel((len(pages), int(shape[0]), int(shape[1])), (1.0, 1.0, 1.0))]
        self.channels = int(shape[2]) if len(shape) == 3 else 1
        self.dtype = np.dtype(pages[0].dtype)
        self.embedded_voxel_size_um = None
        self._axes, self._zax, self._cax = "ZYX", "Z", []
        self._cache: tuple[int, NDArray[Any]] | None = None

    def _page(self, k: int) -> NDArray[Any]:
        assert self._pages is not None
        if self._cache is None or self._cache[0] != k:
            a = np.asarray(self._pages[k].asarray())
            self._cache = (k, a if a.ndim == 3 else a[..., None])
        return self._cache[1]

    def _embedded(self) -> tuple[float, float, float] | None:
        tf = self._tf
        if tf.is_ome and tf.ome_metadata:
            try:
                root = ET.fromstring(tf.ome_metadata)
            except ET.ParseError:
                root = None
            if root is not None:
                for el in root.iter():
                    if el.tag.endswith("Pixels"):
                        vals = []
                        for ax in ("Z", "Y", "X"):
                            v = el.get(f"PhysicalSize{ax}")
                            if v is None:
                                break
                            unit = el.get(f"PhysicalSize{ax}Unit", "µm")
                            vals.append(float(v) * _UNITS_UM.get(unit, 1.0))
                        if len(vals) == 3 and all(math.isfinite(v) and v > 0 for v in vals):
                            return (vals[0], vals[1], vals[2])
                        break
        ij = tf.imagej_metadata
        if ij and "spacing" in ij:
            page = tf.pages.first
            unit = str(ij.get("unit", "micron")).replace("\\u00B5", "µ")
            factor = _UNITS_UM.get(unit, None)
            xres = page.tags.get("XResolution")
            yres = page.tags.get("YResolution")
            if factor is not None and xres is not None and yres is not None:
                try:
                    vx = factor * xres.value[1] / xres.value[0]
                    vy = factor * yres.value[1] / yres.value[0]
                    vz = factor * float(ij["spacing"])
                except (ZeroDivisionError, TypeError, ValueError):
                    return None
                if all(math.isfinite(v) and v > 0 for v in (vz, vy, vx)):
                    return (vz, vy, vx)
        return None

    def _read_native(self, z: slice, y: slice, x: slice, level: int) -> NDArray[Any]:
        if self._pages is not None:
            ks = range(*z.indices(len(self._pages)))
            planes = [self._page(k)[y, x] for k in ks]
            if planes:
                return np.stack(planes)
            ny, nx = self.shape_zyx[1:]
            return np.zeros((0, len(range(*y.indices(ny))), len(range(*x.indices(nx))), self.channels), self.dtype)
        wanted: dict[str, Any] = {self._zax: z, "Y": y, "X": x}
        for a in self._cax:
            wanted[a] = slice(None)
        arr = np.asarray(self._arrays[level][_axis_index(self._axes, wanted)])
        kept = [ax for ax in self._axes if ax in wanted]
        order = [kept.index(self._zax), kept.index("Y"), kept.index("X")] + [kept.index(c) for c in self._cax]
        arr = np.transpose(arr, order)
        return arr.reshape(arr.shape[0], arr.shape[1], arr.shape[2], -1)

    def close(self) -> None:
        self._tf.close()


class NgffVolume(VolumeSource):
    """An OME-Zarr (NGFF 0.4 / 0.5) multiscale image with z, y, x (and optionally c) axes."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        try:
            group: Any = zarr.open_group(str(self.path), mode="r")
        except (OSError, ValueError, KeyError) as exc:
            raise ReaderError(self.path, f"is not a zarr group ({exc})", "point at the OME-Zarr image group") from exc
        attrs: dict[str, Any] = dict(group.attrs)
        ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
        if not ms:
            raise ReaderError(
                self.path, "zarr group without OME-NGFF 'multiscales' metadata", "point at the image group of the OME-Zarr"
            )
        m0 = ms[0]
        axes = [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in m0["axes"]]
        units = [(a.get("unit") if isinstance(a, dict) else None) for a in m0["axes"]]
        if not all(a in axes for a in ("z", "y", "x")):
            raise ReaderError(self.path, f"multiscale axes {axes} lack z, y or x", "give a 3D (z, y, x) OME-Zarr image")
        self._axes = axes
        self._attrs = attrs
        self._arrays = [group[d["path"]] for d in m0["datasets"]]
        for a in axes:
            if a not in ("c", "z", "y", "x") and self._arrays[0].shape[axes.index(a)] > 1:
                raise ReaderError(
                    self.path, f"axis {a!r} has size {self._arrays[0].shape[axes.index(a)]}", "export one time point per image"
                )
        zi, yi, xi = axes.index("z"), axes.index("y"), axes.index("x")
        s0 = self._arrays[0].shape
        self.levels = [
            VolumeLevel(
                (int(a.shape[zi]), int(a.shape[yi]), int(a.shape[xi])),
                (s0[zi] / a.shape[zi], s0[yi] / a.shape[yi], s0[xi] / a.shape[xi]),
            )
            for a in self._arrays
        ]
        self.channels = int(s0[axes.index("c")]) if "c" in axes else 1
        self.dtype = np.dtype(self._arrays[0].dtype)
        self.embedded_voxel_size_um = None
        scale = _ngff_scale(m0, 0)
        if scale is not None and len(scale) == len(axes):
            vals: list[float] = []
            for ax in (zi, yi, xi):
                u = units[ax]
                f = _UNITS_UM.get(str(u).lower(), None) if u else None
                if f is None:
                    vals = []
                    break
                vals.append(float(scale[ax]) * f)
            if len(vals) == 3 and all(math.isfinite(v) and v > 0 for v in vals):
                self.embedded_voxel_size_um = (vals[0], vals[1], vals[2])

    @property
    def attrs(self) -> dict[str, Any]:
        return self._attrs

    def to_xarray(self, level: int = 0) -> Any:
        """This image (one pyramid level) as a lazy ``xarray.DataArray`` with micrometre
        coordinates of voxel centres and named channels (:func:`hestkit.ngff.ngff_to_xarray`)."""
        from .ngff import ngff_to_xarray

        return ngff_to_xarray(self.path, level=level)

    def _read_native(self, z: slice, y: slice, x: slice, level: int) -> NDArray[Any]:
        wanted: dict[str, Any] = {"z": z, "y": y, "x": x, "c": slice(None)}
        arr = np.asarray(self._arrays[level][tuple(wanted.get(ax, 0) for ax in self._axes)])
        kept = [ax for ax in self._axes if ax in wanted]
        order = [kept.index(ax) for ax in ("z", "y", "x", "c") if ax in kept]
        arr = np.transpose(arr, order)
        return arr.reshape(arr.shape[0], arr.shape[1], arr.shape[2], -1)


def _ngff_scale(multiscale: dict[str, Any], i: int) -> list[float] | None:
    scale: list[float] | None = None
    for t in multiscale["datasets"][i].get("coordinateTransformations", []):
        if t.get("type") == "scale":
            scale = [float(v) for v in t["scale"]]
    outer = multiscale.get("coordinateTransformations") or []
    for t in outer:
        if t.get("type") == "scale" and scale is not None:
            scale = [a * float(b) for a, b in zip(scale, t["scale"], strict=False)]
    return scale


class SliceFolderVolume(VolumeSource):
    """A folder of 2D images, one z plane per file, sorted by name (natural order)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder)
        files = sorted(
            (p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
            key=lambda p: _natural_key(p.name),
        )
        if not files:
            raise ReaderError(
                self.path, "holds no slice images", f"put one 2D image per z plane ({', '.join(IMAGE_SUFFIXES)}) in the folder"
            )
        self.files = files
        first = self._load(files[0])
        self._shape2d = first.shape
        self.channels = int(first.shape[2])
        self.dtype = first.dtype
        self.levels = [VolumeLevel((len(files), int(first.shape[0]), int(first.shape[1])), (1.0, 1.0, 1.0))]
        self._cache: tuple[int, NDArray[Any]] | None = (0, first)

    def _load(self, p: Path) -> NDArray[Any]:
        try:
            if p.suffix.lower() in (".tif", ".tiff"):
                import tifffile

                a = np.asarray(tifffile.imread(p))
            else:
                from PIL import Image

                with Image.open(p) as im:
                    img: Any = im
                    if im.mode in ("RGBA", "P", "CMYK", "YCbCr"):
                        img = im.convert("RGB")
                    elif im.mode in ("1", "LA"):
                        img = im.convert("L")
                    a = np.asarray(img)
        except (OSError, ValueError) as exc:
            raise ReaderError(p, f"cannot be read as an image ({exc})", "replace or remove the damaged slice") from exc
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3:
            raise ReaderError(p, f"is not a 2D image (shape {a.shape})", "give one 2D plane per file")
        return a

    def _plane(self, k: int) -> NDArray[Any]:
        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        a = self._load(self.files[k])
        if a.shape != self._shape2d:
            raise ReaderError(
                self.files[k],
                f"has shape {a.shape}, the first slice {self.files[0].name} has {self._shape2d}",
                "give slices of one size and channel count",
            )
        self._cache = (k, a)
        return a

    def _read_native(self, z: slice, y: slice, x: slice, level: int) -> NDArray[Any]:
        ks = range(*z.indices(len(self.files)))
        planes = [self._plane(k)[y, x] for k in ks]
        if not planes:
            h = len(range(*y.indices(self._shape2d[0])))
            w = len(range(*x.indices(self._shape2d[1])))
            return np.zeros((0, h, w, self.channels), dtype=self.dtype)
        return np.stack(planes)


def open_volume(
    path: str | Path,
    voxel_size_um: Sequence[float] | None = None,
    *,
    intensity_range: tuple[float, float] | None = None,
    require_voxel_size: bool = True,
) -> VolumeSource:
    """Open a 3D TIFF / OME-TIFF, an OME-Zarr image or a folder of slice images.

    ``voxel_size_um`` (z, y, x) overrides the embedded one; without either a
    :class:`~hestkit.errors.VoxelSizeError` says how to give it (unless
    ``require_voxel_size=False``).
    """
    p = Path(path)
    if not p.exists():
        raise ReaderError(p, "does not exist", "check the path of the volume")
    vol: VolumeSource
    if p.is_dir():
        if (p / "zarr.json").exists() or (p / ".zattrs").exists() or (p / ".zgroup").exists():
            vol = NgffVolume(p)
        else:
            vol = SliceFolderVolume(p)
    elif p.suffix.lower() in (".tif", ".tiff", ".btf", ".tf8"):
        vol = TiffVolume(p)
    else:
        raise ReaderError(
            p,
            f"is not a volume format hestkit reads (suffix {p.suffix!r})",
            "give a 3D TIFF/OME-TIFF, an OME-Zarr folder or a folder of slice images",
        )
    vol.set_voxel_size(voxel_size_um)
    if intensity_range is not None:
        lo, hi = (float(v) for v in intensity_range)
        if not hi > lo:
            raise VolumeError(f"{p}: intensity range must be LOW < HIGH, got {intensity_range}")
        vol.intensity_range = (lo, hi)
    if require_voxel_size:
        _ = vol.voxel_size_um  # raises a VoxelSizeError naming the fix
    return vol
