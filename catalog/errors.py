"""Errors raised by :mod:`catalog`."""

from __future__ import annotations

from hestkit.errors import HestkitError

__all__ = ["CatalogError", "CatalogVersionError", "NotACatalogError", "QueryError", "SampleExistsError"]


class CatalogError(HestkitError):
    """Base class of catalog errors."""


class NotACatalogError(CatalogError):
    """The path holds no catalog."""


class CatalogVersionError(CatalogError):
    """The catalog was written by a newer, incompatible hestkit."""


class SampleExistsError(CatalogError):
    """A sample id is already in the catalog (and --overwrite was not given)."""


class QueryError(CatalogError):
    """A query names something the catalog does not hold."""
