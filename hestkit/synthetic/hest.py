"""Synthetic HEST-1k samples: ``wsis/{id}.tif``, ``st/{id}.h5ad``, ``metadata/``."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import OptionError
from ._build import build_visium_sample
from ._grid import VISIUM_SPOT_DIAMETER_UM, VISIUM_SPOT_SPACING_UM, VisiumGrid
from ._tiff import write_pyramidal_tiff
from ._truth import SyntheticSample

__all__ = ["magnification_for", "make_hest"]


def magnification_for(pixel_size_um: float) -> str:
    """Nominal objective for a pixel size, as HEST-1k labels it (0.25 um/px ~ 40x)."""
    if pixel_size_um <= 0.35:
        return "40x"
    if pixel_size_um <= 0.7:
        return "20x"
    if pixel_size_um <= 1.4:
        return "10x"
    return "5x"


def _estimate_pixel_size(grid: VisiumGrid) -> float:
    """um/px from the spacing of neighbouring spots along each array row."""
    steps: list[float] = []
    for r in np.unique(grid.array_row):
        sel = np.flatnonzero(grid.array_row == r)
        sel = sel[np.argsort(grid.array_col[sel])]
        dcol = np.diff(grid.array_col[sel]).astype(np.float64)
        dx = np.diff(grid.centres_px[sel, 0])
        steps.extend((dx / (dcol / 2.0)).tolist())
    if not steps:
        return float("nan")
    return float(VISIUM_SPOT_SPACING_UM / np.median(steps))


def make_hest(
    root: str | Path,
    sample_id: str,
    *,
    organ: str = "Breast",
    species: str = "Homo sapiens",
    patient: str | None = "P1",
    st_technology: str = "Visium",
    disease_state: str = "Cancer",
    oncotree_code: str | None = "IDC",
    preservation_method: str = "FFPE",
    dataset_title: str | None = None,
    n_rows: int = 16,
    n_cols: int = 16,
    n_genes: int = 60,
    pixel_size_um: float = 0.5,
    origin_px: tuple[float, float] = (300.0, 280.0),
    in_tissue_fraction: float = 0.85,
    seed: int = 0,
) -> SyntheticSample:
    """Write one sample in the HEST-1k layout under ``root`` and return its truth.

    - ``wsis/{id}.tif``: pyramidal generic BigTIFF, JPEG tiles, pixel size embedded.
    - ``st/{id}.h5ad``: AnnData of the in-tissue spots; ``X`` raw counts (CSR,
      float32 holding integers, as scanpy-read Visium data), ``var_names`` gene
      symbols (``var['gene_ids']`` the ids), ``obs`` indexed by barcode with
      ``in_tissue``, ``array_row``, ``array_col``, ``pxl_row_in_fullres``,
      ``pxl_col_in_fullres``; ``obsm['spatial']`` spot CENTRES ``(x, y)`` in
      level-0 pixels.
    - ``metadata/{id}.json``: the HEST-1k metadata keys.

    Only ``st_technology='Visium'`` is generated for now.
    """
    if st_technology != "Visium":
        raise OptionError(f"only st_technology='Visium' is supported, got {st_technology!r}")
    if not sample_id or "/" in sample_id:
        raise OptionError(f"invalid sample_id {sample_id!r}")
    root = Path(root)
    for sub in ("wsis", "st", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    built = build_visium_sample(
        n_rows=n_rows,
        n_cols=n_cols,
        n_genes=n_genes,
        pixel_size_um=pixel_size_um,
        origin_px=origin_px,
        in_tissue_fraction=in_tissue_fraction,
        species=species,
        seed=seed,
    )
    grid = built.grid

    image_path = root / "wsis" / f"{sample_id}.tif"
    write_pyramidal_tiff(
        image_path,
        height=grid.height,
        width=grid.width,
        render=built.scene.render,
        pixel_size_um=pixel_size_um,
        bigtiff=True,
    )

    keep = np.flatnonzero(built.in_tissue)
    obs = pd.DataFrame(
        {
            "in_tissue": np.ones(keep.size, dtype=np.int64),
            "pxl_col_in_fullres": grid.centres_px[keep, 0],
            "pxl_row_in_fullres": grid.centres_px[keep, 1],
            "array_col": grid.array_col[keep],
            "array_row": grid.array_row[keep],
        },
        index=pd.Index([built.barcodes[i] for i in keep], name=None),
    )
    var = pd.DataFrame({"gene_ids": built.gene_ids}, index=pd.Index(built.genes))
    adata = ad.AnnData(
        X=sp.csr_matrix(built.counts[keep], dtype=np.float32),
        obs=obs,
        var=var,
        obsm={"spatial": grid.centres_px[keep].astype(np.float64)},
    )
    adata.write_h5ad(root / "st" / f"{sample_id}.h5ad")

    mouse = species.strip().lower() in ("mus musculus", "mouse")
    metadata: dict[str, object] = {
        "id": sample_id,
        "dataset_title": dataset_title or f"Synthetic {species} {organ} (hestkit.synthetic seed {seed})",
        "organ": organ,
        "disease_state": disease_state,
        "oncotree_code": None if mouse or disease_state == "Healthy" else oncotree_code,
        "species": species,
        "patient": patient,
        "st_technology": st_technology,
        "license": "CC BY 4.0",
        "inter_spot_dist": VISIUM_SPOT_SPACING_UM,
        "spot_diameter": VISIUM_SPOT_DIAMETER_UM,
        "spots_under_tissue": int(keep.size),
        "preservation_method": preservation_method,
        "nb_genes": len(built.genes),
        "pixel_size_um_embedded": float(pixel_size_um),
        "pixel_size_um_estimated": _estimate_pixel_size(grid),
        "magnification": magnification_for(pixel_size_um),
        "fullres_px_width": grid.width,
        "fullres_px_height": grid.height,
        "tissue": organ,
    }
    (root / "metadata" / f"{sample_id}.json").write_text(json.dumps(metadata, indent=2) + "\n")

    return built.truth(
        path=root,
        image_path=image_path,
        sample_id=sample_id,
        layout="hest",
        pixel_size_embedded=True,
        organ=organ,
    )
