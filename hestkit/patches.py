"""Patch extraction by slide blocks.

Spots are grouped by the tile-aligned block of the chosen pyramid level that holds
their centre. Each block is decoded once, and every patch centred in it is resampled
from that one decoded block, so each slide pixel is decoded about once, instead of
once per overlapping ``read_region`` call.

Coordinates: spot centres are continuous level-0 pixel coordinates (pixel ``i``
spans ``[i, i + 1)``). A patch of ``size`` px at ``pixel_size_um`` um/px covers the
square of side ``size * pixel_size_um`` um CENTRED on the spot centre.

Edge rule: a spot whose centre lies on the image is a real measurement, so by default
(``edge="fill"``) its patch is kept even when its window crosses the image edge; the
off-image part is filled with the slide's background colour and the share of the window
that lies on the image is the pair's ``valid_fraction``. ``edge="drop"`` drops such spots
instead. Spots whose centre is off the image are always dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from .errors import Opt, OptionError, fix
from .slide import Slide

__all__ = [
    "EDGE_RULES",
    "Block",
    "PairSpec",
    "PatchPlan",
    "background_colour",
    "cut_block",
    "iter_patches",
    "plan_patches",
    "top_left_px",
]

#: What to do with a spot whose centre is on the image but whose patch window crosses its edge.
EDGE_RULES = ("fill", "drop")
EdgeRule = Literal["fill", "drop"]


@dataclass(frozen=True)
class PairSpec:
    """Shape of every pair in a catalog: patch size in px and its resolution in um/px."""

    patch_size_px: int = 224
    pixel_size_um: float = 0.5
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.patch_size_px < 8:
            raise OptionError(f"patch_size_px must be >= 8, got {self.patch_size_px}")
        if not (self.pixel_size_um > 0):
            raise OptionError(f"pixel_size_um must be > 0, got {self.pixel_size_um}")
        if not (1 <= self.jpeg_quality <= 100):
            raise OptionError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")

    @property
    def field_um(self) -> float:
        """Side of the patch in micrometres."""
        return self.patch_size_px * self.pixel_size_um


@dataclass(frozen=True)
class Block:
    """One rectangle of one pyramid level (top-left ``x0, y0``, level px) and the spots
    (indices into the plan's kept spots) whose patches are cut from it."""

    x0: int
    y0: int
    width: int
    height: int
    spots: NDArray[np.int64]
    slot_start: int


@dataclass(frozen=True)
class PatchPlan:
    """Where every kept spot's patch comes from and where it goes.

    ``dropped_outside``: spots whose centre is off the image; ``dropped_edge``: spots
    whose centre is on it but whose window crosses its edge, dropped under
    ``edge="drop"`` (empty under ``"fill"``). ``valid_fraction``: per kept spot, the
    share of its window that lies on the image (1.0 inside); the rest of its patch is
    ``background`` (RGB)."""

    level: int
    level_downsample: float
    window_level_px: float
    kept: NDArray[np.int64]
    dropped_outside: NDArray[np.int64]
    blocks: tuple[Block, ...]
    slots: NDArray[np.int64]
    n_slots: int
    dropped_edge: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    valid_fraction: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    background: tuple[int, int, int] = (255, 255, 255)
    edge: str = "fill"

    @property
    def n_pairs(self) -> int:
        return len(self.kept)


def top_left_px(centres_px: NDArray[np.float64], window_l0_px: float) -> NDArray[np.float64]:
    """Top-left corners (level-0 px) of windows of side ``window_l0_px`` centred on ``centres_px``."""
    return np.asarray(centres_px, dtype=float) - window_l0_px / 2.0


def plan_patches(
    slide: Slide,
    centres_px: NDArray[np.float64],
    slide_pixel_size_um: float,
    spec: PairSpec,
    *,
    block_px: int = 4096,
    slot_align: int = 64,
    edge: EdgeRule = "fill",
    background: tuple[int, int, int] = (255, 255, 255),
) -> PatchPlan:
    """Plan the cutting of one patch per spot centre.

    ``edge`` is the edge rule (module docstring); ``background`` the RGB colour that
    fills the off-image part of an edge patch (see :func:`background_colour`).

    ``block_px`` is the side of a block at the chosen level (rounded to whole tiles by
    the decoder); ``slot_align`` pads each block's run of output slots to a multiple of
    it (the zarr shard length), so that blocks write disjoint shards.
    """
    c = np.asarray(centres_px, dtype=float).reshape(-1, 2)
    ds_wanted = spec.pixel_size_um / slide_pixel_size_um
    level = slide.best_level(ds_wanted)
    lds = slide.levels[level].downsample
    win_l0 = spec.patch_size_px * ds_wanted
    if edge not in EDGE_RULES:
        raise OptionError(f"edge must be one of {', '.join(EDGE_RULES)}, got {edge!r}")
    limit = slide.max_window_px
    if limit is not None and win_l0 > limit * (1.0 + 1e-6):
        from .errors import ImageError

        size = Opt("patch_size_px", f"{int(limit)}", scope="PairSpec")
        um = Opt("pixel_size_um", f"{slide_pixel_size_um:g}", scope="PairSpec")
        raise ImageError(
            slide.path,
            f"holds pre-cut patches of {limit:g} px at {slide_pixel_size_um:g} um/px ({limit * slide_pixel_size_um:g} um); "
            f"the catalog's {spec.patch_size_px} px at {spec.pixel_size_um:g} um/px needs {spec.field_um:g} um fields, "
            "wider than one patch",
            fix(
                f"use a catalog whose patches cover at most {limit * slide_pixel_size_um:g} um "
                f"(e.g. patches of {size} at {um})",
                size,
                um,
            ),
        )
    if limit is not None and ds_wanted < 1.0 - 1e-6:
        import warnings

        warnings.warn(
            f"{slide.path.name}: pre-cut patches at {slide_pixel_size_um:g} um/px are upsampled to "
            f"{spec.pixel_size_um:g} um/px ({1 / ds_wanted:.2f}x): the catalog's patches hold no more detail than the source",
            stacklevel=2,
        )
    half = win_l0 / 2.0
    finite = np.isfinite(c).all(axis=1)
    cx = np.where(finite, c[:, 0], -1.0)
    cy = np.where(finite, c[:, 1], -1.0)
    on_image = finite & (cx >= 0) & (cy >= 0) & (cx < slide.width) & (cy < slide.height)
    whole = on_image & (cx - half >= 0) & (cy - half >= 0) & (cx + half <= slide.width) & (cy + half <= slide.height)
    keep_mask = whole if edge == "drop" else on_image
    kept = np.flatnonzero(keep_mask).astype(np.int64)
    dropped = np.flatnonzero(~on_image).astype(np.int64)
    dropped_edge = np.flatnonzero(on_image & ~keep_mask).astype(np.int64)
    ox = np.clip(np.minimum(cx + half, slide.width) - np.maximum(cx - half, 0.0), 0.0, None)
    oy = np.clip(np.minimum(cy + half, slide.height) - np.maximum(cy - half, 0.0), 0.0, None)
    valid = np.where(whole, 1.0, (ox * oy) / (win_l0 * win_l0))[kept]
    win_l = win_l0 / lds
    lvl = slide.levels[level]
    cl = c[kept] / lds
    bx = np.floor(cl[:, 0] / block_px).astype(np.int64)
    by = np.floor(cl[:, 1] / block_px).astype(np.int64)
    order = np.lexsort((bx, by))
    blocks: list[Block] = []
    slots = np.empty(len(kept), dtype=np.int64)
    slot = 0
    i = 0
    while i < len(order):
        j = i
        key = (by[order[i]], bx[order[i]])
        while j < len(order) and (by[order[j]], bx[order[j]]) == key:
            j += 1
        members = order[i:j]
        pts = cl[members]
        x0 = max(math.floor(pts[:, 0].min() - win_l / 2.0) - 1, 0)
        y0 = max(math.floor(pts[:, 1].min() - win_l / 2.0) - 1, 0)
        x1 = min(math.ceil(pts[:, 0].max() + win_l / 2.0) + 1, lvl.width)
        y1 = min(math.ceil(pts[:, 1].max() + win_l / 2.0) + 1, lvl.height)
        slots[members] = slot + np.arange(len(members))
        blocks.append(Block(x0, y0, x1 - x0, y1 - y0, members.astype(np.int64), slot))
        slot += int(math.ceil(len(members) / slot_align) * slot_align)
        i = j
    return PatchPlan(
        level,
        lds,
        win_l,
        kept,
        dropped,
        tuple(blocks),
        slots,
        max(slot, 0),
        dropped_edge=dropped_edge,
        valid_fraction=valid.astype(np.float64),
        background=tuple(int(v) for v in background),  # type: ignore[arg-type]
        edge=edge,
    )


def background_colour(thumbnail: NDArray[np.uint8]) -> tuple[int, int, int]:
    """The slide's background colour: the per-channel median of the outer ring of its
    thumbnail (a glass slide's white for H&E, black for a fluorescence image)."""
    t = np.asarray(thumbnail)
    if t.ndim == 2:
        t = t[..., None].repeat(3, axis=2)
    h, w = t.shape[:2]
    r = max(1, min(h, w) // 50)
    ring = np.concatenate(
        [t[:r].reshape(-1, 3), t[-r:].reshape(-1, 3), t[:, :r].reshape(-1, 3), t[:, -r:].reshape(-1, 3)], axis=0
    )
    med = np.median(ring[:, :3], axis=0)
    return (int(med[0]), int(med[1]), int(med[2]))


def _resample(
    region: NDArray[np.uint8],
    x0: float,
    y0: float,
    scale: float,
    size: int,
    image_box: tuple[float, float, float, float] | None = None,
    fill: tuple[int, int, int] = (255, 255, 255),
) -> NDArray[np.uint8]:
    """Bilinear resampling of the square with top-left ``(x0, y0)`` (continuous coordinates
    of ``region``) and side ``scale * size`` onto ``size x size`` output pixels.

    ``image_box`` (``x_lo, y_lo, x_hi, y_hi`` in region coordinates) is the image's extent:
    output pixels whose centre falls outside it are ``fill`` (the off-image part of an
    edge patch)."""
    import cv2

    xi, yi = round(x0), round(y0)
    if abs(scale - 1.0) < 1e-9 and abs(x0 - xi) < 1e-9 and abs(y0 - yi) < 1e-9:
        if xi >= 0 and yi >= 0 and xi + size <= region.shape[1] and yi + size <= region.shape[0]:
            return region[yi : yi + size, xi : xi + size].copy()  # exact pixel grid: a plain copy
    # output pixel u (centre u + 0.5) <- source x = x0 + (u + 0.5) * scale, i.e. index x - 0.5
    m = np.array([[scale, 0.0, x0 + 0.5 * scale - 0.5], [0.0, scale, y0 + 0.5 * scale - 0.5]])
    out = np.asarray(
        cv2.warpAffine(region, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE),
        dtype=np.uint8,
    )
    if image_box is not None:
        centres = (np.arange(size) + 0.5) * scale
        xs, ys = x0 + centres, y0 + centres
        off_x = (xs < image_box[0]) | (xs >= image_box[2])
        off_y = (ys < image_box[1]) | (ys >= image_box[3])
        if off_x.any() or off_y.any():
            out[off_y, :] = fill
            out[:, off_x] = fill
    return out


def cut_block(slide: Slide, plan: PatchPlan, block: Block, centres_px: NDArray[np.float64], spec: PairSpec) -> NDArray[np.uint8]:
    """Decode ``block`` once and resample every patch centred in it.

    Returns ``(len(block.spots), size, size, 3)`` uint8, in the order of ``block.spots``.
    ``centres_px`` are ALL spot centres given to :func:`plan_patches` (level 0). When the
    patch is smaller in px than its window (downsampling by ``s > 1``), the block is
    low-pass filtered once (Gaussian, sigma = sqrt(s^2 - 1) / 2) against aliasing.
    """
    import cv2

    cv2.setNumThreads(1)
    region = slide.read_region(plan.level, block.x0, block.y0, block.width, block.height)
    size = spec.patch_size_px
    scale = plan.window_level_px / size
    if scale > 1.01:
        sigma = float(np.sqrt(scale * scale - 1.0) / 2.0)
        region = np.asarray(
            cv2.GaussianBlur(region, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE), dtype=np.uint8
        )
    out = np.empty((len(block.spots), size, size, 3), dtype=np.uint8)
    cl = np.asarray(centres_px, dtype=float)[plan.kept[block.spots]] / plan.level_downsample
    h = plan.window_level_px / 2.0
    lvl = slide.levels[plan.level]
    box = (-float(block.x0), -float(block.y0), float(lvl.width - block.x0), float(lvl.height - block.y0))
    for k, (cx, cy) in enumerate(cl):
        out[k] = _resample(region, cx - h - block.x0, cy - h - block.y0, scale, size, box, plan.background)
    return out


def iter_patches(
    slide: Slide, centres_px: NDArray[np.float64], slide_pixel_size_um: float, spec: PairSpec
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.uint8]]]:
    """Yield ``(spot indices, patches)`` block by block (a simple serial driver)."""
    plan = plan_patches(slide, centres_px, slide_pixel_size_um, spec)
    for block in plan.blocks:
        yield plan.kept[block.spots], cut_block(slide, plan, block, centres_px, spec)
