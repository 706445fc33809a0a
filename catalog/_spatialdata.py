"""Export a catalog sample as a SpatialData zarr store (image, spots as shapes, table)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hestkit.errors import fix
from hestkit.fixes import OVERWRITE
from hestkit.slide import Slide, open_slide

from .catalog import Catalog
from .errors import CatalogError

__all__ = ["write_spatialdata"]


class _LevelArray:
    """A read-only array view of one slide level, (y, x, c), for dask.array.from_array."""

    def __init__(self, slide: Slide, level: int) -> None:
        lvl = slide.levels[level]
        self.slide, self.level = slide, level
        self.shape = (lvl.height, lvl.width, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        block = self.slide.read_region(self.level, x0, y0, x1 - x0, y1 - y0)
        return block[(slice(None), slice(None), key[2]) if len(key) > 2 else ...]


def write_spatialdata(cat: Catalog, sample_id: str, out: Path) -> Path:
    """The sample's slide (multiscale, streamed block by block), its spots as shapes of
    their true size (circles, or axis-aligned squares) and its table, in the coordinate
    systems ``global`` (level-0 px) and ``micrometres``."""
    import anndata
    import dask.array as da
    import geopandas as gpd
    from shapely.geometry import Point, box

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import spatialdata as sd
        from spatialdata.models import Image2DModel, ShapesModel, TableModel
        from spatialdata.transformations import Identity, Scale

    from .export import sample_anndata

    m = cat.manifest(sample_id)
    if not int(m.get("n_pairs") or 0):
        raise CatalogError(
            f"{sample_id}: the sample holds no pairs (committed by a hestkit that accepted empty samples), and a "
            "SpatialData shapes element cannot be empty",
            fix=fix(
                f"export it as anndata or hest, or re-ingest it with {OVERWRITE} (today's hestkit refuses samples "
                "without pairs and says why)",
                OVERWRITE,
            ),
        )
    ps = float(m["pixel_size_um"])
    tf = {"global": Identity(), "micrometres": Scale([ps, ps], axes=("x", "y"))}
    slide = open_slide(m["image_path"])
    arr = da.from_array(_LevelArray(slide, 0), chunks=(1024, 1024, 3), asarray=True, fancy=False).transpose(2, 0, 1)
    n_scales, side = 0, max(slide.width, slide.height)
    while side > 1024 and n_scales < 8:
        side //= 2
        n_scales += 1
    image = Image2DModel.parse(
        arr, dims=("c", "y", "x"), scale_factors=[2] * n_scales or None, transformations=tf, chunks=(3, 1024, 1024)
    )
    adata = sample_anndata(cat, sample_id)
    adata.uns.pop("spatial", None)
    barcodes = adata.obs_names.astype(str)
    xy = adata.obsm["spatial"]
    diam_px = float(m["spot_diameter_um"]) / ps
    if m.get("spot_shape") == "square":
        h = diam_px / 2
        geoms = [box(x - h, y - h, x + h, y + h) for x, y in xy]
        shapes = ShapesModel.parse(gpd.GeoDataFrame(geometry=geoms, index=pd.Index(barcodes)), transformations=tf)
    else:
        gdf = gpd.GeoDataFrame(geometry=[Point(x, y) for x, y in xy], index=pd.Index(barcodes))
        gdf["radius"] = diam_px / 2
        shapes = ShapesModel.parse(gdf, transformations=tf)
    adata.obs["region"] = pd.Categorical(["spots"] * adata.n_obs)
    adata.obs["instance_id"] = barcodes
    hk: dict[str, Any] = {k: m.get(k) for k in ("sample_id", "technology", "organ", "species", "patient", "spot_shape")}
    hk.update({"pixel_size_um": ps, "spot_diameter_um": float(m["spot_diameter_um"])})
    adata.uns["hestkit"] = {k: ("" if v is None else v) for k, v in hk.items()}
    table = TableModel.parse(adata, region="spots", region_key="region", instance_key="instance_id")
    sdata = sd.SpatialData(images={"he": image}, shapes={"spots": shapes}, tables={"table": table})
    # anndata warns (once per array of the table) that zarr v3 autosharding will become its
    # default unless the writer says which it wants: say so, for this write only (unsharded,
    # today's layout; the image and shapes are written by ome-zarr and parquet, unaffected)
    with anndata.settings.override(auto_shard_zarr_v3=False):
        sdata.write(str(out), overwrite=True)
    slide.close()
    return out
