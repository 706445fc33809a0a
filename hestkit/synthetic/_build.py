"""Assemble the pieces of one synthetic Visium-like sample (no file I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from ..errors import OptionError
from ._expression import gene_table, plaid_parameters, program_activity, simulate_counts, spot_colours, stripe_periods_um
from ._grid import (
    VISIUM_SPOT_DIAMETER_UM,
    VisiumGrid,
    random_barcodes,
    tissue_blob,
    visium_grid,
)
from ._histology import HISTOLOGY_MORPHOLOGIES, make_histology
from ._scene import Scene
from ._truth import SyntheticSample


@dataclass(frozen=True, eq=False)
class BuiltSample:
    grid: VisiumGrid
    in_tissue: NDArray[np.bool_]
    barcodes: list[str]
    counts: sp.csr_matrix
    genes: list[str]
    gene_ids: list[str]
    colours: NDArray[np.uint8]
    scene: Scene
    pixel_size_um: float
    species: str

    def truth(
        self,
        *,
        path: Path,
        image_path: Path,
        sample_id: str,
        layout: str,
        pixel_size_embedded: bool,
        organ: str,
    ) -> SyntheticSample:
        return SyntheticSample(
            path=path,
            image_path=image_path,
            sample_id=sample_id,
            layout=layout,
            barcodes=list(self.barcodes),
            in_tissue=self.in_tissue.copy(),
            array_row=self.grid.array_row.copy(),
            array_col=self.grid.array_col.copy(),
            centres_px=self.grid.centres_px.copy(),
            centres_um=self.grid.centres_um.copy(),
            counts=self.counts.copy(),
            genes=list(self.genes),
            gene_ids=list(self.gene_ids),
            pixel_size_um=self.pixel_size_um,
            pixel_size_embedded=pixel_size_embedded,
            spot_diameter_um=VISIUM_SPOT_DIAMETER_UM,
            image_shape=(self.grid.height, self.grid.width),
            species=self.species,
            organ=organ,
            colours=self.colours.copy(),
            scene=self.scene,
        )


def build_visium_sample(
    *,
    n_rows: int,
    n_cols: int,
    n_genes: int,
    pixel_size_um: float,
    origin_px: tuple[float, float],
    in_tissue_fraction: float,
    species: str,
    seed: int,
    morphology: str = "colour",
) -> BuiltSample:
    """Grid, tissue, barcodes, counts and scene of one sample, all from ``seed``."""
    rng = np.random.default_rng(seed)
    grid = visium_grid(n_rows, n_cols, pixel_size_um, origin_px)
    blob, in_tissue = tissue_blob(grid.centres_px, in_tissue_fraction, rng)
    barcodes = random_barcodes(grid.n_spots, rng)
    histology = None
    if morphology in HISTOLOGY_MORPHOLOGIES:
        # whole-tissue morphology; fields in slide micrometres (level-0 px x pixel size)
        histology, _, counts = make_histology(
            morphology, grid.centres_px * pixel_size_um, in_tissue, n_genes, np.random.default_rng([seed, 11]), seed
        )
    else:
        activity = program_activity(grid.centres_um, rng)
        counts = simulate_counts(activity, in_tissue, n_genes, rng)
    gene_ids, genes = gene_table(n_genes, species)
    colours = spot_colours(counts)
    plaid_px = None
    if morphology == "plaid":
        colours, plaid = plaid_parameters(counts, np.random.default_rng([seed, 7]))
        plaid_px = plaid.copy()
        plaid_px[:, [0, 3]] /= pixel_size_um
    elif morphology not in ("colour", "texture", *HISTOLOGY_MORPHOLOGIES):
        raise OptionError(f"morphology must be 'colour', 'texture', 'plaid', 'nuclei' or 'glands', got {morphology!r}")
    scene = Scene(
        height=grid.height,
        width=grid.width,
        centres_px=grid.centres_px,
        radius_px=VISIUM_SPOT_DIAMETER_UM / 2.0 / pixel_size_um,
        colours=colours,
        painted=in_tissue,
        blob=blob,
        seed=int(rng.integers(0, 2**31 - 1)),
        stripe_period_px=stripe_periods_um(counts) / pixel_size_um if morphology == "texture" else None,
        plaid_px=plaid_px,
        histology=histology,
        pixel_size_um=float(pixel_size_um),
    )
    return BuiltSample(
        grid=grid,
        in_tissue=in_tissue,
        barcodes=barcodes,
        counts=counts,
        genes=genes,
        gene_ids=gene_ids,
        colours=colours,
        scene=scene,
        pixel_size_um=float(pixel_size_um),
        species=species,
    )
