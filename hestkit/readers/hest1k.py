"""HEST-1k layout: ``wsis/{id}.tif``, ``st/{id}.h5ad``, ``metadata/{id}.json`` under one root."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import scipy.sparse as sp

from ..errors import Problem, ReaderError, ValidationError, fix
from ..fixes import IDS, IMAGE, SAMPLE_ID
from ..geometry import estimate_pixel_size_from_grid, resolve_pixel_size, visium_array_to_um
from ..sample import ReadOptions, SampleRef, SampleSource
from ..slide import open_slide
from ._common import check_spots_inside, positive_field, spots_from_obs
from ._tenx import make_unique

__all__ = ["HEST_TECHNOLOGIES", "HestReader"]

#: HEST-1k ``st_technology`` values to catalog technology names.
HEST_TECHNOLOGIES = {
    "visium": "visium",
    "visium hd": "visium-hd",
    "xenium": "xenium",
    "spatial transcriptomics": "st",
    "st": "st",
}
_DEFAULT_SPOT_UM = {"visium": 55.0, "visium-hd": 8.0, "xenium": 100.0, "st": 100.0}
_WSI_SUFFIXES = (".tif", ".tiff", ".btf", ".svs", ".ndpi", ".png", ".jpg", ".jpeg")


def _root_of(path: Path) -> Path | None:
    if path.is_dir() and (path / "st").is_dir() and (path / "wsis").is_dir():
        return path
    if path.is_file() and path.suffix == ".h5ad" and path.parent.name == "st":
        return path.parent.parent
    return None


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


class HestReader:
    """A HEST-1k root folder (all ids, or ``--ids``), or one ``st/{id}.h5ad`` inside it."""

    name = "hest"
    description = "HEST-1k root (wsis/, st/, metadata/) or one st/{id}.h5ad in it"

    def can_open(self, path: Path) -> bool:
        return _root_of(path) is not None

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]:
        root = _root_of(path)
        if root is None:
            raise ReaderError(path, "is not a HEST-1k folder (needs st/ and wsis/)", "point at the HEST root or at st/{id}.h5ad")
        if path.is_file():
            ids = [path.stem]
        else:
            ids = sorted(p.stem for p in (root / "st").glob("*.h5ad"))
        if options.ids:
            unknown = [i for i in options.ids if i not in ids]
            if unknown:
                raise ReaderError(
                    root / "st",
                    f"no st/{{id}}.h5ad for id(s) {', '.join(unknown)}",
                    fix(f"choose {IDS} among the {len(ids)} present (e.g. {', '.join(ids[:5])})", IDS),
                )
            ids = [i for i in ids if i in options.ids]
        if options.sample_id and len(ids) > 1:
            raise ReaderError(
                root,
                f"one sample id ({SAMPLE_ID}) given but {len(ids)} ids were found",
                fix(f"drop {SAMPLE_ID} (HEST ids are used) or pass one id ({IDS})", SAMPLE_ID, IDS),
            )
        return [SampleRef(self.name, options.sample_id or i, root, options, {"hest_id": i}) for i in ids]

    def load(self, ref: SampleRef) -> SampleSource:
        import anndata as ad

        root, opts = ref.path, ref.options
        hid = str(ref.extra["hest_id"])
        problems: list[Problem] = []
        st_path = root / "st" / f"{hid}.h5ad"
        meta_path = root / "metadata" / f"{hid}.json"
        wsi = next((root / "wsis" / f"{hid}{s}" for s in _WSI_SUFFIXES if (root / "wsis" / f"{hid}{s}").exists()), None)
        if opts.image is not None:
            wsi = opts.image
        meta: dict[str, Any] = {}
        if meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                problems.append(Problem(meta_path, f"is not valid JSON ({exc})"))
        else:
            problems.append(Problem(meta_path, "missing; HEST samples need metadata/{id}.json (organ, species, pixel size)"))
        adata = None
        try:
            adata = ad.read_h5ad(st_path)
        except Exception as exc:  # noqa: BLE001 - h5py/anndata raise many types
            problems.append(Problem(st_path, f"cannot be read as AnnData ({exc}); re-download or re-copy it"))
        spots = counts = None
        if adata is not None:
            if "spatial" not in adata.obsm:
                problems.append(Problem(st_path, "has no obsm['spatial'] (spot centres in full-resolution px)"))
            else:
                spots = spots_from_obs(adata.obs, adata.obs_names, adata.obsm["spatial"])
                x = adata.layers["counts"] if "counts" in adata.layers else adata.X
                counts = sp.csr_matrix(x)  # raw counts: checked by hestkit.validate (non-integer, NaN, ...)
        slide = None
        if wsi is None:
            problems.append(Problem(root / "wsis", f"no image for id {hid} (wsis/{hid}.tif)", fix(f"pass {IMAGE}", IMAGE)))
        else:
            try:
                slide = open_slide(wsi)
            except ReaderError as exc:
                problems.append(Problem.of(exc))
        if slide is not None and spots is not None:
            check_spots_inside(spots[spots["in_tissue"] > 0], slide, problems, st_path)
        for key in ("pixel_size_um_estimated", "pixel_size_um_embedded", "spot_diameter"):
            # present but unusable (zero, negative, text): say so, never ignore it; NaN is
            # how HEST-1k's pandas-made metadata marks an unknown value
            positive_field(meta, key, meta_path, problems, nan_is_missing=True)
        if problems or spots is None or counts is None or slide is None or wsi is None or adata is None:
            raise ValidationError(f"HEST sample {hid!r} under {root}", problems)

        tech_raw = str(meta.get("st_technology", "visium")).strip().lower()
        technology = HEST_TECHNOLOGIES.get(tech_raw, tech_raw)
        estimated = None
        if technology == "visium" and (spots["array_row"] >= 0).all():
            estimated = estimate_pixel_size_from_grid(
                visium_array_to_um(spots["array_row"], spots["array_col"]), spots[["x_px", "y_px"]]
            )
            if estimated is not None:
                um = visium_array_to_um(spots["array_row"], spots["array_col"])
                spots["x_um"], spots["y_um"] = um[:, 0], um[:, 1]
        if estimated is None:
            estimated = _float(meta.get("pixel_size_um_estimated"))
        embedded = slide.embedded_pixel_size_um or _float(meta.get("pixel_size_um_embedded"))
        slide.close()
        decision = resolve_pixel_size(
            embedded=embedded, estimated=estimated, override=opts.pixel_size_um, subject=f"{hid} ({wsi.name})"
        )
        metadata = {k: v for k, v in meta.items() if k != "id"}
        metadata["hest_id"] = hid
        for key in ("organ", "species", "patient"):
            given = getattr(opts, key)
            if given is not None:
                metadata[key] = given
        spot_um = _float(meta.get("spot_diameter")) or _DEFAULT_SPOT_UM.get(technology, 55.0)
        return SampleSource(
            sample_id=ref.sample_id,
            technology=technology,
            counts=counts,
            genes=make_unique([str(g) for g in adata.var_names]),
            gene_ids=[str(g) for g in adata.var["gene_ids"]] if "gene_ids" in adata.var else [str(g) for g in adata.var_names],
            spots=spots,
            image_path=wsi,
            pixel_size=decision,
            spot_diameter_um=spot_um,
            spot_shape="square" if technology in ("visium-hd", "xenium") else "circle",
            metadata=metadata,
            source_paths=[str(st_path), str(meta_path), str(wsi)],
            counts_path=str(st_path),
            spots_path=str(st_path),
            warnings=[decision.warning] if decision.warning else [],
        )
