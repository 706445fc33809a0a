"""Vendor readers, found through a registry (like xarray's backends)."""

from __future__ import annotations

from ..sample import SampleRef, SampleSource
from ._registry import Reader, ReaderPluginWarning, find_reader, get_reader, list_readers, reader_names, register_reader, scan
from .anndata import AnnDataReader
from .hest1k import HestReader
from .hest_bench import HestBenchReader
from .spatialdata import SpatialDataReader
from .st import StReader
from .visium import VisiumReader, read_tissue_positions
from .visium_hd import VisiumHDReader
from .xenium import XeniumReader

__all__ = [
    "AnnDataReader",
    "HestBenchReader",
    "HestReader",
    "Reader",
    "ReaderPluginWarning",
    "SpatialDataReader",
    "StReader",
    "VisiumHDReader",
    "VisiumReader",
    "XeniumReader",
    "find_reader",
    "get_reader",
    "list_readers",
    "load",
    "read_tissue_positions",
    "reader_names",
    "register_reader",
    "scan",
]

register_reader(VisiumReader())
register_reader(HestReader())
register_reader(HestBenchReader())
register_reader(AnnDataReader())
register_reader(SpatialDataReader())
register_reader(StReader())
register_reader(VisiumHDReader())
register_reader(XeniumReader())


def load(ref: SampleRef) -> SampleSource:
    """Load a :class:`~hestkit.sample.SampleRef` with the reader that found it."""
    return get_reader(ref.reader).load(ref)
