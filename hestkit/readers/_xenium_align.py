"""Registration of a post-Xenium H&E to the Xenium frame.

Two files describe it:

* the 10x ``*imagealignment.csv``: three comma-separated rows, no header, last row
  ``0,0,1``. The matrix ``M`` maps **H&E pixels** ``(x, y, 1)`` to **Xenium
  morphology-image pixels**; micrometres = morphology px x ``pixel_size`` (from
  ``experiment.xenium``). So a point in micrometres reaches the H&E as
  ``inverse(M) @ (um / pixel_size)``.
* a Xenium Explorer keypoints CSV with header ``fixedX,fixedY,alignmentX,alignmentY``:
  ``alignment*`` are H&E pixels, ``fixed*`` morphology pixels. ``M`` is then fitted
  by least squares and the residuals are kept.

The H&E pixel size follows from the scale of ``M``: ``pixel_size * sqrt(|det M[:2, :2]|)``
(rotation independent; for a ~90 degree rotation it equals ``pixel_size * |M01 - M00|``
to within a percent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from ..errors import Problem, ReaderError, fix
from ..fixes import ALIGNMENT
from ..geometry import Affine, fit_affine

__all__ = [
    "ALIGNMENT_SUFFIX",
    "KEYPOINT_COLUMNS",
    "KEYPOINT_RMS_WARN_UM",
    "XeniumAlignment",
    "find_alignment_file",
    "read_alignment",
    "scale_from_matrix",
]

#: File names ending like this (case-insensitive) are found automatically.
ALIGNMENT_SUFFIX = "imagealignment.csv"
KEYPOINT_COLUMNS = ("fixedX", "fixedY", "alignmentX", "alignmentY")
#: Root-mean-square keypoint residual (micrometres) above which a warning is recorded.
KEYPOINT_RMS_WARN_UM = 5.0

_FIX_MATRIX = fix(
    "give the 10x '<prefix>_he_imagealignment.csv' (3 rows of 3 comma-separated numbers, last row 0,0,1) "
    f"or a Xenium Explorer keypoints CSV (header fixedX,fixedY,alignmentX,alignmentY) as {ALIGNMENT}",
    ALIGNMENT,
)


@dataclass(frozen=True, eq=False)
class XeniumAlignment:
    """H&E-to-morphology registration of one sample.

    Attributes:
        he_to_morph: maps H&E level-0 pixels to Xenium morphology-image pixels (10x direction).
        path: the file it was read from.
        kind: ``"imagealignment"`` (10x matrix) or ``"keypoints"`` (fitted).
        residuals_morph_px: per-keypoint residual distances in morphology pixels (keypoints only).
    """

    he_to_morph: Affine
    path: Path
    kind: Literal["imagealignment", "keypoints"]
    residuals_morph_px: NDArray[np.float64] | None = None

    def um_to_he(self, morph_pixel_size_um: float) -> Affine:
        """The affine from Xenium micrometres to H&E pixels: ``inverse(M) @ scale(1 / pixel_size)``."""
        return self.he_to_morph.inverse() @ Affine.scale(1.0 / morph_pixel_size_um)

    def um_to_he_px(self, points_um: ArrayLike, morph_pixel_size_um: float) -> NDArray[np.float64]:
        """Map ``(N, 2)`` points ``(x, y)`` in micrometres to H&E pixels."""
        return self.um_to_he(morph_pixel_size_um).apply(points_um)

    def he_pixel_size_um(self, morph_pixel_size_um: float) -> float:
        """Micrometres per H&E pixel implied by the registration."""
        return morph_pixel_size_um * self.he_to_morph.linear_scale

    def residuals_um(self, morph_pixel_size_um: float) -> NDArray[np.float64] | None:
        if self.residuals_morph_px is None:
            return None
        out: NDArray[np.float64] = self.residuals_morph_px * morph_pixel_size_um
        return out


def _check_matrix(m: NDArray[np.float64], path: Path) -> None:
    if not np.isfinite(m).all():
        raise ReaderError(path, "the alignment matrix contains non-finite values", _FIX_MATRIX)
    lin = m[:2, :2]
    det = float(np.linalg.det(lin))
    norm2 = float((lin**2).sum())
    if norm2 == 0.0 or abs(det) <= 1e-9 * norm2:
        raise ReaderError(
            path,
            f"the alignment matrix is singular (det of its 2x2 part = {det:.3g}); it cannot be inverted to map "
            "transcripts onto the H&E",
            "re-export the alignment from Xenium Explorer, or check the file is the H&E registration and not another table",
        )


def _read_matrix(path: Path, text: str) -> XeniumAlignment:
    rows = [r for r in (line.strip() for line in text.splitlines()) if r]
    try:
        values = [[float(v) for v in r.replace(";", ",").split(",") if v.strip() != ""] for r in rows]
    except ValueError as exc:
        raise ReaderError(path, f"is not a 3x3 numeric alignment matrix ({exc})", _FIX_MATRIX) from exc
    if len(values) != 3 or any(len(r) != 3 for r in values):
        shape = " / ".join(str(len(r)) for r in values) or "nothing"
        raise ReaderError(path, f"has {len(values)} row(s) with {shape} value(s); expected 3 rows of 3 values", _FIX_MATRIX)
    m = np.asarray(values, dtype=float)
    if not np.allclose(m[2], [0.0, 0.0, 1.0], atol=1e-6):
        raise ReaderError(path, f"last row is {m[2].tolist()}, expected 0,0,1 (an affine matrix)", _FIX_MATRIX)
    _check_matrix(m, path)
    return XeniumAlignment(Affine.from_array(m), path, "imagealignment")


def _read_keypoints(path: Path) -> XeniumAlignment:
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise ReaderError(path, f"cannot be parsed as a keypoints CSV ({exc})", _FIX_MATRIX) from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in KEYPOINT_COLUMNS if c not in df.columns]
    if missing:
        raise ReaderError(path, f"lacks the keypoint column(s) {', '.join(missing)}", _FIX_MATRIX)
    pts = df[list(KEYPOINT_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    pts = pts[np.isfinite(pts).all(axis=1)]
    try:
        aff, resid = fit_affine(pts[:, 2:4], pts[:, 0:2])
    except ValueError as exc:
        raise ReaderError(
            path,
            f"has {len(pts)} usable keypoint(s); {exc}",
            "place at least 3 (better 4 or more) keypoints spread over the tissue in Xenium Explorer",
        ) from exc
    _check_matrix(aff.to_array(), path)
    return XeniumAlignment(aff, path, "keypoints", resid)


def read_alignment(path: str | Path) -> XeniumAlignment:
    """Read a 10x ``*imagealignment.csv`` matrix or a Xenium Explorer keypoints CSV.

    The kind is told by the content: a header with ``fixedX`` means keypoints.
    Raises :class:`~hestkit.errors.ReaderError` for unreadable, malformed or singular input.
    """
    p = Path(path)
    if not p.is_file():
        raise ReaderError(p, "the alignment file does not exist", _FIX_MATRIX)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ReaderError(p, f"cannot be read as text ({exc})", _FIX_MATRIX) from exc
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "fixedx" in first.lower() or "alignmentx" in first.lower():
        return _read_keypoints(p)
    return _read_matrix(p, text)


def find_alignment_file(folder: Path, image: Path | None, problems: list[Problem]) -> Path | None:
    """The single ``*imagealignment.csv`` in the bundle ``folder`` or beside the H&E ``image``.

    Records a problem (and returns None) when there is none or more than one.
    """
    dirs = [folder] + ([image.parent] if image is not None else [])
    found: dict[Path, Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.is_file() and p.name.lower().endswith(ALIGNMENT_SUFFIX) and not p.name.startswith("."):
                found.setdefault(p.resolve(), p)
    cands = list(found.values())
    if len(cands) == 1:
        return cands[0]
    where = " or ".join(dict.fromkeys(str(d) for d in dirs))
    if not cands:
        problems.append(
            Problem(
                folder,
                f"no H&E alignment found (no *{ALIGNMENT_SUFFIX} in {where})",
                fix(f"pass the 10x '<prefix>_he_imagealignment.csv' or a Xenium Explorer keypoints CSV as {ALIGNMENT}", ALIGNMENT),
            )
        )
    else:
        names = ", ".join(str(p) for p in cands)
        problems.append(Problem(folder, f"several alignment files ({names})", fix(f"pass {ALIGNMENT} to choose one", ALIGNMENT)))
    return None


def scale_from_matrix(m: ArrayLike) -> tuple[float, float]:
    """``(sqrt(|det|), |M01 - M00|)`` of an alignment matrix: the general scale and the
    shortcut that only holds near +-90 degrees (kept for checks against published numbers)."""
    a = np.asarray(m, dtype=float)
    return math.sqrt(abs(float(np.linalg.det(a[:2, :2])))), abs(float(a[0, 1] - a[0, 0]))
