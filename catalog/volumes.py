"""Volumes in the catalog: ingest (OME-Zarr, block by block, committed by a manifest), the
volume and section tables, and linking 2D ST sections into a volume's frame.

A volume is visible once ``volume-manifest/{volume_id}.json`` exists; it is written last,
atomically, under the catalog lock, after the OME-Zarr image is complete. A failed ingest
deletes its staged image; a crashed one leaves an unreferenced folder that no reader sees.
A section link (``sections/{sample_id}.json``) is one atomic file, written under the lock
after every check has passed.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from hestkit.errors import HestkitError, Opt, ReaderError, VolumeError, fix
from hestkit.fixes import AFFINE, LANDMARKS, MODALITY, OVERWRITE, PIXEL_SIZE_UM, VOLUME_ID, Z_UM
from hestkit.geometry import Affine, fit_affine
from hestkit.ngff import NgffVolumeWriter
from hestkit.volume import VolumeLike, VolumePairSpec, volume_extent_um
from hestkit.volume_readers import NgffVolume, VolumeSource, open_volume

from ._store import (
    SECTION_ENCODING,
    SECTION_VERSION,
    VOLUME_ENCODING,
    VOLUME_MANIFEST_ENCODING,
    VOLUME_MANIFEST_VERSION,
    VOLUME_VERSION,
    Layout,
    atomic_write_json,
    check_sample_id,
    new_ingest_id,
    read_json,
)
from .errors import CatalogError, CatalogVersionError, LinkError, QueryError, VolumeExistsError

__all__ = [
    "MODALITIES",
    "SECTION_COLUMNS",
    "VOLUME_CHUNKS_ZYX",
    "VOLUME_COLUMNS",
    "SectionLink",
    "VolumeIngestResult",
    "ingest_volume",
    "link_section",
    "read_affine_file",
    "read_landmarks",
    "section_links",
    "sections_frame",
    "volume_manifests",
    "volumes_frame",
]

#: Modalities of the volume table and their expected channel counts (None: any).
MODALITIES: dict[str, int | None] = {"microct": 1, "otls": None, "he-stack": 3}
#: Chunk shape (z, y, x) of stored volumes (one channel per chunk).
VOLUME_CHUNKS_ZYX = (16, 256, 256)
#: Leading columns of :meth:`Catalog.volumes`.
VOLUME_COLUMNS = [
    "volume_id",
    "modality",
    "organ",
    "species",
    "patient",
    "shape_zyx",
    "voxel_size_um",
    "extent_um",
    "channels",
    "n_levels",
    "voxel_size_source",
    "n_sections",
    "ingested_at",
]
#: Leading columns of :meth:`Catalog.sections`.
SECTION_COLUMNS = [
    "sample_id",
    "volume_id",
    "z_um",
    "affine_source",
    "n_landmarks",
    "residual_rms_um",
    "residual_max_um",
    "n_spots",
    "n_spots_inside",
    "linked_at",
]
#: Relative disagreement between a link's affine scale and the sample's pixel size that
#: adds a warning (an affine in the wrong units is the usual cause).
SCALE_TOLERANCE = 0.05


def _major(v: str) -> int:
    try:
        return int(str(v).split(".")[0])
    except ValueError:
        return 0


@dataclass(frozen=True)
class VolumeIngestResult:
    volume_id: str
    ingest_id: str
    shape_zyx: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]
    channels: int
    n_levels: int
    seconds: float
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class SectionLink:
    """Where a 2D ST sample lies in a volume: depth ``z_um`` and the in-plane affine from the
    sample's level-0 pixels ``(x, y)`` to the volume's micrometres ``(x_um, y_um)``."""

    sample_id: str
    volume_id: str
    z_um: float
    affine: Affine
    affine_source: str
    residuals_um: NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    n_spots: int = 0
    n_spots_inside: int = 0
    warnings: tuple[str, ...] = ()
    auto_fit: dict[str, Any] | None = None  # the automatic registration's report (--auto)

    def to_volume_um(self, xy_px: ArrayLike) -> NDArray[np.float64]:
        """Volume-frame (z, y, x) micrometres of sample level-0 pixel points (x, y), (N, 3)."""
        xy = self.affine.apply(xy_px)
        return np.stack([np.full(len(xy), self.z_um), xy[:, 1], xy[:, 0]], axis=1)


def _check_volume_id(volume_id: str) -> str:
    try:
        return check_sample_id(volume_id)
    except HestkitError:
        raise VolumeError(
            f"volume id {volume_id!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit",
            fix=fix(f"pass {VOLUME_ID} to choose one", VOLUME_ID),
        ) from None


def require_local(layout: Layout, what: str) -> None:
    """Volumes and section links are stored in local catalogs only, for now."""
    if layout.remote:
        raise CatalogError(
            f"{layout.uri}: {what} needs a local catalog; volumes and section links are not stored on object "
            "storage yet (use a local catalog folder for 3D work)"
        )


# -- reading the tables --------------------------------------------------------------
def _read_elements(layout: Layout, d: Path, encoding: str, version: str, what: str) -> list[dict[str, Any]]:
    """The JSON elements of ``encoding`` in folder ``d``, sorted by name (none on object
    storage: volumes live in local catalogs only, see :func:`require_local`)."""
    out: list[dict[str, Any]] = []
    if layout.remote or not d.exists():
        return out
    for p in sorted(d.glob("*.json")):
        if p.name.startswith("."):
            continue
        m = read_json(p)
        if m.get("encoding-type") != encoding:
            continue
        if _major(m.get("encoding-version", "0")) > _major(version):
            raise CatalogVersionError(f"{p}: {what} format {m.get('encoding-version')} is newer than this hestkit reads")
        out.append(m)
    return out


def volume_manifests(layout: Layout) -> list[dict[str, Any]]:
    if layout.remote:
        return []
    return _read_elements(
        layout, layout.volume_manifest_dir, VOLUME_MANIFEST_ENCODING, VOLUME_MANIFEST_VERSION, "volume manifest"
    )


def section_links(layout: Layout) -> list[dict[str, Any]]:
    if layout.remote:
        return []
    return _read_elements(layout, layout.sections_dir, SECTION_ENCODING, SECTION_VERSION, "section link")


def volumes_frame(layout: Layout) -> pd.DataFrame:
    links = section_links(layout)
    rows = []
    for m in volume_manifests(layout):
        row = {k: m.get(k) for k in VOLUME_COLUMNS}
        row["shape_zyx"] = tuple(m["shape_zyx"])
        row["voxel_size_um"] = tuple(m["voxel_size_um"])
        row["extent_um"] = tuple(m["extent_um"])
        row["n_sections"] = sum(1 for lk in links if lk["volume_id"] == m["volume_id"])
        for k in ("ingest_id", "zarr_path", "source_paths", "channel_names", "intensity_range", "warnings"):
            row[k] = m.get(k)
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=VOLUME_COLUMNS)
    return pd.DataFrame(rows).sort_values("volume_id").reset_index(drop=True)


def sections_frame(layout: Layout, volume_id: str | None = None) -> pd.DataFrame:
    rows = []
    for m in section_links(layout):
        if volume_id is not None and m["volume_id"] != volume_id:
            continue
        row = {k: m.get(k) for k in SECTION_COLUMNS}
        row["affine"] = m["affine"]
        row["warnings"] = m.get("warnings", [])
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=[*SECTION_COLUMNS, "affine"])
    return pd.DataFrame(rows).sort_values(["volume_id", "z_um", "sample_id"]).reset_index(drop=True)


def volume_manifest(layout: Layout, volume_id: str) -> dict[str, Any]:
    p = layout.volume_manifest(volume_id)
    if not p.exists():
        known = ", ".join(m["volume_id"] for m in volume_manifests(layout)[:10]) or "none"
        raise QueryError(f"{layout.root}: no volume {volume_id!r} (volumes: {known}); ingest it with `hestkit ingest-volume`")
    return dict(read_json(p))


def open_catalog_volume(layout: Layout, volume_id: str) -> NgffVolume:
    m = volume_manifest(layout, volume_id)
    vol = NgffVolume(layout.root / m["zarr_path"])
    vol.set_voxel_size(m["voxel_size_um"])
    return vol


def link_from_json(m: dict[str, Any]) -> SectionLink:
    return SectionLink(
        sample_id=m["sample_id"],
        volume_id=m["volume_id"],
        z_um=float(m["z_um"]),
        affine=Affine.from_array(m["affine"]),
        affine_source=m["affine_source"],
        residuals_um=np.asarray(m.get("residuals_um", []), dtype=float),
        n_spots=int(m.get("n_spots", 0)),
        n_spots_inside=int(m.get("n_spots_inside", 0)),
        warnings=tuple(m.get("warnings", [])),
        auto_fit=m.get("auto_fit"),
    )


# -- ingest ------------------------------------------------------------------------------
def _fingerprint(paths: Sequence[str]) -> str:
    return hashlib.sha1("|".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()[:16]


def ingest_volume(
    root: str | Path,
    source: str | Path | VolumeLike,
    volume_id: str,
    *,
    voxel_size_um: Sequence[float] | None = None,
    modality: str = "microct",
    organ: str | None = None,
    species: str | None = None,
    patient: str | None = None,
    channel_names: Sequence[str] | None = None,
    intensity_range: tuple[float, float] | None = None,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
    chunks_zyx: Sequence[int] = VOLUME_CHUNKS_ZYX,
    progress: Callable[[str, int, int], None] | None = None,
    version: str = "",
) -> VolumeIngestResult:
    """Store a volume as an OME-Zarr multiscale image under the catalog and commit it."""
    from .writer import _maybe_kill

    t0 = time.perf_counter()
    layout = Layout(root)
    _check_volume_id(volume_id)
    if modality not in MODALITIES:
        raise VolumeError(
            f"{volume_id}: modality {modality!r} is not one of {', '.join(MODALITIES)}", fix=fix(f"pass {MODALITY}", MODALITY)
        )
    warnings: list[str] = []
    # open and validate everything before the catalog is touched
    opened = isinstance(source, (str, Path))
    if isinstance(source, (str, Path)):
        src_path = Path(source)
        if src_path.suffix.lower() == ".csv" or modality == "he-stack":
            from hestkit.volume_stack import open_section_stack

            vol: VolumeLike = open_section_stack(src_path, voxel_size_um)
        else:
            vol = open_volume(src_path, voxel_size_um, intensity_range=intensity_range)
        source_paths = [str(src_path)]
    else:
        vol = source
        src_path = Path(getattr(source, "path", f"<{type(source).__name__}>"))
        if voxel_size_um is not None and isinstance(vol, VolumeSource):
            vol.set_voxel_size(voxel_size_um)
        source_paths = [str(src_path)]
    try:
        vs, shape, names, embedded = _validate(vol, src_path, volume_id, voxel_size_um, modality, channel_names, warnings)
        if layout.volume_manifest(volume_id).exists() and not overwrite:
            existing = read_json(layout.volume_manifest(volume_id))
            raise VolumeExistsError(
                f"{volume_id}: already in the catalog (from {existing.get('source_paths', ['?'])[0]})",
                fix=fix(f"pass {OVERWRITE} to replace it or {VOLUME_ID} to choose another id", OVERWRITE, VOLUME_ID),
            )
        window = vol.window() if isinstance(vol, VolumeSource) else (0.0, 255.0)
    except BaseException:
        if opened:
            _close(vol)
        raise
    mpath = layout.volume_manifest(volume_id)
    ingest_id = new_ingest_id()
    created_dir = not layout.volumes_dir.exists()
    gpath = layout.volume(volume_id, ingest_id)
    try:
        layout.volumes_dir.mkdir(parents=True, exist_ok=True)
        writer = NgffVolumeWriter(
            gpath,
            shape,
            channels=vol.channels,
            voxel_size_um=vs,
            chunks_zyx=chunks_zyx,
            channel_names=names,
            name=volume_id,
            attributes={
                "encoding-type": VOLUME_ENCODING,
                "encoding-version": VOLUME_VERSION,
                "volume_id": volume_id,
                "ingest_id": ingest_id,
                "modality": modality,
                "frame": "volume frame: (z, y, x) um from the outer corner of voxel (0, 0, 0); voxel centres at (i + 0.5) * size",
            },
        )
        writer.write_from(vol, progress=(lambda d, t: progress("volume slabs", d, t)) if progress else None)
        writer.build_pyramid(progress=(lambda d, t: progress("pyramid levels", d, t)) if progress else None)
        _maybe_kill("volume-before-manifest")
        manifest: dict[str, Any] = {
            "encoding-type": VOLUME_MANIFEST_ENCODING,
            "encoding-version": VOLUME_MANIFEST_VERSION,
            "volume_id": volume_id,
            "ingest_id": ingest_id,
            "modality": modality,
            "organ": organ or "",
            "species": species or "",
            "patient": patient or "",
            "shape_zyx": list(shape),
            "voxel_size_um": list(vs),
            "extent_um": list(volume_extent_um(vol)),
            "channels": vol.channels,
            "channel_names": names,
            "dtype": "uint8",
            "source_dtype": str(getattr(vol, "dtype", "uint8")),
            "intensity_range": list(window),
            "voxel_size_source": "given" if voxel_size_um is not None else "embedded",
            "voxel_size_um_embedded": list(embedded) if embedded is not None else None,
            "n_levels": len(writer.factors),
            "level_factors_zyx": [list(f) for f in writer.factors],
            "chunks_zyx": list(writer.chunks_zyx),
            "zarr_path": str(gpath.relative_to(layout.root)),
            "source_paths": source_paths,
            "source_fingerprint": _fingerprint(source_paths),
            "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hestkit_version": version,
            "warnings": warnings,
            "metadata": dict(metadata or {}),
        }
        old: Path | None = None
        with layout.writer_lock():
            if mpath.exists():
                if not overwrite:
                    raise VolumeExistsError(
                        f"{volume_id}: committed meanwhile by another writer", fix=fix(f"pass {OVERWRITE} to replace it", OVERWRITE)
                    )
                old = layout.root / read_json(mpath)["zarr_path"]
            layout.volume_manifest_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(mpath, manifest)
    except BaseException:
        if opened:
            _close(vol)
        shutil.rmtree(gpath, ignore_errors=True)
        if created_dir:
            try:
                layout.volumes_dir.rmdir()
            except OSError:
                pass
        raise
    if opened:
        _close(vol)
    if old is not None and old.exists() and old != gpath:
        shutil.rmtree(old, ignore_errors=True)
    return VolumeIngestResult(
        volume_id, ingest_id, shape, vs, vol.channels, len(writer.factors), time.perf_counter() - t0, tuple(warnings)
    )  # type: ignore[arg-type]


def _validate(
    vol: VolumeLike,
    src_path: Path,
    volume_id: str,
    voxel_size_um: Sequence[float] | None,
    modality: str,
    channel_names: Sequence[str] | None,
    warnings: list[str],
) -> tuple[tuple[float, float, float], tuple[int, int, int], list[str], Any]:
    v = tuple(float(a) for a in vol.voxel_size_um)  # raises VoxelSizeError naming the fix
    vs = (v[0], v[1], v[2])
    embedded = getattr(vol, "embedded_voxel_size_um", None)
    if voxel_size_um is not None and embedded is not None:
        rel = max(abs(a - b) / b for a, b in zip(voxel_size_um, embedded, strict=True))
        if rel > 0.05:
            warnings.append(
                f"{src_path}: the file says voxel size {tuple(embedded)} um but {tuple(voxel_size_um)} was given; using the given one"
            )
    s = tuple(int(a) for a in vol.shape_zyx)
    shape = (s[0], s[1], s[2])
    if min(shape) < 1:
        raise VolumeError(f"{src_path}: volume shape {shape} (z, y, x) is empty; give a stack with at least one plane")
    want = MODALITIES[modality]
    if want is not None and vol.channels != want:
        right = Opt("modality", "'otls'", cli="otls") if vol.channels > 1 else Opt("modality", "'microct'", cli="microct")
        raise VolumeError(
            f"{src_path}: modality {modality!r} expects {want} channel(s), the volume has {vol.channels}.",
            fix=fix(
                f"pass the right modality ({right}: {'multi-channel light-sheet' if vol.channels > 1 else 'grayscale'})", right
            ),
        )
    if channel_names is not None and len(channel_names) != vol.channels:
        raise VolumeError(f"{src_path}: {len(channel_names)} channel names given for {vol.channels} channels")
    names = list(channel_names) if channel_names is not None else _default_channel_names(modality, vol.channels)
    return vs, shape, names, embedded


def _close(vol: object) -> None:
    close = getattr(vol, "close", None)
    if callable(close):
        close()


def _default_channel_names(modality: str, channels: int) -> list[str]:
    if modality == "he-stack" and channels == 3:
        return ["red", "green", "blue"]
    if modality == "otls" and channels == 2:
        return ["nuclear", "cytoplasm"]
    if channels == 1:
        return ["intensity"]
    return [f"c{i}" for i in range(channels)]


# -- links -------------------------------------------------------------------------------
def read_affine_file(path: str | Path) -> Affine:
    """A 3x3 (or 2x3) matrix file: rows of numbers separated by commas or whitespace."""
    p = Path(path)
    try:
        rows = [
            [float(v) for v in line.replace(",", " ").split()]
            for line in p.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    except (OSError, ValueError) as exc:
        raise ReaderError(
            p, f"is not a matrix of numbers ({exc})", "write 3 rows of 3 numbers (comma or space separated)"
        ) from exc
    a = np.asarray(rows, dtype=float) if rows and all(len(r) == len(rows[0]) for r in rows) else np.zeros((0, 0))
    if a.shape not in ((3, 3), (2, 3)):
        raise ReaderError(
            p, f"holds a matrix of shape {a.shape}", "write the 3x3 affine (section px -> volume um), 3 rows of 3 numbers"
        )
    return Affine.from_array(a)


def read_landmarks(path: str | Path) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Landmark pairs from a CSV with columns ``x_px, y_px, x_um, y_um`` (section level-0
    pixels -> volume in-plane micrometres). Returns ``(src (N, 2), dst (N, 2))``."""
    p = Path(path)
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError) as exc:
        raise ReaderError(p, f"cannot be read as CSV ({exc})", "write a CSV with columns x_px,y_px,x_um,y_um") from exc
    cols = {c.strip().lower(): c for c in df.columns}
    need = ["x_px", "y_px", "x_um", "y_um"]
    missing = [c for c in need if c not in cols]
    if missing:
        raise ReaderError(
            p,
            f"lacks column(s) {', '.join(missing)} (has {', '.join(map(str, df.columns))})",
            "name the columns x_px,y_px,x_um,y_um",
        )
    try:
        a = df[[cols[c] for c in need]].to_numpy(dtype=float)
    except ValueError as exc:
        raise ReaderError(p, f"has non-numeric landmark values ({exc})", "give numbers in every landmark column") from exc
    if not np.isfinite(a).all():
        raise ReaderError(p, "has empty or non-finite landmark values", "fill every landmark cell with a number")
    return a[:, :2], a[:, 2:]


def _check_affine(aff: Affine, what: str) -> None:
    m = aff.to_array()
    if not np.isfinite(m).all():
        raise LinkError(f"{what}: the affine has non-finite entries; give a 3x3 matrix of numbers")
    if not np.allclose(m[2], [0.0, 0.0, 1.0], atol=1e-9):
        raise LinkError(
            f"{what}: the affine's last row is {m[2].tolist()}, expected [0, 0, 1] (a 2D affine, not a projective map)"
        )
    lin = m[:2, :2]
    det = float(np.linalg.det(lin))
    sv = np.linalg.svd(lin, compute_uv=False)
    if abs(det) < 1e-12 or sv[-1] < 1e-9 * max(sv[0], 1e-300) or sv[-1] / sv[0] < 1e-3:
        raise LinkError(
            f"{what}: the affine is degenerate (determinant {det:.3g}, singular values {sv.round(6).tolist()}); "
            "it collapses the section onto a line. Fix: give a full-rank matrix, or landmarks that are not collinear"
        )


def link_section(
    root: str | Path,
    sample_id: str,
    volume_id: str,
    z_um: float,
    *,
    affine: Affine | ArrayLike | str | Path | None = None,
    landmarks: tuple[ArrayLike, ArrayLike] | str | Path | None = None,
    sample_obs: pd.DataFrame,
    sample_manifest: dict[str, Any],
    overwrite: bool = False,
    max_residual_um: float | None = None,
    fit: dict[str, Any] | None = None,
) -> SectionLink:
    """Record that ``sample_id`` lies at depth ``z_um`` of ``volume_id`` (see :class:`SectionLink`).
    ``fit``: the automatic registration's report (score, confidence, residuals), stored with the link."""
    layout = Layout(root)
    vm = volume_manifest(layout, volume_id)
    ez, ey, ex = (float(v) for v in vm["extent_um"])
    what = f"link {sample_id} -> {volume_id}"
    if (affine is None) == (landmarks is None):
        raise LinkError(f"{what}: give exactly one of an affine or landmarks", fix=fix(f"pass {AFFINE} or {LANDMARKS}", AFFINE, LANDMARKS))
    if not (isinstance(z_um, (int, float, np.floating, np.integer)) and math.isfinite(float(z_um))):
        raise LinkError(f"{what}: z_um {z_um!r} is not a number")
    z = float(z_um)
    if not 0.0 <= z <= ez:
        raise LinkError(
            f"{what}: the section plane z = {z:g} um lies outside the volume, whose depth spans 0 .. {ez:g} um "
            f"({vm['shape_zyx'][0]} planes x {vm['voxel_size_um'][0]:g} um).",
            fix=fix(f"give {Z_UM} within the volume (the volume frame starts at the outer face of plane 0)", Z_UM),
        )
    residuals = np.zeros(0)
    n_landmarks = 0
    if affine is not None:
        aff = (
            read_affine_file(affine)
            if isinstance(affine, (str, Path))
            else (affine if isinstance(affine, Affine) else _affine_from(affine, what))
        )
        source = "matrix" if fit is None else "auto"
        if fit is not None:
            residuals = np.asarray(fit.get("residuals_um", []), dtype=np.float64)
    else:
        if isinstance(landmarks, (str, Path)):
            src, dst = read_landmarks(landmarks)
        else:
            assert landmarks is not None
            src = np.asarray(landmarks[0], dtype=float).reshape(-1, 2)
            dst = np.asarray(landmarks[1], dtype=float).reshape(-1, 2)
        n_landmarks = len(src)
        if len(src) < 3 or len(src) != len(dst):
            raise LinkError(
                f"{what}: {len(src)} landmark pair(s) given; an affine needs at least 3 pairs of section pixel "
                "(x_px, y_px) and volume (x_um, y_um) points that are not on one line"
            )
        try:
            aff, residuals = fit_affine(src, dst)
        except ValueError as exc:
            raise LinkError(f"{what}: the landmarks are degenerate ({exc}); spread at least 3 of them over the section") from None
        source = "landmarks"
    _check_affine(aff, what)
    warnings: list[str] = []
    ps = float(sample_manifest.get("pixel_size_um") or 0)
    if ps > 0:
        rel = abs(aff.linear_scale - ps) / ps
        if rel > SCALE_TOLERANCE:
            warnings.append(
                f"{what}: the affine scales {aff.linear_scale:.4g} um per section pixel but the sample's pixel size is "
                f"{ps:.4g} um/px ({rel:.0%} apart); check that the affine maps level-0 pixels to micrometres"
            )
    half = VolumePairSpec().depth_um / 2.0
    if z < half or z > ez - half:
        warnings.append(
            f"{what}: the plane z = {z:g} um is within {half:g} um of a face of the volume (depth 0 .. {ez:g} um): "
            "default 3D pairs reach past that face and are padded there"
        )
    if max_residual_um is not None and len(residuals) and float(residuals.max()) > max_residual_um:
        raise LinkError(
            f"{what}: landmark residuals up to {float(residuals.max()):.3g} um exceed {max_residual_um:g} um "
            f"(per landmark: {np.round(residuals, 3).tolist()}); check the landmark pairs"
        )
    xy = aff.apply(sample_obs[["x_px", "y_px"]].to_numpy(dtype=float)) if len(sample_obs) else np.zeros((0, 2))
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < ex) & (xy[:, 1] >= 0) & (xy[:, 1] < ey)
    n_in = int(inside.sum())
    if n_in == 0:
        lo = xy.min(axis=0).round(1).tolist() if len(xy) else []
        hi = xy.max(axis=0).round(1).tolist() if len(xy) else []
        raise LinkError(
            f"{what}: none of the sample's {len(xy)} spots falls inside the volume's plane (x 0 .. {ex:g} um, y 0 .. {ey:g} um); "
            f"the affine puts them at x, y from {lo} to {hi} um. Fix: check the affine/landmarks (they map section "
            "level-0 pixels (x, y) to volume micrometres (x, y)) and that the sample belongs to this volume"
        )
    link = SectionLink(sample_id, volume_id, z, aff, source, residuals, len(xy), n_in, tuple(warnings), fit)
    payload = {
        "encoding-type": SECTION_ENCODING,
        "encoding-version": SECTION_VERSION,
        "sample_id": sample_id,
        "sample_ingest_id": sample_manifest.get("ingest_id"),
        "volume_id": volume_id,
        "volume_ingest_id": vm["ingest_id"],
        "z_um": z,
        "affine": aff.to_array().tolist(),
        "affine_convention": "section level-0 px (x, y, 1), continuous (pixel i spans [i, i+1)) -> volume um (x, y, 1)",
        "affine_source": source,
        "n_landmarks": n_landmarks,
        "residuals_um": residuals.tolist(),
        "residual_rms_um": float(np.sqrt(np.mean(residuals**2))) if len(residuals) else None,
        "residual_max_um": float(residuals.max()) if len(residuals) else None,
        "n_spots": len(xy),
        "n_spots_inside": n_in,
        "linked_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "warnings": warnings,
    }
    if fit is not None:
        payload["auto_fit"] = fit
    spath = layout.section(sample_id)
    with layout.writer_lock():
        if spath.exists() and not overwrite:
            prev = read_json(spath)
            raise LinkError(
                f"{sample_id}: already linked to volume {prev.get('volume_id')!r} at z = {prev.get('z_um')} um",
                fix=fix(f"pass {OVERWRITE} to replace the link", OVERWRITE),
            )
        layout.sections_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(spath, payload)
    return link


def register_sample(
    layout: Layout,
    sample_manifest: dict[str, Any],
    volume_id: str,
    *,
    z_range_um: tuple[float, float] | None = None,
    min_score: float = 0.3,
    min_confidence: float = 0.35,
    work_um_px: float = 8.0,
) -> Any:
    """Register a committed sample's H&E to a volume (see :mod:`hestkit.section_registration`):
    the slide is read as a thumbnail at about a quarter of the working pixel size, never whole."""
    from hestkit.section_registration import register_section
    from hestkit.slide import open_slide

    sid = str(sample_manifest.get("sample_id"))
    ps = float(sample_manifest.get("pixel_size_um") or 0.0)
    what = f"link {sid} -> {volume_id} (automatic placement)"
    if not (math.isfinite(ps) and ps > 0):
        raise LinkError(
            f"{what}: the sample has no pixel size in its manifest", fix=fix(f"re-ingest it with {PIXEL_SIZE_UM}", PIXEL_SIZE_UM)
        )
    image = Path(str(sample_manifest.get("image_path", "")))
    if not image.exists():
        raise LinkError(f"{what}: the sample's slide {image} is no longer there; restore it (or relocate the catalog's paths)")
    vol = open_catalog_volume(layout, volume_id)
    with open_slide(image) as slide:
        longest_um = max(slide.width, slide.height) * ps
        size = int(min(8192, max(256, math.ceil(longest_um / (work_um_px / 4.0)))))
        thumb, factor = slide.thumbnail(size)
    return register_section(
        thumb,
        ps,
        vol,
        section_px_per_image_px=factor,
        z_range_um=z_range_um,
        work_um_px=work_um_px,
        min_score=min_score,
        min_confidence=min_confidence,
        what=what,
    )


def plot_link(layout: Layout, sample_manifest: dict[str, Any], link: SectionLink) -> Any:
    """A figure of a section link: the plane, the section placed in it, their overlay and
    (for an automatic fit) the depth profile (:func:`hestkit.section_registration.plot_registration`)."""
    from hestkit.section_registration import plot_registration
    from hestkit.slide import open_slide

    ps = float(sample_manifest["pixel_size_um"])
    vol = open_catalog_volume(layout, link.volume_id)
    with open_slide(Path(str(sample_manifest["image_path"]))) as slide:
        size = int(min(4096, max(256, math.ceil(max(slide.width, slide.height) * ps / 2.0))))
        thumb, factor = slide.thumbnail(size)
    fit = link.auto_fit or {}
    return plot_registration(
        thumb,
        ps,
        vol,
        link.z_um,
        link.affine,
        section_px_per_image_px=factor,
        depths_um=fit.get("depths_um"),
        depth_profile=fit.get("depth_profile"),
        title=f"{link.sample_id} in {link.volume_id} ({link.affine_source})",
    )


def _affine_from(a: ArrayLike, what: str) -> Affine:
    try:
        return Affine.from_array(a)
    except ValueError as exc:
        raise LinkError(f"{what}: {exc}") from None
