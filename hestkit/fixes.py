"""The library parameters that error fixes name most often (:class:`~hestkit.errors.Opt` s),
shared by hestkit, catalog and seal.

A message says ``image=PATH``; the command line renders it as ``--image PATH`` (see
:mod:`hestkit.errors`). Values are metavars unless a fix knows the real value.
"""

from __future__ import annotations

from .errors import Opt

__all__ = [
    "AFFINE",
    "ALIGNMENT",
    "ALL",
    "ALLOW_NON_INTEGER",
    "ALLOW_UPSAMPLING",
    "AUTO",
    "CELLS",
    "IDS",
    "IMAGE",
    "IMAGE_MORPHOLOGY",
    "LANDMARKS",
    "MIN_TISSUE_FRACTION",
    "MODALITY",
    "OVERWRITE",
    "PIXEL_SIZE_UM",
    "REPAIR",
    "SAMPLE_ID",
    "SPOT_SIZE_UM",
    "TECHNOLOGY",
    "VOLUME_ID",
    "VOXEL_SIZE_UM",
    "WORKERS",
    "Z_UM",
    "ids",
]

IMAGE = Opt("image", "PATH")
IMAGE_MORPHOLOGY = Opt("image", "'morphology'", cli="morphology")
ALIGNMENT = Opt("alignment", "PATH")
PIXEL_SIZE_UM = Opt("pixel_size_um", "UM")
SAMPLE_ID = Opt("sample_id", "ID")
IDS = Opt("ids", "(ID,)", cli="ID")
TECHNOLOGY = Opt("technology", "NAME")
SPOT_SIZE_UM = Opt("spot_size_um", "UM")
CELLS = Opt("cells")
ALLOW_UPSAMPLING = Opt("allow_upsampling")
ALLOW_NON_INTEGER = Opt("allow_non_integer")
OVERWRITE = Opt("overwrite")
VOXEL_SIZE_UM = Opt("voxel_size_um", "(Z, Y, X)", cli="Z Y X")
VOLUME_ID = Opt("volume_id", "ID")
MODALITY = Opt("modality", "NAME")
Z_UM = Opt("z_um", "UM")
AFFINE = Opt("affine", "FILE")
LANDMARKS = Opt("landmarks", "FILE")
AUTO = Opt("auto")
REPAIR = Opt("repair")
WORKERS = Opt("workers", "N")
MIN_TISSUE_FRACTION = Opt("min_tissue_fraction", "F")

#: Every constant above: what a front end re-spells in texts that carry no structured
#: fix (warnings, check reports).
ALL = (
    IMAGE,
    IMAGE_MORPHOLOGY,
    ALIGNMENT,
    PIXEL_SIZE_UM,
    SAMPLE_ID,
    IDS,
    TECHNOLOGY,
    SPOT_SIZE_UM,
    CELLS,
    ALLOW_UPSAMPLING,
    ALLOW_NON_INTEGER,
    OVERWRITE,
    VOXEL_SIZE_UM,
    VOLUME_ID,
    MODALITY,
    Z_UM,
    AFFINE,
    LANDMARKS,
    AUTO,
    REPAIR,
    WORKERS,
    MIN_TISSUE_FRACTION,
)


def ids(value: str) -> Opt:
    """``ids=('A',)``: one sample's id (CLI: the flag and ``A``)."""
    return Opt("ids", repr((value,)), cli=value)
