"""Errors raised by :mod:`hestkit`.

Every message says what was found, what was expected, and how to fix it. Validation
collects every problem it finds into one :class:`ValidationError` instead of stopping
at the first one, so a user fixes a sample in one pass.

**Fixes are structured.** A library error never names a command-line flag. Where the
fix is to set a parameter, the message names the library parameter as Python spells it
(``allow_upsampling=True``, ``image=PATH``) and the error carries it as an :class:`Opt`
in its :class:`Fix` (``err.fix.options``, or ``err.options``, which also gathers the
fixes of a :class:`ValidationError`'s problems). The command line renders each as its
flag (``--allow-upsampling``, ``--image PATH``) with :func:`render`; a notebook reads
``str(err)`` as is. Errors also carry ``found`` / ``expected`` where a caller has them.

Errors that replace a builtin keep it as a base (:class:`OptionError` and
:class:`DataError` are ``ValueError`` s, :class:`StateError` a ``RuntimeError``), so code
that catches the builtin keeps working.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DataError",
    "Fix",
    "HestkitError",
    "ImageError",
    "MissingDependencyError",
    "NoPairsError",
    "NoReaderError",
    "Opt",
    "OptionError",
    "PixelSizeError",
    "Problem",
    "ReaderError",
    "RegistrationError",
    "StateError",
    "ValidationError",
    "VolumeError",
    "VoxelSizeError",
    "fix",
    "render",
]


@dataclass(frozen=True)
class Opt:
    """A library parameter that a fix names: ``name`` as the Python API spells it and
    ``value`` as text (``"True"`` for a switch, a metavar such as ``"PATH"``, or a real
    value). ``str()`` gives the Python form, ``allow_upsampling=True`` or ``image=PATH``;
    ``cli`` is the value as the command line spells it when that differs (default:
    ``value``; a ``"True"`` switch is the bare flag)."""

    name: str
    value: str = "True"
    cli: str | None = None
    #: Where the parameter lives when the name alone is ambiguous (``"PairSpec"`` for
    #: the patches' ``pixel_size_um``, as opposed to a sample's); a front end's key.
    scope: str = ""

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


@dataclass(frozen=True)
class Fix:
    """How to fix an error: ``text`` for a person (library parameters in their Python
    form, see :class:`Opt`) and the ``options`` it names, for a front end to re-spell."""

    text: str
    options: tuple[Opt, ...] = ()

    def __str__(self) -> str:
        return self.text


def fix(text: str, *options: Opt) -> Fix:
    """A :class:`Fix`; ``text`` names the ``options`` by their ``str()`` (an f-string
    does it: ``fix(f"pass {IMAGE}", IMAGE)``), or the error's message does (then
    ``text`` may be empty)."""
    return Fix(text, tuple(options))


def render(text: str, options: Iterable[Opt], spell: Callable[[Opt], str]) -> str:
    """``text`` with each of ``options``' Python form (``name=value``) replaced by
    ``spell(opt)``, e.g. the command-line flag. Longest forms first; a form is only
    replaced as a whole word (``ids=ID`` is not part of ``sample_ids=ID``)."""
    for o in sorted(set(options), key=lambda o: -len(str(o))):
        text = re.sub(r"(?<![\w.])" + re.escape(str(o)) + r"(?![\w])", lambda _m, o=o: spell(o), text)  # type: ignore[misc]
    return text


def _rebuild(cls: type[HestkitError], args: tuple[Any, ...], state: dict[str, Any]) -> HestkitError:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class HestkitError(Exception):
    """Base class of every error hestkit raises on purpose.

    ``HestkitError(message, found=..., expected=..., fix=...)``: ``fix`` is a
    :class:`Fix` (or plain text); when the message does not already contain the fix's
    text, it is appended as ``". Fix: ..."``."""

    found: str | None
    expected: str | None
    fix: Fix | None

    def __init__(
        self, message: str = "", *, found: str | None = None, expected: str | None = None, fix: Fix | str | None = None
    ) -> None:
        fx = Fix(fix) if isinstance(fix, str) else fix
        if fx is not None and fx.text and fx.text not in message:
            sep = "" if message.endswith("\n") else " " if message.rstrip().endswith(".") else ". "
            message = f"{message}{sep}Fix: {fx.text}" if message else fx.text
        self.found = found
        self.expected = expected
        self.fix = fx
        super().__init__(message)

    @property
    def options(self) -> tuple[Opt, ...]:
        """The library parameters this error's fix names (see :class:`Opt`)."""
        return self.fix.options if self.fix is not None else ()

    def __reduce__(self) -> tuple[Any, ...]:
        # subclasses take other constructor arguments than args: rebuild without calling __init__
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


class OptionError(HestkitError, ValueError):
    """An argument or option given by the user is unusable (e.g. an empty ``sample_id``,
    a patch size below 8 px)."""


class DataError(HestkitError, ValueError):
    """Values read from a file or given as arrays do not fit together (shapes, lengths,
    metadata that contradicts the data)."""


class MissingDependencyError(HestkitError, ImportError):
    """An optional dependency is not installed; the fix names the extra to install."""


class StateError(HestkitError, RuntimeError):
    """A call out of order (e.g. a one-pass reader read twice)."""


class ReaderError(HestkitError):
    """A vendor file could not be read: missing, corrupt or of an unexpected layout."""

    fix: Fix

    def __init__(self, path: str | Path, found: str, fix: Fix | str) -> None:
        self.path = Path(path)
        fx = Fix(fix) if isinstance(fix, str) else fix
        super().__init__(f"{self.path}: {found}. Fix: {fx}", found=found, fix=fx)


class NoReaderError(HestkitError):
    """No registered reader recognised a path."""


class NoPairsError(HestkitError):
    """A sample would yield no spot-patch pair (0 spots, 0 genes, 0 in tissue, or every
    spot dropped); it is refused, never committed empty."""


class ImageError(ReaderError):
    """The whole-slide image is missing, unreadable, or does not cover the spots."""


class PixelSizeError(HestkitError):
    """No pixel size could be read or estimated for a sample."""


class VolumeError(HestkitError):
    """A 3D volume (or a request on it) is unusable: shape, channels, extent or geometry."""


class VoxelSizeError(VolumeError):
    """A volume has no usable voxel size (none embedded and none given)."""


class RegistrationError(VolumeError):
    """Automatic placement of a section in a volume failed or is not trustworthy."""


class Problem:
    """One problem found during validation: the file it concerns, a message and, where
    the fix is to set a parameter, the :class:`Fix` (appended to the message unless the
    message already says it)."""

    __slots__ = ("fix", "message", "path")

    def __init__(self, path: str | Path | None, message: str, fix: Fix | None = None) -> None:
        self.path = None if path is None else Path(path)
        if fix is not None and fix.text not in message:
            message = f"{message}; {fix.text}"
        self.message = message
        self.fix = fix

    @classmethod
    def of(cls, exc: ReaderError, extra: Fix | None = None) -> Problem:
        """The problem a :class:`ReaderError` describes (its fix kept), optionally with
        another way out appended (``"; or ..."``)."""
        if extra is None:
            return cls(exc.path, f"{exc.found}. Fix: {exc.fix}", exc.fix)
        both = Fix(f"{exc.fix}; or {extra}", (*exc.fix.options, *extra.options))
        return cls(exc.path, f"{exc.found}. Fix: {both}", both)

    @property
    def options(self) -> tuple[Opt, ...]:
        return self.fix.options if self.fix is not None else ()

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path is not None else self.message

    def __repr__(self) -> str:
        return f"Problem({str(self)!r})"


class ValidationError(HestkitError):
    """Several problems found at once; ``problems`` lists each of them."""

    def __init__(self, subject: str, problems: Iterable[Problem]) -> None:
        self.subject = subject
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{subject}: {n} problem{'s' if n != 1 else ''} found:\n{lines}")

    @property
    def options(self) -> tuple[Opt, ...]:
        return tuple(o for p in self.problems for o in p.options)
