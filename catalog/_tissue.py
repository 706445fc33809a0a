"""The tissue mask of a sample at ingest: segmented once, kept beside the patches as
GeoJSON, and used for ``tissue_fraction`` (every pair) and ``in_tissue`` (pseudo-spots)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hestkit.errors import HestkitError, fix
from hestkit.fixes import MIN_TISSUE_FRACTION, OVERWRITE
from hestkit.patches import PairSpec
from hestkit.sample import SampleSource
from hestkit.slide import Slide

from ._store import Layout

if TYPE_CHECKING:  # shapely and OpenCV load when a mask is made or read, not with `import catalog`
    from hestkit.tissue import TissueMask

__all__ = [
    "INGEST_TARGET_MPP",
    "MASK_IN_TISSUE_TECHNOLOGIES",
    "TISSUE_GEOJSON",
    "SampleTissue",
    "patch_boxes",
    "read_mask",
    "sample_tissue",
    "tissue_rows",
    "with_in_tissue",
]

log = logging.getLogger(__name__)

#: File name of the mask inside a sample's patch group.
TISSUE_GEOJSON = "tissue.geojson"
#: Technologies whose pairing units are pseudo-spots with no tissue call of their own
#: (the reader sets ``in_tissue = 1`` everywhere): their ``in_tissue`` comes from the mask.
MASK_IN_TISSUE_TECHNOLOGIES = ("xenium", "visium-hd")
#: Working resolution of the ingest's segmentation (um/px): coarser than ``hestkit segment``'s
#: 8 to bound the ingest's memory (a 100k x 100k px slide at 0.5 um/px: a 3,125 px image);
#: same IoU on the synthetic 100k slide (docs/benchmarks.md).
INGEST_TARGET_MPP = 16.0


@dataclass(frozen=True, eq=False)
class SampleTissue:
    """What the mask gives a sample: per-spot values (rows of ``source.spots``) and the
    manifest entry. ``fraction`` is NaN everywhere when no mask could be made."""

    fraction: np.ndarray
    in_tissue: np.ndarray | None
    manifest: dict[str, Any] | None
    mask: TissueMask | None
    warnings: list[str] = field(default_factory=list)

    def write(self, layout: Layout, group_path: str) -> None:
        """Store the mask as ``{group_path}/tissue.geojson`` (staged with the patches) and
        point the manifest entry at it."""
        if self.mask is None or self.manifest is None:
            return
        uri = f"{group_path}/{TISSUE_GEOJSON}"
        data = json.dumps(self.mask.to_geojson(), separators=(",", ":")).encode()
        layout.write_bytes(uri, data, content_type="application/geo+json")
        self.manifest["path"] = layout.relative(uri)


def patch_boxes(centres_px: np.ndarray, source: SampleSource, spec: PairSpec) -> np.ndarray:
    """Level-0 boxes ``(x0, y0, w, h)`` of the patches centred on the spots."""
    side = spec.patch_size_px * spec.pixel_size_um / float(source.pixel_size.value)
    c = np.asarray(centres_px, dtype=np.float64).reshape(-1, 2)
    return np.column_stack([c[:, 0] - side / 2, c[:, 1] - side / 2, np.full(len(c), side), np.full(len(c), side)])


def sample_tissue(slide: Slide, source: SampleSource, spec: PairSpec) -> SampleTissue:
    """Segment the sample's slide and derive each spot's patch tissue fraction and, for
    pseudo-spots, ``in_tissue``; :meth:`SampleTissue.write` stores the mask."""
    from hestkit.tissue import segment_tissue

    n = source.n_spots
    try:
        mask = segment_tissue(slide, target_mpp=INGEST_TARGET_MPP, pixel_size_um=float(source.pixel_size.value))
    except HestkitError as exc:
        msg = f"{source.sample_id}: no tissue mask ({exc}); tissue_fraction is NaN and in_tissue left as read"
        log.warning(msg)
        return SampleTissue(np.full(n, np.nan), None, None, None, [msg])
    centres = source.centres_px()
    fraction = mask.fractions(patch_boxes(centres, source, spec)) if n else np.zeros(0)
    warnings: list[str] = []
    in_tissue = None
    source_of_call = "reader"
    if source.technology in MASK_IN_TISSUE_TECHNOLOGIES and n:
        in_tissue = mask.contains(centres[:, 0], centres[:, 1]).astype(np.int8)
        source_of_call = "tissue-mask"
        off = int(n - in_tissue.sum())
        if off:
            warnings.append(
                f"{source.sample_id}: {off} of {n} pseudo-spots have their centre off the tissue mask: kept, "
                f"with in_tissue = 0 (filter on in_tissue or with {MIN_TISSUE_FRACTION})"
            )
    entry = {
        "path": None,
        "method": mask.method,
        "n_pieces": mask.n_pieces,
        "area_um2": mask.area_um2,
        "share_of_slide": mask.fraction(0, 0, mask.width, mask.height),
        "in_tissue_source": source_of_call,
        "params": dict(mask.params),
    }
    return SampleTissue(fraction, in_tissue, entry, mask, warnings)


def tissue_rows(obs: pd.DataFrame, min_fraction: float, where: str) -> np.ndarray:
    """Positions of the obs rows whose patch is at least ``min_fraction`` on tissue.

    Raises :class:`~catalog.errors.QueryError` when a selected sample has no
    ``tissue_fraction`` (ingested before tissue masks, or its mask failed): filtering
    would silently drop all its pairs.
    """
    from .errors import QueryError

    if not 0.0 <= min_fraction <= 1.0:
        raise QueryError(f"min_tissue_fraction must be in [0, 1], got {min_fraction}")
    if not len(obs):
        return np.zeros(0, dtype=np.int64)
    frac = obs["tissue_fraction"].to_numpy(dtype=np.float64)
    nan = np.isnan(frac)
    if nan.any():
        lacking = sorted({str(s) for s in obs["sample_id"][nan]})
        raise QueryError(
            f"{where}: sample(s) {', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''} have no tissue_fraction "
            "(ingested before tissue masks, or without a mask: see their manifest warnings)",
            fix=fix(f"re-ingest them with {OVERWRITE}, or leave them out of a {MIN_TISSUE_FRACTION} query", OVERWRITE, MIN_TISSUE_FRACTION),
        )
    return np.flatnonzero(frac >= min_fraction)


def with_in_tissue(source: SampleSource, in_tissue: np.ndarray | None) -> SampleSource:
    """``source`` with its spots' ``in_tissue`` replaced (unchanged when None)."""
    if in_tissue is None:
        return source
    spots: pd.DataFrame = source.spots.copy()
    spots["in_tissue"] = in_tissue
    return SampleSource(**{**source.__dict__, "spots": spots})


def read_mask(layout: Layout, manifest: dict[str, Any]) -> TissueMask | None:
    """A committed sample's mask, or None when it was ingested without one."""
    entry = manifest.get("tissue")
    if not isinstance(entry, dict) or not entry.get("path"):
        return None
    from hestkit.tissue import TissueMask

    data = layout.read_json(layout.join(entry["path"]))
    return TissueMask.from_geojson(data, width=manifest.get("image_width"), height=manifest.get("image_height"))
