"""Writers for synthetic images: tiled pyramidal JPEG TIFFs and small flat images.

The pyramid is written tile by tile from a ``render`` callback, so no level is ever
held in memory as a whole. Every level is a separate top-level IFD (level 0 first,
then reduced-resolution pages with ``NewSubfileType = 1``), the layout that OpenSlide's
generic-tiff backend and ``tifffile`` (``series[0].levels``) both read as a pyramid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from ..errors import DataError, OptionError

__all__ = ["RenderFn", "pyramid_shapes", "write_flat_image", "write_pyramidal_tiff"]

RenderFn = Callable[[float, int, int, int, int], NDArray[np.uint8]]
"""``render(downsample, y0, x0, h, w) -> (h, w, 3) uint8``: a window of one level.

Level pixel ``(y, x)`` covers level-0 pixels ``[y * ds, (y + 1) * ds)``; ``y0, x0``
are the top-left corner of the window in that level's pixels.
"""


def pyramid_shapes(height: int, width: int, min_level_size: int = 512) -> list[tuple[int, int]]:
    """Shapes ``(height, width)`` of the pyramid levels, level 0 first.

    Each level halves the previous one (rounding up) until the longest side is below
    ``min_level_size``; that last small level is included.
    """
    if height < 1 or width < 1:
        raise OptionError(f"image must be non-empty, got {height}x{width}")
    shapes = [(height, width)]
    h, w = height, width
    while max(h, w) >= min_level_size:
        h, w = -(-h // 2), -(-w // 2)
        shapes.append((h, w))
    return shapes


def _tiles(render: RenderFn, downsample: float, height: int, width: int, tile: int) -> Iterator[NDArray[np.uint8]]:
    """Tiles of one level in TIFF (row-major) order, edge-padded to full tiles."""
    for y0 in range(0, height, tile):
        h = min(tile, height - y0)
        for x0 in range(0, width, tile):
            w = min(tile, width - x0)
            block = np.asarray(render(downsample, y0, x0, h, w), dtype=np.uint8)
            if block.shape != (h, w, 3):
                raise DataError(f"render returned {block.shape}, expected {(h, w, 3)}")
            if h == tile and w == tile:
                yield np.ascontiguousarray(block)
            else:
                # Edge replication rather than zeros: no JPEG ringing into the image.
                yield np.pad(block, ((0, tile - h), (0, tile - w), (0, 0)), mode="edge")


def write_pyramidal_tiff(
    path: str | Path,
    *,
    height: int,
    width: int,
    render: RenderFn,
    pixel_size_um: float | None,
    tile: int = 256,
    min_level_size: int = 512,
    jpeg_quality: int = 90,
    bigtiff: bool = False,
) -> None:
    """Write a tiled, JPEG-compressed, pyramidal RGB TIFF rendered tile by tile.

    Args:
        path: output file.
        height, width: level-0 size in pixels.
        render: ``render(downsample, y0, x0, h, w)`` returning a ``(h, w, 3)`` uint8
            window of the level with that downsample (see :data:`RenderFn`).
        pixel_size_um: level-0 pixel size; written as X/YResolution in pixels per
            centimetre (scaled per level). ``None`` writes ``ResolutionUnit = NONE``
            and no meaningful resolution, so no pixel size is embedded.
        tile: tile edge in pixels (multiple of 16).
        min_level_size: stop adding levels once the longest side is below this.
        jpeg_quality: JPEG quality 1-100.
        bigtiff: write BigTIFF (as HEST-1k does) instead of classic TIFF.
    """
    if tile % 16:
        raise OptionError(f"tile must be a multiple of 16, got {tile}")
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise OptionError(f"pixel_size_um must be positive, got {pixel_size_um}")
    shapes = pyramid_shapes(height, width, min_level_size)
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as writer:
        for level, (h, w) in enumerate(shapes):
            downsample = float(2**level)
            if pixel_size_um is not None:
                # Actual per-axis downsample, as OpenSlide computes it from the sizes.
                res_x = 1e4 * w / (width * pixel_size_um)
                res_y = 1e4 * h / (height * pixel_size_um)
                resolution: tuple[float, float] | None = (res_x, res_y)
                unit = "CENTIMETER"
            else:
                resolution, unit = None, "NONE"
            writer.write(
                data=_tiles(render, downsample, h, w, tile),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": jpeg_quality},
                resolution=resolution,
                resolutionunit=unit,
                subfiletype=1 if level else 0,
                metadata=None,
                software="hestkit.synthetic" if level == 0 else False,
            )


def write_flat_image(path: str | Path, array: NDArray[np.uint8], *, quality: int = 95) -> None:
    """Write a small ``(h, w, 3)`` uint8 image as PNG or JPEG (chosen by suffix)."""
    arr = np.asarray(array, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise OptionError(f"expected an (h, w, 3) array, got {arr.shape}")
    image = Image.fromarray(arr)
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        image.save(path, format="PNG", compress_level=1)
    elif suffix in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=quality)
    else:
        raise OptionError(f"unsupported flat image suffix {suffix!r} (use .png/.jpg)")
