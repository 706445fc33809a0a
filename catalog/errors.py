"""Errors raised by :mod:`catalog`."""

from __future__ import annotations

from hestkit.errors import DataError, HestkitError

__all__ = [
    "CatalogError",
    "CatalogVersionError",
    "DamagedError",
    "LinkError",
    "NotACatalogError",
    "QueryError",
    "SampleExistsError",
    "VolumeExistsError",
]


class CatalogError(HestkitError):
    """Base class of catalog errors."""


class DamagedError(CatalogError, DataError):
    """An element of the catalog holds values that do not fit (a damaged or foreign
    file); a ``ValueError`` too."""


class NotACatalogError(CatalogError):
    """The path holds no catalog."""


class CatalogVersionError(CatalogError):
    """The catalog was written by a newer, incompatible hestkit."""


class SampleExistsError(CatalogError):
    """A sample id is already in the catalog (and --overwrite was not given)."""


class QueryError(CatalogError):
    """A query names something the catalog does not hold."""


class VolumeExistsError(CatalogError):
    """A volume id is already in the catalog (and overwrite was not asked)."""


class LinkError(CatalogError):
    """A section cannot be linked to a volume: geometry outside the volume, bad affine or landmarks."""
