"""Tissue segmentation of whole-slide images: a :class:`TissueMask` of polygons.

:func:`segment_tissue` computes the mask at low resolution (default 8 um/px) from a
pyramid level read block by block, never decoding the slide whole, and returns shapely
polygons with holes in level-0 pixels. The default method needs no weights:

1. saturation above an Otsu threshold (clamped) and hue within the H&E window (pink,
   purple, brown), so glass, slide-edge shadows (grey) and green / blue ink are out;
2. dark pixels (black ink, shadows, labels) and off-hue saturated pixels (ink) are
   grown by a margin and removed;
3. a morphological closing joins the textured tissue; regions under ``min_area_um2``
   are dropped (dust, debris) and holes under ``min_hole_um2`` filled.

Any other segmenter plugs in through the :class:`TissueSegmenter` protocol (e.g. a deep
model loaded from a local weights file such as HEST's or TRIDENT's published tissue
segmenters, DeepLabV3 heads run at ~1-2 um/px; hestkit never downloads weights).

:class:`TissueMask` answers the questions downstream code asks: :meth:`~TissueMask.fraction`
/ :meth:`~TissueMask.fractions` (share of level-0 boxes on tissue, exact on the mask
raster, via a summed-area table) and :meth:`~TissueMask.contains` (points, vectorised),
and round-trips through QuPath-compatible GeoJSON.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, mapping, shape

from . import _tissue
from .errors import HestkitError
from .fixes import PIXEL_SIZE_UM
from .slide import Slide, open_slide

__all__ = [
    "GEOJSON_FORMAT",
    "ThresholdConfig",
    "TissueError",
    "TissueMask",
    "TissueSegmenter",
    "segment_tissue",
]

log = logging.getLogger(__name__)

#: Value of ``hestkit.format`` in the GeoJSON written by :meth:`TissueMask.to_geojson`.
GEOJSON_FORMAT = "hestkit.tissue/1"
#: Pixel size assumed (and said, with a warning) when a slide embeds none and none is given.
_FALLBACK_UM = 0.5
#: Longest side of the mask raster behind fraction().
_RASTER_MAX = 2048
#: Longest side of the low-resolution image the segmenter works on.
_SEG_MAX = 16384


class TissueError(HestkitError):
    """A tissue mask could not be computed, read or used; the message names the fix."""


@runtime_checkable
class TissueSegmenter(Protocol):
    """A pluggable segmenter: boolean tissue mask of a low-resolution RGB image."""

    name: str

    def __call__(self, rgb: NDArray[np.uint8], px_um: float) -> NDArray[np.bool_]: ...


@dataclass(frozen=True)
class ThresholdConfig:
    """Parameters of the default (weight-free) method; see the module docstring.

    Attributes:
        saturation: fixed saturation threshold in [0, 1]; None = Otsu, clamped to
            ``saturation_bounds``.
        saturation_bounds: clamp of the Otsu threshold.
        dark_value: pixels with ``max(R, G, B)`` below this are ink / shadow.
        tissue_hue_deg: hue window of stained tissue (wraps through 0 when lo > hi).
        pen_margin_um: ink is grown by this much before it is cut from the tissue.
        close_um: radius of the closing that joins the textured tissue.
    """

    saturation: float | None = None
    saturation_bounds: tuple[float, float] = (0.06, 0.2)
    dark_value: float = 90.0
    tissue_hue_deg: tuple[float, float] = (250.0, 50.0)
    pen_margin_um: float = 24.0
    close_um: float = 16.0


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Tissue of one slide: shapely polygons with holes, in level-0 pixels.

    Attributes:
        geometry: a MultiPolygon (possibly empty) in level-0 pixel coordinates
            (x right, y down; pixel ``(i, j)`` covers ``[j, j + 1) x [i, i + 1)``).
        width, height: level-0 size of the slide.
        pixel_size_um: level-0 micrometres per pixel, if known.
        method: how it was made (``threshold``, a segmenter's name, ``geojson``).
        params: the parameters and thresholds used (recorded in the GeoJSON).
    """

    geometry: MultiPolygon
    width: int
    height: int
    pixel_size_um: float | None = None
    method: str = "threshold"
    params: Mapping[str, Any] = field(default_factory=dict)
    _raster_ds: float = field(init=False, repr=False)
    _integral: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, MultiPolygon):
            object.__setattr__(self, "geometry", _tissue._as_multi(self.geometry))
        ds = max(1.0, max(self.width, self.height) / _RASTER_MAX)
        raster = _tissue.rasterise(self.geometry, self.height, self.width, ds)
        integral = np.zeros((raster.shape[0] + 1, raster.shape[1] + 1), dtype=np.float64)
        integral[1:, 1:] = raster.cumsum(axis=0, dtype=np.float64).cumsum(axis=1)
        object.__setattr__(self, "_raster_ds", ds)
        object.__setattr__(self, "_integral", integral)
        shapely.prepare(self.geometry)

    # -- queries -----------------------------------------------------------------
    @property
    def area_px(self) -> float:
        """Tissue area in level-0 square pixels."""
        return float(self.geometry.area)

    @property
    def area_um2(self) -> float | None:
        """Tissue area in square micrometres (None without a pixel size)."""
        return None if self.pixel_size_um is None else self.area_px * self.pixel_size_um**2

    @property
    def n_pieces(self) -> int:
        return len(self.geometry.geoms)

    def fractions(self, boxes: NDArray[np.floating[Any]] | NDArray[np.integer[Any]]) -> NDArray[np.float64]:
        """Share on tissue of each level-0 box ``(x0, y0, w, h)`` (``(N, 4)``), in [0, 1].

        Computed on the mask rasterised at ``max(W, H) / 2048`` px per cell (exact for
        that raster, fractional cells included), so millions of boxes take milliseconds.
        Parts of a box beyond the slide count as not tissue.
        """
        b = np.asarray(boxes, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != 4:
            raise TissueError(f"boxes must be an (N, 4) array of x0, y0, w, h; got shape {b.shape}")
        return _tissue.integral_fractions(self._integral, self._raster_ds, b)

    def fraction(self, x0: float, y0: float, w: float, h: float) -> float:
        """Share of the level-0 box ``(x0, y0, w, h)`` on tissue."""
        return float(self.fractions(np.array([[x0, y0, w, h]], dtype=np.float64))[0])

    def contains(self, x: NDArray[np.floating[Any]] | float, y: NDArray[np.floating[Any]] | float) -> NDArray[np.bool_]:
        """Whether level-0 points ``(x, y)`` lie on tissue (vectorised, exact on the polygons)."""
        out: NDArray[np.bool_] = np.asarray(shapely.contains_xy(self.geometry, np.asarray(x, np.float64), np.asarray(y, np.float64)))
        return out

    def draw(self, image: NDArray[np.uint8], downsample: float, *, colour: tuple[int, int, int] = (0, 160, 0)) -> NDArray[np.uint8]:
        """A copy of a thumbnail (``downsample`` level-0 px per pixel) with the outline drawn."""
        return _tissue.draw_outline(image, self.geometry, downsample, colour=colour)

    def raster(self, downsample: float) -> NDArray[np.bool_]:
        """The mask filled on a ``(ceil(H / d), ceil(W / d))`` grid (e.g. for display)."""
        return _tissue.rasterise(self.geometry, self.height, self.width, downsample) > 0

    # -- GeoJSON -----------------------------------------------------------------
    def to_geojson(self) -> dict[str, Any]:
        """A GeoJSON FeatureCollection QuPath imports (one ``Tissue`` annotation per piece).

        Coordinates are level-0 pixels. The slide size, pixel size, method and parameters
        ride in the foreign member ``hestkit`` (ignored by QuPath and GIS tools).
        """
        features = []
        for i, poly in enumerate(self.geometry.geoms):
            features.append(
                {
                    "type": "Feature",
                    "id": f"tissue-{i}",
                    "geometry": mapping(poly),
                    "properties": {
                        "objectType": "annotation",
                        "name": f"Tissue {i}",
                        "classification": {"name": "Tissue", "color": [0, 160, 0]},
                        "isLocked": False,
                    },
                }
            )
        return {
            "type": "FeatureCollection",
            "features": features,
            "hestkit": {
                "format": GEOJSON_FORMAT,
                "width": self.width,
                "height": self.height,
                "pixel_size_um": self.pixel_size_um,
                "method": self.method,
                "params": dict(self.params),
                "area_px": self.area_px,
            },
        }

    def write_geojson(self, path: str | Path) -> Path:
        """Write :meth:`to_geojson` to ``path`` (via a temporary file, then renamed)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_geojson(), separators=(",", ":")))
        tmp.replace(p)
        return p

    @classmethod
    def from_geojson(
        cls,
        obj: Mapping[str, Any] | str | Path,
        *,
        width: int | None = None,
        height: int | None = None,
        pixel_size_um: float | None = None,
    ) -> TissueMask:
        """Read a mask from a GeoJSON dict or file (this module's or QuPath's export).

        Accepts a FeatureCollection, a Feature or a bare (Multi)Polygon. Features whose
        classification is not ``Tissue`` are kept too unless some are ``Tissue`` (then
        only those). The slide size comes from the ``hestkit`` member, the arguments, or
        else the polygons' bounds.
        """
        source = "GeoJSON"
        if isinstance(obj, str | Path):
            source = str(obj)
            try:
                data: Any = json.loads(Path(obj).read_text())
            except FileNotFoundError as exc:
                raise TissueError(f"{obj}: tissue GeoJSON not found. Fix: give the path written by `hestkit segment`") from exc
            except (OSError, ValueError) as exc:
                raise TissueError(f"{obj}: not readable as JSON ({exc}). Fix: re-export the mask as GeoJSON") from exc
        else:
            data = obj
        if not isinstance(data, Mapping) or "type" not in data:
            raise TissueError(f"{source}: expected a GeoJSON object with a 'type', found {type(data).__name__}. Fix: export a FeatureCollection")
        meta: Mapping[str, Any] = data.get("hestkit") or {}
        kind = data["type"]
        if kind == "FeatureCollection":
            feats = list(data.get("features") or [])
        elif kind == "Feature":
            feats = [data]
        else:
            feats = [{"type": "Feature", "geometry": data, "properties": {}}]

        def is_tissue(f: Mapping[str, Any]) -> bool:
            c = (f.get("properties") or {}).get("classification") or {}
            return isinstance(c, Mapping) and str(c.get("name", "")).lower() == "tissue"

        if any(is_tissue(f) for f in feats):
            feats = [f for f in feats if is_tissue(f)]
        polys = []
        for i, f in enumerate(feats):
            geom = f.get("geometry")
            if geom is None:
                continue
            try:
                g = shape(geom)
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                raise TissueError(f"{source}: feature {i} has an unreadable geometry ({exc}). Fix: export polygons") from exc
            if g.geom_type not in ("Polygon", "MultiPolygon"):
                raise TissueError(f"{source}: feature {i} is a {g.geom_type}, expected a Polygon or MultiPolygon. Fix: export area annotations")
            polys.append(g if g.is_valid else shapely.make_valid(g))
        geom_u = _tissue._as_multi(shapely.unary_union(polys)) if polys else MultiPolygon()
        bounds = geom_u.bounds if not geom_u.is_empty else (0.0, 0.0, 1.0, 1.0)
        w = width if width is not None else meta.get("width") or math.ceil(bounds[2])
        h = height if height is not None else meta.get("height") or math.ceil(bounds[3])
        px = pixel_size_um if pixel_size_um is not None else meta.get("pixel_size_um")
        return cls(
            geom_u,
            int(w),
            int(h),
            None if px is None else float(px),
            str(meta.get("method", "geojson")),
            dict(meta.get("params") or {}),
        )


def segment_tissue(
    slide: Slide | str | Path,
    *,
    target_mpp: float = 8.0,
    method: str | TissueSegmenter = "threshold",
    min_area_um2: float = 20_000.0,
    min_hole_um2: float = 4_000.0,
    pixel_size_um: float | None = None,
    config: ThresholdConfig | None = None,
) -> TissueMask:
    """Segment the tissue of a slide at low resolution.

    Args:
        slide: a :class:`~hestkit.slide.Slide` or a path :func:`~hestkit.slide.open_slide`
            opens (closed again when opened here).
        target_mpp: working resolution in um/px (coarser if the slide is huge: the
            working image keeps its long side under 16,384 px; said with a warning).
        method: ``"threshold"`` (default, no weights) or a :class:`TissueSegmenter`.
        min_area_um2: tissue pieces smaller than this are dropped (dust, debris).
        min_hole_um2: holes smaller than this are filled.
        pixel_size_um: level-0 um/px, overriding the embedded one (needed when none is
            embedded; without both, 0.5 um/px is assumed with a warning).
        config: parameters of the threshold method.

    Returns:
        The :class:`TissueMask` in level-0 pixels.
    """
    if isinstance(slide, Slide):
        return _segment(slide, target_mpp, method, min_area_um2, min_hole_um2, pixel_size_um, config)
    with open_slide(slide) as s:
        return _segment(s, target_mpp, method, min_area_um2, min_hole_um2, pixel_size_um, config)


def _segment(
    slide: Slide,
    target_mpp: float,
    method: str | TissueSegmenter,
    min_area_um2: float,
    min_hole_um2: float,
    pixel_size_um: float | None,
    config: ThresholdConfig | None,
) -> TissueMask:
    if not target_mpp > 0:
        raise TissueError(f"target_mpp must be positive, got {target_mpp}. Fix: pass e.g. target_mpp=8")
    px = pixel_size_um if pixel_size_um is not None else slide.embedded_pixel_size_um
    assumed = px is None
    if px is None:
        px = _FALLBACK_UM
        warnings.warn(
            f"{slide.path}: no pixel size embedded or given; assuming {_FALLBACK_UM} um/px for the working "
            f"resolution and the area limits (pass {PIXEL_SIZE_UM})",
            stacklevel=3,
        )
    ds = max(1.0, target_mpp / px)
    if max(slide.width, slide.height) / ds > _SEG_MAX:
        new = max(slide.width, slide.height) / _SEG_MAX
        warnings.warn(
            f"{slide.path}: {target_mpp} um/px would give a {round(max(slide.width, slide.height) / ds)} px working "
            f"image; segmenting at {new * px:.2f} um/px instead",
            stacklevel=3,
        )
        ds = new
    work_um = ds * px
    rgb = _tissue.low_res(slide, ds)
    params: dict[str, Any] = {
        "target_mpp": target_mpp,
        "working_um_per_px": work_um,
        "downsample": ds,
        "min_area_um2": min_area_um2,
        "min_hole_um2": min_hole_um2,
        "pixel_size_assumed": assumed,
    }
    if isinstance(method, str):
        if method != "threshold":
            raise TissueError(
                f"unknown tissue method {method!r}; expected 'threshold' or a TissueSegmenter object "
                "(e.g. a deep model wrapped from a local weights file)"
            )
        cfg = config or ThresholdConfig()
        raw, used = _tissue.threshold_tissue(
            rgb,
            px_um=work_um,
            saturation=cfg.saturation,
            saturation_bounds=cfg.saturation_bounds,
            dark_value=cfg.dark_value,
            tissue_hue_deg=cfg.tissue_hue_deg,
            pen_margin_um=cfg.pen_margin_um,
            close_um=cfg.close_um,
        )
        params.update(used)
        name = "threshold"
    elif isinstance(method, TissueSegmenter):
        raw = np.asarray(method(rgb, work_um), dtype=bool)
        if raw.shape != rgb.shape[:2]:
            raise TissueError(f"segmenter {method.name!r} returned a mask of shape {raw.shape}, expected {rgb.shape[:2]}")
        name = method.name
    else:
        raise TissueError(f"method must be 'threshold' or a TissueSegmenter, got {type(method).__name__}")
    del rgb  # the segmenters are done with the working image: free it before the cleaning
    area_px = work_um * work_um
    mask = _tissue.clean_mask(raw, min_area_px=min_area_um2 / area_px, min_hole_px=min_hole_um2 / area_px)
    geom = _tissue.mask_to_polygons(mask, ds)
    log.debug("%s: %d tissue pieces at %.2f um/px", slide.path, len(geom.geoms), work_um)
    return TissueMask(geom, slide.width, slide.height, None if assumed else float(px), name, params)
