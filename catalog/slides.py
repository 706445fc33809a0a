"""The slide table: whole-slide images without spatial transcriptomics, with their patient
and labels, for slide-level tasks (``hestkit add-slides``, ``seal slide-embed``,
``seal slide-eval``).

A slide is visible once ``slide-manifest/{slide_id}.json`` exists. :func:`add_slides` reads
and checks the whole CSV (every row, every slide file) before writing anything: any problem
raises one :class:`~hestkit.errors.ValidationError` listing each problem with the file and
the fix, and the catalog is left unchanged. The manifests are then written under the
writers' lock, each in one atomic step (local: temp file + rename; S3: one conditional PUT),
so a crash leaves whole slides or none, and re-running the same command resumes: slides
already recorded with the same file and labels are skipped.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hestkit.errors import HestkitError, Problem, ValidationError, fix
from hestkit.fixes import OVERWRITE
from hestkit.slide import PLAUSIBLE_PIXEL_SIZE_UM, open_slide

from ._store import CommitConflict, Layout, check_sample_id
from .errors import CatalogError, CatalogVersionError, QueryError

__all__ = [
    "REQUIRED_COLUMNS",
    "RESERVED_COLUMNS",
    "SLIDE_COLUMNS",
    "SLIDE_MANIFEST_ENCODING",
    "SLIDE_MANIFEST_VERSION",
    "AddSlidesReport",
    "SlideExistsError",
    "add_slides",
    "read_slides_csv",
    "slide_fingerprint",
    "slide_manifest",
    "slide_manifests",
    "slides_frame",
]

SLIDE_MANIFEST_ENCODING, SLIDE_MANIFEST_VERSION = "hestkit-slide-manifest", "1.0.0"
#: Columns every slides CSV must have.
REQUIRED_COLUMNS = ("slide_id", "path", "patient")
#: Optional columns with a meaning (not labels): ``mpp`` overrides the slide's embedded
#: level-0 pixel size (um/px).
RESERVED_COLUMNS = (*REQUIRED_COLUMNS, "mpp")
#: Leading columns of :func:`slides_frame` (label columns follow).
SLIDE_COLUMNS = ["slide_id", "patient", "path", "width", "height", "mpp", "mpp_source", "n_levels", "added_at"]

_FINGERPRINT_BYTES = 1 << 20


class SlideExistsError(CatalogError):
    """A slide id is already in the catalog with another file or other labels."""


@dataclass(frozen=True)
class AddSlidesReport:
    """What :func:`add_slides` did: ids added, replaced (``overwrite``) and skipped (already
    recorded with the same file and labels)."""

    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    label_columns: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _major(v: str) -> int:
    try:
        return int(str(v).split(".")[0])
    except ValueError:
        return 0


def slide_fingerprint(path: str | Path) -> str:
    """Identity of a slide file's content: SHA-1 of its size and its first and last MiB
    (cheap on multi-GB files, unchanged by copying; a re-scanned slide gets a new one)."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(p, "rb") as fh:
        h.update(fh.read(_FINGERPRINT_BYTES))
        if size > 2 * _FINGERPRINT_BYTES:
            fh.seek(size - _FINGERPRINT_BYTES)
            h.update(fh.read(_FINGERPRINT_BYTES))
    return h.hexdigest()[:16]


def _slide_dir(layout: Layout) -> str:
    return layout.join("slide-manifest")


def _slide_uri(layout: Layout, slide_id: str) -> str:
    return layout.join("slide-manifest", f"{slide_id}.json")


def _label_value(v: Any) -> Any:
    """A CSV cell as a JSON label: None when empty, int/float when numeric, else text."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    s = str(v).strip()
    return s if s else None


def read_slides_csv(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The rows of a slides CSV (text cells stripped) and its label columns; raises
    :class:`ValidationError` when the file or its header is unusable."""
    p = Path(path)
    if not p.is_file():
        raise ValidationError(f"{p}", [Problem(p, "file not found; give the path of a CSV with columns slide_id, path, patient")])
    try:
        df = pd.read_csv(p, dtype={"slide_id": str, "path": str, "patient": str}, keep_default_na=True)
    except Exception as exc:
        raise ValidationError(
            f"{p}", [Problem(p, f"cannot be parsed as CSV ({exc}); save it as comma-separated text with a header row")]
        ) from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    problems = []
    if missing:
        problems.append(
            Problem(
                p,
                f"missing column(s) {', '.join(missing)} (found: {', '.join(df.columns) or 'none'}); "
                "the header must name slide_id, path and patient, then any label columns",
            )
        )
    dup = [c for c in set(df.columns) if list(df.columns).count(c) > 1]
    if dup:
        problems.append(Problem(p, f"duplicate column name(s) {', '.join(sorted(dup))}; give each column one name"))
    if len(df) == 0 and not missing:
        problems.append(Problem(p, "has a header but no rows; add one row per slide"))
    if problems:
        raise ValidationError(f"{p}", problems)
    for c in REQUIRED_COLUMNS:
        df[c] = df[c].fillna("").astype(str).str.strip()
    labels = [c for c in df.columns if c not in RESERVED_COLUMNS]
    return df, labels


def _check_row(
    csv: Path, i: int, row: pd.Series, labels: Sequence[str], has_mpp: bool, seen: dict[str, int]
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The manifest of one CSV row, or the problems found in it."""
    problems: list[Problem] = []
    line = i + 2  # header is line 1
    sid = row["slide_id"]
    where = f"line {line} (slide_id {sid!r})"
    if not sid:
        problems.append(Problem(csv, f"line {line}: empty slide_id; give every slide a unique id"))
    else:
        try:
            check_sample_id(sid)
        except HestkitError:
            problems.append(
                Problem(csv, f"{where}: slide_id must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
            )
        if sid in seen:
            problems.append(Problem(csv, f"{where}: slide_id repeats line {seen[sid]}; each slide needs its own id"))
        else:
            seen[sid] = line
    if not row["patient"]:
        problems.append(
            Problem(csv, f"{where}: empty patient; give the patient id (folds are split by patient, so slides of one patient never straddle train and test)")
        )
    mpp_csv: float | None = None
    if has_mpp and row.get("mpp") is not None and not (isinstance(row["mpp"], float) and math.isnan(row["mpp"])):
        try:
            mpp_csv = float(row["mpp"])
        except (TypeError, ValueError):
            mpp_csv = float("nan")
        lo, hi = PLAUSIBLE_PIXEL_SIZE_UM
        if not (lo <= mpp_csv <= hi):
            problems.append(Problem(csv, f"{where}: mpp {row['mpp']!r} is not a pixel size in {lo}..{hi} um/px; fix or empty the cell"))
            mpp_csv = None
    if not row["path"]:
        problems.append(Problem(csv, f"{where}: empty path; give the slide file (absolute, or relative to the CSV's folder)"))
        return None, problems
    sp = Path(row["path"]).expanduser()
    if not sp.is_absolute():
        sp = csv.parent / sp
    sp = sp.resolve()
    try:
        with open_slide(sp) as slide:
            width, height, n_levels = slide.width, slide.height, len(slide.levels)
            embedded = slide.embedded_pixel_size_um
    except HestkitError as exc:
        problems.append(Problem(csv, f"{where}: {exc}"))
        return None, problems
    if mpp_csv is not None:
        mpp, source = mpp_csv, "csv"
    elif embedded is not None:
        mpp, source = float(embedded), "embedded"
    else:
        problems.append(
            Problem(
                csv,
                f"{where}: {sp} carries no pixel size; add an mpp column (level-0 micrometres per pixel) to the CSV",
            )
        )
        return None, problems
    if problems:
        return None, problems
    m: dict[str, Any] = {
        "encoding-type": SLIDE_MANIFEST_ENCODING,
        "encoding-version": SLIDE_MANIFEST_VERSION,
        "slide_id": sid,
        "patient": row["patient"],
        "path": str(sp),
        "fingerprint": slide_fingerprint(sp),
        "width": int(width),
        "height": int(height),
        "n_levels": int(n_levels),
        "mpp": mpp,
        "mpp_source": source,
        "mpp_embedded": None if embedded is None else float(embedded),
        "labels": {c: _label_value(row[c]) for c in labels},
        "source_csv": str(csv.resolve()),
    }
    return m, problems


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("path", "fingerprint", "patient", "mpp", "labels")
    return all(a.get(k) == b.get(k) for k in keys)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("hestkit")
    except Exception:  # noqa: BLE001
        return "0+unknown"


def add_slides(catalog: str | Path, csv_path: str | Path, *, overwrite: bool = False) -> AddSlidesReport:
    """Record the slides of ``csv_path`` (columns ``slide_id, path, patient``, optional
    ``mpp``, any label columns) in the catalog's slide table.

    Everything is checked first (CSV, ids, every slide file, pixel sizes, conflicts with
    slides already recorded); any problem raises one :class:`ValidationError` naming each
    row and its fix, and nothing is written. A slide already recorded with the same file,
    patient, pixel size and labels is skipped; one with other values needs ``overwrite``.
    """
    from .catalog import Catalog, create_catalog

    layout = Layout(catalog)
    layout.check_access()
    is_catalog = layout.exists(layout.catalog_json)
    if is_catalog:
        Catalog(layout.uri)  # refuses a newer format or a foreign folder before any work
    csv = Path(csv_path)
    df, labels = read_slides_csv(csv)
    has_mpp = "mpp" in df.columns
    problems: list[Problem] = []
    manifests: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, (_, row) in enumerate(df.iterrows()):
        m, probs = _check_row(csv, i, row, labels, has_mpp, seen)
        problems.extend(probs)
        if m is not None:
            manifests.append(m)
    existing = {m["slide_id"]: m for m in slide_manifests(layout)} if is_catalog else {}
    if not overwrite:
        for m in manifests:
            old = existing.get(m["slide_id"])
            if old is not None and not _same(old, m):
                problems.append(
                    Problem(
                        csv,
                        f"slide_id {m['slide_id']!r} is already in {layout.uri} with another file, patient, mpp or labels",
                        fix(f"re-run with {OVERWRITE} to replace it, or give the new slide another id", OVERWRITE),
                    )
                )
    if problems:
        raise ValidationError(f"{csv}: nothing was added to {layout.uri}", problems)
    added: list[str] = []
    replaced: list[str] = []
    skipped: list[str] = []
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not is_catalog:
        create_catalog(layout.uri)
    with layout.writer_lock():
        for m in manifests:
            uri = _slide_uri(layout, m["slide_id"])
            got = layout.read_json_etag(uri)
            if got is not None and _same(got[0], m):
                skipped.append(m["slide_id"])
                continue
            if got is not None and not overwrite:
                raise SlideExistsError(
                    f"{uri}: slide {m['slide_id']!r} was added by another writer meanwhile with other values",
                    fix=fix(f"re-run with {OVERWRITE} to replace it", OVERWRITE),
                )
            full = {**m, "added_at": now, "hestkit_version": _version()}
            try:
                if got is None:
                    layout.write_json(uri, full, if_absent=True)
                    added.append(m["slide_id"])
                else:
                    layout.write_json(uri, full, if_match=got[1])
                    replaced.append(m["slide_id"])
            except CommitConflict as exc:
                raise SlideExistsError(f"{uri}: changed by another writer meanwhile; re-run the same command") from exc
    return AddSlidesReport(tuple(added), tuple(replaced), tuple(skipped), tuple(labels))


def slide_manifests(layout: Layout) -> list[dict[str, Any]]:
    """Every slide manifest of the catalog, sorted by slide id."""
    d = _slide_dir(layout)
    uris = [layout.join("slide-manifest", n) for n in layout.names_in(d) if n.endswith(".json") and not n.startswith(".")]
    out = []
    for u in uris:
        m = layout.read_json(u)
        if m.get("encoding-type") != SLIDE_MANIFEST_ENCODING:
            continue
        if _major(m.get("encoding-version", "0")) > _major(SLIDE_MANIFEST_VERSION):
            raise CatalogVersionError(f"{u}: slide manifest format {m.get('encoding-version')} is newer than this hestkit reads; upgrade hestkit")
        out.append(m)
    return sorted(out, key=lambda m: str(m["slide_id"]))


def slide_manifest(layout: Layout, slide_id: str) -> dict[str, Any]:
    """The manifest of one slide, or :class:`QueryError` naming the fix."""
    uri = _slide_uri(layout, slide_id)
    if not layout.exists(uri):
        raise QueryError(f"{layout.uri}: no slide {slide_id!r} in the slide table; add it with Catalog.add_slides (hestkit add-slides)")
    m: dict[str, Any] = layout.read_json(uri)
    return m


def slides_frame(layout: Layout) -> pd.DataFrame:
    """The slide table: one row per slide, :data:`SLIDE_COLUMNS` then the label columns."""
    rows = []
    label_cols: list[str] = []
    for m in slide_manifests(layout):
        row = {k: m.get(k) for k in SLIDE_COLUMNS}
        for k, v in (m.get("labels") or {}).items():
            if k not in label_cols:
                label_cols.append(k)
            row[k] = v
        rows.append(row)
    df = pd.DataFrame(rows, columns=SLIDE_COLUMNS + label_cols)
    return df
