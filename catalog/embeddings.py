"""Per-sample embedding caches stored inside a catalog, keyed by model identity.

``CATALOG/embeddings/{key}/{sample_id}--{ingest_id}.npz`` holds ``soma_joinid`` (the
pairs, in obs order) and ``embedding`` (n x d float32); ``meta.json`` describes the model.
Files are written to a temporary name and renamed, so a cache entry is whole or absent.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from hestkit.errors import Opt, OptionError, fix

from ._store import atomic_write_json
from .catalog import Catalog
from .errors import CatalogError

__all__ = ["EMBEDDINGS_ENCODING", "EMBEDDINGS_VERSION", "EmbeddingStore"]

EMBEDDINGS_ENCODING, EMBEDDINGS_VERSION = "hestkit-embeddings", "1.0.0"

NO_CACHE = Opt("cache", "False")


class EmbeddingStore:
    """Embeddings of one model (``key``) for the samples of a catalog."""

    def __init__(self, cat: Catalog, key: str, meta: dict[str, Any] | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", key):
            raise OptionError(f"embedding key {key!r} must be 1-128 letters, digits, '.', '_' or '-'")
        if cat.remote:
            raise CatalogError(
                f"{cat.uri}: embeddings are cached in local catalogs only",
                fix=fix(f"on object storage pass {NO_CACHE} (embeddings are then computed in memory)", NO_CACHE),
            )
        self.cat = cat
        self.key = key
        self.dir = cat.path / "embeddings" / key
        if meta is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            mpath = self.dir / "meta.json"
            if not mpath.exists():
                atomic_write_json(mpath, {"encoding-type": EMBEDDINGS_ENCODING, "encoding-version": EMBEDDINGS_VERSION, **meta})

    def _path(self, sample_id: str) -> Path:
        ingest = self.cat.manifest(sample_id)["ingest_id"]
        return self.dir / f"{sample_id}--{ingest}.npz"

    def get(self, sample_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(soma_joinids, embeddings)`` of a sample, or None when not cached (or stale)."""
        p = self._path(sample_id)
        if not p.exists():
            return None
        with np.load(p) as z:
            return z["soma_joinid"], z["embedding"]

    def put(self, sample_id: str, joinids: np.ndarray, embeddings: np.ndarray) -> None:
        p = self._path(sample_id)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.stem}.{uuid.uuid4().hex}.tmp.npz")
        np.savez(tmp, soma_joinid=np.asarray(joinids, dtype=np.int64), embedding=np.asarray(embeddings, dtype=np.float32))
        os.replace(tmp, p)

    def samples(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.name.split("--")[0] for p in self.dir.glob("*.npz") if not p.name.startswith("."))
