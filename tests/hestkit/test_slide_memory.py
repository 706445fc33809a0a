"""Thumbnails of slides without pyramid levels, and absurd headers (issue 15, item 12)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hestkit.errors import ImageError
from hestkit.slide import open_slide
from hestkit.synthetic import write_pyramidal_tiff

REPO = Path(__file__).resolve().parents[2]

#: Side of the single-level test slide: its one level decodes to 192 MiB.
SIDE = 8192
TILE = 512
#: Peak memory a thumbnail may add, whatever the slide's area (the whole level is 192 MiB).
BOUND_MIB = 128


def _tile_colour(ty: int, tx: int) -> tuple[int, int, int]:
    return (ty * 7) % 256, (tx * 13) % 256, (ty * tx) % 256


def _write_single_level(path: Path, side: int = SIDE, tile: int = TILE) -> None:
    def tiles():  # type: ignore[no-untyped-def]
        for ty in range(-(-side // tile)):
            for tx in range(-(-side // tile)):
                yield np.broadcast_to(np.array(_tile_colour(ty, tx), np.uint8), (tile, tile, 3))

    tifffile.imwrite(
        path,
        data=tiles(),
        shape=(side, side, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="zlib",
        compressionargs={"level": 1},
    )


_MEASURE = """
import json, resource, sys
import numpy as np
from hestkit.slide import open_slide
s = open_slide(sys.argv[1])
s.read_region(0, 0, 0, 64, 64)  # imports and first decode, before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
thumb, ds = s.thumbnail(1024)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
np.save(sys.argv[2], thumb)
print(json.dumps({"added_mib": (peak - base) / 1024, "ds": ds, "levels": len(s.levels)}))
"""


def test_single_level_thumbnail_memory_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "flat.tif"
    _write_single_level(path)
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), str(tmp_path / "thumb.npy")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["levels"] == 1
    # decoding the level whole (as before) adds >= 192 MiB; block by block stays under the bound
    assert res["added_mib"] < BOUND_MIB, res
    thumb = np.load(tmp_path / "thumb.npy")
    assert thumb.shape == (1024, 1024, 3) and res["ds"] == pytest.approx(SIDE / 1024)
    # each 512 px tile is a flat colour: a 32 x 32 block of the thumbnail, averaged exactly
    f = TILE * 1024 // SIDE
    for ty, tx in ((0, 0), (5, 17), (31, 31)):
        assert (thumb[ty * f : (ty + 1) * f, tx * f : (tx + 1) * f] == _tile_colour(ty, tx)).all()


def test_strided_and_pyramid_thumbnails_agree(tmp_path: Path) -> None:
    """The block-by-block path gives the picture the pyramid gives (same content, both
    ways), at a side that is not a multiple of the reduction factor."""
    side = 4200

    def render(ds: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        ys = ((np.arange(y0, y0 + h) + 0.5) * ds)[:, None]
        xs = ((np.arange(x0, x0 + w) + 0.5) * ds)[None, :]
        r = (xs / side * 255).repeat(h, 0)
        g = (ys / side * 255).repeat(w, 1)
        return np.stack([r, g, np.full((h, w), 128.0)], -1).astype(np.uint8)

    write_pyramidal_tiff(
        tmp_path / "flat.tif", height=side, width=side - 7, render=render, pixel_size_um=0.5, min_level_size=10**6
    )
    write_pyramidal_tiff(tmp_path / "pyr.tif", height=side, width=side - 7, render=render, pixel_size_um=0.5)
    with open_slide(tmp_path / "flat.tif") as a, open_slide(tmp_path / "pyr.tif") as b:
        assert len(a.levels) == 1 and len(b.levels) > 1
        ta, da = a.thumbnail(700)
        tb, db = b.thumbnail(700)
    assert max(ta.shape[:2]) <= 700 and ta.shape[0] == 700
    assert da == pytest.approx(db, rel=0.01)
    h, w = min(ta.shape[0], tb.shape[0]), min(ta.shape[1], tb.shape[1])
    diff = np.abs(ta[:h, :w].astype(int) - tb[:h, :w].astype(int))
    assert np.median(diff) <= 2 and diff.mean() < 3


def _patch_long(path: Path, tag: str, value: int) -> None:
    with tifffile.TiffFile(path) as tf:
        t = tf.pages[0].tags[tag]
        assert t.dtype == 4 and t.count == 1  # LONG
        offset = t.valueoffset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack("<I", value))


def test_absurd_headers_are_refused(tmp_path: Path) -> None:
    small = np.full((100, 100, 3), 200, np.uint8)
    # a header claiming 600,000 px a side (one tile of that size, so the file is consistent)
    huge = tmp_path / "huge.tif"
    tifffile.imwrite(huge, small, tile=(256, 256), photometric="rgb", compression="zlib")
    for tag in ("ImageWidth", "ImageLength", "TileWidth", "TileLength"):
        _patch_long(huge, tag, 600_000)
    with pytest.raises(ImageError, match=r"huge\.tif: level 0 claims 600000 x 600000 px; a slide is 1 to 500,000 px"):
        open_slide(huge)
    # tiles larger than the image
    tiles = tmp_path / "tiles.tif"
    tifffile.imwrite(tiles, small, tile=(256, 256), photometric="rgb", compression="zlib")
    for tag in ("TileWidth", "TileLength"):
        _patch_long(tiles, tag, 8192)
    with pytest.raises(ImageError, match=r"claims tiles of 8192 x 8192 px, larger than the image"):
        open_slide(tiles)
    # a 200,000 px square image in one tile: it would decode to 112 GiB
    one = tmp_path / "one_tile.tif"
    tifffile.imwrite(one, small, tile=(256, 256), photometric="rgb", compression="zlib")
    for tag in ("ImageWidth", "ImageLength", "TileWidth", "TileLength"):
        _patch_long(one, tag, 200_000)
    with pytest.raises(ImageError, match=r"one tile would decode to 111\.8 GiB"):
        open_slide(one)
