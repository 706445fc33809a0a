"""Open, create and query a catalog of spot-patch pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hestkit.patches import PairSpec
from hestkit.sample import ReadOptions, SampleRef

from . import _soma
from ._store import (
    CATALOG_ENCODING,
    CATALOG_VERSION,
    MANIFEST_ENCODING,
    CommitConflict,
    Layout,
    zarr_open_array,
)
from .errors import CatalogError, CatalogVersionError, NotACatalogError, QueryError
from .views import PairView
from .writer import IngestReport, ingest_refs

__all__ = ["SAMPLE_COLUMNS", "Catalog", "create_catalog", "open_catalog"]

#: Leading columns of :meth:`Catalog.samples`.
SAMPLE_COLUMNS = [
    "sample_id",
    "technology",
    "organ",
    "species",
    "patient",
    "n_pairs",
    "n_spots",
    "n_in_tissue",
    "n_dropped_outside_image",
    "n_genes",
    "pixel_size_um",
    "pixel_size_source",
    "pixel_size_um_embedded",
    "pixel_size_um_estimated",
    "spot_diameter_um",
    "spot_shape",
    "image_path",
    "ingested_at",
    "hestkit_version",
]


def _version() -> str:
    from hestkit import __version__

    return __version__


def _major(v: str) -> int:
    try:
        return int(str(v).split(".")[0])
    except ValueError:
        return 0


class Catalog:
    """A catalog: SOMA expression + obs, zarr patches, one manifest per sample, in a local
    folder or under an ``s3://bucket/prefix`` URI.

    Use :func:`catalog.open` (read an existing one) or :func:`catalog.create`.
    """

    def __init__(self, path: str | Path) -> None:
        self.layout = Layout(path)
        #: Where the catalog lives: a local path or an ``s3://`` URI.
        self.uri = self.layout.uri
        self.layout.check_access()
        if not self.layout.exists(self.layout.catalog_json):
            raise NotACatalogError(
                f"{self.uri}: not a hestkit catalog (no catalog.json). Create one with `hestkit ingest ... --catalog {self.uri}`"
            )
        meta = self.layout.read_json(self.layout.catalog_json)
        if meta.get("encoding-type") != CATALOG_ENCODING:
            raise NotACatalogError(
                f"{self.layout.catalog_json}: encoding-type is {meta.get('encoding-type')!r}, expected {CATALOG_ENCODING!r}"
            )
        if _major(meta.get("encoding-version", "0")) > _major(CATALOG_VERSION):
            raise CatalogVersionError(
                f"{self.uri}: catalog format {meta.get('encoding-version')} was written by hestkit "
                f"{meta.get('created-by', '?')}; this hestkit reads format {CATALOG_VERSION}. Upgrade hestkit."
            )
        self.meta = meta
        ps = meta["pair-spec"]
        self.spec = PairSpec(int(ps["patch_size_px"]), float(ps["pixel_size_um"]), int(ps["jpeg_quality"]))

    @property
    def path(self) -> Path:
        """The catalog folder of a local catalog (an ``s3://`` catalog has only :attr:`uri`)."""
        return self.layout.root

    @property
    def remote(self) -> bool:
        """True when the catalog is on object storage."""
        return self.layout.remote

    # -- samples -------------------------------------------------------------
    def manifests(self) -> list[dict[str, Any]]:
        """The committed samples' manifests (the set of these files IS the catalog)."""
        out: list[dict[str, Any]] = []
        for p, m in self.layout.manifest_files():
            if m.get("encoding-type") != MANIFEST_ENCODING:
                continue
            if _major(m.get("encoding-version", "0")) > 1:
                raise CatalogVersionError(f"{p}: manifest format {m.get('encoding-version')} is newer than this hestkit reads")
            out.append(m)
        return out

    def samples(self) -> pd.DataFrame:
        """One row per committed sample, with a ``sample_id`` column and its metadata."""
        rows = []
        for m in self.manifests():
            row = {k: m.get(k) for k in SAMPLE_COLUMNS}
            for k in ("ingest_id", "patches_path", "source_paths", "warnings", "source_level"):
                row[k] = m.get(k)
            extra = m.get("metadata", {}) or {}
            for k, v in extra.items():
                if k not in row and not isinstance(v, (dict, list)):
                    row[k] = v
            rows.append(row)
        if not rows:
            return pd.DataFrame(columns=SAMPLE_COLUMNS)
        df = pd.DataFrame(rows)
        return df.sort_values("sample_id").reset_index(drop=True)

    def manifest(self, sample_id: str) -> dict[str, Any]:
        found = self.layout.read_json_etag(self.layout.manifest(sample_id))
        if found is None:
            known = ", ".join(m["sample_id"] for m in self.manifests()[:10]) or "none"
            raise QueryError(f"{self.uri}: no sample {sample_id!r} (samples: {known})")
        return dict(found[0])

    def __len__(self) -> int:
        return len(self.manifests())

    def __repr__(self) -> str:
        return f"Catalog({self.uri!r}, samples={len(self)}, pairs={self.spec.patch_size_px}px@{self.spec.pixel_size_um}um/px)"

    # -- queries -------------------------------------------------------------
    def pairs(
        self,
        organ: str | Sequence[str] | None = None,
        technology: str | Sequence[str] | None = None,
        species: str | Sequence[str] | None = None,
        sample_ids: Sequence[str] | None = None,
        patients: Sequence[str] | None = None,
        genes: Sequence[str] | None = None,
    ) -> PairView:
        """Select pairs by sample attributes (each a value or a list of values, matched
        case-insensitively) and restrict the genes. Reads obs only, never pixels."""
        manifests = self.manifests()

        def norm(v: str | Sequence[str] | None) -> set[str] | None:
            if v is None:
                return None
            vals = [v] if isinstance(v, str) else list(v)
            return {str(x).strip().lower() for x in vals}

        if sample_ids is not None:
            known = {m["sample_id"] for m in manifests}
            unknown = [s for s in sample_ids if s not in known]
            if unknown:
                raise QueryError(f"{self.uri}: unknown sample id(s) {', '.join(unknown)}; see `hestkit ls {self.uri}`")
        filters = {"organ": norm(organ), "technology": norm(technology), "species": norm(species), "patient": norm(patients)}
        chosen = []
        for m in manifests:
            if sample_ids is not None and m["sample_id"] not in set(sample_ids):
                continue
            if all(want is None or str(m.get(k) or "").strip().lower() in want for k, want in filters.items()):
                chosen.append(m)
        # genes: the union over the chosen samples, in catalog (var) order
        var = _soma.read_var(self.layout.soma) if chosen else pd.DataFrame({"var_id": [], "soma_joinid": []})
        present: set[str] = set()
        for m in chosen:
            present.update(m["genes"])
        var = var[var["var_id"].isin(present)].sort_values("soma_joinid")
        gene_list = [str(g) for g in var["var_id"]]
        var_j = var["soma_joinid"].to_numpy(dtype=np.int64)
        if genes is not None:
            pos = {g: i for i, g in enumerate(gene_list)}
            upper = {g.upper(): i for i, g in enumerate(gene_list)}
            idx, missing = [], []
            for g in genes:
                i = pos.get(g, upper.get(str(g).upper()))
                (idx.append(i) if i is not None else missing.append(g))
            if missing:
                raise QueryError(
                    f"{self.uri}: gene(s) not in the selected samples: {', '.join(map(str, missing[:20]))}"
                    f"{' ...' if len(missing) > 20 else ''} ({len(gene_list)} genes available)"
                )
            gene_list = [gene_list[i] for i in idx]
            var_j = var_j[idx]
        obs = _soma.read_obs(self.layout.soma, [m["ingest_id"] for m in chosen])
        patches = {m["sample_id"]: self.layout.join(m["patches_path"], "patches") for m in chosen}
        return PairView(self.uri, obs, gene_list, var_j, patches, self.spec)

    def sample_thumbnail(self, sample_id: str) -> tuple[np.ndarray, float]:
        """The stored thumbnail of a sample and its downsample from level 0."""
        m = self.manifest(sample_id)
        arr = zarr_open_array(self.layout.join(m["patches_path"], "thumbnail"), mode="r")
        return np.asarray(arr[:]), float(arr.attrs["downsample"])  # type: ignore[arg-type]

    # -- writing -------------------------------------------------------------
    def ingest(
        self,
        paths: Iterable[str | Path],
        *,
        technology: str = "auto",
        options: ReadOptions | None = None,
        overwrite: bool = False,
        workers: int | None = None,
        scheduler: str | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> IngestReport:
        """Scan ``paths`` with the reader registry and ingest every sample found."""
        from hestkit.readers import scan

        opts = options or ReadOptions()
        refs: list[SampleRef] = []
        for p in paths:
            refs.extend(scan(Path(p), opts, technology))
        return ingest_refs(
            self.uri,
            refs,
            self.spec,
            overwrite=overwrite,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
            version=_version(),
        )


def create_catalog(path: str | Path, spec: PairSpec | None = None, *, exist_ok: bool = True) -> Catalog:
    """Create an empty catalog at ``path`` (a folder or ``s3://bucket/prefix``), or open
    it when it exists and ``exist_ok``."""
    layout = Layout(path)
    spec = spec or PairSpec()
    layout.check_access()
    if not layout.exists(layout.catalog_json):
        _check_empty(layout)  # and again under the lock
        layout.make_root()
        with layout.writer_lock():  # concurrent creators: one creates, the others open it
            if not layout.exists(layout.catalog_json):
                _create(layout, spec)
        return Catalog(layout.uri)
    if not exist_ok:
        raise NotACatalogError(f"{layout.uri}: a catalog already exists here")
    cat = Catalog(layout.uri)
    if cat.spec != spec:
        raise QueryError(
            f"{layout.uri}: this catalog stores {cat.spec.patch_size_px} px patches at {cat.spec.pixel_size_um} um/px "
            f"(JPEG q{cat.spec.jpeg_quality}), not {spec.patch_size_px} px at {spec.pixel_size_um} um/px "
            f"(q{spec.jpeg_quality}); use another --catalog or the catalog's settings"
        )
    return cat


def _check_empty(layout: Layout) -> None:
    if not layout.is_empty():
        where = "folder" if not layout.remote else "prefix"
        raise NotACatalogError(f"{layout.uri}: {where} exists and is not empty; choose a new or empty {where} for the catalog")


def _create(layout: Layout, spec: PairSpec) -> None:
    """Write a new, empty catalog (the caller holds the writers' lock)."""
    _check_empty(layout)
    layout.make_dirs()
    _soma.create_experiment(layout.soma)
    meta = {
        "encoding-type": CATALOG_ENCODING,
        "encoding-version": CATALOG_VERSION,
        "created-by": f"hestkit {_version()}",
        "pair-spec": {
            "patch_size_px": spec.patch_size_px,
            "pixel_size_um": spec.pixel_size_um,
            "jpeg_quality": spec.jpeg_quality,
            "centre": "patches are centred on the spot centre (obs x_px, y_px)",
        },
        "elements": {
            "manifest": "one JSON per committed sample; the set of these files is the catalog's content",
            "soma": "TileDB-SOMA Experiment: obs (one row per pair), ms/RNA/var (gene union), ms/RNA/X/counts (raw)",
            "patches": "zarr v3 group per sample ingest: patches (n, size, size, 3) uint8 JPEG, thumbnail",
        },
    }
    try:
        layout.write_json(layout.catalog_json, meta, if_absent=True)
    except CommitConflict as exc:
        raise CatalogError(f"{layout.uri}: another process created a catalog here meanwhile; open it instead") from exc


def open_catalog(path: str | Path) -> Catalog:
    """Open an existing catalog."""
    return Catalog(path)
