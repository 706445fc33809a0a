"""The scanpy / squidpy conventions of an AnnData made from catalog pairs, in one place:
used by the AnnData export of one sample and by :meth:`catalog.PairView.to_anndata`.

- ``obsm['spatial']``: spot centres (x, y) in level-0 px of the sample's slide; also
  ``obs['pxl_col_in_fullres']`` / ``obs['pxl_row_in_fullres']`` (Space Ranger's names);
- ``obs['library_id']``: the sample id (categorical), the ``library_key`` of squidpy;
- ``var['gene_ids']``: the stable gene id of each gene (the name when a run gave none);
- ``uns['spatial'][sample_id]``: ``images['hires']`` = the stored thumbnail,
  ``scalefactors['tissue_hires_scalef']`` = 1 / its downsample from level 0,
  ``scalefactors['spot_diameter_fullres']`` = the spot diameter in level-0 px, and
  ``metadata`` (source image, pixel size, technology).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["add_fullres_columns", "gene_ids", "library_ids", "spatial_library"]


def gene_ids(cat: Catalog, genes: list[str]) -> list[str]:
    """The catalog's gene id of each of ``genes`` (the name itself when none is stored)."""
    from . import _soma

    var = _soma.read_var(cat.layout.soma)
    ids = dict(zip((str(v) for v in var["var_id"]), (str(v) for v in var["gene_id"]), strict=True))
    return [ids.get(g, g) for g in genes]


def spatial_library(cat: Catalog, sample_id: str) -> dict[str, Any]:
    """``uns['spatial'][sample_id]`` of the sample, in the scanpy convention."""
    m = cat.manifest(sample_id)
    thumb, ds = cat.sample_thumbnail(sample_id)
    return {
        "images": {"hires": thumb},
        "scalefactors": {
            "tissue_hires_scalef": 1.0 / ds,
            "spot_diameter_fullres": float(m["spot_diameter_um"]) / float(m["pixel_size_um"]),
        },
        "metadata": {
            "source_image_path": m["image_path"],
            "pixel_size_um": m["pixel_size_um"],
            "technology": m["technology"],
        },
    }


def library_ids(sample_ids: pd.Series) -> pd.Categorical:
    """``obs['library_id']``: the sample ids, categorical in order of first appearance."""
    return pd.Categorical(sample_ids.astype(str), categories=pd.unique(sample_ids.astype(str)))


def add_fullres_columns(obs: pd.DataFrame) -> None:
    """Space Ranger's names for the level-0 centres, next to ``x_px`` / ``y_px``."""
    obs["pxl_col_in_fullres"] = obs["x_px"]
    obs["pxl_row_in_fullres"] = obs["y_px"]
