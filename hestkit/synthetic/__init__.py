"""Seeded synthetic spatial-transcriptomics samples in real vendor file formats.

Each spot's H&E disk colour is a deterministic function of its expression
(:func:`spot_colour`), so image-expression pairing can be checked exactly.
"""

from __future__ import annotations

from ._expression import gene_programs, gene_table, spot_colour, spot_colours
from ._scene import GLASS_RGB, TISSUE_RGB, Scene
from ._tiff import pyramid_shapes, write_flat_image, write_pyramidal_tiff
from ._truth import SyntheticSample
from .cohort import CohortEntry, make_demo_cohort
from .hest import make_hest
from .hest_bench import SyntheticHestBench, make_hest_bench
from .st import make_st
from .visium import make_visium
from .visium_hd import SyntheticVisiumHD, make_visium_hd
from .volume import (
    SyntheticSection,
    SyntheticVolume,
    SyntheticVolumeCohort,
    make_large_volume,
    make_volume,
    make_volume_cohort,
)
from .xenium import SyntheticXenium, make_xenium

__all__ = [
    "GLASS_RGB",
    "TISSUE_RGB",
    "CohortEntry",
    "Scene",
    "SyntheticHestBench",
    "SyntheticSample",
    "SyntheticSection",
    "SyntheticVisiumHD",
    "SyntheticVolume",
    "SyntheticVolumeCohort",
    "SyntheticXenium",
    "gene_programs",
    "gene_table",
    "make_demo_cohort",
    "make_hest",
    "make_hest_bench",
    "make_large_volume",
    "make_st",
    "make_visium",
    "make_visium_hd",
    "make_volume",
    "make_volume_cohort",
    "make_xenium",
    "pyramid_shapes",
    "spot_colour",
    "spot_colours",
    "write_flat_image",
    "write_pyramidal_tiff",
]
