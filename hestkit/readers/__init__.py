"""Vendor readers, found through a registry (like xarray's backends)."""

from __future__ import annotations

from ..sample import SampleRef, SampleSource
from ._registry import Reader, find_reader, get_reader, list_readers, register_reader, scan
from .hest1k import HestReader
from .visium import VisiumReader, read_tissue_positions

__all__ = [
    "HestReader",
    "Reader",
    "VisiumReader",
    "find_reader",
    "get_reader",
    "list_readers",
    "load",
    "read_tissue_positions",
    "register_reader",
    "scan",
]

register_reader(VisiumReader())
register_reader(HestReader())


def load(ref: SampleRef) -> SampleSource:
    """Load a :class:`~hestkit.sample.SampleRef` with the reader that found it."""
    return get_reader(ref.reader).load(ref)
