"""Errors raised by :mod:`seal.vortex`."""

from __future__ import annotations

from ..errors import ConfigError, SealError, ShapeError

__all__ = [
    "ChannelMismatchError",
    "ModelDirError",
    "PredictionError",
    "SectionError",
    "VortexConfigError",
    "VortexError",
    "VortexShapeError",
]


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


class VortexConfigError(VortexError, ConfigError):
    """A VORTEX configuration or argument that cannot be used; a ``ValueError`` too."""


class VortexShapeError(VortexError, ShapeError):
    """Sub-volumes or tokens of the wrong shape for a VORTEX module; a ``ValueError`` too."""
