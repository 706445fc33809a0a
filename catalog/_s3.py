"""Catalogs on S3-compatible object storage: configuration, clients, errors and the lease lock.

Endpoint and credentials come only from the standard environment variables
``AWS_ENDPOINT_URL`` (optional; AWS itself when unset), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN`` when set) and ``AWS_DEFAULT_REGION``
(or ``AWS_REGION``). They are read in each process when it first touches the catalog and
are never written into it, so a pickled :class:`~catalog.views.PairView` carries URIs only
and every DataLoader or dask worker builds its own clients from its own environment.

Writers serialise the SOMA append and the manifest put with a lock object
(``CATALOG/.lock``) taken by a conditional PUT (``If-None-Match: *``) and held under a
lease: the holder rewrites it (``If-Match`` its own ETag) every quarter lease; a waiter
that sees the same ETag for a whole lease takes the lock over with ``If-Match`` on that
stale ETag, so exactly one waiter wins. See ``docs/catalog-format.md``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from .errors import CatalogError

__all__ = [
    "LEASE_ENV",
    "S3Config",
    "S3Lock",
    "check_bucket",
    "error_code",
    "filesystem",
    "soma_context",
    "split_uri",
    "storage_options",
    "translate_error",
]

#: Seconds a writer's lock lease lasts without renewal (default 60).
LEASE_ENV = "HESTKIT_S3_LOCK_LEASE_S"
_DEFAULT_LEASE_S = 60.0


@dataclass(frozen=True)
class S3Config:
    """Connection settings read from the standard AWS environment variables."""

    endpoint_url: str | None
    region: str
    key: str
    secret: str
    token: str | None

    @classmethod
    def from_env(cls) -> S3Config:
        key = os.environ.get("AWS_ACCESS_KEY_ID", "")
        secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if not key or not secret:
            raise CatalogError(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a "
                "non-AWS server) in the environment of every process that opens the catalog"
            )
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or None
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise CatalogError(f"AWS_ENDPOINT_URL={endpoint!r} is not an http(s) URL; set it like http://127.0.0.1:9000")
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
        return cls(endpoint, region, key, secret, os.environ.get("AWS_SESSION_TOKEN") or None)

    @property
    def where(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise CatalogError(f"{uri!r} is not an s3://bucket/prefix URI")
    return parts.netloc, parts.path.lstrip("/")


def storage_options(cfg: S3Config | None = None) -> dict[str, Any]:
    """fsspec/s3fs options (also what zarr's ``storage_options`` takes)."""
    cfg = cfg or S3Config.from_env()
    client: dict[str, Any] = {"region_name": cfg.region}
    if cfg.endpoint_url:
        client["endpoint_url"] = cfg.endpoint_url
    opts: dict[str, Any] = {
        "key": cfg.key,
        "secret": cfg.secret,
        "client_kwargs": client,
        "config_kwargs": {"connect_timeout": 5, "read_timeout": 120, "retries": {"max_attempts": 4, "mode": "standard"}},
        # the manifests ARE the catalog: never answer a listing from a cache
        "use_listings_cache": False,
    }
    if cfg.token:
        opts["token"] = cfg.token
    return opts


_fs_cache: dict[tuple[int, S3Config], Any] = {}
_ctx_cache: dict[tuple[int, S3Config], Any] = {}
_cache_lock = threading.Lock()


def filesystem() -> Any:
    """An ``s3fs.S3FileSystem`` for this process and environment (made on first use)."""
    cfg = S3Config.from_env()
    key = (os.getpid(), cfg)
    with _cache_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            try:
                import s3fs
            except ImportError as exc:
                raise CatalogError("catalogs on s3:// need s3fs: pip install 'hestkit[s3]'") from exc
            fs = s3fs.S3FileSystem(**storage_options(cfg))
            _fs_cache[key] = fs
    return fs


def soma_context() -> Any:
    """A ``tiledbsoma.SOMATileDBContext`` whose TileDB VFS speaks to the configured S3."""
    cfg = S3Config.from_env()
    key = (os.getpid(), cfg)
    with _cache_lock:
        ctx = _ctx_cache.get(key)
        if ctx is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import tiledbsoma

            from . import _store

            conf: dict[str, str | float] = {
                "vfs.s3.region": cfg.region,
                "vfs.s3.aws_access_key_id": cfg.key,
                "vfs.s3.aws_secret_access_key": cfg.secret,
                "vfs.s3.connect_timeout_ms": "5000",
                "vfs.s3.connect_max_tries": "3",
                "soma.init_buffer_bytes": _store.SOMA_READ_BUFFER_BYTES,
            }
            if cfg.token:
                conf["vfs.s3.aws_session_token"] = cfg.token
            if cfg.endpoint_url:
                parts = urlsplit(cfg.endpoint_url)
                conf["vfs.s3.scheme"] = parts.scheme
                conf["vfs.s3.endpoint_override"] = parts.netloc
                # S3-compatible servers (MinIO, Ceph, moto) address buckets by path
                conf["vfs.s3.use_virtual_addressing"] = "false"
            ctx = tiledbsoma.SOMATileDBContext(tiledb_config=conf)
            _ctx_cache[key] = ctx
    return ctx


def error_code(exc: BaseException) -> str | None:
    """The S3 error code (``PreconditionFailed``, ``NoSuchKey``, ...) behind an s3fs error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            code = resp.get("Error", {}).get("Code")
            if code:
                return str(code)
        e = e.__cause__ or e.__context__
    return None


def translate_error(exc: BaseException, uri: str) -> CatalogError:
    """A clear :class:`CatalogError` for a failed S3 call on ``uri``."""
    cfg = S3Config.from_env()
    bucket = split_uri(uri)[0]
    text = f"{type(exc).__name__}: {exc}"
    code = error_code(exc) or ""
    names = {type(e).__name__ for e in _chain(exc)}
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ClientConnectorError"}:
        return CatalogError(
            f"{uri}: cannot reach the S3 endpoint {cfg.where} ({text}); check AWS_ENDPOINT_URL and that the server is up"
        )
    if code in ("NoSuchBucket", "404") or (isinstance(exc, FileNotFoundError) and code in ("", "NoSuchBucket")):
        return CatalogError(
            f"{uri}: bucket {bucket!r} does not exist at {cfg.where}; create it first "
            f"(e.g. `aws s3 mb s3://{bucket}`) or fix the URI"
        )
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or isinstance(exc, PermissionError):
        return CatalogError(
            f"{uri}: access denied by {cfg.where} ({code or text}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "and the bucket's permissions"
        )
    return CatalogError(f"{uri}: S3 request to {cfg.where} failed ({text})")


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def check_bucket(uri: str) -> None:
    """Fail early, with the fix, when the bucket is missing or S3 is unreachable or refuses us."""
    fs = filesystem()
    bucket = split_uri(uri)[0]
    try:
        fs.call_s3("head_bucket", Bucket=bucket)
    except Exception as exc:
        raise translate_error(exc, uri) from exc


def _lease_s() -> float:
    raw = os.environ.get(LEASE_ENV)
    if not raw:
        return _DEFAULT_LEASE_S
    try:
        v = float(raw)
    except ValueError:
        raise CatalogError(f"{LEASE_ENV}={raw!r} is not a number of seconds") from None
    return max(v, 0.5)


class S3Lock:
    """An exclusive writer lock on an S3 catalog: a lock object under a renewed lease.

    Acquire: ``PUT .lock`` with ``If-None-Match: *``. While held, a daemon thread rewrites
    the object every quarter lease with ``If-Match`` on the holder's last ETag. A waiter
    that sees one ETag unchanged for the lease declared in the object takes it over with
    ``If-Match`` on that ETag (one waiter wins; measured on the waiter's own monotonic
    clock, so clock skew between machines does not matter). Release: ``DELETE`` with
    ``If-Match``. :meth:`check` raises when the lease was lost (the process stalled past
    it), so a stalled writer never commits.
    """

    def __init__(self, uri: str, timeout_s: float = 600.0, lease_s: float | None = None) -> None:
        self.uri = uri
        self.bucket, self.key = split_uri(uri)
        self.timeout_s = timeout_s
        self.lease_s = lease_s if lease_s is not None else _lease_s()
        self.owner = uuid.uuid4().hex
        self._etag: str | None = None
        self._n = 0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_ok = 0.0
        #: True when this writer took over the lease of a writer that stopped renewing it.
        self.took_over = False

    def _body(self) -> bytes:
        self._n += 1
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "lease_s": self.lease_s,
                "renewal": self._n,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ).encode()

    def _put(self, **cond: str) -> str:
        fs = filesystem()
        r = fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=self._body(), **cond)
        return str(r["ETag"])

    def _held_by_other(self) -> tuple[str, float] | None:
        """ETag and declared lease of the current lock object, or None when there is none."""
        fs = filesystem()
        try:
            r = fs.call_s3("head_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None
        lease = self.lease_s
        try:
            lease = float(json.loads(fs.cat_file(f"{self.bucket}/{self.key}")).get("lease_s", lease))
        except (FileNotFoundError, ValueError, TypeError):
            pass
        return str(r["ETag"]), lease

    def __enter__(self) -> S3Lock:
        deadline = time.monotonic() + self.timeout_s
        seen: str | None = None
        seen_at = 0.0
        while True:
            try:
                try:
                    self._etag = self._put(IfNoneMatch="*")
                    break
                except Exception as exc:
                    if error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict") and not isinstance(
                        exc, FileExistsError
                    ):
                        raise
                held = self._held_by_other()
                if held is not None:
                    etag, lease = held
                    now = time.monotonic()
                    if etag != seen:
                        seen, seen_at = etag, now
                    elif now - seen_at > lease:
                        try:
                            self._etag = self._put(IfMatch=etag)
                            self.took_over = True
                            break
                        except Exception as exc:
                            if error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                                if not isinstance(exc, (FileNotFoundError, FileExistsError)):
                                    raise
                            seen = None
            except CatalogError:
                raise
            except Exception as exc:
                raise translate_error(exc, self.uri) from exc
            if time.monotonic() > deadline:
                raise CatalogError(
                    f"{self.uri}: another writer has held the catalog lock for over {self.timeout_s:.0f} s; if no ingest "
                    f"is running, its lease ({self.lease_s:.0f} s) expires by itself"
                )
            time.sleep(min(0.2, self.lease_s / 10))
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="hestkit-s3-lock", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        self._last_ok = time.monotonic()
        while not self._stop.wait(self.lease_s / 4):
            if not self._renew_once():
                return

    def _renew_once(self) -> bool:
        """Rewrite the lock under ``If-Match``; False once the lease is lost."""
        try:
            self._etag = self._put(IfMatch=self._etag or "")
            self._last_ok = time.monotonic()
            return True
        except Exception as exc:  # noqa: BLE001 - a failed renewal is judged below
            if error_code(exc) in ("PreconditionFailed", "NoSuchKey") or isinstance(exc, (FileNotFoundError, FileExistsError)):
                self._lost = "another writer took the lock over after our lease expired"
                return False
            if time.monotonic() - self._last_ok > self.lease_s:
                self._lost = f"could not renew the lease for {self.lease_s:.0f} s ({type(exc).__name__}: {exc})"
                return False
            return True

    def check(self) -> None:
        """Raise when this writer no longer holds the lock (never commit then)."""
        if self._lost:
            raise CatalogError(f"{self.uri}: lost the catalog lock: {self._lost}; nothing was committed, re-run the ingest")

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._lost is None and self._etag is not None:
            try:
                filesystem().call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=self._etag)
            except Exception:  # noqa: BLE001 - already taken over or gone: nothing of ours to release
                pass
        self._etag = None
