"""hestkit: spatial transcriptomics and histology, from vendor folders to spot-patch pairs.

The domain layer: vendor readers (:mod:`hestkit.readers`), coordinate maths
(:mod:`hestkit.geometry`), slides (:mod:`hestkit.slide`), patch extraction
(:mod:`hestkit.patches`) and seeded synthetic cohorts (:mod:`hestkit.synthetic`).
The catalog lives in the sibling package :mod:`catalog`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .errors import HestkitError, ImageError, NoReaderError, PixelSizeError, ReaderError, ValidationError
from .patches import PairSpec
from .sample import ReadOptions, SampleRef, SampleSource

try:
    __version__ = version("hestkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "HestkitError",
    "ImageError",
    "NoReaderError",
    "PairSpec",
    "PixelSizeError",
    "ReadOptions",
    "ReaderError",
    "SampleRef",
    "SampleSource",
    "ValidationError",
    "__version__",
]
