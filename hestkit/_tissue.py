"""Private helpers of :mod:`hestkit.tissue`: the low-resolution read, the threshold
segmenter, mask <-> polygon conversion and the integral image."""

from __future__ import annotations

import math

import cv2
import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon

from .slide import Slide

__all__ = [
    "integral_fractions",
    "low_res",
    "mask_to_polygons",
    "rasterise",
    "threshold_tissue",
]

#: Blocks of the low-resolution read: output pixels per block side.
_BLOCK_OUT = 1024
#: Level pixels per block side at most (bounds the memory of one block read).
_BLOCK_MAX_IN = 4096


def low_res(slide: Slide, downsample: float) -> NDArray[np.uint8]:
    """The slide at ``downsample`` (>= 1) as ``(ceil(H / d), ceil(W / d), 3)`` uint8.

    Read block by block from the coarsest pyramid level not coarser than ``downsample``
    and area-averaged (``cv2.INTER_AREA``) to the target grid; never the slide whole.
    Output pixel ``(y, x)`` covers level-0 ``[x d, (x + 1) d) x [y d, (y + 1) d)``.
    """
    d = float(downsample)
    out_h, out_w = math.ceil(slide.height / d), math.ceil(slide.width / d)
    out = np.full((out_h, out_w, 3), 255, dtype=np.uint8)
    level = slide.best_level(d)
    r = d / slide.levels[level].downsample  # level pixels per output pixel
    step = max(1, min(_BLOCK_OUT, int(_BLOCK_MAX_IN / r)))
    for oy in range(0, out_h, step):
        oh = min(step, out_h - oy)
        for ox in range(0, out_w, step):
            ow = min(step, out_w - ox)
            x0, y0 = round(ox * r), round(oy * r)
            x1, y1 = round((ox + ow) * r), round((oy + oh) * r)
            block = slide.read_region(level, x0, y0, max(1, x1 - x0), max(1, y1 - y0))
            if block.shape[:2] != (oh, ow):
                block = np.asarray(cv2.resize(block, (ow, oh), interpolation=cv2.INTER_AREA), dtype=np.uint8)
            out[oy : oy + oh, ox : ox + ow] = block
    return out


def _disk(radius: int) -> NDArray[np.uint8]:
    k = 2 * radius + 1
    return np.asarray(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)), dtype=np.uint8)


def _otsu(values: NDArray[np.uint8]) -> float:
    if values.size == 0:
        return 255.0
    t, _ = cv2.threshold(values.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t)


def threshold_tissue(
    rgb: NDArray[np.uint8],
    *,
    px_um: float,
    saturation: float | None,
    saturation_bounds: tuple[float, float],
    dark_value: float,
    tissue_hue_deg: tuple[float, float],
    pen_margin_um: float,
    close_um: float,
) -> tuple[NDArray[np.bool_], dict[str, float]]:
    """Tissue, pen ink and shadows of a low-resolution RGB image (``px_um`` um per pixel).

    - saturation ``S = (max - min) / max`` above a threshold (Otsu over the non-dark,
      non-white pixels, clamped to ``saturation_bounds``; or ``saturation`` if given);
    - hue within the H&E window ``tissue_hue_deg`` (pink / purple / brown, wrapping
      through red): green and blue ink fall outside it;
    - value ``V = max`` above ``dark_value``: black ink, slide-edge shadows and slide
      labels are dark;
    - ink (saturated but off-hue, or dark) is grown by ``pen_margin_um`` and removed,
      so its anti-aliased rim does not become tissue;
    - a closing of ``close_um`` joins the speckled texture into one region.

    Returns the mask (before area filtering and hole filling) and the thresholds used.
    """
    # uint8 throughout (a 100k x 100k px slide at 8 um/px is a 6,250 x 6,250 px image)
    hsv = np.asarray(cv2.cvtColor(cv2.medianBlur(rgb, 3), cv2.COLOR_RGB2HSV_FULL), dtype=np.uint8)
    hue = hsv[..., 0]  # 0..255 for 0..360 deg
    sat = hsv[..., 1]
    val = hsv[..., 2]
    dark = val < dark_value
    if saturation is None:
        candidates = sat[~dark & (val < 250)]
        s_thr = _otsu(candidates) / 255.0
        del candidates
        s_thr = float(np.clip(s_thr, *saturation_bounds))
    else:
        s_thr = float(saturation)
    saturated = sat > s_thr * 255.0
    lo, hi = (min(255, math.ceil(d * 256.0 / 360.0)) for d in tissue_hue_deg)
    on_hue = (hue >= lo) | (hue <= hi) if lo > hi else (hue >= lo) & (hue <= hi)
    del hsv, hue, sat, val  # the working image's channels are no longer needed
    ink = (saturated & ~on_hue) | dark
    tissue = saturated & on_hue & ~dark
    del saturated, on_hue, dark
    margin = max(0, round(pen_margin_um / px_um))
    if margin and ink.any():
        ink = cv2.dilate(ink.astype(np.uint8), _disk(margin)) > 0
        tissue &= ~ink
    m = tissue.astype(np.uint8)
    r = max(0, round(close_um / px_um))
    if r:
        m = np.asarray(cv2.morphologyEx(m, cv2.MORPH_CLOSE, _disk(r)), dtype=np.uint8)
        m &= (~ink).astype(np.uint8)  # closing must not bridge back over ink
    return m > 0, {"saturation": s_thr, "ink_share": float(ink.mean()), "dark_value": float(dark_value)}


def clean_mask(mask: NDArray[np.bool_], *, min_area_px: float, min_hole_px: float) -> NDArray[np.bool_]:
    """Drop connected tissue regions under ``min_area_px``; fill holes under ``min_hole_px``."""
    m = mask.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros(n, dtype=bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area_px
    m = keep[labels].astype(np.uint8)
    # holes: background components not touching the border
    inv = (1 - m).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = stats[:, cv2.CC_STAT_AREA] < min_hole_px
    fill[border] = False
    fill[0] = False  # label 0 of the inverse is the tissue itself
    m[fill[labels] & (inv > 0)] = 1
    out: NDArray[np.bool_] = m > 0
    return out


def mask_to_polygons(mask: NDArray[np.bool_], downsample: float, *, simplify_px: float = 0.75) -> MultiPolygon:
    """Polygons (with holes) of a binary mask, in level-0 pixels.

    Low-res pixel ``(y, x)`` covers level-0 ``[x d, (x + 1) d)``; contours run through
    the centres of boundary pixels, so each ring is grown by half a pixel (mitred) to
    follow the pixel edges, then simplified by ``simplify_px`` low-res pixels.
    """
    m = np.ascontiguousarray(mask.astype(np.uint8))
    if not m.any():
        return MultiPolygon()
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hier = hierarchy[0]
    polys: list[Polygon] = []
    for i, c in enumerate(contours):
        if hier[i][3] != -1:
            continue  # a hole; handled with its parent
        shell = c[:, 0, :].astype(np.float64)
        holes = []
        j = hier[i][2]
        while j != -1:
            h = contours[j][:, 0, :].astype(np.float64)
            if len(h) >= 3:
                holes.append(h)
            j = hier[j][0]
        if len(shell) < 3:
            poly = shapely.Point(shell[0]).buffer(0.5, cap_style="square")
        else:
            poly = Polygon(shell, holes)
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
        polys.append(poly)
    geom = shapely.unary_union(polys)
    # contours hold pixel centres: grow by half a pixel to the pixel edges (holes shrink)
    geom = geom.buffer(0.5, join_style="mitre", mitre_limit=2.0)
    if simplify_px > 0:
        geom = geom.simplify(simplify_px, preserve_topology=True)
    geom = shapely.affinity.affine_transform(geom, [downsample, 0.0, 0.0, downsample, 0.5 * downsample, 0.5 * downsample])
    return _as_multi(geom)


def _as_multi(geom: shapely.Geometry) -> MultiPolygon:
    if geom.is_empty:
        return MultiPolygon()
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    if isinstance(geom, MultiPolygon):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    flat: list[Polygon] = []
    for g in parts:
        flat.extend(g.geoms if isinstance(g, MultiPolygon) else [g])
    return MultiPolygon(flat)


def rasterise(geom: MultiPolygon, height: int, width: int, downsample: float) -> NDArray[np.uint8]:
    """The polygons filled on a grid of ``(ceil(H / d), ceil(W / d))`` pixels (1 = tissue)."""
    h, w = math.ceil(height / downsample), math.ceil(width / downsample)
    out = np.zeros((h, w), dtype=np.uint8)
    shift = 4  # sub-pixel vertices: 1/16 px
    scale = (1 << shift) / downsample
    # cv2 fills every pixel whose centre lies on the closed polygon, boundary included, so
    # rings are first moved half a raster pixel inwards (which leaves the centre-inside
    # pixels), and vertices are shifted so that pixel (y, x) is centred on level-0
    # ((x + 0.5) d, (y + 0.5) d).
    shrunk = _as_multi(geom.buffer(-0.5 * downsample, join_style="mitre", mitre_limit=2.0))
    half = 0.5 * (1 << shift)
    # big ones first so that islands inside another piece's hole are drawn after it
    for poly in sorted(shrunk.geoms, key=lambda p: -p.area):
        ext = np.round(np.asarray(poly.exterior.coords) * scale - half).astype(np.int32)
        cv2.fillPoly(out, [ext], 1, lineType=cv2.LINE_8, shift=shift)
        holes = [np.round(np.asarray(r.coords) * scale - half).astype(np.int32) for r in poly.interiors]
        if holes:
            cv2.fillPoly(out, holes, 0, lineType=cv2.LINE_8, shift=shift)
    return out


def integral_fractions(
    integral: NDArray[np.float64], downsample: float, boxes: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Exact share of each level-0 box ``(x0, y0, w, h)`` covered by the rasterised mask.

    ``integral`` is the ``(h + 1, w + 1)`` summed-area table of the raster. The integral
    of a per-pixel constant function is bilinear inside each pixel, so bilinear
    interpolation of the table at fractional corners is exact. Parts of a box outside
    the raster count as not tissue.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    hh, ww = integral.shape[0] - 1, integral.shape[1] - 1

    def at(x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        u = np.clip(x / downsample, 0.0, ww)
        v = np.clip(y / downsample, 0.0, hh)
        i = np.minimum(np.floor(v).astype(np.int64), hh - 1)
        j = np.minimum(np.floor(u).astype(np.int64), ww - 1)
        fv, fu = v - i, u - j
        top = integral[i, j] * (1 - fu) + integral[i, j + 1] * fu
        bot = integral[i + 1, j] * (1 - fu) + integral[i + 1, j + 1] * fu
        out: NDArray[np.float64] = top * (1 - fv) + bot * fv
        return out

    x0, y0 = b[:, 0], b[:, 1]
    x1, y1 = x0 + b[:, 2], y0 + b[:, 3]
    covered = at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)
    area = (b[:, 2] * b[:, 3]) / (downsample * downsample)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(area > 0, covered / np.where(area > 0, area, 1.0), 0.0)
    result: NDArray[np.float64] = np.clip(frac, 0.0, 1.0)
    return result


def draw_outline(
    image: NDArray[np.uint8], geom: MultiPolygon, downsample: float, *, colour: tuple[int, int, int] = (0, 160, 0), width: int = 2
) -> NDArray[np.uint8]:
    """A copy of ``image`` (a thumbnail: level-0 px = its px x ``downsample``) with the
    polygons' outlines (holes included) drawn on it."""
    out = np.ascontiguousarray(image.copy())
    shift = 4
    rings = []
    for poly in geom.geoms:
        for ring in (poly.exterior, *poly.interiors):
            rings.append(np.round((np.asarray(ring.coords) / downsample - 0.5) * (1 << shift)).astype(np.int32))
    if rings:
        cv2.polylines(out, rings, True, colour, thickness=width, lineType=cv2.LINE_AA, shift=shift)
    return out
