"""Errors raised by :mod:`seal.vortex`."""

from __future__ import annotations

from ..errors import SealError

__all__ = ["ChannelMismatchError", "ModelDirError", "PredictionError", "SectionError", "VortexError"]


class VortexError(SealError):
    """Base class of VORTEX errors."""


class ChannelMismatchError(VortexError, ValueError):
    """A volume whose channel count differs from the one a model was trained on."""


class ModelDirError(VortexError):
    """A folder that is not a VORTEX model directory (or an incomplete one)."""


class SectionError(VortexError, ValueError):
    """Sections that cannot be used as asked (unknown, too few, no spots)."""


class PredictionError(VortexError):
    """A prediction output that cannot be written or resumed as asked."""
