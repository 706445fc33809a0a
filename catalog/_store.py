"""Catalog paths, encoding attributes, atomic writes and the writer lock."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from .errors import CatalogError

__all__ = [
    "CATALOG_ENCODING",
    "CATALOG_VERSION",
    "MANIFEST_ENCODING",
    "MANIFEST_VERSION",
    "PATCHES_ENCODING",
    "PATCHES_VERSION",
    "SECTION_ENCODING",
    "SECTION_VERSION",
    "VOLUME_ENCODING",
    "VOLUME_MANIFEST_ENCODING",
    "VOLUME_MANIFEST_VERSION",
    "VOLUME_VERSION",
    "CatalogLock",
    "Layout",
    "atomic_write_json",
    "check_sample_id",
    "new_ingest_id",
    "read_json",
]

CATALOG_ENCODING, CATALOG_VERSION = "hestkit-catalog", "1.0.0"
MANIFEST_ENCODING, MANIFEST_VERSION = "hestkit-sample-manifest", "1.0.0"
PATCHES_ENCODING, PATCHES_VERSION = "hestkit-patches", "1.0.0"
VOLUME_ENCODING, VOLUME_VERSION = "hestkit-volume", "1.0.0"
VOLUME_MANIFEST_ENCODING, VOLUME_MANIFEST_VERSION = "hestkit-volume-manifest", "1.0.0"
SECTION_ENCODING, SECTION_VERSION = "hestkit-section-link", "1.0.0"

_SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_sample_id(sample_id: str) -> str:
    if not _SAMPLE_ID.match(sample_id):
        raise CatalogError(
            f"sample id {sample_id!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (pass --sample-id to choose one)"
        )
    return sample_id


def new_ingest_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


class Layout:
    """Where each element of a local catalog lives."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def catalog_json(self) -> Path:
        return self.root / "catalog.json"

    @property
    def manifest_dir(self) -> Path:
        return self.root / "manifest"

    def manifest(self, sample_id: str) -> Path:
        return self.manifest_dir / f"{sample_id}.json"

    @property
    def soma(self) -> Path:
        return self.root / "soma"

    @property
    def patches_dir(self) -> Path:
        return self.root / "patches"

    def patches(self, sample_id: str, ingest_id: str) -> Path:
        return self.patches_dir / f"{sample_id}--{ingest_id}.zarr"

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    def volume(self, volume_id: str, ingest_id: str) -> Path:
        return self.volumes_dir / f"{volume_id}--{ingest_id}.zarr"

    @property
    def volume_manifest_dir(self) -> Path:
        return self.root / "volume-manifest"

    def volume_manifest(self, volume_id: str) -> Path:
        return self.volume_manifest_dir / f"{volume_id}.json"

    @property
    def sections_dir(self) -> Path:
        return self.root / "sections"

    def section(self, sample_id: str) -> Path:
        return self.sections_dir / f"{sample_id}.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    data = json.dumps(obj, indent=1, sort_keys=False, default=_json_default)
    with open(tmp, "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    with open(path) as fh:
        return json.load(fh)


class CatalogLock:
    """An exclusive advisory lock on the catalog (``fcntl.flock`` on ``.lock``).

    Serialises the SOMA append and manifest commit of concurrent writers, whether
    threads, processes or dask workers on one host sharing the file system.
    """

    def __init__(self, path: Path, timeout_s: float = 600.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._fd: int | None = None

    def __enter__(self) -> CatalogLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise CatalogError(
                        f"{self.path}: another writer has held the catalog lock for over {self.timeout_s:.0f} s"
                    ) from None
                time.sleep(0.05)
        self._fd = fd
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
