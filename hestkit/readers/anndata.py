"""A single AnnData ``.h5ad`` with spot centres (scanpy convention), plus its slide."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import Problem, ValidationError, fix
from ..fixes import IMAGE
from ..geometry import estimate_pixel_size_from_grid, resolve_pixel_size, visium_array_to_um
from ..sample import ReadOptions, SampleRef, SampleSource
from ..slide import open_slide
from ._common import check_spots_inside, positive_field, spots_from_obs
from ._tenx import make_unique

__all__ = ["AnnDataReader"]


def _spatial_entry(uns: Any) -> tuple[str | None, dict[str, Any]]:
    spatial = uns.get("spatial") if hasattr(uns, "get") else None
    if isinstance(spatial, dict) and spatial:
        key = next(iter(spatial))
        entry = spatial[key]
        return str(key), dict(entry) if isinstance(entry, dict) else {}
    return None, {}


class AnnDataReader:
    """An ``.h5ad`` with raw counts and ``obsm['spatial']`` = spot centres (x, y) in the slide's
    level-0 px; the slide comes from ``--image`` or ``uns['spatial'][id]['metadata']['source_image_path']``
    (as ``hestkit export --format anndata`` writes)."""

    name = "anndata"
    description = "AnnData .h5ad with obsm['spatial'] (spot centres, full-res px) and the image it refers to (image)"

    def can_open(self, path: Path) -> bool:
        in_hest = path.parent.name == "st" and (path.parent.parent / "wsis").is_dir()
        return path.is_file() and path.suffix == ".h5ad" and not in_hest

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]:
        return [SampleRef(self.name, options.sample_id or path.stem, path, options)]

    def load(self, ref: SampleRef) -> SampleSource:
        import anndata as ad

        path, opts = ref.path, ref.options
        problems: list[Problem] = []
        try:
            a = ad.read_h5ad(path)
        except Exception as exc:
            raise ValidationError(f"AnnData sample {path}", [Problem(path, f"cannot be read as AnnData ({exc})")]) from exc
        key, entry = _spatial_entry(a.uns)
        meta = dict(entry.get("metadata", {}) or {})
        image = opts.image or (Path(meta["source_image_path"]) if meta.get("source_image_path") else None)
        if image is None:
            problems.append(Problem(path, f"no slide: pass {IMAGE} (the full-resolution image obsm['spatial'] refers to)", fix("", IMAGE)))
        if "spatial" not in a.obsm:
            problems.append(Problem(path, "has no obsm['spatial'] (spot centres (x, y) in full-resolution px)"))
        if problems:
            raise ValidationError(f"AnnData sample {path}", problems)
        obs = a.obs
        barcodes = obs["barcode"].to_numpy() if "barcode" in obs else a.obs_names
        spots = spots_from_obs(obs, barcodes, a.obsm["spatial"])
        slide = None
        try:
            slide = open_slide(image)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem(image, str(exc)))
        if slide is not None:
            check_spots_inside(spots[spots["in_tissue"] > 0], slide, problems, path)
        sf = dict(entry.get("scalefactors", {}) or {})
        diam_px = positive_field(sf, "spot_diameter_fullres", f"{path} (uns['spatial'][{key!r}]['scalefactors'])", problems)
        md_px = positive_field(meta, "pixel_size_um", f"{path} (uns['spatial'][{key!r}]['metadata'])", problems)
        if problems or slide is None or image is None:
            raise ValidationError(f"AnnData sample {path}", problems)
        technology = str(meta.get("technology") or "visium")
        estimated = None
        if technology == "visium" and (spots["array_row"] >= 0).all() and len(spots) >= 3:
            estimated = estimate_pixel_size_from_grid(
                visium_array_to_um(spots["array_row"], spots["array_col"]), spots[["x_px", "y_px"]]
            )
        decision = resolve_pixel_size(
            embedded=slide.embedded_pixel_size_um,
            estimated=estimated,
            override=opts.pixel_size_um,
            metadata=md_px,
            subject=f"{ref.sample_id} ({path.name})",
        )
        slide.close()
        spot_um = diam_px * decision.value if diam_px else 55.0
        x = a.layers["counts"] if "counts" in a.layers else a.X
        md: dict[str, Any] = {
            "organ": opts.organ or obs.get("organ", pd.Series([None])).iloc[0],
            "species": opts.species or obs.get("species", pd.Series([None])).iloc[0],
            "patient": opts.patient or obs.get("patient", pd.Series([None])).iloc[0],
            "uns_spatial_key": key,
        }
        md = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in md.items()}
        square = technology in ("visium-hd", "xenium")
        return SampleSource(
            sample_id=ref.sample_id,
            technology=technology,
            counts=sp.csr_matrix(x),
            genes=make_unique([str(g) for g in a.var_names]),
            gene_ids=[str(g) for g in (a.var["gene_ids"] if "gene_ids" in a.var else a.var_names)],
            spots=spots,
            image_path=image,
            pixel_size=decision,
            spot_diameter_um=spot_um,
            spot_shape="square" if square else "circle",
            metadata=md,
            source_paths=[str(path), str(image)],
            counts_path=str(path),
            spots_path=str(path),
            warnings=[decision.warning] if decision.warning else [],
        )
