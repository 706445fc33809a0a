"""The hestkit catalog: spot-patch pairs stored as TileDB-SOMA (expression, obs) and zarr
(patches), queried lazily.

>>> import catalog
>>> cat = catalog.open("my_catalog")            # doctest: +SKIP
>>> view = cat.pairs(organ="Breast", genes=["EPCAM", "ERBB2"])  # doctest: +SKIP
>>> patch, expr = view[0]                        # doctest: +SKIP
"""

from __future__ import annotations

from . import _jpeg  # noqa: F401 - registers the zarr JPEG codec
from ._genes import UnmeasuredGeneWarning
from .catalog import SAMPLE_COLUMNS, Catalog, create_catalog, open_catalog
from .errors import CatalogError, CatalogVersionError, NotACatalogError, QueryError, SampleExistsError
from .views import PairView
from .writer import IngestReport, SampleResult

open = open_catalog  # noqa: A001 - the public name is catalog.open(path)
create = create_catalog

__all__ = [
    "SAMPLE_COLUMNS",
    "Catalog",
    "CatalogError",
    "CatalogVersionError",
    "IngestReport",
    "NotACatalogError",
    "PairView",
    "QueryError",
    "SampleExistsError",
    "SampleResult",
    "UnmeasuredGeneWarning",
    "create",
    "create_catalog",
    "open",
    "open_catalog",
]
