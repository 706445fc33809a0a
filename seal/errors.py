"""Errors raised by :mod:`seal`."""

from __future__ import annotations

from hestkit.errors import HestkitError

__all__ = [
    "BackboneError",
    "ConfigError",
    "EvalError",
    "GeneListError",
    "NotFittedError",
    "SealError",
    "SelectionError",
    "ShapeError",
    "WeightsError",
]


class SealError(HestkitError):
    """Base class of SEAL errors."""


class BackboneError(SealError):
    """Unknown or unusable timm backbone name."""


class WeightsError(SealError):
    """Weights that cannot be read or do not fit the backbone."""


class GeneListError(SealError):
    """A gene list naming genes the catalog does not hold."""


class SelectionError(SealError):
    """An empty or unusable selection of pairs."""


class EvalError(SealError, ValueError):
    """An evaluation that cannot be run as asked."""


class ConfigError(SealError, ValueError):
    """A configuration or argument that cannot be used (an unknown mode, a size out of range)."""


class ShapeError(SealError, ValueError):
    """An array or tensor of the wrong shape for the model or function it is given to."""


class NotFittedError(SealError, RuntimeError):
    """A model used before it was fitted."""
