"""Xenium options beyond pooled squares on an H&E: cell-level observations (one pair per
cell, ``--spot-size-um cell``) and the bundle's own morphology image (``--image morphology``).

Cells: ``cells.parquet`` (``cell_id``, ``x_centroid``, ``y_centroid`` in the Xenium
micrometre frame, optional ``cell_area``) and ``cell_feature_matrix.h5`` (10x HDF5: cells x
features; its Gene Expression features without control prefixes are the genes). One
observation per cell of the matrix, centred on its centroid, barcode = ``cell_id``; the
pairing unit's size is the median cell diameter (``2 sqrt(median cell_area / pi)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from ..errors import Fix, ReaderError, fix
from ..fixes import CELLS, IMAGE, IMAGE_MORPHOLOGY
from ..morphology import find_morphology_image, is_morphology_image

__all__ = ["CELL_SPOT_SIZE", "CellObservations", "morphology_hint", "morphology_request", "read_cells"]

#: The ``--spot-size-um`` value that asks for one pair per cell.
CELL_SPOT_SIZE = "cell"
#: Pairing-unit size when cells.parquet has no ``cell_area``.
DEFAULT_CELL_DIAMETER_UM = 10.0


@dataclass(frozen=True, eq=False)
class CellObservations:
    counts: sp.csr_matrix
    genes: list[str]
    gene_ids: list[str]
    barcodes: list[str]
    centres_um: NDArray[np.float64]
    diameter_um: float
    stats: dict[str, Any]


def read_cells(folder: Path, control_prefixes: tuple[str, ...]) -> CellObservations:
    """Cell-level observations of a Xenium bundle (module docstring); raises :class:`ReaderError`."""
    from ._tenx import read_10x_h5

    cpath, hpath = folder / "cells.parquet", folder / "cell_feature_matrix.h5"
    for p in (cpath, hpath):
        if not p.is_file():
            raise ReaderError(p, "is missing; cell-level pairs (cells=True) need it", fix(f"copy it from the Xenium bundle, or drop {CELLS}", CELLS))
    try:
        cells = pd.read_parquet(cpath)
    except Exception as exc:
        raise ReaderError(cpath, f"is not a readable parquet file ({exc})", "re-copy it from the Xenium bundle") from exc
    lacking = [c for c in ("cell_id", "x_centroid", "y_centroid") if c not in cells.columns]
    if lacking:
        raise ReaderError(cpath, f"lacks the column(s) {', '.join(lacking)}", "use the Xenium cells.parquet")
    m = read_10x_h5(hpath)  # Gene Expression features only
    keep = [k for k, n in enumerate(m.names) if not n.startswith(control_prefixes)]
    ids = cells["cell_id"].map(lambda v: v.decode() if isinstance(v, bytes) else str(v))
    pos = pd.Index(ids).get_indexer(pd.Index(m.barcodes))
    if (pos < 0).any():
        bad = [b for b, q in zip(m.barcodes, pos, strict=True) if q < 0][:5]
        raise ReaderError(
            hpath,
            f"{int((pos < 0).sum())} of {len(m.barcodes)} cells of the matrix are not in cells.parquet ({', '.join(bad)})",
            "use the matrix and cells.parquet of one Xenium run",
        )
    xy = cells[["x_centroid", "y_centroid"]].to_numpy(dtype=float)[pos]
    diameter = DEFAULT_CELL_DIAMETER_UM
    if "cell_area" in cells.columns:
        area = cells["cell_area"].to_numpy(dtype=float)[pos]
        area = area[np.isfinite(area) & (area > 0)]
        if len(area):
            diameter = 2.0 * math.sqrt(float(np.median(area)) / math.pi)
    counts = sp.csr_matrix(m.counts[:, keep])
    stats = {
        "n_cells": len(m.barcodes),
        "n_features_dropped": len(m.names) - len(keep),
        "cell_diameter_um_median": diameter,
    }
    return CellObservations(
        counts, [m.names[k] for k in keep], [m.ids[k] for k in keep], list(m.barcodes), xy, diameter, stats
    )


def morphology_request(folder: Path, image: Path | None) -> Path | None:
    """The morphology image to pair with, when ``--image`` asks for one: the word
    ``morphology`` (the bundle's own image) or a path named ``morphology*.ome.tif``."""
    if image is None:
        return None
    if str(image) == "morphology":
        found = find_morphology_image(folder)
        if found is None:
            raise ReaderError(
                folder,
                f"{IMAGE_MORPHOLOGY}, but the bundle has no morphology_focus/morphology_focus_0000.ome.tif, "
                "morphology_focus.ome.tif or morphology_mip.ome.tif",
                fix(f"copy the morphology image from the Xenium bundle (for {IMAGE_MORPHOLOGY}), or give the H&E ({IMAGE})", IMAGE, IMAGE_MORPHOLOGY),
            )
        return found
    return image if is_morphology_image(image) else None


def morphology_hint(folder: Path) -> Fix | None:
    """The fix that offers the bundle's morphology image when no H&E is there."""
    found = find_morphology_image(folder)
    if found is None:
        return None
    return fix(
        f"; without an H&E, the spots can be paired with the bundle's own morphology image ({found.name}: DAPI and "
        f"other stains, rendered to RGB; pixel size from experiment.xenium, no alignment needed): pass {IMAGE_MORPHOLOGY}",
        IMAGE_MORPHOLOGY,
    )
