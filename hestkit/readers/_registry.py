"""The reader registry: one reader per technology/layout, found by asking each one."""

from __future__ import annotations

import logging
import warnings
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import NoReaderError, OptionError, fix
from ..fixes import TECHNOLOGY
from ..sample import ReadOptions, SampleRef, SampleSource

__all__ = [
    "Reader",
    "ReaderPluginWarning",
    "find_reader",
    "get_reader",
    "list_readers",
    "reader_names",
    "register_reader",
    "scan",
]


@runtime_checkable
class Reader(Protocol):
    """A plug-in that knows one vendor layout, like an xarray backend.

    ``name`` is what ``--technology`` selects; ``can_open`` must be cheap (look at file
    names, not contents); ``scan`` lists the samples under a path without reading them;
    ``load`` reads one sample and validates it, collecting every problem into one error.
    """

    name: str
    description: str

    def can_open(self, path: Path) -> bool: ...

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]: ...

    def load(self, ref: SampleRef) -> SampleSource: ...


logger = logging.getLogger(__name__)

_READERS: dict[str, Reader] = {}
_PLUGINS_LOADED = False


class ReaderPluginWarning(UserWarning):
    """A third-party reader plug-in failed to load or to answer; it is skipped."""


def register_reader(reader: Reader, *, overwrite: bool = False) -> Reader:
    """Add a reader to the registry (third-party readers can also use the
    ``hestkit.readers`` entry-point group)."""
    if reader.name in _READERS and not overwrite:
        raise OptionError(f"a reader named {reader.name!r} is already registered")
    _READERS[reader.name] = reader
    return reader


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in entry_points(group="hestkit.readers"):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown package"
        try:
            obj = ep.load()
            reader = obj() if isinstance(obj, type) else obj
            if not isinstance(reader, Reader):
                raise TypeError(f"{type(reader).__name__} lacks name/description/can_open/scan/load")
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop every ingest
            warnings.warn(
                f"reader plug-in {ep.name!r} ({ep.value}, from {dist}) could not be loaded and is skipped: "
                f"{type(exc).__name__}: {exc}. Fix: update or uninstall {dist}",
                ReaderPluginWarning,
                stacklevel=3,
            )
            continue
        if reader.name not in _READERS:
            register_reader(reader)


def list_readers() -> list[Reader]:
    _load_plugins()
    return list(_READERS.values())


def get_reader(name: str) -> Reader:
    _load_plugins()
    try:
        return _READERS[name]
    except KeyError:
        known = ", ".join(sorted(_READERS)) or "none"
        raise NoReaderError(f"unknown technology {name!r}; known: auto, {known}") from None


def find_reader(path: Path) -> Reader:
    """The single reader that says it can open ``path``."""
    _load_plugins()
    if not path.exists():
        raise NoReaderError(f"{path}: no such file or folder")
    able = [r for r in _READERS.values() if _can_open(r, path)]
    if not able:
        lines = "\n".join(f"  - {r.name}: {r.description}" for r in _READERS.values())
        raise NoReaderError(
            f"{path}: no reader recognises this path. Expected one of:\n{lines}\n",
            fix=fix(f"point at the sample folder itself, or pass {TECHNOLOGY}.", TECHNOLOGY),
        )
    if len(able) > 1:
        names = ", ".join(r.name for r in able)
        raise NoReaderError(f"{path}: several readers can open this path ({names})", fix=fix(f"pass {TECHNOLOGY}", TECHNOLOGY))
    return able[0]


def _can_open(reader: Reader, path: Path) -> bool:
    """Ask one reader; a reader that raises is skipped with a warning naming it."""
    try:
        return bool(reader.can_open(path))
    except Exception as exc:  # noqa: BLE001 - one faulty reader must not hide the others
        warnings.warn(
            f"reader {reader.name!r} ({type(reader).__module__}) failed while checking {path} and is skipped: "
            f"{type(exc).__name__}: {exc}",
            ReaderPluginWarning,
            stacklevel=3,
        )
        return False


def reader_names() -> list[str]:
    """The names ``--technology`` accepts besides ``auto``: every registered reader's."""
    _load_plugins()
    return sorted(_READERS)


def scan(path: str | Path, options: ReadOptions | None = None, technology: str = "auto") -> list[SampleRef]:
    """List the samples under ``path`` with the reader ``technology`` (or the one that fits)."""
    p = Path(path)
    reader = find_reader(p) if technology == "auto" else get_reader(technology)
    return reader.scan(p, options or ReadOptions())
