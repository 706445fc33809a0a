"""Export one sample of a catalog: AnnData (scanpy convention) or the HEST-1k layout."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from . import _scanpy
from ._faults import fault_point, writing
from ._store import strict_json
from .catalog import Catalog
from .errors import CatalogError
from .views import object_strings
from .writer import _maybe_kill

__all__ = ["HEST_TECHNOLOGY_NAMES", "export_sample", "sample_anndata"]

#: Catalog technology -> HEST-1k ``st_technology``.
HEST_TECHNOLOGY_NAMES = {"visium": "Visium", "visium-hd": "Visium HD", "xenium": "Xenium", "st": "Spatial Transcriptomics"}


def sample_anndata(cat: Catalog, sample_id: str) -> Any:
    """One sample as AnnData: raw counts, obs named by barcode, and the scanpy / squidpy
    conventions of :mod:`catalog._scanpy` (``obsm['spatial']`` = spot centres (x, y) in
    level-0 px, ``obs['library_id']``, ``var['gene_ids']``, ``uns['spatial'][sample_id]``
    with the stored thumbnail as the ``hires`` image and its scale factors)."""
    import anndata as ad

    view = cat.pairs(sample_ids=[sample_id])
    own = set(cat.sample_genes(cat.manifest(sample_id)))
    genes = [g for g in view.genes if g in own]
    view = view.with_genes(genes)
    obs = object_strings(view.obs.drop(columns=["soma_joinid", "obs_id", "ingest_id", "patch_index"]))
    obs.index = pd.Index(obs["barcode"].astype(str).to_numpy(), name=None)
    _scanpy.add_fullres_columns(obs)
    obs["library_id"] = _scanpy.library_ids(obs["sample_id"])
    var = pd.DataFrame({"gene_ids": _scanpy.gene_ids(cat, genes)}, index=pd.Index(genes, name=None))
    a = ad.AnnData(X=view.expression(), obs=obs, var=var)
    a.obsm["spatial"] = obs[["x_px", "y_px"]].to_numpy(dtype=float)
    a.uns["spatial"] = {sample_id: _scanpy.spatial_library(cat, sample_id)}
    return a


def _hest_metadata(m: dict[str, Any]) -> dict[str, Any]:
    extra = m.get("metadata") or {}
    md: dict[str, Any] = {k: v for k, v in extra.items() if not isinstance(v, (dict, list))}
    md.update(
        {
            "id": m["sample_id"],
            "organ": m.get("organ"),
            "species": m.get("species"),
            "patient": m.get("patient"),
            "st_technology": HEST_TECHNOLOGY_NAMES.get(m["technology"], m["technology"]),
            "spot_diameter": m["spot_diameter_um"],
            "spots_under_tissue": m["n_pairs"],
            "nb_genes": m["n_genes"],
            "pixel_size_um_embedded": m.get("pixel_size_um_embedded"),
            "pixel_size_um_estimated": m["pixel_size_um"],
            "fullres_px_width": m["image_width"],
            "fullres_px_height": m["image_height"],
        }
    )
    return md


def _write_hest_patches(cat: Catalog, sample_id: str, path: Path, wsi_name: str) -> None:
    import h5py

    m = cat.manifest(sample_id)
    view = cat.pairs(sample_ids=[sample_id])
    spec = cat.spec
    src = spec.patch_size_px * spec.pixel_size_um / float(m["pixel_size_um"])  # window side, level-0 px
    centres = view.obs[["x_px", "y_px"]].to_numpy(dtype=float)
    top_left = np.round(centres - src / 2.0).astype(np.int64)
    with h5py.File(path, "w") as f:
        img = f.create_dataset(
            "img",
            shape=(len(view), spec.patch_size_px, spec.patch_size_px, 3),
            dtype="uint8",
            chunks=(1, spec.patch_size_px, spec.patch_size_px, 3) if len(view) else None,  # h5py: no chunks of an empty set
        )
        for i in range(len(view)):
            img[i] = view.patch(i)
        f.create_dataset("coords", data=top_left)
        f.create_dataset("barcode", data=np.array([[b.encode()] for b in view.obs["barcode"].astype(str)]))
        f["img"].attrs["patch_size_src"] = src
        f["img"].attrs["patch_size_target"] = spec.patch_size_px
        f["img"].attrs["pixel_size"] = float(m["pixel_size_um"])
        f["coords"].attrs["patch_size_level0"] = src
        f["coords"].attrs["patch_size"] = spec.patch_size_px
        f["coords"].attrs["level"] = 0
        f.attrs["coordinates"] = (
            f"coords are TOP-LEFT corners in level-0 px of wsis/{wsi_name}; centre = coords + patch_size_src / 2"
        )


def _stage_name(final: Path) -> Path:
    """A staging name beside ``final`` (``.{name}.partial-{id}``): no reader takes it for
    an export (HEST readers look for ``st/*.h5ad``, file dialogs hide it)."""
    return final.with_name(f".{final.name}.partial-{uuid.uuid4().hex[:12]}")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """Write to a staging name beside ``final``, renamed over it when the block succeeds
    (a folder already there is moved aside first, then deleted) and deleted when it
    fails. A killed export leaves only the dot-named staging, never a partial ``final``."""
    tmp = _stage_name(final)
    try:
        yield tmp
        fault_point("export:rename")
        if final.is_dir() and not final.is_symlink():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:12]}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _write_hest(cat: Catalog, sample_id: str, m: dict[str, Any], src_img: Path, out: Path) -> None:
    """The sample's HEST-1k files, written in a staging folder beside ``out``, then renamed
    to ``out``, or, when ``out`` is an existing HEST root, moved into it with
    ``st/{id}.h5ad`` (the file that makes a HEST reader see the sample) last."""
    suffix = src_img.suffix.lower() if src_img.suffix.lower() in (".tif", ".tiff", ".svs", ".ndpi", ".btf") else src_img.suffix
    files = [
        Path("wsis") / f"{sample_id}{suffix}",
        Path("patches") / f"{sample_id}.h5",
        Path("metadata") / f"{sample_id}.json",
        Path("st") / f"{sample_id}.h5ad",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = _stage_name(out)
    try:
        for d in ("wsis", "st", "metadata", "patches"):
            (stage / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src_img, stage / files[0])
        fault_point("export:hest")
        _write_hest_patches(cat, sample_id, stage / files[1], files[0].name)
        (stage / files[2]).write_text(json.dumps(strict_json(json.loads(json.dumps(_hest_metadata(m), default=str))), indent=1, allow_nan=False))
        _maybe_kill("export-hest")
        sample_anndata(cat, sample_id).write_h5ad(stage / files[3])
        fault_point("export:rename")
        if not out.exists():
            os.replace(stage, out)
            return
        for f in files:
            (out / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(stage / f, out / f)
    finally:
        _remove(stage)


def export_sample(cat: Catalog, sample_id: str, fmt: Literal["anndata", "hest", "spatialdata"], out: str | Path) -> Path:
    """Write ``sample_id`` as ``.h5ad`` (``fmt='anndata'``; ``out`` is the file), in the
    HEST-1k layout under the folder ``out`` (``wsis/``, ``st/``, ``metadata/``, ``patches/``),
    or as a SpatialData zarr store (``fmt='spatialdata'``, ``out`` ending in ``.zarr``).

    Every format is written under a staging name beside ``out`` and renamed at the end, so
    an export that fails or is killed never leaves something that looks complete; a full
    disk or exhausted memory ends in one :class:`~catalog._faults.ResourceError` line."""
    out = Path(out)
    m = cat.manifest(sample_id)
    with writing(f"exporting sample {sample_id!r} as {fmt}", str(out)):
        return _export(cat, sample_id, m, fmt, out)


def _export(cat: Catalog, sample_id: str, m: dict[str, Any], fmt: str, out: Path) -> Path:
    if fmt == "spatialdata":
        if out.suffix != ".zarr":
            raise CatalogError(f"{out}: SpatialData export writes a zarr store; give a path ending in .zarr")
        if not Path(m["image_path"]).exists():
            raise CatalogError(
                f"{m['image_path']}: the sample's slide is no longer there; SpatialData export includes it. Restore it first"
            )
        try:
            from ._spatialdata import write_spatialdata
        except ImportError as exc:
            raise CatalogError(
                f"SpatialData export needs the spatialdata package ({exc}); pip install 'hestkit[spatialdata]'"
            ) from exc
        out.parent.mkdir(parents=True, exist_ok=True)
        with _staged(out) as stage:
            fault_point("export:spatialdata")
            write_spatialdata(cat, sample_id, stage)
        return out
    if fmt == "anndata":
        if out.suffix != ".h5ad":
            raise CatalogError(f"{out}: AnnData export writes a .h5ad file; give a path ending in .h5ad")
        out.parent.mkdir(parents=True, exist_ok=True)
        adata = sample_anndata(cat, sample_id)
        with _staged(out) as stage:
            fault_point("export:anndata")
            adata.write_h5ad(stage)
        return out
    if fmt == "hest":
        src_img = Path(m["image_path"])
        if not src_img.exists():
            raise CatalogError(
                f"{src_img}: the sample's slide is no longer there; HEST export copies it to wsis/. Restore it first"
            )
        _write_hest(cat, sample_id, m, src_img, out)
        return out
    raise CatalogError(f"unknown export format {fmt!r}; use anndata or hest")
