"""Resource faults (disk full, out of memory, ...) turned into one-line errors, and the
write-layer fault points the integrity tests inject failures at.

A commit step that fails for lack of a resource ends in a :class:`ResourceError` naming
what was being written, where, and the fix; the step's caller rolls back what it started.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hestkit.fixes import WORKERS

from .errors import CatalogError

__all__ = ["FAIL_ENV", "ResourceError", "fault_point", "fill_disk_at", "resource_message", "set_fault_hook", "writing"]

#: Fault injection for tests (and the CLI tests, through the environment): raise
#: ``OSError(ENOSPC)`` at the named fault point (``POINT`` or ``POINT,POINT``).
FAIL_ENV = "HESTKIT_TEST_FAIL_AT"

_HOOK: list[Callable[[str], None]] = []


class ResourceError(CatalogError):
    """A write failed for lack of a resource (disk space, quota, memory, file handles)."""


def set_fault_hook(hook: Callable[[str], None] | None) -> None:
    """Tests: call ``hook(point)`` at every fault point (it may raise or fill the disk)."""
    _HOOK.clear()
    if hook is not None:
        _HOOK.append(hook)


def fill_disk_at(point: str, filler: str | os.PathLike[str]) -> Callable[[str], None]:
    """Tests and benches: a fault hook that, the first time ``point`` is reached, writes
    ``filler`` until its file system is full (a real ENOSPC for what comes next)."""

    def hook(p: str) -> None:
        if p != point or os.path.exists(filler):
            return
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
            except OSError:
                pass

    return hook


def fault_point(point: str) -> None:
    """A place in a write path where tests inject a failure (a no-op otherwise)."""
    for hook in _HOOK:
        hook(point)
    env = os.environ.get(FAIL_ENV)
    if env and point in env.split(","):
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {point})")


_NO_SPACE = ("no space left on device", "disk quota exceeded", "enospc", "edquot")
_NO_MEMORY = ("cannot allocate memory", "unable to allocate", "out of memory", "bad_alloc", "enomem")
_NO_FILES = ("too many open files", "emfile")


def _texts(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def resource_message(exc: BaseException, what: str, where: str = "") -> str | None:
    """One line for a resource failure while writing ``what`` (at ``where``), or None when
    ``exc`` is not one. Recognises OS errors by errno and the TileDB/zarr/h5py errors that
    only carry the OS text."""
    at = f" ({where})" if where else ""
    for e in _texts(exc):
        code = getattr(e, "errno", None)
        text = str(e).lower()
        if code in (errno.ENOSPC, errno.EDQUOT) or any(t in text for t in _NO_SPACE):
            return f"{what}{at}: no space left on the device; free some space and re-run the same command"
        if isinstance(e, MemoryError) or code == errno.ENOMEM or any(t in text for t in _NO_MEMORY):
            return f"{what}{at}: out of memory; use fewer workers ({WORKERS}, or a machine with more memory) and re-run the same command"
        if code in (errno.EMFILE, errno.ENFILE) or any(t in text for t in _NO_FILES):
            return f"{what}{at}: too many open files; raise the limit (ulimit -n) or use fewer workers ({WORKERS}) and re-run"
        if code in (errno.EROFS, errno.EACCES, errno.EPERM):
            return f"{what}{at}: {os.strerror(code)}; make the location writable and re-run the same command"
        if code == errno.EIO:
            return f"{what}{at}: input/output error from the device; check the disk and re-run the same command"
    return None


@contextmanager
def writing(what: str, where: str = "") -> Iterator[None]:
    """Turn a resource failure inside the block into a :class:`ResourceError` naming
    ``what`` was being written and ``where``; other errors pass unchanged."""
    try:
        yield
    except CatalogError:
        raise
    except Exception as exc:  # OSError, MemoryError, and TileDB/zarr/h5py errors carrying the OS text
        msg = resource_message(exc, what, where)
        if msg is None:
            raise
        raise ResourceError(msg) from exc
