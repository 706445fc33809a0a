"""What a reader hands to the rest of hestkit: one sample, in its own terms."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import DataError, OptionError, fix
from .fixes import SAMPLE_ID
from .geometry import PixelSizeDecision

__all__ = ["SPOT_COLUMNS", "TECHNOLOGIES", "ReadOptions", "SampleRef", "SampleSource"]

#: Technology names used across the catalog.
TECHNOLOGIES = ("visium", "visium-hd", "xenium", "st")

#: Columns of :attr:`SampleSource.spots`, in order. ``x_px``/``y_px`` are the spot
#: CENTRE in level-0 pixels of the sample's WSI (continuous coordinates: pixel ``i``
#: spans ``[i, i + 1)``); ``x_um``/``y_um`` the centre in the technology's own frame.
SPOT_COLUMNS = ("barcode", "in_tissue", "array_row", "array_col", "x_px", "y_px", "x_um", "y_um")


@dataclass(frozen=True)
class ReadOptions:
    """User choices that apply to every sample found under one input path."""

    image: Path | None = None
    sample_id: str | None = None
    organ: str | None = None
    species: str | None = None
    patient: str | None = None
    pixel_size_um: float | None = None
    ids: tuple[str, ...] | None = None
    #: Registration file: Xenium ``*imagealignment.csv`` (3x3) or Xenium Explorer keypoints CSV.
    alignment: Path | None = None
    #: Side (square pseudo-spots) or diameter of the pairing unit in micrometres, for
    #: technologies that pool (Xenium, Visium HD); None = the technology's default.
    spot_size_um: float | None = None
    #: Keep fractional (non-negative, finite) counts, e.g. normalised inputs; recorded in
    #: the manifest. Without it, non-integer counts are refused.
    allow_non_integer: bool = False

    #: Xenium: one pair per cell (centred on it, counts from the cell-feature matrix)
    #: instead of pooled squares; CLI ``--spot-size-um cell``.
    cells: bool = False
    #: Accept patches upsampled more than 4x from the image (recorded per sample); see
    #: :mod:`hestkit.resolution`.
    allow_upsampling: bool = False
    #: Spots whose centre is on the image but whose patch crosses its edge: ``"fill"``
    #: (kept, off-image part filled with the background colour) or ``"drop"``.
    edge: str = "fill"

    def __post_init__(self) -> None:
        if self.sample_id is not None and not str(self.sample_id).strip():
            raise OptionError(
                f"the sample id ({SAMPLE_ID}) is empty",
                fix=fix(f"give a sample id ({SAMPLE_ID}; 1-128 letters, digits, '.', '_' or '-'), or leave it out to use the folder name", SAMPLE_ID),
            )


@dataclass(frozen=True)
class SampleRef:
    """A sample found by a reader's ``scan``: cheap to make and to pickle; ``load`` reads it."""

    reader: str
    sample_id: str
    path: Path
    options: ReadOptions
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class SampleSource:
    """One sample read from vendor files: expression, spots, image and geometry.

    ``counts`` has one row per row of ``spots`` and one column per gene (raw counts).
    """

    sample_id: str
    technology: str
    counts: sp.csr_matrix
    genes: list[str]
    gene_ids: list[str]
    spots: pd.DataFrame
    image_path: Path
    pixel_size: PixelSizeDecision
    spot_diameter_um: float
    spot_shape: Literal["circle", "square"]
    metadata: dict[str, Any]
    source_paths: list[str]
    warnings: list[str] = field(default_factory=list)
    #: The file the counts (and barcodes, genes) come from, and the one the spot positions
    #: come from, for error messages; default: the first of ``source_paths``.
    counts_path: str | None = None
    spots_path: str | None = None

    def __post_init__(self) -> None:
        if self.counts.shape != (len(self.spots), len(self.genes)):
            raise DataError(
                f"{self.sample_id}: counts shape {self.counts.shape} does not match "
                f"{len(self.spots)} spots x {len(self.genes)} genes"
            )

    @property
    def counts_file(self) -> str | None:
        """The counts file (``counts_path``, else the first source path)."""
        return self.counts_path or (self.source_paths[0] if self.source_paths else None)

    @property
    def spots_file(self) -> str | None:
        """The spot-positions file (``spots_path``, else the counts file)."""
        return self.spots_path or self.counts_file

    @property
    def n_spots(self) -> int:
        return len(self.spots)

    def centres_px(self) -> np.ndarray:
        """(N, 2) spot centres (x, y) in level-0 pixels."""
        return self.spots[["x_px", "y_px"]].to_numpy(dtype=float)
