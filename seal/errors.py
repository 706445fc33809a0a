"""Errors raised by :mod:`seal`."""

from __future__ import annotations

from hestkit.errors import HestkitError

__all__ = ["BackboneError", "EvalError", "GeneListError", "SealError", "SelectionError", "WeightsError"]


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
