"""The reader registry: one reader per technology/layout, found by asking each one."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

from ..errors import NoReaderError
from ..sample import ReadOptions, SampleRef, SampleSource

__all__ = ["Reader", "find_reader", "get_reader", "list_readers", "register_reader", "scan"]


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


_READERS: dict[str, Reader] = {}
_PLUGINS_LOADED = False


def register_reader(reader: Reader, *, overwrite: bool = False) -> Reader:
    """Add a reader to the registry (third-party readers can also use the
    ``hestkit.readers`` entry-point group)."""
    if reader.name in _READERS and not overwrite:
        raise ValueError(f"a reader named {reader.name!r} is already registered")
    _READERS[reader.name] = reader
    return reader


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in entry_points(group="hestkit.readers"):
        obj = ep.load()
        reader = obj() if isinstance(obj, type) else obj
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
    able = [r for r in _READERS.values() if r.can_open(path)]
    if not able:
        lines = "\n".join(f"  - {r.name}: {r.description}" for r in _READERS.values())
        raise NoReaderError(
            f"{path}: no reader recognises this path. Expected one of:\n{lines}\n"
            "Fix: point at the sample folder itself, or pass --technology."
        )
    if len(able) > 1:
        names = ", ".join(r.name for r in able)
        raise NoReaderError(f"{path}: several readers can open this path ({names}); pass --technology")
    return able[0]


def scan(path: str | Path, options: ReadOptions | None = None, technology: str = "auto") -> list[SampleRef]:
    """List the samples under ``path`` with the reader ``technology`` (or the one that fits)."""
    p = Path(path)
    reader = find_reader(p) if technology == "auto" else get_reader(technology)
    return reader.scan(p, options or ReadOptions())
