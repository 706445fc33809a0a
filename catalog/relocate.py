"""Rewrite the source paths a catalog records when its input data move.

Manifests store absolute paths (and URIs as given) to each sample's slide and vendor
files; the slide is needed again by the HEST and SpatialData exports. After the data
move, :func:`relocate` replaces a path prefix in every manifest, each manifest in one
atomic write, under the writers' lock (so no ingest commits meanwhile).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ._quality import absolute_path
from ._store import Layout
from .catalog import Catalog
from .errors import CatalogError

__all__ = ["RelocateReport", "relocate"]


@dataclass(frozen=True)
class RelocateReport:
    """What :func:`relocate` changed: sample ids rewritten, paths rewritten, and rewritten
    local paths that do not exist at their new place."""

    samples: list[str] = field(default_factory=list)
    n_paths: int = 0
    missing: list[str] = field(default_factory=list)


def _norm(p: str) -> str:
    s = absolute_path(p)
    return s.rstrip("/") if len(s) > 1 else s


def _swap(path: str, old: str, new: str, old_raw: str) -> str | None:
    """``path`` with prefix ``old`` replaced by ``new`` (whole path components only), or None."""
    for prefix in (old, old_raw.rstrip("/")):
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            return new + path[len(prefix) :]
    return None


def relocate(cat: Catalog, old: str, new: str, *, dry_run: bool = False) -> RelocateReport:
    """Replace the prefix ``old`` by ``new`` in every manifest's ``image_path`` and
    ``source_paths`` (local paths are compared absolute; ``s3://``-style URIs as given).

    Each changed manifest is rewritten atomically under the writers' lock; with
    ``dry_run`` nothing is written. Refuses when ``old`` and ``new`` are the same."""
    o, n = _norm(old), _norm(new)
    if o == n:
        raise CatalogError(f"relocate: the old and the new location are the same path ({o}); nothing to do")
    layout: Layout = cat.layout
    samples: list[str] = []
    missing: list[str] = []
    count = 0
    with layout.writer_lock():
        for uri, _ in layout.manifest_files():
            found = layout.read_json_etag(uri)
            if found is None:
                continue
            m: dict[str, Any] = dict(found[0])
            changed = 0
            img = m.get("image_path")
            if isinstance(img, str):
                swapped = _swap(img, o, n, old)
                if swapped is not None:
                    m["image_path"] = swapped
                    changed += 1
            paths = m.get("source_paths")
            if isinstance(paths, list):
                out = []
                for p in paths:
                    swapped = _swap(str(p), o, n, old)
                    out.append(swapped if swapped is not None else p)
                    if swapped is not None:
                        changed += 1
                        if "://" not in swapped and not os.path.exists(swapped):
                            missing.append(swapped)
                m["source_paths"] = out
            if not changed:
                continue
            if isinstance(m.get("image_path"), str) and "://" not in m["image_path"] and not os.path.exists(m["image_path"]):
                missing.append(m["image_path"])
            samples.append(str(m.get("sample_id")))
            count += changed
            if not dry_run:
                layout.write_json(uri, m, if_match=found[1])
    return RelocateReport(samples, count, sorted(set(missing)))
