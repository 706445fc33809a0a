"""Whole-slide images: pyramid levels, embedded pixel size and block reads.

Slides are never decoded whole. :meth:`Slide.read_region` decodes only the tiles (or
strips) that intersect the requested rectangle of one pyramid level. Three backends:

* TIFF family (generic pyramidal TIFF/BigTIFF, OME-TIFF, SVS, NDPI, flat TIFF), read
  with ``tifffile`` through its zarr view of the tiles;
* any other format OpenSlide opens (MRXS, SCN, VMS, ...), with ``openslide``;
* small flat PNG/JPEG images, with Pillow (these are decoded once, whole: they are
  thumbnails or small images, never gigapixel slides).
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .errors import DataError, ImageError, fix
from .fixes import IMAGE

__all__ = [
    "MAX_FLAT_PIXELS",
    "MAX_SIDE_PX",
    "PLAUSIBLE_PIXEL_SIZE_UM",
    "SLIDE_SUFFIXES",
    "Level",
    "Slide",
    "open_slide",
    "thread_slide",
]

#: Suffixes recognised as slide images when searching a folder.
SLIDE_SUFFIXES = (
    ".tif",
    ".tiff",
    ".btf",
    ".svs",
    ".ndpi",
    ".scn",
    ".mrxs",
    ".vms",
    ".vmu",
    ".bif",
    ".png",
    ".jpg",
    ".jpeg",
)
_PIL_SUFFIXES = {".png", ".jpg", ".jpeg"}
_TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".svs", ".ndpi", ".bif"}

#: Pixel sizes outside this range (um/px) are treated as absent (e.g. the 72 dpi default).
PLAUSIBLE_PIXEL_SIZE_UM = (0.02, 50.0)

#: Images wider or taller than this (px) are refused: no scanner makes them, a corrupt or
#: hostile header does (a 200,000 px square level alone would decode to 112 GiB).
MAX_SIDE_PX = 500_000
#: Tiles larger than the image on a side, and larger than this, are refused as corrupt.
_MAX_OVERSIZE_TILE_PX = 4096
#: Tiles of more pixels than this (16,384 x 16,384) are refused: each is decoded whole.
_MAX_TILE_PIXELS = 2**28
#: Flat PNG/JPEG images are decoded whole; beyond this many pixels they are refused.
MAX_FLAT_PIXELS = 2**30
#: Decoded bytes one block of a strided thumbnail may hold.
_THUMB_BLOCK_BYTES = 32 * 2**20

RGB = NDArray[np.uint8]


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and its downsample from level 0."""

    width: int
    height: int
    downsample: float


class _Backend(Protocol):
    levels: list[Level]
    embedded_pixel_size_um: float | None

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> RGB: ...

    def close(self) -> None: ...


def _to_rgb(a: NDArray[Any]) -> RGB:
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.integer) and a.size and int(a.max()) > 255:
            a = (a.astype(np.float32) / float(np.iinfo(a.dtype).max) * 255.0).round()
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.shape[2] >= 3:
        return np.ascontiguousarray(a[:, :, :3])
    raise DataError(f"unsupported channel layout {a.shape}")


def _plausible(v: float | None) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    lo, hi = PLAUSIBLE_PIXEL_SIZE_UM
    return float(v) if lo <= v <= hi else None


class _TiffBackend:
    def __init__(self, path: Path) -> None:
        import tifffile
        import zarr

        self._tf = tifffile.TiffFile(path)
        series = self._tf.series[0]
        self._series = series
        self._group = zarr.open(series.aszarr(), mode="r")
        arrays: list[Any] = []
        levels: list[Level] = []
        base_w = 0
        for i, lvl in enumerate(series.levels):
            axes = lvl.axes
            if "Y" not in axes or "X" not in axes:
                raise DataError(f"level {i} has axes {axes!r}, expected Y and X")
            h, w = lvl.shape[axes.index("Y")], lvl.shape[axes.index("X")]
            if i == 0:
                base_w, _base_h = w, h
            levels.append(Level(int(w), int(h), base_w / w if w else 1.0))
            arrays.append(self._group if isinstance(self._group, zarr.Array) else self._group[str(i)])
        self._axes = [lvl.axes for lvl in series.levels]
        #: (tile width, tile height) of each level, (0, 0) for strips
        self.tiles = [(int(lvl.keyframe.tilewidth or 0), int(lvl.keyframe.tilelength or 0)) for lvl in series.levels]
        self._arrays = arrays
        self.levels = levels
        self.embedded_pixel_size_um = _plausible(self._pixel_size())

    def _pixel_size(self) -> float | None:
        tf = self._tf
        page = tf.pages.first
        if tf.is_ome and tf.ome_metadata:
            try:
                root = ET.fromstring(tf.ome_metadata)
                for el in root.iter():
                    if el.tag.endswith("Pixels") and el.get("PhysicalSizeX"):
                        unit = el.get("PhysicalSizeXUnit", "µm")
                        factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
                        return float(el.get("PhysicalSizeX", "nan")) * factor.get(unit, 1.0)
            except (ET.ParseError, ValueError):
                pass
        desc = page.description or ""
        m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", desc)
        if m:
            return float(m.group(1))
        try:
            xres = page.tags.get("XResolution")
            unit_tag = page.tags.get("ResolutionUnit")
            if xres is None:
                return None
            num, den = xres.value
            if not num or not den:
                return None
            px_per_unit = num / den
            unit_v = int(unit_tag.value) if unit_tag is not None else 2
            if unit_v == 3:  # centimetre
                return 1e4 / px_per_unit
            if unit_v == 2:  # inch
                return 25400.0 / px_per_unit
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return None

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> RGB:
        axes = self._axes[level]
        index: list[Any] = []
        for ax in axes:
            if ax == "Y":
                index.append(slice(y0, y0 + h))
            elif ax == "X":
                index.append(slice(x0, x0 + w))
            elif ax == "S":
                index.append(slice(None))
            else:
                index.append(0)
        a = np.asarray(self._arrays[level][tuple(index)])
        return _to_rgb(a)

    def close(self) -> None:
        self._tf.close()


class _OpenSlideBackend:
    def __init__(self, path: Path) -> None:
        import openslide

        self._s = openslide.OpenSlide(str(path))
        self.levels = [
            Level(int(w), int(h), float(ds))
            for (w, h), ds in zip(self._s.level_dimensions, self._s.level_downsamples, strict=True)
        ]
        mpp = self._s.properties.get("openslide.mpp-x")
        self.embedded_pixel_size_um = _plausible(float(mpp)) if mpp else None

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> RGB:
        ds = self.levels[level].downsample
        img = self._s.read_region((round(x0 * ds), round(y0 * ds)), level, (w, h))
        return _to_rgb(np.asarray(img.convert("RGB")))

    def close(self) -> None:
        self._s.close()


class _NgffBackend:
    """An OME-NGFF multiscale image in a zarr group (e.g. a SpatialData image element)."""

    def __init__(self, path: Path) -> None:
        import zarr

        group: Any = zarr.open_group(str(path), mode="r")
        attrs: dict[str, Any] = dict(group.attrs)
        ms: Any = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
        if not ms:
            raise DataError("zarr group without OME-NGFF 'multiscales' metadata")
        m0 = ms[0]
        axes = [a["name"] if isinstance(a, dict) else str(a) for a in m0["axes"]]
        if "y" not in axes or "x" not in axes:
            raise DataError(f"multiscale axes {axes} lack y/x")
        self._axes = axes
        self._arrays: list[Any] = [group[d["path"]] for d in m0["datasets"]]
        yi, xi = axes.index("y"), axes.index("x")
        w0, h0 = self._arrays[0].shape[xi], self._arrays[0].shape[yi]
        self.levels = [Level(int(a.shape[xi]), int(a.shape[yi]), w0 / a.shape[xi]) for a in self._arrays]
        self.embedded_pixel_size_um: float | None = None
        self._h0 = h0

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> RGB:
        index: list[Any] = []
        for ax in self._axes:
            if ax == "y":
                index.append(slice(y0, y0 + h))
            elif ax == "x":
                index.append(slice(x0, x0 + w))
            elif ax == "c":
                index.append(slice(None))
            else:
                index.append(0)
        a = np.asarray(self._arrays[level][tuple(index)])
        kept = [ax for ax in self._axes if ax in ("c", "y", "x")]
        a = np.transpose(a, [kept.index(ax) for ax in ("y", "x", "c") if ax in kept])
        return _to_rgb(a)

    def close(self) -> None:
        pass


class _PilBackend:
    def __init__(self, path: Path) -> None:
        from PIL import Image

        # Pillow's decompression-bomb guard would refuse large slides at open(); it is
        # process-wide state, so lift it only around this open (the size is checked below)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            opened = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        with opened as im:
            w0, h0 = im.size
            if w0 * h0 > MAX_FLAT_PIXELS:
                raise DataError(
                    f"a flat {w0} x {h0} px image is decoded whole ({w0 * h0 * 3 / 2**30:.1f} GiB); over "
                    f"{MAX_FLAT_PIXELS:,} px, convert it to a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)"
                )
            im.load()
            dpi = im.info.get("dpi")
            self._a = _to_rgb(np.asarray(im.convert("RGB")))
        h, w = self._a.shape[:2]
        self.levels = [Level(w, h, 1.0)]
        px = None
        if dpi and dpi[0]:
            px = 25400.0 / float(dpi[0])
        self.embedded_pixel_size_um = _plausible(px)

    def read(self, level: int, x0: int, y0: int, w: int, h: int) -> RGB:
        return self._a[y0 : y0 + h, x0 : x0 + w]

    def close(self) -> None:
        pass


class Slide:
    """A whole-slide image opened for block reads. Use :func:`open_slide`."""

    def __init__(self, path: Path, backend: _Backend, backend_name: str) -> None:
        self.path = path
        self._b = backend
        self.backend = backend_name
        self._lock = threading.Lock()

    @property
    def levels(self) -> list[Level]:
        return self._b.levels

    @property
    def width(self) -> int:
        return self._b.levels[0].width

    @property
    def height(self) -> int:
        return self._b.levels[0].height

    @property
    def embedded_pixel_size_um(self) -> float | None:
        """Micrometres per level-0 pixel as stored in the file, or None."""
        return self._b.embedded_pixel_size_um

    @property
    def max_window_px(self) -> float | None:
        """Largest level-0 window a patch may be cut from: the patch side for a mosaic of
        pre-cut patches (a HEST ``.h5`` patch file), None for a real slide."""
        v = getattr(self._b, "max_window_px", None)
        return None if v is None else float(v)

    def best_level(self, downsample: float, *, tolerance: float = 0.01) -> int:
        """The coarsest level whose downsample does not exceed ``downsample``.

        Reading from it and resampling never upsamples when ``downsample >= 1``.
        """
        best = 0
        for i, lvl in enumerate(self.levels):
            if lvl.downsample <= downsample * (1.0 + tolerance) and lvl.downsample >= self.levels[best].downsample:
                best = i
        return best

    def read_region(self, level: int, x0: int, y0: int, w: int, h: int, *, fill: int = 255) -> RGB:
        """Read a ``h x w`` RGB block with top-left ``(x0, y0)`` in pixels *of that level*.

        Parts outside the image are filled with ``fill`` (white, like glass).
        """
        lvl = self.levels[level]
        out = np.full((h, w, 3), fill, dtype=np.uint8)
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + w, lvl.width), min(y0 + h, lvl.height)
        if xb <= xa or yb <= ya:
            return out
        try:
            with self._lock:
                block = self._b.read(level, xa, ya, xb - xa, yb - ya)
        except Exception as exc:
            raise ImageError(
                self.path,
                f"could not decode level {level} region x={xa}..{xb}, y={ya}..{yb} ({exc})",
                "check that the file is complete and not corrupt (re-export or re-copy it)",
            ) from exc
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = block
        return out

    def thumbnail(self, max_size: int = 1024) -> tuple[RGB, float]:
        """A thumbnail whose longest side is at most ``max_size``; returns it and its
        downsample factor from level 0 (thumbnail px * factor = level-0 px).

        Read from the first pyramid level small enough to decode whole; a slide without
        such a level (single-level, or a pyramid that stops early) is reduced block by
        block instead, so peak memory does not grow with the slide's area."""
        from PIL import Image

        small = max(4 * max_size, 4096)
        level = len(self.levels) - 1
        for i, lvl in enumerate(self.levels):
            if max(lvl.width, lvl.height) <= small:
                level = i
                break
        lvl = self.levels[level]
        if max(lvl.width, lvl.height) > small:
            a = self._reduced(level, math.ceil(max(lvl.width, lvl.height) / max_size))
        else:
            a = self.read_region(level, 0, 0, lvl.width, lvl.height)
            scale = max(lvl.width, lvl.height) / max_size
            if scale > 1:
                new = (max(1, round(lvl.width / scale)), max(1, round(lvl.height / scale)))
                a = np.asarray(Image.fromarray(a).resize(new, Image.Resampling.BOX))
        factor = self.width / a.shape[1]
        return a, factor

    def _reduced(self, level: int, factor: int) -> RGB:
        """Level ``level`` box-averaged by the integer ``factor`` (output sides rounded
        up; edge cells average the pixels they have), read in blocks of at most
        ``_THUMB_BLOCK_BYTES`` that follow the file's own tiles: each tile (or strip) is
        decoded once, and memory holds one block plus the output's sums."""
        lvl = self.levels[level]
        w, h = lvl.width, lvl.height
        oh, ow = -(-h // factor), -(-w // factor)
        acc = np.zeros((oh, ow, 3), dtype=np.uint64 if factor > 4096 else np.uint32)
        budget_px = _THUMB_BLOCK_BYTES // 3
        tiles: list[tuple[int, int]] = getattr(self._b, "tiles", [])
        tw, th = tiles[level] if level < len(tiles) else (0, 0)
        if tw and th:  # one row of whole tiles, as many tiles wide as the budget allows
            bh = th
            bw = tw * max(1, min(-(-w // tw), budget_px // (tw * th)))
        elif tiles:  # strips: full-width bands
            bw, bh = w, max(1, budget_px // w)
        else:  # layout unknown (OpenSlide, ...): square blocks, a multiple of common tile sides
            bw = bh = max(1024, (math.isqrt(budget_px) // 1024) * 1024)
        for y0 in range(0, h, bh):
            hh = min(bh, h - y0)
            rows = np.unique(np.r_[0, np.arange((-y0) % factor, hh, factor)])
            oy = y0 // factor
            for x0 in range(0, w, bw):
                ww = min(bw, w - x0)
                cols = np.unique(np.r_[0, np.arange((-x0) % factor, ww, factor)])
                ox = x0 // factor
                block = self.read_region(level, x0, y0, ww, hh)
                # rows: one contiguous sum per output row (np.add.reduceat along axis 0 with a
                # widening dtype is ~15x slower); columns: reduceat on the small row sums
                edges = [*rows.tolist(), hh]
                by_row = np.stack([block[a:b].sum(axis=0, dtype=acc.dtype) for a, b in itertools.pairwise(edges)])
                sums = np.add.reduceat(by_row, cols, axis=1)
                acc[oy : oy + len(rows), ox : ox + len(cols)] += sums
        ny = np.minimum(factor, h - np.arange(oh) * factor)
        nx = np.minimum(factor, w - np.arange(ow) * factor)
        area = (ny[:, None] * nx[None, :])[:, :, None]
        return ((acc + area // 2) // area).astype(np.uint8)

    def close(self) -> None:
        self._b.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        lv = ", ".join(f"{lv.width}x{lv.height}" for lv in self.levels)
        return f"Slide({str(self.path)!r}, backend={self.backend}, levels=[{lv}])"


def open_slide(path: str | Path) -> Slide:
    """Open a slide image, choosing a backend from the file, or raise :class:`ImageError`."""
    p = Path(path)
    if not p.exists():
        raise ImageError(p, "the image file does not exist", fix(f"give the path of the full-resolution H&E ({IMAGE})", IMAGE))
    if p.is_dir():
        if (p / "zarr.json").exists() or (p / ".zattrs").exists():
            try:
                return Slide(p, _NgffBackend(p), "ngff")
            except Exception as exc:
                raise ImageError(
                    p,
                    f"is a zarr group but not a readable OME-NGFF image ({exc})",
                    "point at the image element (e.g. STORE.zarr/images/NAME)",
                ) from exc
        raise ImageError(p, "is a folder, not an image file", "give the path of the image file itself")
    from .morphology import MorphologyBackend, is_morphology_image

    if is_morphology_image(p):  # Xenium DAPI / stains: rendered to RGB (hestkit.morphology)
        try:
            return Slide(p, MorphologyBackend(p), "morphology")
        except Exception:  # noqa: BLE001 - not a channel image after all: read it as any TIFF
            pass
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        from ._patch_mosaic import PatchMosaicBackend

        try:
            return Slide(p, PatchMosaicBackend(p), "patch-mosaic")
        except Exception as exc:
            raise ImageError(
                p, f"cannot be read as a HEST patch file ({exc})", "give an .h5 with img (N, P, P, 3) uint8 patches"
            ) from exc
    errors: list[str] = []
    order: list[str]
    if suffix in _PIL_SUFFIXES:
        order = ["pil"]
    elif suffix in _TIFF_SUFFIXES:
        order = ["tifffile", "openslide"]
    else:
        order = ["openslide", "tifffile", "pil"]
    for name in order:
        try:
            if name == "tifffile":
                slide = Slide(p, _TiffBackend(p), name)
            elif name == "openslide":
                slide = Slide(p, _OpenSlideBackend(p), name)
            else:
                slide = Slide(p, _PilBackend(p), name)
        except Exception as exc:  # noqa: BLE001 - each backend fails in its own way
            errors.append(f"{name}: {exc}")
            continue
        try:
            _check_header(slide)
        except ImageError:
            slide.close()
            raise
        return slide
    raise ImageError(
        p,
        "cannot be read as an image (" + "; ".join(errors) + ")",
        "check that the file is a complete TIFF/OME-TIFF/SVS/NDPI/PNG/JPEG; re-copy it if it was truncated",
    )


def _check_header(slide: Slide) -> None:
    """Refuse sizes no real slide has (a corrupt or hostile header) before anything is
    decoded: sides beyond :data:`MAX_SIDE_PX`, empty levels, tiles larger than the image."""
    fix = "the file's header is corrupt or not a slide; re-export or re-copy the image"
    if not slide.levels:
        raise ImageError(slide.path, "has no image level", fix)
    for i, lvl in enumerate(slide.levels):
        if lvl.width < 1 or lvl.height < 1 or max(lvl.width, lvl.height) > MAX_SIDE_PX:
            raise ImageError(
                slide.path,
                f"level {i} claims {lvl.width} x {lvl.height} px; a slide is 1 to {MAX_SIDE_PX:,} px a side",
                fix,
            )
    tiles: list[tuple[int, int]] = getattr(slide._b, "tiles", [])
    for i, (tw, th) in enumerate(tiles):
        lvl = slide.levels[i]
        if (tw > lvl.width and tw > _MAX_OVERSIZE_TILE_PX) or (th > lvl.height and th > _MAX_OVERSIZE_TILE_PX):
            raise ImageError(
                slide.path,
                f"level {i} ({lvl.width} x {lvl.height} px) claims tiles of {tw} x {th} px, larger than the image",
                fix,
            )
        if tw * th > _MAX_TILE_PIXELS:
            raise ImageError(
                slide.path,
                f"level {i} claims tiles of {tw} x {th} px: one tile would decode to {tw * th * 3 / 2**30:.1f} GiB "
                f"(slides use tiles of 256 to 1,024 px; at most {_MAX_TILE_PIXELS:,} px are accepted)",
                "re-save the slide as a tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)",
            )


class _ThreadSlide:
    """Holds one thread's open slide and closes it when dropped: when the thread ends,
    its thread-local storage goes and with it this holder, so the slide's file handle is
    closed explicitly instead of being left to the garbage collector (a ResourceWarning,
    and one open file per finished worker thread until then)."""

    __slots__ = ("slide",)

    def __init__(self, slide: Slide) -> None:
        self.slide = slide

    def __del__(self) -> None:
        try:
            self.slide.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown or an already-closed file
            pass


_THREAD_SLIDES = threading.local()


def thread_slide(path: str | Path) -> Slide:
    """The calling thread's open :class:`Slide` for ``path``, opened on first use.

    Each thread keeps at most one slide open (opening another closes it, and the thread's
    end closes the last one). A slide's open state includes its tile index (for tifffile,
    ~16 MiB for a 100,000 x 100,000 px pyramid in 256 px tiles), so block tasks that reuse
    it keep memory flat instead of holding one copy per task. Do not close the returned
    slide.
    """
    p = Path(path)
    held: _ThreadSlide | None = getattr(_THREAD_SLIDES, "held", None)
    if held is not None and held.slide.path == p:
        return held.slide
    slide = open_slide(p)
    _THREAD_SLIDES.held = _ThreadSlide(slide)  # dropping the previous holder closes its slide
    return slide
