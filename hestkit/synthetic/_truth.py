"""Ground truth of a generated sample: what the files on disk must say."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from ._scene import Scene


@dataclass(frozen=True, eq=False)
class SyntheticSample:
    """The truth behind one synthetic sample.

    Arrays are indexed by spot, over ALL spots of the grid (in and off tissue); the
    expression files hold only the in-tissue spots, as Space Ranger's filtered matrix
    and HEST-1k do.

    Attributes:
        path: the sample folder (Visium ``outs``-like folder) or the HEST-1k root.
        image_path: the full-resolution pyramidal TIFF.
        sample_id: the sample's id.
        layout: ``"spaceranger1"``, ``"spaceranger2"`` or ``"hest"``.
        barcodes: barcode of every spot.
        in_tissue: ``(N,)`` bool.
        array_row, array_col: ``(N,)`` int Visium array coordinates.
        centres_px: ``(N, 2)`` float spot CENTRES ``(x, y)`` in level-0 pixels (integral
            values: they equal the rounded ``pxl_col/pxl_row_in_fullres``).
        centres_um: ``(N, 2)`` exact centres ``(x, y)`` in the array frame, micrometres.
        counts: ``(N, n_genes)`` int32 CSR raw counts.
        genes: gene symbols; ``gene_ids`` their Ensembl-style ids.
        pixel_size_um: true level-0 pixel size (whether or not it is embedded).
        pixel_size_embedded: whether the TIFF carries it as resolution tags.
        spot_diameter_um: disk diameter (55 for Visium).
        image_shape: level-0 ``(height, width)``.
        species, organ: as given to the generator (organ may be empty).
        colours: ``(N, 3)`` uint8 flat disk colour of each spot (see :meth:`colour`).
        scene: the image model; :meth:`render` draws any window of it.
    """

    path: Path
    image_path: Path
    sample_id: str
    layout: str
    barcodes: list[str]
    in_tissue: NDArray[np.bool_]
    array_row: NDArray[np.int64]
    array_col: NDArray[np.int64]
    centres_px: NDArray[np.float64]
    centres_um: NDArray[np.float64]
    counts: sp.csr_matrix
    genes: list[str]
    gene_ids: list[str]
    pixel_size_um: float
    pixel_size_embedded: bool
    spot_diameter_um: float
    image_shape: tuple[int, int]
    species: str
    organ: str
    colours: NDArray[np.uint8] = field(repr=False)
    scene: Scene = field(repr=False)

    @property
    def n_spots(self) -> int:
        """Number of grid spots (in and off tissue)."""
        return len(self.barcodes)

    @property
    def spot_diameter_px(self) -> float:
        """Spot diameter in level-0 pixels."""
        return self.spot_diameter_um / self.pixel_size_um

    def colour(self, i: int | np.integer) -> NDArray[np.uint8]:
        """Exact flat colour ``(3,)`` uint8 of spot ``i``'s disk.

        Only in-tissue spots are painted; for an off-tissue spot this is the colour
        its disk would have (the image shows glass or tissue background there).
        """
        out: NDArray[np.uint8] = self.colours[i].copy()
        return out

    def render(self, downsample: float, y0: int, x0: int, h: int, w: int) -> NDArray[np.uint8]:
        """Noise-free-of-JPEG rendering of a window of the level with ``downsample``."""
        return self.scene.render(downsample, y0, x0, h, w)

    def in_tissue_index(self) -> NDArray[np.int64]:
        """Indices of the in-tissue spots, in file order."""
        out: NDArray[np.int64] = np.flatnonzero(self.in_tissue).astype(np.int64)
        return out
