"""Open, create and query a catalog of spot-patch pairs."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hestkit.errors import fix
from hestkit.fixes import AUTO, OVERWRITE, Z_UM
from hestkit.patches import PairSpec
from hestkit.sample import ReadOptions, SampleRef
from hestkit.volume import VolumeLike, VolumePairSpec
from hestkit.volume_readers import NgffVolume

from . import _soma
from . import volumes as _vol
from ._genes import MeasuredGenes, resolve_genes
from ._quality import valid_fractions
from ._store import (
    CATALOG_ENCODING,
    CATALOG_VERSION,
    GENE_LIST_ENCODING,
    GENE_LIST_VERSION,
    MANIFEST_ENCODING,
    MANIFEST_VERSION,
    CommitConflict,
    Layout,
    check_sample_id,
    read_json,
    zarr_open_array,
)
from ._varlookup import VarLookup, share_gene_list
from .errors import CatalogError, CatalogVersionError, NotACatalogError, QueryError
from .views import PairView
from .volume_views import VolumePairView
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
    "n_dropped_edge",
    "n_dropped_not_in_tissue",
    "n_edge_patches",
    "n_genes",
    "pixel_size_um",
    "pixel_size_source",
    "pixel_size_um_embedded",
    "pixel_size_um_estimated",
    "source_pixel_size_um",
    "upsampling_factor",
    "spot_diameter_um",
    "spot_shape",
    "image_path",
    "ingested_at",
    "hestkit_version",
]


#: Parsed manifests per manifest folder: file name -> ((inode, mtime_ns, size), manifest).
_MANIFEST_CACHE: dict[str, dict[str, tuple[tuple[int, int, int], dict[str, Any]]]] = {}
#: Gene lists of 2.x manifests by their content hash (``genes_ref``), loaded on demand
#: and kept for the process (the hash names the content, so it holds for any catalog).
_GENE_LISTS_BY_REF: dict[str, list[str]] = {}
#: var lookups per SOMA experiment (see :meth:`Catalog._var_lookup`).
_VAR_CACHE: dict[str, VarLookup] = {}

_REINGEST = fix(f"re-ingest the sample with {OVERWRITE}", OVERWRITE)


def _obs_constants(m: dict[str, Any]) -> dict[str, Any]:
    """A manifest's values of the per-sample obs columns (see :func:`_soma.read_obs_ranges`)."""
    out = {k: m.get(k) for k in ("sample_id", "ingest_id", "organ", "technology", "species", "patient", "pixel_size_um")}
    out["spot_size_um"] = m.get("spot_diameter_um")
    return {k: v for k, v in out.items() if v is not None or k in ("organ", "species", "patient")}


def _read_id(uri: str, value: object, kind: str = "sample") -> str:
    """``value`` if it is a valid sample (or volume) id, else a :class:`QueryError`: ids
    are checked on every read path as on write, so no id can name a file outside its
    folder (``../catalog`` would read catalog.json as a manifest)."""
    if isinstance(value, str):
        try:
            return check_sample_id(value)
        except CatalogError:
            pass
    raise QueryError(
        f"{uri}: {value!r} is not a {kind} id (ids are 1-128 letters, digits, '.', '_' or '-', starting with a "
        f"letter or digit); see `hestkit ls {uri}` for the {kind} ids of this catalog"
    )


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
                f"{self.uri}: not a hestkit catalog (no catalog.json). Create one by ingesting into it "
                f"(catalog.create({self.uri!r}).ingest(...), or hestkit ingest)"
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
        """The committed samples' manifests (the set of these files IS the catalog).

        Parsed manifests are cached per process and re-read only when a file changes
        (inode, mtime or size), so repeated queries list the folder but parse nothing.
        Treat the returned dicts as read-only.
        """
        out: list[dict[str, Any]] = []
        entries: list[tuple[str, dict[str, Any]]] = []
        if self.layout.remote:
            for p, m in self.layout.manifest_files():
                share_gene_list(m)
                entries.append((p, m))
        else:
            d = Path(self.layout.manifest_dir)
            if not d.exists():
                return out
            cache = _MANIFEST_CACHE.setdefault(str(d.resolve()), {})
            seen: set[str] = set()
            for entry in sorted(os.scandir(d), key=lambda e: e.name):
                name = entry.name
                if name.startswith(".") or not name.endswith(".json"):
                    continue
                st = entry.stat()
                key = (st.st_ino, st.st_mtime_ns, st.st_size)
                seen.add(name)
                hit = cache.get(name)
                if hit is not None and hit[0] == key:
                    m = hit[1]
                else:
                    m = read_json(Path(entry.path))
                    share_gene_list(m)
                    cache[name] = (key, m)
                entries.append((entry.path, m))
            for name in set(cache) - seen:
                cache.pop(name, None)
        for p, m in entries:
            if m.get("encoding-type") != MANIFEST_ENCODING:
                continue
            if _major(m.get("encoding-version", "0")) > _major(MANIFEST_VERSION):
                raise CatalogVersionError(
                    f"{p}: manifest format {m.get('encoding-version')} is newer than this hestkit reads "
                    f"({MANIFEST_VERSION}); upgrade hestkit"
                )
            out.append(m)
        return out

    def sample_genes(self, manifest: dict[str, Any]) -> list[str]:
        """A sample's gene list, in its source's order: inline in a 1.x manifest, else the
        shared ``genes/{genes_ref}.json``, read on first use and cached per process.
        Treat the returned list as read-only (samples with the same genes share it)."""
        inline = manifest.get("genes")
        if inline is not None:
            return list(inline) if not isinstance(inline, list) else inline
        ref = manifest.get("genes_ref")
        sid = manifest.get("sample_id", "?")
        if not isinstance(ref, str) or not ref:
            raise CatalogError(
                f"{self.layout.manifest(str(sid))}: manifest has neither 'genes' nor 'genes_ref'", fix=_REINGEST
            )
        genes = _GENE_LISTS_BY_REF.get(ref)
        if genes is None:
            uri = self.layout.gene_list(ref)
            try:
                doc = self.layout.read_json(uri)
            except FileNotFoundError:
                doc = None
            if doc is None:
                raise CatalogError(
                    f"{uri}: gene list of sample {sid!r} is missing (the catalog is damaged)", fix=_REINGEST
                )
            if doc.get("encoding-type") != GENE_LIST_ENCODING or _major(doc.get("encoding-version", "0")) > _major(
                GENE_LIST_VERSION
            ):
                raise CatalogVersionError(
                    f"{uri}: encoding {doc.get('encoding-type')!r} {doc.get('encoding-version')!r}, expected "
                    f"{GENE_LIST_ENCODING!r} {GENE_LIST_VERSION}; upgrade hestkit or re-ingest the sample"
                )
            genes = doc.get("genes")
            if not isinstance(genes, list):
                raise CatalogError(f"{uri}: 'genes' is not a list of gene names", fix=_REINGEST)
            _GENE_LISTS_BY_REF[ref] = genes
        return genes

    def _indexed_joinids(self, vl: VarLookup, refs: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored var-joinid indexes of gene lists ``refs`` (those present and valid;
        a missing or unreadable one is left out and its names are mapped instead)."""
        uris = {self.layout.gene_joinids(r): r for r in refs}
        out: dict[str, np.ndarray] = {}
        for uri, data in self.layout.read_many(list(uris)).items():
            try:
                j = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError):
                continue
            if isinstance(j, np.ndarray) and vl.accept_index(j):
                out[uris[uri]] = j.astype(np.int64, copy=False)
        return out

    def gene_joinids(self, manifest: dict[str, Any]) -> np.ndarray:
        """The var ``soma_joinid`` of each of a sample's genes (the columns of its counts in
        ``ms/RNA/X/counts``), from the stored index of its gene list when there is one."""
        vl = self._var_lookup(self.manifests())
        return vl.joinids_of(manifest, self.sample_genes, lambda refs: self._indexed_joinids(vl, refs))

    def index_gene_lists(self, progress: Callable[[str, int, int], None] | None = None) -> int:
        """Write the var-joinid index (``genes/{sha256}.joinids-v1.npy``) of every gene list
        of a committed sample that lacks one; returns how many were written.

        Ingest writes the index with each new list; catalogs written before the index
        existed lack it, and their queries map gene names instead (correct, slower). Safe
        beside running readers and writers: an index is derived from the list and var
        alone, never changes, and is stored only where absent."""
        from .writer import write_gene_joinids

        manifests = self.manifests()
        vl = self._var_lookup(manifests)
        refs = sorted({str(m["genes_ref"]): m for m in manifests if m.get("genes_ref")}.items())
        have = set(self.layout.names_in(self.layout.join("genes")))
        todo = [(r, m) for r, m in refs if self.layout.gene_joinids(r).rsplit("/", 1)[-1] not in have]
        written = 0
        for k, (ref, m) in enumerate(todo):
            genes = self.sample_genes(m)
            j = vl.lookup(genes)
            if (j < 0).any():
                missing = [g for g, x in zip(genes, j.tolist(), strict=True) if x < 0][:5]
                raise CatalogError(
                    f"{self.layout.gene_list(ref)}: gene(s) {', '.join(missing)} of sample {m.get('sample_id')!r} are not "
                    "in var (the catalog is damaged)",
                    fix=_REINGEST,
                )
            written += bool(write_gene_joinids(self.layout, ref, j))
            if progress is not None:
                progress("index gene lists", k + 1, len(todo))
        return written

    def compact(self, progress: Callable[[str, int, int], None] | None = None) -> list[str]:
        """Merge the TileDB fragments of the catalog's SOMA arrays into one per array, and
        write any missing gene-list index; returns the arrays compacted.

        Every commit adds a fragment to obs and to each X layer, and a read pays a cost
        per fragment (a HEST-1k-sized catalog ingested sample by sample holds 1,229; the
        effect on its queries is in `docs/benchmarks.md`). Holds the writers' lock
        throughout (ingests wait for it);
        values, joinids and manifests do not change. Run it when no job is reading the
        catalog: a read that began before an array's old fragments are deleted may fail
        (run it again); reads that start afterwards see the merged array."""
        from .check import gc_catalog

        with self.layout.writer_lock(timeout_s=3600.0):
            done = _soma.consolidate(self.layout.soma, progress=progress)
        self.index_gene_lists(progress=progress)
        gc_catalog(self.uri)  # replaced patch generations older than the default age
        return done

    def _var_lookup(self, manifests: Sequence[dict[str, Any]]) -> VarLookup:
        """var names by joinid and a name -> joinid map, cached per process until the
        set of committed ingests changes (var only grows, and only by commits)."""
        sig = tuple(m["ingest_id"] for m in manifests)
        key = self.layout.soma if self.layout.remote else str(Path(self.layout.soma).resolve())
        vl = _VAR_CACHE.get(key)
        if vl is None or vl.signature != sig:
            var = _soma.read_var(self.layout.soma)
            vl = VarLookup(
                sig,
                var["var_id"].astype(str).to_numpy(),
                var["soma_joinid"].to_numpy(dtype=np.int64),
                var["gene_id"].astype(str).to_numpy() if "gene_id" in var else None,
            )
            old = _VAR_CACHE.get(key)
            if old is not None and len(old.names) <= len(vl.names) and np.array_equal(old.names, vl.names[: len(old.names)]):
                vl.inherit(old)  # same catalog, var grew: old joinids still hold
            _VAR_CACHE[key] = vl
        return vl

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
        _read_id(self.uri, sample_id)
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
        min_tissue_fraction: float | None = None,
    ) -> PairView:
        """Select pairs by sample attributes (each a value or a list of values, matched
        case-insensitively) and restrict the genes. Reads obs only, never pixels.

        ``min_tissue_fraction`` keeps the pairs whose patch is at least that share on the
        sample's tissue mask (obs ``tissue_fraction``); samples without one raise."""
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
        _check_filter_values(
            self.uri, {"organ": organ, "technology": technology, "species": species, "patient": patients}, manifests
        )
        chosen = []
        for m in manifests:
            if sample_ids is not None and m["sample_id"] not in set(sample_ids):
                continue
            if all(want is None or str(m.get(k) or "").strip().lower() in want for k, want in filters.items()):
                chosen.append(m)
        # genes: the union over the chosen samples, in catalog (var) order
        vl = self._var_lookup(manifests) if chosen else VarLookup((), np.zeros(0, object), np.zeros(0, np.int64))
        present = vl.present(chosen, self.sample_genes, lambda refs: self._indexed_joinids(vl, refs))
        var_j = np.flatnonzero(present).astype(np.int64)
        gene_list = vl.names[var_j].tolist()
        if genes is not None:
            idx, missing, hints = resolve_genes(genes, vl.names, vl.gene_ids, present)
            if missing:
                near = "".join(f"; {g}: did you mean {' or '.join(h)}? (names are case-sensitive)" for g, h in hints.items())
                raise QueryError(
                    f"{self.uri}: gene(s) not in the selected samples: {', '.join(map(str, missing[:20]))}"
                    f"{' ...' if len(missing) > 20 else ''} ({len(gene_list)} genes available; a gene is named by "
                    f"its symbol or its id){near}"
                )
            var_j = np.asarray(idx, dtype=np.int64)
            gene_list = vl.names[var_j].tolist()
        obs = _soma.read_obs_ranges(
            self.layout.soma,
            [(int(m["soma_joinid_start"]), int(m["soma_joinid_stop"]), m["ingest_id"]) for m in chosen],
            [_obs_constants(m) for m in chosen],
        )
        obs["patch_valid_fraction"] = valid_fractions(chosen, obs)
        patches = {m["sample_id"]: self.layout.join(m["patches_path"], "patches") for m in chosen}
        indexed = lambda refs: self._indexed_joinids(vl, refs)  # noqa: E731
        measured = MeasuredGenes({m["sample_id"]: vl.joinids_of(m, self.sample_genes, indexed) for m in chosen})
        view = PairView(self.uri, obs, gene_list, var_j, patches, self.spec, measured=measured)
        if min_tissue_fraction is not None:
            from ._tissue import tissue_rows

            view = view.subset(tissue_rows(obs, min_tissue_fraction, self.uri))
        return view

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
        dashboard: str | None = None,
    ) -> IngestReport:
        """Scan ``paths`` with the reader registry and ingest every sample found.

        A local cluster serves the dask dashboard only when ``dashboard`` gives its
        address (e.g. ``127.0.0.1:8787``); otherwise it listens on 127.0.0.1 alone."""
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
            dashboard=dashboard,
        )

    # -- volumes ---------------------------------------------------------------
    def ingest_volume(
        self,
        path: str | Path | VolumeLike,
        volume_id: str,
        voxel_size_um: Sequence[float] | None = None,
        *,
        modality: str = "microct",
        organ: str | None = None,
        species: str | None = None,
        patient: str | None = None,
        channel_names: Sequence[str] | None = None,
        intensity_range: tuple[float, float] | None = None,
        overwrite: bool = False,
        metadata: dict[str, Any] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> _vol.VolumeIngestResult:
        """Store a 3D volume (3D TIFF / OME-TIFF, OME-Zarr, folder of slices, a section-stack
        CSV, or any :class:`~hestkit.volume.VolumeLike`) as an OME-Zarr multiscale image and
        commit it to the volume table. ``voxel_size_um`` is (z, y, x) micrometres; it
        overrides the file's. The volume lands whole or not at all."""
        _vol.require_local(self.layout, "ingest-volume")
        return _vol.ingest_volume(
            self.path,
            path,
            volume_id,
            voxel_size_um=voxel_size_um,
            modality=modality,
            organ=organ,
            species=species,
            patient=patient,
            channel_names=channel_names,
            intensity_range=intensity_range,
            overwrite=overwrite,
            metadata=metadata,
            progress=progress,
            version=_version(),
        )

    def ingest_section_stack(
        self,
        images: Sequence[str | Path],
        affines: Sequence[Any],
        section_spacing_um: float,
        volume_id: str,
        *,
        pixel_size_um: float,
        shape_yx: tuple[int, int] | None = None,
        organ: str | None = None,
        species: str | None = None,
        patient: str | None = None,
        overwrite: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> _vol.VolumeIngestResult:
        """Assemble a volume from registered serial-section H&E images: plane ``k`` is image
        ``k`` warped by ``affines[k]`` (level-0 px (x, y) -> volume um (x, y)), planes
        ``section_spacing_um`` apart, in-plane voxels of ``pixel_size_um``."""
        _vol.require_local(self.layout, "a section stack")
        from hestkit.volume_stack import SectionStackVolume

        stack = SectionStackVolume(images, affines, section_spacing_um, pixel_size_um=pixel_size_um, shape_yx=shape_yx)
        return self.ingest_volume(
            stack,
            volume_id,
            modality="he-stack",
            organ=organ,
            species=species,
            patient=patient,
            overwrite=overwrite,
            metadata={"section_images": [str(p) for p in images], "section_spacing_um": section_spacing_um},
            progress=progress,
        )

    def volumes(self) -> pd.DataFrame:
        """One row per committed volume: id, modality, shape (z, y, x), voxel size (um), channels, ..."""
        return _vol.volumes_frame(self.layout)

    def volume_manifest(self, volume_id: str) -> dict[str, Any]:
        _read_id(self.uri, volume_id, "volume")
        return _vol.volume_manifest(self.layout, volume_id)

    def volume(self, volume_id: str) -> NgffVolume:
        """The stored volume as a :class:`~hestkit.volume.VolumeLike` (lazy, multiscale)."""
        _read_id(self.uri, volume_id, "volume")
        return _vol.open_catalog_volume(self.layout, volume_id)

    def link_section(
        self,
        sample_id: str,
        volume_id: str,
        z_um: float | None = None,
        affine: Any = None,
        landmarks: Any = None,
        *,
        auto: bool = False,
        z_range_um: tuple[float, float] | None = None,
        min_score: float = 0.3,
        min_confidence: float = 0.35,
        overwrite: bool = False,
        max_residual_um: float | None = None,
    ) -> _vol.SectionLink:
        """Record where an ingested 2D ST sample lies in a volume: plane depth ``z_um`` and an
        affine from the sample's level-0 pixels (x, y) to the volume's in-plane um (x, y),
        given as a 3x3 matrix (array, :class:`~hestkit.geometry.Affine` or file) or fitted
        to >= 3 landmark pairs (``(src_px, dst_um)`` arrays or an ``x_px,y_px,x_um,y_um`` CSV).
        The result's ``residuals_um`` are the landmark residuals (empty for a matrix).

        ``auto=True`` finds the depth and the affine by itself (no landmarks): the sample's H&E
        is registered to the volume's planes (:func:`hestkit.section_registration.register_section`;
        ``z_range_um`` limits the depths searched); a fit under ``min_score`` /
        ``min_confidence`` is refused with the fix, and the fit's report is stored with the link."""
        _vol.require_local(self.layout, "link-section")
        m = self.manifest(sample_id)
        obs = _soma.read_obs(self.layout.soma, [m["ingest_id"]])
        fit: dict[str, Any] | None = None
        if auto:
            if affine is not None or landmarks is not None or z_um is not None:
                raise _vol.LinkError(
                    f"link {sample_id} -> {volume_id}: {AUTO} finds the depth and affine",
                    fix=fix(f"give none of z_um, affine, landmarks with {AUTO}", AUTO),
                )
            reg = _vol.register_sample(self.layout, m, volume_id, z_range_um=z_range_um, min_score=min_score, min_confidence=min_confidence)
            z_um, affine = reg.z_um, reg.affine
            fit = {
                "method": "masked NCC of tissue density, coarse-to-fine (hestkit.section_registration)",
                "score": reg.score,
                "confidence": reg.confidence,
                "rotation_deg": reg.rotation_deg,
                "scale": reg.scale,
                "residuals_um": reg.residuals_um.tolist(),
                "depths_um": reg.depths_um.tolist(),
                "depth_profile": reg.depth_profile.tolist(),
                "z_range_um": list(z_range_um) if z_range_um else None,
            }
        if z_um is None:
            raise _vol.LinkError(
                f"link {sample_id} -> {volume_id}: no depth for the section plane",
                fix=fix(f"give the plane's depth ({Z_UM}) or let {AUTO} find it", Z_UM, AUTO),
            )
        return _vol.link_section(
            self.path,
            sample_id,
            volume_id,
            z_um,
            affine=affine,
            landmarks=landmarks,
            sample_obs=obs,
            sample_manifest=m,
            overwrite=overwrite,
            max_residual_um=max_residual_um,
            fit=fit,
        )

    def plot_section_link(self, sample_id: str) -> Any:
        """A matplotlib ``Figure`` of a sample's placement in its volume (plane, placed section,
        overlay, and the depth profile of an automatic fit)."""
        return _vol.plot_link(self.layout, self.manifest(sample_id), self.section_link(sample_id))

    def sections(self, volume_id: str | None = None) -> pd.DataFrame:
        """One row per linked section (sample_id, volume_id, z_um, affine, residuals, ...)."""
        if volume_id is not None:
            _read_id(self.uri, volume_id, "volume")
            _vol.volume_manifest(self.layout, volume_id)
        return _vol.sections_frame(self.layout, volume_id)

    def section_link(self, sample_id: str) -> _vol.SectionLink:
        _read_id(self.uri, sample_id)
        p = self.layout.section(sample_id)
        if not p.exists():
            raise QueryError(f"{self.path}: sample {sample_id!r} is not linked to a volume; use `hestkit link-section`")
        return _vol.link_from_json(read_json(p))

    def volume_pairs(
        self,
        volume_ids: Sequence[str] | None = None,
        sample_ids: Sequence[str] | None = None,
        genes: Sequence[str] | None = None,
        spec: VolumePairSpec | None = None,
    ) -> VolumePairView:
        """3D pairs: one per spot of the linked sections (of ``volume_ids`` / ``sample_ids``)
        whose centre lies inside its volume. Reads obs only, never voxels."""
        spec = spec or VolumePairSpec()
        known_v = {m["volume_id"]: m for m in _vol.volume_manifests(self.layout)}
        if volume_ids is not None:
            unknown = [v for v in volume_ids if v not in known_v]
            if unknown:
                raise QueryError(f"{self.path}: unknown volume id(s) {', '.join(unknown)}; see `hestkit ls {self.path}`")
        committed = {m["sample_id"] for m in self.manifests()}
        links = [
            _vol.link_from_json(m)
            for m in _vol.section_links(self.layout)
            if m["volume_id"] in known_v
            and m["sample_id"] in committed
            and (volume_ids is None or m["volume_id"] in set(volume_ids))
            and (sample_ids is None or m["sample_id"] in set(sample_ids))
        ]
        if sample_ids is not None:
            linked = {lk.sample_id for lk in links}
            missing = [s for s in sample_ids if s not in linked]
            if missing:
                raise QueryError(
                    f"{self.path}: sample(s) {', '.join(missing)} are not linked to a selected volume; use `hestkit link-section`"
                )
        if not links:
            raise QueryError(f"{self.path}: no sections are linked to the selected volumes; link one with `hestkit link-section`")
        chans = {lk.volume_id: int(known_v[lk.volume_id]["channels"]) for lk in links}
        if len(set(chans.values())) > 1:
            detail = ", ".join(f"{v}: {c}" for v, c in sorted(chans.items()))
            raise QueryError(
                f"{self.path}: the selected volumes differ in channel count ({detail}); a model takes one channel layout. "
                "Fix: select volumes of one modality (volume_ids=...)"
            )
        by_sample = {lk.sample_id: lk for lk in links}
        pv = self.pairs(sample_ids=sorted(by_sample), genes=genes)
        obs = pv.obs
        zyx = np.zeros((len(obs), 3))
        vids = np.empty(len(obs), dtype=object)
        sids = obs["sample_id"].to_numpy()
        for sid, lk in by_sample.items():
            rows = np.flatnonzero(sids == sid)
            zyx[rows] = lk.to_volume_um(obs[["x_px", "y_px"]].to_numpy(dtype=float)[rows])
            vids[rows] = lk.volume_id
        ext = np.array([known_v[v]["extent_um"] for v in vids]) if len(obs) else np.zeros((0, 3))
        inside = (zyx >= 0).all(axis=1) & (zyx[:, 1] < ext[:, 1]) & (zyx[:, 2] < ext[:, 2]) & (zyx[:, 0] <= ext[:, 0])
        keep = np.flatnonzero(inside)
        pv = pv.subset(keep)
        new = pv.obs.rename(columns={"x_um": "x_um_tech", "y_um": "y_um_tech"}).copy()
        new["volume_id"] = vids[keep].astype(str)
        new["z_um"], new["y_um"], new["x_um"] = zyx[keep, 0], zyx[keep, 1], zyx[keep, 2]
        vols = {
            v: (str(self.layout.root / known_v[v]["zarr_path"]), tuple(float(a) for a in known_v[v]["voxel_size_um"]))
            for v in set(new["volume_id"])
        }
        fills = {v: 255 if known_v[v].get("modality") == "he-stack" else 0 for v in vols}
        return VolumePairView(pv, new, vols, spec, fills)  # type: ignore[arg-type]

    # -- slides (WSIs without ST: catalog.slides) ---------------------------------
    def slides(self) -> pd.DataFrame:
        """The slide table (``hestkit add-slides``): one row per slide, labels as columns."""
        from .slides import slides_frame

        return slides_frame(self.layout)

    def slide_manifest(self, slide_id: str) -> dict[str, Any]:
        """The manifest of one slide of the slide table."""
        from .slides import slide_manifest

        return slide_manifest(self.layout, slide_id)


def create_catalog(path: str | Path, spec: PairSpec | None = None, *, exist_ok: bool = True) -> Catalog:
    """Create an empty catalog at ``path`` (a folder or ``s3://bucket/prefix``), or open
    it when it exists and ``exist_ok``."""
    layout = Layout(path)
    spec = spec or PairSpec()
    layout.check_access()
    if not layout.exists(layout.catalog_json):
        from ._faults import writing

        _check_empty(layout)  # and again under the lock
        with writing("creating the catalog", layout.uri):
            layout.make_root()
            with layout.writer_lock():  # concurrent creators: one creates, the others open it
                if not layout.exists(layout.catalog_json):
                    _create(layout, spec)  # a creation that died half-way is redone
        return Catalog(layout.uri)
    if not exist_ok:
        raise NotACatalogError(f"{layout.uri}: a catalog already exists here")
    cat = Catalog(layout.uri)
    if cat.spec != spec:
        raise QueryError(
            f"{layout.uri}: this catalog stores {cat.spec.patch_size_px} px patches at {cat.spec.pixel_size_um} um/px "
            f"(JPEG q{cat.spec.jpeg_quality}), not {spec.patch_size_px} px at {spec.pixel_size_um} um/px "
            f"(q{spec.jpeg_quality}); use another catalog or the catalog's settings"
        )
    return cat


#: What a catalog's creation writes before ``catalog.json`` (its last step): a folder
#: holding only these is a creation in progress, or one that died.
_CREATION_ENTRIES = frozenset({"manifest", "patches", "soma"})
_TILEDB_GROUP = frozenset({"__tiledb_group.tdb", "__group", "__meta"})


def _check_empty(layout: Layout) -> bool:
    """Refuse a folder that holds something else than a catalog being created; returns
    whether it holds such a partial creation."""
    names = {n for n in layout.names_in(layout.uri) if not n.startswith(".")} if not layout.is_empty() else set()
    if names - _CREATION_ENTRIES:
        where = "folder" if not layout.remote else "prefix"
        raise NotACatalogError(f"{layout.uri}: {where} exists and is not empty; choose a new or empty {where} for the catalog")
    return bool(names)


def _create(layout: Layout, spec: PairSpec) -> None:
    """Write a new, empty catalog (the caller holds the writers' lock, so a partial
    creation found here is one whose creator died: it holds no sample and is redone)."""
    if _check_empty(layout):
        soma = set(layout.names_in(layout.soma))
        if layout.names_in(layout.manifest_dir) or layout.names_in(layout.patches_dir) or (soma and not soma & _TILEDB_GROUP):
            raise NotACatalogError(
                f"{layout.uri}: holds catalog folders but no catalog.json; restore catalog.json or choose another folder"
            )
        for d in ("soma", "manifest", "patches"):
            layout.remove_tree(layout.join(d))
    layout.make_dirs()
    _soma.create_experiment(layout.soma)
    from .writer import _maybe_kill

    _maybe_kill("create")
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
            "genes": "genes/{sha256}.json: one gene list per distinct list, referenced by manifests' genes_ref; "
            "genes/{sha256}.joinids-v1.npy: its var joinids",
            "soma": "TileDB-SOMA Experiment: obs (one row per pair), ms/RNA/var (gene union), ms/RNA/X/counts (raw, "
            "row-major), ms/RNA/X/counts_by_gene (the same, gene-major)",
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


#: Technologies hestkit reads; one of these absent from a catalog selects nothing (no error).
KNOWN_TECHNOLOGIES = frozenset({"visium", "visium-hd", "xenium", "st"})


def _check_filter_values(
    uri: str, filters: dict[str, str | Sequence[str] | None], manifests: Sequence[dict[str, Any]]
) -> None:
    """A filter value that no sample of the catalog has is a typo, not an empty selection:
    raise naming the field, the value, the catalog's values and the closest one."""
    import difflib

    problems = []
    for field, raw in filters.items():
        if raw is None:
            continue
        values = [raw] if isinstance(raw, str) else list(raw)
        have = sorted({str(m.get(field) or "").strip() for m in manifests} - {""})
        lower = {h.lower(): h for h in have}
        for value in values:
            if str(value).strip().lower() in lower:
                continue
            if field == "technology" and str(value).strip().lower() in KNOWN_TECHNOLOGIES:
                continue  # a real technology this catalog lacks: an empty selection, not a typo
            close = difflib.get_close_matches(str(value).strip().lower(), list(lower), n=1, cutoff=0.6)
            hint = f" (did you mean {lower[close[0]]!r}?)" if close else ""
            listed = (", ".join(have[:20]) + (" ..." if len(have) > 20 else "")) if have else "none recorded"
            problems.append(f"no sample has {field} {value!r}{hint}; the catalog's values: {listed}")
    if problems:
        raise QueryError(f"{uri}: " + "; ".join(problems))
