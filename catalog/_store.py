"""Catalog locations (local folders and ``s3://`` URIs), encoding attributes, atomic
writes and the writers' lock.

Local catalogs use plain files: a temp file renamed over its target, ``fcntl.flock``.
``s3://`` catalogs go through s3fs (manifests, catalog.json), TileDB's S3 VFS (SOMA) and
zarr's fsspec store (patches), with conditional PUTs and a lease lock (:mod:`catalog._s3`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from hestkit.errors import fix
from hestkit.fixes import SAMPLE_ID

from .errors import CatalogError

__all__ = [
    "CATALOG_ENCODING",
    "CATALOG_VERSION",
    "GENE_JOINIDS_SUFFIX",
    "GENE_LIST_ENCODING",
    "GENE_LIST_VERSION",
    "MANIFEST_ENCODING",
    "MANIFEST_VERSION",
    "PATCHES_ENCODING",
    "PATCHES_VERSION",
    "RETIRED_ENCODING",
    "RETIRED_VERSION",
    "SECTION_ENCODING",
    "SECTION_VERSION",
    "TMP_SUFFIX",
    "VOLUME_ENCODING",
    "VOLUME_MANIFEST_ENCODING",
    "VOLUME_MANIFEST_VERSION",
    "VOLUME_VERSION",
    "CatalogLock",
    "CommitConflict",
    "Layout",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_sample_id",
    "is_remote",
    "join",
    "json_bytes",
    "new_ingest_id",
    "read_json",
    "soma_context",
    "strict_json",
    "zarr_open_array",
    "zarr_open_group",
]

#: 1.1.0: new catalogs have the gene-major ``X/counts_by_gene`` layer and gene-list var
#: indexes (both optional for readers: 1.0.0 catalogs are read as before).
CATALOG_ENCODING, CATALOG_VERSION = "hestkit-catalog", "1.1.0"
#: 2.0.0: the gene list moved out of the manifest into a shared ``genes/{sha256}.json``
#: (``genes_ref``); 1.x manifests carry it inline (``genes``) and are still read.
MANIFEST_ENCODING, MANIFEST_VERSION = "hestkit-sample-manifest", "2.1.0"
GENE_LIST_ENCODING, GENE_LIST_VERSION = "hestkit-gene-list", "1.0.0"
#: File-name suffix of a gene list's var-joinid index, ``genes/{sha256}.joinids-v1.npy``:
#: a 1-D int32 ``.npy`` (int64 past 2**31 genes) holding the var ``soma_joinid`` of each
#: gene of the list, in the list's order. The version is in the name, so a reader never
#: parses a newer layout: it ignores the file and maps the names itself.
GENE_JOINIDS_SUFFIX = "joinids-v1.npy"
PATCHES_ENCODING, PATCHES_VERSION = "hestkit-patches", "1.0.0"
VOLUME_ENCODING, VOLUME_VERSION = "hestkit-volume", "1.0.0"
VOLUME_MANIFEST_ENCODING, VOLUME_MANIFEST_VERSION = "hestkit-volume-manifest", "1.0.0"
SECTION_ENCODING, SECTION_VERSION = "hestkit-section-link", "1.0.0"
#: ``retired/{group}.json``: a patch group replaced by ``--overwrite``, kept for readers
#: until ``gc`` removes it.
RETIRED_ENCODING, RETIRED_VERSION = "hestkit-retired-patches", "1.0.0"

#: Suffix of the temporary files of atomic writes (``.{name}.{uuid}.tmp``).
TMP_SUFFIX = ".tmp"

_SAMPLE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_sample_id(sample_id: str) -> str:
    if not _SAMPLE_ID.fullmatch(sample_id):  # fullmatch: "$" alone also matches before a final newline
        raise CatalogError(
            f"sample id {sample_id!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (pass {SAMPLE_ID} to choose one)",
            fix=fix("", SAMPLE_ID),
        )
    return sample_id


def new_ingest_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def is_remote(uri: str | Path) -> bool:
    """True for object-storage URIs (``s3://bucket/prefix``); local paths are never routed
    through fsspec."""
    s = str(uri)
    if "://" not in s:
        return False
    scheme = s.split("://", 1)[0].lower()
    if scheme == "s3":
        return True
    if scheme == "file":
        return False
    raise CatalogError(f"{s}: unsupported catalog location {scheme}://; use a local folder or s3://bucket/prefix")


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI (always ``/``-separated)."""
    out = base.rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


SOMA_READ_BUFFER_BYTES = 64 * 2**20
"""Initial TileDB-SOMA read buffer per column. tiledbsoma's default (1 GiB per column)
reserves tens of GB of address space per coordinate read, enough for ``fork`` (DataLoader
workers, dask) to fail with ENOMEM; larger results are read in several passes."""

_LOCAL_SOMA_CONTEXT: dict[int, Any] = {}


def soma_context(uri: str | Path) -> Any:
    """The TileDB-SOMA context for ``uri``, one per process (a forked child makes its own):
    TileDB's defaults plus :data:`SOMA_READ_BUFFER_BYTES` locally, and S3 settings from the
    environment for ``s3://``."""
    if is_remote(uri):
        from . import _s3

        return _s3.soma_context()
    pid = os.getpid()
    ctx = _LOCAL_SOMA_CONTEXT.get(pid)
    if ctx is None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import tiledbsoma

        ctx = tiledbsoma.SOMATileDBContext(tiledb_config={"soma.init_buffer_bytes": SOMA_READ_BUFFER_BYTES})
        _LOCAL_SOMA_CONTEXT.clear()
        _LOCAL_SOMA_CONTEXT[pid] = ctx
    return ctx


def zarr_open_group(uri: str, mode: Any) -> Any:
    import zarr

    if is_remote(uri):
        from . import _s3

        return zarr.open_group(uri, mode=mode, zarr_format=3, storage_options=_s3.storage_options())
    return zarr.open_group(uri, mode=mode, zarr_format=3)


def zarr_open_array(uri: str, mode: Any = "r") -> Any:
    import zarr

    if is_remote(uri):
        from . import _s3

        return zarr.open_array(uri, mode=mode, storage_options=_s3.storage_options())
    return zarr.open_array(uri, mode=mode)


def _key(uri: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key`` (what s3fs takes)."""
    return uri.split("://", 1)[1]


class Layout:
    """Where each element of a catalog lives, and the few file operations the catalog
    needs, for a local folder (plain files, ``fcntl`` lock, rename) or an ``s3://`` prefix
    (s3fs, conditional PUTs, lease lock). Element locations are strings (paths or URIs)."""

    def __init__(self, root: str | Path) -> None:
        self.remote = is_remote(root)
        self.uri = str(root).rstrip("/") if self.remote else str(Path(str(root).removeprefix("file://")))

    @property
    def root(self) -> Path:
        """The catalog folder (local catalogs only)."""
        if self.remote:
            raise CatalogError(f"{self.uri} is on object storage and has no local path; use its URI")
        return Path(self.uri)

    def join(self, *parts: str) -> str:
        return join(self.uri, *parts)

    @property
    def catalog_json(self) -> str:
        return self.join("catalog.json")

    @property
    def manifest_dir(self) -> str:
        return self.join("manifest")

    def manifest(self, sample_id: str) -> str:
        return self.join("manifest", f"{sample_id}.json")

    def gene_list(self, ref: str) -> str:
        """The content-addressed gene list ``genes/{sha256-hex}.json``."""
        return self.join("genes", f"{ref}.json")

    def gene_joinids(self, ref: str) -> str:
        """The var-joinid index of gene list ``ref`` (see :data:`GENE_JOINIDS_SUFFIX`)."""
        return self.join("genes", f"{ref}.{GENE_JOINIDS_SUFFIX}")

    @property
    def soma(self) -> str:
        return self.join("soma")

    @property
    def patches_dir(self) -> str:
        return self.join("patches")

    def patches(self, sample_id: str, ingest_id: str) -> str:
        return self.join("patches", f"{sample_id}--{ingest_id}.zarr")

    @property
    def retired_dir(self) -> str:
        return self.join("retired")

    def retired(self, group_uri: str) -> str:
        """The retirement record of patch group ``group_uri`` (replaced by an overwrite)."""
        return self.join("retired", group_uri.rstrip("/").rsplit("/", 1)[-1] + ".json")

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
    def lock(self) -> str:
        return self.join(".lock")

    def relative(self, uri: str) -> str:
        """``uri`` relative to the catalog root (as manifests record it)."""
        base = self.uri.rstrip("/") + "/"
        if not uri.startswith(base):
            raise CatalogError(f"{uri} is not inside the catalog {self.uri}")
        return uri[len(base) :]

    # -- operations --------------------------------------------------------------
    def _fs(self) -> Any:
        from . import _s3

        return _s3.filesystem()

    def _s3_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from . import _s3

        try:
            return fn(*args, **kwargs)
        except CatalogError:
            raise
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise _s3.translate_error(exc, self.uri) from exc

    def check_access(self) -> None:
        """Local: nothing. S3: the bucket exists, is reachable and answers our credentials."""
        if self.remote:
            from . import _s3

            _s3.check_bucket(self.uri)

    def exists(self, uri: str) -> bool:
        if not self.remote:
            return os.path.exists(uri)
        fs = self._fs()
        return bool(self._s3_call(fs.exists, _key(uri)))

    def read_json(self, uri: str) -> Any:
        if not self.remote:
            return read_json(Path(uri))
        fs = self._fs()
        return json.loads(self._s3_call(fs.cat_file, _key(uri)))

    def read_json_etag(self, uri: str) -> tuple[Any, str | None] | None:
        """The object and (S3) its ETag, or None when absent."""
        if not self.remote:
            return (read_json(Path(uri)), None) if os.path.exists(uri) else None
        fs = self._fs()
        bucket, key = _key(uri).split("/", 1)
        try:
            head = self._s3_call(fs.call_s3, "head_object", Bucket=bucket, Key=key)
            data = self._s3_call(fs.cat_file, _key(uri))
        except FileNotFoundError:
            return None
        # callers hold the writers' lock, so the object cannot change between the two calls
        return json.loads(data), str(head["ETag"])

    def write_json(self, uri: str, obj: Any, *, if_absent: bool = False, if_match: str | None = None) -> None:
        """Write ``obj`` as JSON with :meth:`write_bytes` (same atomicity and conditions)."""
        self.write_bytes(uri, json_bytes(obj), if_absent=if_absent, if_match=if_match, content_type="application/json")

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        """Write ``data`` as one atomic replacement: local temp file + fsync + rename; on S3
        a single PUT, conditional on the key being absent (``if_absent``) or unchanged
        (``if_match``, an ETag). A failed condition raises :class:`CommitConflict`."""
        if not self.remote:
            p = Path(uri)
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(p, data)
            return
        from . import _s3

        fs = self._fs()
        bucket, key = _key(uri).split("/", 1)
        cond: dict[str, str] = {}
        if if_absent:
            cond["IfNoneMatch"] = "*"
        elif if_match is not None:
            cond["IfMatch"] = if_match
        try:
            from ._faults import fault_point

            fault_point(f"write:{uri.rsplit('/', 2)[-2]}/{Path(uri).suffix}")
            fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, ContentType=content_type, **cond)
        except Exception as exc:
            code = _s3.error_code(exc)
            if cond and (
                code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey") or isinstance(exc, FileExistsError)
            ):
                raise CommitConflict(f"{uri}: changed by another writer meanwhile ({code or type(exc).__name__})") from exc
            raise _s3.translate_error(exc, self.uri) from exc

    def write_once(self, uri: str, data: bytes) -> bool:
        """Store an immutable object unless it exists (its content is fixed by its name):
        locally skipped when the file exists, else written atomically; on S3 a PUT
        conditional on the key being absent, where losing to an existing key is success.
        Returns False when it was already there."""
        if not self.remote and os.path.exists(uri):
            return False
        try:
            self.write_bytes(uri, data, if_absent=True)
        except CommitConflict:
            return False  # another writer stored this very object
        return True

    def names_in(self, dir_uri: str) -> list[str]:
        """The sorted names of the objects directly under ``dir_uri`` (one LIST on S3), or
        none when it does not exist."""
        if not self.remote:
            try:
                return sorted(os.listdir(dir_uri))
            except FileNotFoundError:
                return []
        fs = self._fs()
        try:
            keys = self._s3_call(fs.ls, _key(dir_uri), detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(k).rsplit("/", 1)[-1] for k in keys)

    def read_many(self, uris: Sequence[str]) -> dict[str, bytes]:
        """The bytes of each of ``uris`` that exists (absent ones are left out); on S3 with
        concurrent GETs."""
        out: dict[str, bytes] = {}
        if not uris:
            return out
        if not self.remote:
            for u in uris:
                try:
                    with open(u, "rb") as fh:
                        out[u] = fh.read()
                except FileNotFoundError:
                    pass
            return out
        fs = self._fs()
        blobs = self._s3_call(fs.cat, [_key(u) for u in uris], on_error="omit")
        for u in uris:
            b = blobs.get(_key(u))
            if isinstance(b, bytes):
                out[u] = b
        return out

    def manifest_files(self) -> list[tuple[str, Any]]:
        """``(uri, parsed JSON)`` of every manifest, sorted by name."""
        uris = [
            self.join("manifest", n) for n in self.names_in(self.manifest_dir) if n.endswith(".json") and not n.startswith(".")
        ]
        if not self.remote:
            return [(u, read_json(Path(u))) for u in uris]
        blobs = self.read_many(uris)  # concurrent GETs
        return [(u, json.loads(blobs[u])) for u in uris if u in blobs]

    def list_files(self, dir_uri: str) -> list[tuple[str, int, float]]:
        """Every file below ``dir_uri``, recursively: ``(uri, size in bytes, modification
        time as a Unix timestamp)``; none when it does not exist."""
        out: list[tuple[str, int, float]] = []
        if not self.remote:
            for dp, _, fns in os.walk(dir_uri):
                for fn in fns:
                    p = os.path.join(dp, fn)
                    try:
                        st = os.stat(p)
                    except FileNotFoundError:
                        continue
                    out.append((p, int(st.st_size), float(st.st_mtime)))
            return sorted(out)
        fs = self._fs()
        try:
            found = self._s3_call(fs.find, _key(dir_uri), detail=True)
        except FileNotFoundError:
            return out
        scheme = self.uri.split("://", 1)[0]
        for k, info in found.items():
            if info.get("type") == "directory":
                continue
            lm = info.get("LastModified")
            ts = lm.timestamp() if hasattr(lm, "timestamp") else time.time()
            out.append((f"{scheme}://{k}", int(info.get("size") or 0), float(ts)))
        return sorted(out)

    def remove_file(self, uri: str) -> None:
        """Delete one file (absent: nothing to do)."""
        if not self.remote:
            try:
                os.unlink(uri)
            except FileNotFoundError:
                pass
            return
        fs = self._fs()
        try:
            self._s3_call(fs.rm_file, _key(uri))
        except FileNotFoundError:
            pass

    def remove_tree(self, uri: str) -> None:
        if not self.remote:
            shutil.rmtree(uri, ignore_errors=True)
            return
        fs = self._fs()
        try:
            fs.rm(_key(uri), recursive=True)
        except FileNotFoundError:
            pass

    def is_empty(self) -> bool:
        """No visible entries under the root (a new catalog may go here)."""
        if not self.remote:
            p = Path(self.uri)
            return not p.exists() or not any(c for c in p.iterdir() if not c.name.startswith("."))
        fs = self._fs()
        try:
            names = self._s3_call(fs.ls, _key(self.uri), detail=False)
        except FileNotFoundError:
            return True
        return not any(n for n in names if not n.rsplit("/", 1)[-1].startswith("."))

    def make_root(self) -> None:
        """Local: the catalog folder (where the lock file goes). S3: nothing (prefixes are implicit)."""
        if not self.remote:
            Path(self.uri).mkdir(parents=True, exist_ok=True)

    def make_dirs(self) -> None:
        if not self.remote:
            Path(self.manifest_dir).mkdir(exist_ok=True)
            Path(self.patches_dir).mkdir(exist_ok=True)

    def writer_lock(self, timeout_s: float = 600.0) -> CatalogLock | Any:
        """The writers' lock: ``fcntl.flock`` on ``.lock`` locally, :class:`catalog._s3.S3Lock` on S3."""
        if not self.remote:
            return CatalogLock(Path(self.lock), timeout_s)
        from . import _s3

        return _s3.S3Lock(self.lock, timeout_s)


class CommitConflict(CatalogError):
    """A conditional write lost to another writer."""


def json_bytes(obj: Any) -> bytes:
    """How the catalog writes its JSON elements: strict JSON (RFC 8259; NaN and infinities,
    which are not JSON, become ``null``: the value is unknown), indent 1, numpy scalars,
    arrays and paths allowed."""
    return json.dumps(strict_json(obj), indent=1, sort_keys=False, allow_nan=False).encode()


def strict_json(obj: Any) -> Any:
    """``obj`` with numpy values and paths converted and every non-finite float (NaN, inf)
    replaced by None, so that it encodes as strict JSON."""
    import math

    import numpy as np

    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, str | int) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [strict_json(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    return strict_json(_json_default(obj))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    atomic_write_bytes(path, json_bytes(obj))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    from ._faults import fault_point

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fault_point(f"write:{path.parent.name}/{path.suffix}")  # tests: a disk that fills mid-file
            fh.write(data[len(data) // 2 :])
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # never leave a half-written temp file behind
        except OSError:
            pass
        raise
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
