"""Errors raised by :mod:`hestkit`.

Every message says what was found, what was expected, and how to fix it. Validation
collects every problem it finds into one :class:`ValidationError` instead of stopping
at the first one, so a user fixes a sample in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "HestkitError",
    "ImageError",
    "NoPairsError",
    "NoReaderError",
    "OptionError",
    "PixelSizeError",
    "Problem",
    "ReaderError",
    "RegistrationError",
    "ValidationError",
    "VolumeError",
    "VoxelSizeError",
]


class HestkitError(Exception):
    """Base class of every error hestkit raises on purpose."""


class ReaderError(HestkitError):
    """A vendor file could not be read: missing, corrupt or of an unexpected layout."""

    def __init__(self, path: str | Path, found: str, fix: str) -> None:
        self.path = Path(path)
        self.found = found
        self.fix = fix
        super().__init__(f"{self.path}: {found}. Fix: {fix}")


class NoReaderError(HestkitError):
    """No registered reader recognised a path."""


class NoPairsError(HestkitError):
    """A sample would yield no spot-patch pair (0 spots, 0 genes, 0 in tissue, or every
    spot dropped); it is refused, never committed empty."""


class OptionError(HestkitError):
    """An option given by the user is unusable (e.g. an empty ``--sample-id``)."""


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
    """One problem found during validation: the file it concerns and a message."""

    __slots__ = ("message", "path")

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = None if path is None else Path(path)
        self.message = message

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
