"""Ingest: stage each sample (patches, then SOMA rows), then commit it with its manifest.

A sample is visible only once its manifest exists; the manifest is written last, in one
atomic step (a local rename, or a single conditional PUT on S3), under the writers' lock. Work runs on dask.distributed: an in-process
threaded cluster by default, or an existing cluster given by its scheduler address.
Samples are pipelined: at most ``2 x workers`` samples are in flight at once, and
each sample's slide blocks are separate tasks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hestkit.errors import HestkitError, Opt, fix
from hestkit.fixes import OVERWRITE, REPAIR, SAMPLE_ID
from hestkit.patches import PairSpec, PatchPlan, background_colour, cut_block, plan_patches
from hestkit.readers import get_reader
from hestkit.resolution import Resolution, check_upsampling
from hestkit.sample import SampleRef, SampleSource
from hestkit.slide import open_slide, thread_slide
from hestkit.validate import check_plan, check_source

from . import _soma
from ._faults import fault_point, resource_message, writing
from ._quality import absolute_path, quality_fields
from ._store import (
    GENE_LIST_ENCODING,
    GENE_LIST_VERSION,
    MANIFEST_ENCODING,
    MANIFEST_VERSION,
    PATCHES_ENCODING,
    PATCHES_VERSION,
    RETIRED_ENCODING,
    RETIRED_VERSION,
    CommitConflict,
    Layout,
    check_sample_id,
    json_bytes,
    new_ingest_id,
    zarr_open_group,
)
from ._tissue import MASK_IN_TISSUE_TECHNOLOGIES, SampleTissue, sample_tissue, with_in_tissue
from .errors import CatalogError, SampleExistsError

__all__ = [
    "SHARD_PATCHES",
    "IngestReport",
    "SampleResult",
    "gene_list_ref",
    "ingest_refs",
    "write_gene_joinids",
    "write_gene_list",
]

#: Patches per zarr shard (one patch per chunk).
SHARD_PATCHES = 64
#: Fault injection for tests: kill this process at the named point of a commit.
_KILL_ENV = "HESTKIT_TEST_KILL_AT"
#: ... only the first process to create this marker file is killed (dask retries survive).
_KILL_ONCE_ENV = "HESTKIT_TEST_KILL_ONCE"
#: ... or sleep there ("POINT:SECONDS"), to let a test observe a commit in flight.
_SLEEP_ENV = "HESTKIT_TEST_SLEEP_AT"


@dataclass(frozen=True)
class SampleResult:
    sample_id: str
    status: str  # "ingested" | "skipped" | "failed"
    message: str = ""
    n_pairs: int = 0
    n_dropped_outside: int = 0
    n_dropped_edge: int = 0
    n_edge_patches: int = 0
    upsampling_factor: float = 1.0
    pixel_size_um: float | None = None
    pixel_size_source: str | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0
    #: The library parameters ``message`` names (a failure's fix, see :class:`hestkit.errors.Opt`).
    options: tuple[Opt, ...] = ()


@dataclass
class IngestReport:
    results: list[SampleResult] = field(default_factory=list)

    @property
    def failed(self) -> list[SampleResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ingested(self) -> list[SampleResult]:
        return [r for r in self.results if r.status == "ingested"]

    @property
    def skipped(self) -> list[SampleResult]:
        return [r for r in self.results if r.status == "skipped"]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.__dict__ for r in self.results])


@dataclass(frozen=True)
class _PatchJob:
    """What a block task needs (small: no expression)."""

    image_path: Path
    centres_px: np.ndarray
    plan: PatchPlan
    spec: PairSpec
    array_path: str


@dataclass(frozen=True, eq=False)
class _Prepared:
    ref: SampleRef
    source: SampleSource
    ingest_id: str
    job: _PatchJob
    n_spots_total: int
    n_in_tissue: int
    group_path: str
    image_size: tuple[int, int]
    seconds: float
    resolution: Resolution
    tissue: SampleTissue | None = None


def fingerprint(ref: SampleRef) -> str:
    """Identity of an input: reader, path and sample id (for resuming re-runs)."""
    h = hashlib.sha1(f"{ref.reader}|{Path(ref.path).resolve()}|{ref.sample_id}".encode())
    return h.hexdigest()[:16]


def _maybe_kill(point: str) -> None:
    fault_point(point)  # a kill point is a fault point too (hooks may fill the disk here)
    sleep = os.environ.get(_SLEEP_ENV, "")
    if sleep.startswith(point + ":"):
        time.sleep(float(sleep.split(":", 1)[1]))
    if os.environ.get(_KILL_ENV) != point:
        return
    marker = os.environ.get(_KILL_ONCE_ENV)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def _prepare(root: str, ref: SampleRef, spec: PairSpec, ingest_id: str) -> _Prepared:
    """Load and plan a sample and create its patch group under ``ingest_id`` (chosen by
    the client, so a recomputation after a lost worker finds the same group and leaves the
    shards already written in place)."""
    import catalog._jpeg  # noqa: F401 - registers the codec on this worker

    t0 = time.perf_counter()
    layout = Layout(root)
    with writing(f"{ref.sample_id}: reading the sample and planning its patches"):
        source, plan, thumb, thumb_ds, size, level_ds, n_total, keep, resolution, tissue = _load_and_plan(ref, spec)
    gpath = layout.patches(source.sample_id, ingest_id)
    try:
        with writing(f"{source.sample_id}: writing its patch group", gpath):
            job = _stage_group(layout, gpath, source, plan, spec, ingest_id, thumb, thumb_ds, level_ds)
            tissue.write(layout, gpath)
    except BaseException:
        layout.remove_tree(gpath)  # nothing points at it yet
        raise
    n_in = int(keep.sum()) if tissue.in_tissue is None else int(tissue.in_tissue.sum())
    return _Prepared(
        ref, source, ingest_id, job, n_total, n_in, gpath, size, time.perf_counter() - t0, resolution, tissue
    )


def _load_and_plan(
    ref: SampleRef, spec: PairSpec
) -> tuple[SampleSource, PatchPlan, np.ndarray, float, tuple[int, int], float, int, np.ndarray, Resolution, SampleTissue]:
    source = get_reader(ref.reader).load(ref)
    check_source(source, allow_non_integer=ref.options.allow_non_integer)
    n_total = source.n_spots
    keep = source.spots["in_tissue"].to_numpy() > 0
    if source.technology in MASK_IN_TISSUE_TECHNOLOGIES:
        keep[:] = True  # pseudo-spots: no vendor tissue call; in_tissue comes from the mask below
    spots = source.spots[keep].reset_index(drop=True)
    counts = source.counts[np.flatnonzero(keep)]
    source = SampleSource(**{**source.__dict__, "spots": spots, "counts": counts})
    opts = ref.options
    with open_slide(source.image_path) as slide:
        thumb, thumb_ds = slide.thumbnail(1024)
        plan = plan_patches(
            slide,
            source.centres_px(),
            source.pixel_size.value,
            spec,
            slot_align=SHARD_PATCHES,
            edge="drop" if opts.edge == "drop" else "fill",
            background=background_colour(thumb),
        )
        check_plan(source, plan, slide)
        tissue = sample_tissue(slide, source, spec)
        source = with_in_tissue(source, tissue.in_tissue)
        size = (slide.width, slide.height)
        level_ds = slide.levels[plan.level].downsample
    resolution = check_upsampling(
        f"sample {source.sample_id!r}",
        source.image_path,
        source.pixel_size.value * level_ds,
        spec.pixel_size_um,
        allow=opts.allow_upsampling,
    )
    if resolution.warning:
        source.warnings.append(resolution.warning)
    return source, plan, thumb, thumb_ds, size, level_ds, n_total, keep, resolution, tissue


def _stage_group(
    layout: Layout,
    gpath: str,
    source: SampleSource,
    plan: PatchPlan,
    spec: PairSpec,
    ingest_id: str,
    thumb: np.ndarray,
    thumb_ds: float,
    level_ds: float,
) -> _PatchJob:
    """Create the sample's staged patch group (attributes, the empty patch array, the
    thumbnail); the blocks' tasks then fill the patch array."""
    group = zarr_open_group(gpath, mode="a")
    group.attrs.update(
        {
            "encoding-type": PATCHES_ENCODING,
            "encoding-version": PATCHES_VERSION,
            "sample_id": source.sample_id,
            "ingest_id": ingest_id,
            "patch_size_px": spec.patch_size_px,
            "pixel_size_um": spec.pixel_size_um,
            "source_level": plan.level,
            "source_level_downsample": level_ds,
            "centre_convention": "patch i is centred on obs x_px/y_px (level-0 px) of the row with patch_index i",
        }
    )
    from ._jpeg import JpegCodec

    p = spec.patch_size_px
    shape = (max(plan.n_slots, 1), p, p, 3)
    if "patches" in group and tuple(group["patches"].shape) == shape:
        pass  # recomputed after a lost worker: keep the shards written meanwhile
    else:
        group.create_array(
            "patches",
            shape=shape,
            chunks=(1, p, p, 3),
            shards=(SHARD_PATCHES, p, p, 3),
            dtype="uint8",
            serializer=JpegCodec(quality=spec.jpeg_quality),
            compressors=None,
            fill_value=0,
            dimension_names=["pair", "y", "x", "c"],
            overwrite=True,
        )
    tarr = group.create_array(
        "thumbnail", shape=thumb.shape, chunks=thumb.shape, dtype="uint8", dimension_names=["y", "x", "c"], overwrite=True
    )
    fault_point("patches:thumbnail")
    tarr[:] = thumb
    tarr.attrs["downsample"] = thumb_ds
    return _PatchJob(source.image_path, source.centres_px(), plan, spec, f"{gpath}/patches")


def _cut(job: _PatchJob, block_index: int) -> int:
    import catalog._jpeg  # noqa: F401

    from ._shards import write_patches

    block = job.plan.blocks[block_index]
    slide = thread_slide(job.image_path)  # one open slide per worker thread, not per block
    patches = cut_block(slide, job.plan, block, job.centres_px, job.spec)
    with writing("writing patches", job.array_path):
        fault_point("patches:shards")
        write_patches(job.array_path, block.slot_start, patches)
    return len(patches)


def _obs_frame(prep: _Prepared, ingest_id: str) -> pd.DataFrame:
    s = prep.source
    kept = prep.job.plan.kept
    spots = s.spots.iloc[kept].reset_index(drop=True)
    md = s.metadata

    def text(key: str) -> str:
        return _soma.obs_text(md.get(key))

    n = len(spots)
    return pd.DataFrame(
        {
            "obs_id": [f"{s.sample_id}/{ingest_id}/{b}" for b in spots["barcode"]],
            "sample_id": s.sample_id,
            "ingest_id": ingest_id,
            "barcode": spots["barcode"].astype(str),
            "organ": text("organ"),
            "technology": s.technology,
            "species": text("species"),
            "patient": text("patient"),
            "in_tissue": spots["in_tissue"].astype(np.int8),
            "array_row": spots["array_row"].astype(np.int32),
            "array_col": spots["array_col"].astype(np.int32),
            "x_px": spots["x_px"].astype(float),
            "y_px": spots["y_px"].astype(float),
            "x_um": spots["x_um"].astype(float),
            "y_um": spots["y_um"].astype(float),
            "pixel_size_um": np.full(n, s.pixel_size.value),
            "spot_size_um": np.full(n, s.spot_diameter_um),
            "patch_index": prep.job.plan.slots.astype(np.int64),
            "tissue_fraction": _tissue_fraction(prep)[kept].astype(np.float32),
        }
    )


def _tissue_fraction(prep: _Prepared) -> np.ndarray:
    """Share of each spot's patch on the tissue mask (NaN without a mask)."""
    return prep.tissue.fraction if prep.tissue is not None else np.full(prep.source.n_spots, np.nan)


def _commit(root: str, prep: _Prepared, written: Sequence[int], overwrite: bool, version: str) -> SampleResult:
    """Append the sample's SOMA rows, then write its manifest (the commit point), under
    the writers' lock. Each attempt mints its own ``ingest_id`` for the rows, so rows of
    an attempt that died (a killed worker, retried by dask) can never become visible."""
    layout = Layout(root)
    s = prep.source
    plan = prep.job.plan
    if sum(written) != plan.n_pairs:
        raise CatalogError(f"{s.sample_id}: wrote {sum(written)} patches, planned {plan.n_pairs}")
    ingest_id = new_ingest_id()
    obs = _obs_frame(prep, ingest_id)
    counts = s.counts[plan.kept]
    mpath = layout.manifest(s.sample_id)
    old_patches: str | None = None
    # the gene list first (outside the lock: it is content-addressed and idempotent); a
    # failed commit may leave it unreferenced, never a manifest without its list
    with writing(f"{s.sample_id}: writing its gene list", layout.join("genes")):
        genes_ref = write_gene_list(layout, s.genes)
    with layout.writer_lock() as lock:
        current = layout.read_json_etag(mpath)
        old_etag: str | None = None
        if current is not None:
            if not overwrite:
                raise SampleExistsError(
                    f"{s.sample_id}: already in the catalog (committed meanwhile)", fix=fix(f"pass {OVERWRITE} to replace it", OVERWRITE)
                )
            old_patches = layout.join(current[0]["patches_path"])
            old_etag = current[1]
        _check(lock)
        _maybe_kill("before-soma")
        arrays = _soma.array_uris(layout.soma)
        before = _soma.snapshot(arrays)
        undo_files: list[str] = []
        # on any failure from here until the manifest is in place, the SOMA arrays are
        # rolled back to ``before`` (schema versions of grown domains included)
        try:
            with writing(f"{s.sample_id}: appending its rows to the SOMA arrays", layout.soma):
                start, gene_map = _soma.append_rows(layout.soma, obs, counts, s.genes, s.gene_ids, rollback_on_error=False)
            _maybe_kill("after-soma")
            with writing(f"{s.sample_id}: writing its gene-list index", layout.gene_joinids(genes_ref)):
                if write_gene_joinids(layout, genes_ref, [gene_map[g] for g in s.genes]):
                    undo_files.append(layout.gene_joinids(genes_ref))  # names var joinids the rollback frees
            manifest = _manifest(layout, prep, ingest_id, start, len(obs), genes_ref, version)
            if old_patches is not None and old_patches != prep.group_path:
                # the replaced generation stays for readers that hold it; `gc` removes it later
                retired = layout.retired(old_patches)
                undo_files.append(retired)
                with writing(f"{s.sample_id}: recording its replaced patch group", retired):
                    layout.write_json(retired, retired_record(layout, current[0] if current else {}, ingest_id))
            _check(lock)
            try:
                with writing(f"{s.sample_id}: writing its manifest", mpath):
                    fault_point("manifest")
                    layout.write_json(mpath, manifest, if_absent=current is None, if_match=old_etag)
            except CommitConflict as exc:
                raise CatalogError(
                    f"{s.sample_id}: another writer committed this sample meanwhile ({exc}); nothing of this ingest is visible"
                ) from exc
        except BaseException as exc:
            if not _landed(layout, mpath, ingest_id):
                _undo(layout, lock, arrays, before, undo_files, exc)
                raise
            # the manifest landed although its write reported an error: committed
    return SampleResult(
        s.sample_id,
        "ingested",
        n_pairs=plan.n_pairs,
        n_dropped_outside=len(plan.dropped_outside),
        n_dropped_edge=len(plan.dropped_edge),
        n_edge_patches=int((plan.valid_fraction < 1.0).sum()),
        upsampling_factor=prep.resolution.factor,
        pixel_size_um=s.pixel_size.value,
        pixel_size_source=s.pixel_size.source,
        warnings=tuple(s.warnings),
    )


def _manifest(
    layout: Layout, prep: _Prepared, ingest_id: str, start: int, n_rows: int, genes_ref: str, version: str
) -> dict[str, Any]:
    s = prep.source
    plan = prep.job.plan
    md = s.metadata
    manifest: dict[str, Any] = {
        "encoding-type": MANIFEST_ENCODING,
        "encoding-version": MANIFEST_VERSION,
        "sample_id": s.sample_id,
        "ingest_id": ingest_id,
        "technology": s.technology,
        "organ": md.get("organ"),
        "species": md.get("species"),
        "patient": md.get("patient"),
        "n_spots": prep.n_spots_total,
        "n_in_tissue": prep.n_in_tissue,
        "n_pairs": plan.n_pairs,
        "n_dropped_outside_image": len(plan.dropped_outside),
        "n_genes": len(s.genes),
        "pixel_size_um": s.pixel_size.value,
        "pixel_size_source": s.pixel_size.source,
        "pixel_size_um_embedded": s.pixel_size.embedded,
        "pixel_size_um_estimated": s.pixel_size.estimated,
        "spot_diameter_um": s.spot_diameter_um,
        "spot_shape": s.spot_shape,
        "image_path": absolute_path(s.image_path),
        "image_width": prep.image_size[0],
        "image_height": prep.image_size[1],
        "source_level": plan.level,
        "source_level_downsample": plan.level_downsample,
        "patches_path": layout.relative(prep.group_path),
        "n_slots": plan.n_slots,
        "soma_joinid_start": start,
        "soma_joinid_stop": start + n_rows,
        "genes_ref": genes_ref,
        "reader": prep.ref.reader,
        "source_paths": [absolute_path(p) for p in s.source_paths],
        "source_fingerprint": fingerprint(prep.ref),
        "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hestkit_version": version,
        "warnings": s.warnings + (prep.tissue.warnings if prep.tissue is not None else []),
        "tissue": prep.tissue.manifest if prep.tissue is not None else None,
        "allow_non_integer": prep.ref.options.allow_non_integer,
        "metadata": {k: v for k, v in md.items() if k not in ("organ", "species", "patient")},
    }
    manifest.update(quality_fields(plan, prep.n_spots_total - prep.n_in_tissue, prep.resolution))
    return manifest


def retired_record(layout: Layout, old: dict[str, Any], replaced_by: str) -> dict[str, Any]:
    """The record of a patch group replaced by an overwrite (``retired/{group}.json``):
    readers that listed the old manifest may still read it; ``gc`` deletes it once it
    has been retired for longer than its ``--older-than``."""
    return {
        "encoding-type": RETIRED_ENCODING,
        "encoding-version": RETIRED_VERSION,
        "sample_id": old.get("sample_id"),
        "ingest_id": old.get("ingest_id"),
        "patches_path": old.get("patches_path"),
        "replaced_by": replaced_by,
        "retired_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "retired_at_unix": time.time(),
    }


def _landed(layout: Layout, mpath: str, ingest_id: str) -> bool:
    """Whether the manifest of ``ingest_id`` is in place despite an error (an S3 PUT whose
    answer was lost); when it cannot be read, assume it may be (never undo a commit)."""
    try:
        found = layout.read_json_etag(mpath)
    except Exception:  # noqa: BLE001 - unreadable: never undo what may be committed
        return True
    return found is not None and found[0].get("ingest_id") == ingest_id


def _undo(
    layout: Layout, lock: Any, arrays: list[str], before: dict[str, set[str]], files: list[str], exc: BaseException
) -> None:
    """Roll a failed commit back: the files it wrote under the lock (a new gene-list index,
    whose joinids the rollback frees; the retirement record), then its SOMA rows and
    schema changes.
    Only while this writer still holds the lock (an S3 lease lost meanwhile means another
    writer may be appending: its entries must stay; ours are then invisible leftovers)."""
    try:
        _check(lock)
    except Exception:  # noqa: BLE001 - any failure of the lease check means not ours any more
        exc.add_note("the catalog lock was lost: the failed attempt's SOMA entries stay (invisible); run `hestkit check`")
        return
    try:
        for f in files:
            layout.remove_file(f)
        _soma.rollback(arrays, before)
    except Exception as undo:  # noqa: BLE001 - the failure to report is the original one
        exc.add_note(f"rolling the commit back failed too ({undo}); run a catalog check with {REPAIR}")


def gene_list_ref(genes: Sequence[str]) -> str:
    """The content address of a gene list: SHA-256 (hex) of its compact JSON encoding
    (``json.dumps(genes, separators=(",", ":"), ensure_ascii=False)``, UTF-8)."""
    text = json.dumps([str(g) for g in genes], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_gene_list(layout: Layout, genes: Sequence[str]) -> str:
    """Write ``genes`` as the shared element ``genes/{sha256}.json`` unless it is already
    there, and return the hash (the manifest's ``genes_ref``). Idempotent and safe for
    concurrent writers: the content is fixed by the name, so an existing file (locally) or
    a lost conditional PUT (S3) means the same list is already stored."""
    ref = gene_list_ref(genes)
    doc = {"encoding-type": GENE_LIST_ENCODING, "encoding-version": GENE_LIST_VERSION, "genes": [str(g) for g in genes]}
    layout.write_once(layout.gene_list(ref), json_bytes(doc))
    return ref


def write_gene_joinids(layout: Layout, ref: str, joinids: Sequence[int] | np.ndarray) -> bool:
    """Store the var-joinid index of gene list ``ref`` (``genes/{ref}.joinids-v1.npy``,
    the var ``soma_joinid`` of each of its genes, in list order; int32 while joinids fit)
    unless it is there.

    Called under the writers' lock once the list's genes are in var, before the manifest
    that references the list; var only grows and a gene keeps its joinid, so the index
    of a list never changes and concurrent writers write identical bytes. Readers use it
    to find a sample's genes in var without parsing and hashing the names."""
    buf = io.BytesIO()
    j = np.asarray(joinids, dtype=np.int64)
    np.save(buf, j.astype(np.int32) if not len(j) or int(j.max()) < 2**31 else j, allow_pickle=False)
    return layout.write_once(layout.gene_joinids(ref), buf.getvalue())


def _check(lock: Any) -> None:
    """Raise if an object-storage lease was lost (a local lock cannot be)."""
    check = getattr(lock, "check", None)
    if check is not None:
        check()


def _discard(root: str, prep: _Prepared) -> None:
    Layout(root).remove_tree(prep.group_path)


def _client(workers: int | None, scheduler: str | None, dashboard: str | None = None):  # type: ignore[no-untyped-def]
    from distributed import Client

    if scheduler:
        try:
            return Client(scheduler, timeout="10s", set_as_default=False), None
        except OSError as exc:
            raise CatalogError(
                f"cannot reach the dask scheduler at {scheduler!r} ({exc}); check the address (tcp://HOST:8786)"
            ) from exc
    from ._cluster import local_client

    return local_client(workers, dashboard)


@dataclass(frozen=True)
class _TaskFailed:
    """A task's failure, returned instead of raised. A raised exception makes every dask
    worker log "Compute Failed" with the traceback at ERROR level, on stderr and past
    ``-q``, for what is an ordinary, reported outcome (a sample that fails validation);
    returned, the failure reaches the report below and nothing else. ``trace`` keeps the
    last frames of the worker's traceback for errors that are not hestkit's own."""

    exc: BaseException
    trace: str = ""


def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or :class:`_TaskFailed` when it raises an ``Exception``. A task that
    depends on failed tasks passes the first failure on without running ``fn``."""
    for arg in args:
        for x in arg if isinstance(arg, list) else (arg,):
            if isinstance(x, _TaskFailed):
                return x
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - every failure is reported per sample by ingest_refs
        trace = "" if isinstance(exc, HestkitError) else "".join(traceback.format_exception(exc)[-3:])
        return _TaskFailed(exc, trace)


def _error_text(exc: BaseException, trace: str = "") -> str:
    if isinstance(exc, HestkitError):
        return str(exc)
    short = resource_message(exc, "ingest")
    if short is not None:
        return short
    return f"{type(exc).__name__}: {exc}\n" + (trace or "".join(traceback.format_exception(exc)[-3:]))


def ingest_refs(
    root: str | Path,
    refs: Sequence[SampleRef],
    spec: PairSpec,
    *,
    overwrite: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    version: str = "",
    dashboard: str | None = None,
) -> IngestReport:
    """Ingest already-scanned samples into the catalog at ``root``.

    Existing sample ids are skipped when they come from the same input (a re-run
    resumes), refused when they come from another one, and replaced with ``overwrite``.
    ``progress(kind, done, total)`` is called as samples and blocks finish. A local
    cluster listens on 127.0.0.1 only and serves no dashboard unless ``dashboard`` gives
    its address (e.g. ``127.0.0.1:8787``).
    """
    from distributed import as_completed

    layout = Layout(root)
    report = IngestReport()
    # on object storage, one listing and concurrent GETs beat a HEAD per sample
    listed = {m.get("sample_id"): m for _, m in layout.manifest_files()} if layout.remote else None
    seen: dict[str, SampleRef] = {}
    todo: list[SampleRef] = []
    conflicts: list[str] = []
    for ref in refs:
        check_sample_id(ref.sample_id)
        if ref.sample_id in seen:
            conflicts.append(
                f"{ref.sample_id}: given twice ({seen[ref.sample_id].path} and {ref.path}); pass distinct ids ({SAMPLE_ID})"
            )
            continue
        seen[ref.sample_id] = ref
        if overwrite:
            todo.append(ref)
            continue
        if listed is not None:
            existing = listed.get(ref.sample_id)
        else:
            found = layout.read_json_etag(layout.manifest(ref.sample_id))
            existing = found[0] if found is not None else None
        if existing is not None:
            if existing.get("source_fingerprint") == fingerprint(ref):
                report.results.append(
                    SampleResult(ref.sample_id, "skipped", f"already in the catalog (pass {OVERWRITE} to re-ingest)", options=(OVERWRITE,))
                )
            else:
                conflicts.append(
                    f"{ref.sample_id}: already in the catalog from {existing.get('source_paths', ['?'])[0]}; "
                    f"pass {OVERWRITE} to replace it or {SAMPLE_ID} to ingest under another id"
                )
            continue
        todo.append(ref)
    if conflicts:
        raise SampleExistsError("refusing to ingest:\n  - " + "\n  - ".join(conflicts), fix=fix("", OVERWRITE, SAMPLE_ID))
    if not todo:
        return report

    client, cluster = _client(workers, scheduler, dashboard)
    discards: list[Any] = []
    try:
        n_workers = max(sum(client.nthreads().values()), 1)
        max_inflight = max(2, 2 * n_workers)
        root_s = layout.uri
        pending = list(todo)
        ac = as_completed(loop=client.loop)
        kinds: dict[Any, tuple[str, SampleRef, Any]] = {}
        inflight = 0
        done_samples = 0
        blocks_done = blocks_total = 0
        t_start: dict[str, float] = {}

        def submit_next() -> None:
            nonlocal inflight
            while pending and inflight < max_inflight:
                ref = pending.pop(0)
                t_start[ref.sample_id] = time.perf_counter()
                fut = client.submit(_guarded, _prepare, root_s, ref, spec, new_ingest_id(), pure=False, priority=-len(t_start))
                kinds[fut] = ("prepare", ref, None)
                ac.add(fut)
                inflight += 1

        submit_next()
        for fut in ac:
            kind, ref, prep_fut = kinds.pop(fut)
            # a task's own failure comes back as a _TaskFailed result; a task that never ran
            # to the end (a lost worker, a cancelled future) comes back erred
            failed: _TaskFailed | None = None
            result: Any = None
            if fut.status != "finished":
                failed = _TaskFailed(fut.exception())
            elif kind != "block":  # a block's result (a count or a failure) goes to its commit, not here
                result = fut.result()
                if isinstance(result, _TaskFailed):
                    failed = result
            if kind == "block":
                blocks_done += 1  # a failed block: its commit passes the failure on and reports it
                if progress:
                    progress("blocks", blocks_done, blocks_total)
                continue
            if failed is not None:
                exc = failed.exc
                report.results.append(
                    SampleResult(ref.sample_id, "failed", _error_text(exc, failed.trace), options=getattr(exc, "options", ()))
                )
                if kind == "commit" and prep_fut is not None:
                    discards.append(client.submit(_discard, root_s, prep_fut, pure=False))
                inflight -= 1
                done_samples += 1
                if progress:
                    progress("samples", done_samples, len(todo))
                submit_next()
                continue
            if kind == "prepare":
                prep: _Prepared = result
                nb = len(prep.job.plan.blocks)
                blocks_total += nb
                block_futs = [client.submit(_guarded, _cut, prep.job, i, pure=False, priority=10) for i in range(nb)]
                for bf in block_futs:
                    kinds[bf] = ("block", ref, None)
                    ac.add(bf)
                cf = client.submit(_guarded, _commit, root_s, fut, block_futs, overwrite, version, pure=False, priority=20)
                kinds[cf] = ("commit", ref, fut)
                ac.add(cf)
                if progress:
                    progress("blocks", blocks_done, blocks_total)
            else:
                res: SampleResult = result
                res = SampleResult(**{**res.__dict__, "seconds": time.perf_counter() - t_start[ref.sample_id]})
                report.results.append(res)
                inflight -= 1
                done_samples += 1
                if progress:
                    progress("samples", done_samples, len(todo))
                submit_next()
    finally:
        if discards:  # a failed sample's staging is gone before ingest returns
            from distributed import wait

            try:
                wait(discards, timeout=120)
            except Exception:  # noqa: BLE001 - leftovers are `hestkit check --repair`'s job
                pass
        client.close()
        if cluster is not None:
            cluster.close()
    return report
