"""Verify a catalog element by element (``hestkit check``), repair what failed or killed
writers left behind (``--repair``), and remove replaced patch generations (``hestkit gc``).

What ``check`` verifies: ``catalog.json``; every manifest (strict JSON, encoding, keys, its
gene list and var index); every SOMA array (each schema version loads, the array opens);
for each sample a few obs rows (they carry its ``ingest_id``), their counts and their
patches (decoded); and every patch folder (referenced by a manifest, retired by an
overwrite and awaiting ``gc``, or left by a writer that failed or was killed).

What ``--repair`` removes, under the writers' lock, and nothing else: half-written TileDB
schema versions (a zero-byte or unloadable newest ``__schema`` file: a disk that filled
while a domain grew), temp files of interrupted atomic writes, patch folders that no
manifest references and no overwrite retired (staging of a dead writer) once they are
older than ``older_than``, and retirement records of overwrites that never committed.
Committed data (manifests, gene lists, SOMA fragments, referenced or retired patch
folders) is never touched.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hestkit.fixes import OVERWRITE

from ._store import (
    CATALOG_ENCODING,
    GENE_LIST_ENCODING,
    MANIFEST_ENCODING,
    RETIRED_ENCODING,
    TMP_SUFFIX,
    Layout,
    zarr_open_array,
)
from .errors import CatalogError, DamagedError

__all__ = [
    "DEFAULT_OLDER_THAN_S",
    "CheckReport",
    "Finding",
    "GcReport",
    "check_catalog",
    "gc_catalog",
    "parse_duration",
]

#: Age after which an unreferenced patch folder counts as abandoned (``check --repair``)
#: and a retired generation may be deleted (``gc``): longer than any commit waits for
#: the lock, and than the reads a view holding the old generation is expected to make.
DEFAULT_OLDER_THAN_S = 3600.0

_MANIFEST_KEYS = ("sample_id", "ingest_id", "patches_path", "soma_joinid_start", "soma_joinid_stop", "n_slots")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` (a bare number is seconds)."""
    m = _DURATION.match(str(text))
    if not m:
        raise CatalogError(f"duration {text!r} not understood; write it like 90s, 30m, 12h, 7d or 0")
    return float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]


@dataclass(frozen=True)
class Finding:
    """One observation: ``level`` is error (the catalog is damaged), warning (leftovers
    that ``--repair`` removes) or info; ``element`` is the file or folder concerned."""

    level: str
    element: str
    message: str
    repairable: bool = False
    repaired: bool = False


@dataclass
class CheckReport:
    catalog: str
    findings: list[Finding] = field(default_factory=list)
    #: What was looked at: manifests, gene lists, arrays, schema versions, patch folders,
    #: rows and patches read.
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error" and not f.repaired]

    @property
    def ok(self) -> bool:
        """No damage left (leftovers of failed writers are warnings, not damage)."""
        return not self.errors

    def add(self, level: str, element: str, message: str, repairable: bool = False) -> None:
        self.findings.append(Finding(level, element, message, repairable))

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {"catalog": self.catalog, "ok": self.ok, "counts": self.counts, "findings": [asdict(f) for f in self.findings]}

    def lines(self) -> list[str]:
        out = []
        for f in self.findings:
            tag = "repaired" if f.repaired else f.level
            out.append(f"{tag}: {f.element}: {f.message}")
        seen = ", ".join(f"{n} {k}" for k, n in self.counts.items())
        out.append(f"{self.catalog}: {'OK' if self.ok else 'DAMAGED'} (checked {seen})")
        return out


@dataclass
class GcReport:
    catalog: str
    removed: list[str] = field(default_factory=list)
    #: Replaced or abandoned generations still younger than ``older_than``.
    kept: list[str] = field(default_factory=list)


def _soma_arrays(layout: Layout) -> list[str]:
    names = layout.names_in(layout.join("soma", "ms", "RNA", "X"))
    layers = [n for n in ("counts", "counts_by_gene") if n in names]
    return [
        layout.join("soma", "obs"),
        layout.join("soma", "ms", "RNA", "var"),
        *(layout.join("soma", "ms", "RNA", "X", n) for n in layers),
    ]


def _open_array(uri: str) -> Any:
    from . import _soma
    from ._store import soma_context

    soma = _soma._soma()
    with soma.open(uri, "r", context=soma_context(uri)) as a:
        return a.non_empty_domain()


def _check_array(layout: Layout, uri: str, report: CheckReport, repair: bool) -> bool:
    """Schema versions of one SOMA array: a zero-byte file (a write that hit a full disk)
    is always half-written; an unloadable newest version is found by opening the array
    without it. Returns whether the array opens."""
    # the schema versions are the files directly in __schema/ (enumerations live below)
    files = [f for f in layout.list_files(f"{uri}/__schema") if f[0].rsplit("/", 1)[0] == f"{uri}/__schema"]
    report.count("schema versions", len(files))
    bad = [u for u, size, _ in files if size == 0]
    for u in bad:
        report.add("error", u, "half-written TileDB schema version (0 bytes): the array cannot be opened", repairable=True)
    if repair:
        for u in bad:
            layout.remove_file(u)
        _mark_repaired(report, bad)
    try:
        _open_array(uri)
        report.count("SOMA arrays")
        return True
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if repair and not bad:
            fixed = _drop_unloadable_newest(layout, [u for u, size, _ in files if size > 0], uri)
            if fixed is not None:
                report.findings.append(
                    Finding("error", fixed, "half-written TileDB schema version (does not load)", True, True)
                )
                report.count("SOMA arrays")
                return True
        if not bad:
            report.add("error", uri, f"the SOMA array does not open: {first}")
        return False


def _drop_unloadable_newest(layout: Layout, schema_files: Sequence[str], uri: str) -> str | None:
    """Move the newest schema version aside; if the array then opens, it was the
    half-written one: delete it (and return it). Otherwise put it back."""
    if len(schema_files) < 2:
        return None
    newest = sorted(schema_files)[-1]
    data = layout.read_many([newest]).get(newest)
    if data is None:
        return None
    layout.remove_file(newest)
    try:
        _open_array(uri)
    except Exception:  # noqa: BLE001 - still broken: the newest version was not the cause
        layout.write_bytes(newest, data)
        return None
    return newest


def _mark_repaired(report: CheckReport, elements: Iterable[str]) -> None:
    done = set(elements)
    report.findings = [
        Finding(f.level, f.element, f.message, f.repairable, True) if f.repairable and f.element in done else f
        for f in report.findings
    ]


def _strict_json(data: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise DamagedError(f"{token} is not JSON")

    return json.loads(data, parse_constant=refuse)


def _group_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _manifests(layout: Layout, report: CheckReport) -> list[dict[str, Any]]:
    names = [n for n in layout.names_in(layout.manifest_dir) if n.endswith(".json") and not n.startswith(".")]
    blobs = layout.read_many([layout.join("manifest", n) for n in names])
    out = []
    for n in names:
        u = layout.join("manifest", n)
        data = blobs.get(u)
        if data is None:
            continue
        report.count("manifests")
        try:
            m = _strict_json(data)
        except ValueError as exc:
            try:
                m = json.loads(data)
                report.add("warning", u, f"not strict JSON ({exc}); re-ingest with {OVERWRITE} to rewrite it")
            except ValueError as exc2:
                report.add("error", u, f"not JSON ({exc2}); the sample is unreadable: re-ingest it with {OVERWRITE}")
                continue
        if not isinstance(m, dict) or m.get("encoding-type") != MANIFEST_ENCODING:
            report.add("error", u, f"not a hestkit sample manifest (encoding-type {m.get('encoding-type') if isinstance(m, dict) else None!r})")
            continue
        missing = [k for k in _MANIFEST_KEYS if k not in m]
        if missing:
            report.add("error", u, f"manifest lacks {', '.join(missing)}; re-ingest the sample with {OVERWRITE}")
            continue
        if f"{m['sample_id']}.json" != n:
            report.add("error", u, f"names sample {m['sample_id']!r}, not {n[:-5]!r}")
            continue
        out.append(m)
    return out


def _check_genes(layout: Layout, manifests: Sequence[dict[str, Any]], report: CheckReport) -> dict[str, int]:
    """Each referenced gene list loads and has the manifests' ``n_genes``; its var index,
    where present, holds one joinid per gene. Returns the list sizes."""
    sizes: dict[str, int] = {}
    refs = sorted({str(m["genes_ref"]) for m in manifests if m.get("genes_ref")})
    blobs = layout.read_many([layout.gene_list(r) for r in refs])
    idx = layout.read_many([layout.gene_joinids(r) for r in refs])
    for r in refs:
        u = layout.gene_list(r)
        data = blobs.get(u)
        report.count("gene lists")
        if data is None:
            report.add("error", u, f"gene list missing; re-ingest the samples that use it with {OVERWRITE}")
            continue
        try:
            doc = json.loads(data)
            genes = doc["genes"]
            if doc.get("encoding-type") != GENE_LIST_ENCODING or not isinstance(genes, list):
                raise DamagedError("not a hestkit gene list")
        except (ValueError, KeyError, TypeError) as exc:
            report.add("error", u, f"gene list unreadable ({exc}); re-ingest the samples that use it with {OVERWRITE}")
            continue
        sizes[r] = len(genes)
        ju = layout.gene_joinids(r)
        if ju in idx:
            try:
                j = np.load(io.BytesIO(idx[ju]), allow_pickle=False)
                if j.ndim != 1 or len(j) != len(genes):
                    raise DamagedError(f"{j.shape} joinids for {len(genes)} genes")
            except (ValueError, OSError, EOFError) as exc:
                report.add("warning", ju, f"var index unreadable ({exc}); queries map the names instead")
    for m in manifests:
        ref = m.get("genes_ref")
        if ref is None and not isinstance(m.get("genes"), list):
            report.add("error", layout.manifest(m["sample_id"]), "manifest has neither genes_ref nor genes")
        elif ref in sizes and m.get("n_genes") not in (None, sizes[ref]):
            report.add(
                "error", layout.manifest(m["sample_id"]), f"n_genes {m.get('n_genes')} but its gene list holds {sizes[ref]}"
            )
    return sizes


def _sample_joinids(start: int, stop: int, k: int) -> np.ndarray:
    if stop <= start:
        return np.zeros(0, np.int64)
    return np.unique(np.linspace(start, stop - 1, num=min(k, stop - start)).round().astype(np.int64))


def _check_rows(layout: Layout, manifests: Sequence[dict[str, Any]], per_sample: int, report: CheckReport) -> dict[str, np.ndarray]:
    """A few obs rows of each sample carry its ingest_id and sample_id, and their counts
    read; returns each sample's sampled patch indexes."""
    from . import _soma
    from ._store import soma_context

    soma = _soma._soma()
    picks = {m["sample_id"]: _sample_joinids(int(m["soma_joinid_start"]), int(m["soma_joinid_stop"]), per_sample) for m in manifests}
    allj = np.unique(np.concatenate([*picks.values(), np.zeros(0, np.int64)]))
    out: dict[str, np.ndarray] = {}
    if not len(allj):
        return out
    obs_uri = layout.join("soma", "obs")
    try:
        with soma.open(obs_uri, "r", context=soma_context(obs_uri)) as o:
            tbl = o.read(coords=(allj,), column_names=["soma_joinid", "ingest_id", "sample_id", "patch_index"]).concat()
        got = tbl.to_pandas().set_index("soma_joinid")
        x_uri = layout.join("soma", "ms", "RNA", "X", "counts")
        with soma.open(x_uri, "r", context=soma_context(x_uri)) as x:
            cells = x.read(coords=(allj,)).tables().concat()
        report.count("counts read", cells.num_rows)
    except Exception as exc:  # noqa: BLE001 - any read failure is the finding
        report.add("error", layout.soma, f"reading sampled rows failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        return out
    for m in manifests:
        sid = m["sample_id"]
        j = picks[sid]
        rows = got.reindex(j)
        report.count("rows read", len(j))
        wrong = rows["ingest_id"].astype(object).ne(m["ingest_id"]) | rows["sample_id"].astype(object).ne(sid)
        if bool(wrong.any()):
            report.add(
                "error",
                layout.manifest(sid),
                f"obs rows {int(j[np.asarray(wrong)][0])}.. do not belong to ingest {m['ingest_id']} (joinid range "
                f"{m['soma_joinid_start']}..{m['soma_joinid_stop']}); re-ingest the sample with {OVERWRITE}",
            )
            continue
        out[sid] = rows["patch_index"].to_numpy(dtype=np.int64)
    return out


def _check_patches(layout: Layout, m: dict[str, Any], patch_idx: np.ndarray, report: CheckReport) -> None:
    sid = m["sample_id"]
    group = layout.join(str(m["patches_path"]))
    try:
        arr = zarr_open_array(layout.join(str(m["patches_path"]), "patches"), mode="r")
        if int(arr.shape[0]) < int(m["n_slots"]):
            raise DamagedError(f"{arr.shape[0]} slots, the manifest says {m['n_slots']}")
        for i in patch_idx.tolist():
            p = np.asarray(arr[int(i)])
            if p.ndim != 3 or p.shape[2] != 3:
                raise DamagedError(f"patch {i} has shape {p.shape}")
            report.count("patches read")
        zarr_open_array(layout.join(str(m["patches_path"]), "thumbnail"), mode="r")
    except Exception as exc:  # noqa: BLE001 - any read failure is the finding
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.add("error", group, f"patches of {sid!r} unreadable ({text}); re-ingest the sample with {OVERWRITE}")


def _retired(layout: Layout) -> dict[str, tuple[str, dict[str, Any]]]:
    """Patch-group name -> (record URI, record) of every retirement record."""
    names = [n for n in layout.names_in(layout.retired_dir) if n.endswith(".json") and not n.startswith(".")]
    blobs = layout.read_many([layout.join("retired", n) for n in names])
    out = {}
    for u, data in blobs.items():
        try:
            rec = json.loads(data)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("encoding-type") == RETIRED_ENCODING and rec.get("patches_path"):
            out[_group_name(str(rec["patches_path"]))] = (u, rec)
    return out


def _group_age(layout: Layout, group: str, now: float) -> float:
    files = layout.list_files(group)
    newest = max((t for _, _, t in files), default=0.0)
    return now - newest


def _temp_files(layout: Layout, now: float) -> list[tuple[str, str, float]]:
    """``(folder, uri, age in s)`` of the temp files of interrupted atomic writes."""
    out = []
    for d in ("manifest", "genes", "retired"):
        for u, _, t in layout.list_files(layout.join(d)):
            name = u.rsplit("/", 1)[-1]
            if name.startswith(".") and name.endswith(TMP_SUFFIX):
                out.append((d, u, now - t))
    return out


def check_catalog(
    root: str,
    *,
    repair: bool = False,
    per_sample: int = 4,
    older_than_s: float = DEFAULT_OLDER_THAN_S,
    progress: Callable[[str, int, int], None] | None = None,
) -> CheckReport:
    """Verify every element of the catalog at ``root`` (see the module docstring), reading
    ``per_sample`` obs rows, their counts and patches per sample; with ``repair``, remove
    the leftovers of failed or killed writers under the writers' lock."""
    layout = Layout(root)
    report = CheckReport(layout.uri)
    layout.check_access()
    if not layout.exists(layout.catalog_json):
        report.add("error", layout.catalog_json, "missing: not a hestkit catalog (or its creation never finished)")
        return report
    try:
        meta = _strict_json(layout.read_many([layout.catalog_json])[layout.catalog_json])
        if meta.get("encoding-type") != CATALOG_ENCODING:
            raise DamagedError(f"encoding-type {meta.get('encoding-type')!r}")
    except (ValueError, KeyError, AttributeError) as exc:
        report.add("error", layout.catalog_json, f"unreadable ({exc})")
        return report
    lock = layout.writer_lock(timeout_s=600.0) if repair else None
    if lock is not None:
        lock.__enter__()
    try:
        _run_checks(layout, report, repair, per_sample, older_than_s, progress)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    return report


def _run_checks(
    layout: Layout,
    report: CheckReport,
    repair: bool,
    per_sample: int,
    older_than_s: float,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    arrays = _soma_arrays(layout)
    opened = [_check_array(layout, a, report, repair) for a in arrays]
    manifests = _manifests(layout, report)
    _check_genes(layout, manifests, report)
    idx = _check_rows(layout, manifests, per_sample, report) if all(opened) and arrays else {}
    if all(opened) and arrays:
        from . import _soma

        written = _soma.obs_row_count(layout.soma)
        committed = sum(int(m["soma_joinid_stop"]) - int(m["soma_joinid_start"]) for m in manifests)
        if written > committed:
            report.add(
                "info",
                layout.join("soma", "obs"),
                f"{written - committed} obs rows of attempts that never committed (killed writers or replaced "
                "samples): invisible to readers, their joinids are never reused",
            )
    for k, m in enumerate(manifests):
        _check_patches(layout, m, idx.get(m["sample_id"], np.zeros(0, np.int64)), report)
        if progress is not None:
            progress("check samples", k + 1, len(manifests))
    # patch folders: referenced, retired (awaiting gc), or abandoned staging
    now = time.time()
    referenced = {_group_name(str(m["patches_path"])) for m in manifests}
    retired = _retired(layout)
    for name, (u, _rec) in retired.items():
        if name in referenced:
            report.add("warning", u, "retirement record of an overwrite that never committed", repairable=True)
            if repair:
                layout.remove_file(u)
                _mark_repaired(report, [u])
    for name in layout.names_in(layout.patches_dir):
        if not name.endswith(".zarr"):
            continue
        report.count("patch folders")
        g = layout.join("patches", name)
        if name in referenced:
            continue
        if name in retired:
            report.add("info", g, "replaced by an overwrite; kept for readers until `hestkit gc` removes it")
            continue
        age = _group_age(layout, g, now)
        if age < older_than_s:
            report.add("info", g, f"unreferenced, written {age:.0f} s ago: an ingest in progress (or one that died recently)")
            continue
        report.add("warning", g, "unreferenced patch folder left by a failed or killed ingest", repairable=True)
        if repair:
            layout.remove_tree(g)
            _mark_repaired(report, [g])
    for d, u, age in _temp_files(layout, now):
        # manifests and retirement records are written under the lock, which a repair
        # holds: any of their temp files is dead; gene lists are written without it
        if age < older_than_s and not (repair and d != "genes"):
            continue
        report.add("warning", u, "temp file of an interrupted write", repairable=True)
        if repair:
            layout.remove_file(u)
            _mark_repaired(report, [u])


def gc_catalog(root: str, *, older_than_s: float = DEFAULT_OLDER_THAN_S, dry_run: bool = False) -> GcReport:
    """Delete the patch generations replaced by overwrites at least ``older_than_s`` ago
    (readers that listed the old manifest before then may still be reading them), and
    unreferenced staging of dead writers older than that. Takes the writers' lock."""
    layout = Layout(root)
    out = GcReport(layout.uri)
    layout.check_access()
    now = time.time()
    with layout.writer_lock(timeout_s=600.0):
        manifests = [m for _, m in layout.manifest_files() if isinstance(m, dict) and m.get("patches_path")]
        referenced = {_group_name(str(m["patches_path"])) for m in manifests}
        retired = _retired(layout)
        present = {n for n in layout.names_in(layout.patches_dir) if n.endswith(".zarr")}
        for name, (u, rec) in sorted(retired.items()):
            g = layout.join("patches", name)
            if name in referenced:  # the overwrite never committed
                if not dry_run:
                    layout.remove_file(u)
                continue
            when = rec.get("retired_at_unix")
            age = now - float(when) if isinstance(when, (int, float)) else float("inf")
            if age < older_than_s:
                out.kept.append(g)
                continue
            if not dry_run:
                layout.remove_tree(g)
                layout.remove_file(u)
            out.removed.append(g)
        for name in sorted(present - referenced - set(retired)):
            g = layout.join("patches", name)
            if _group_age(layout, g, now) < older_than_s:
                out.kept.append(g)
                continue
            if not dry_run:
                layout.remove_tree(g)
            out.removed.append(g)
    return out
