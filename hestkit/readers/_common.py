"""Checks and helpers shared by the readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import Problem, fix
from ..fixes import IMAGE
from ..slide import SLIDE_SUFFIXES, Slide
from ..validate import coordinate_problems

__all__ = ["check_spots_inside", "find_image", "normalise_spots", "positive_field", "spots_from_obs"]


def normalise_spots(df: pd.DataFrame) -> pd.DataFrame:
    """Return a spot table with exactly the columns of ``SPOT_COLUMNS`` and their dtypes."""
    out = pd.DataFrame(
        {
            "barcode": df["barcode"].astype(str).to_numpy(),
            "in_tissue": df.get("in_tissue", pd.Series(1, index=df.index)).astype("int8").to_numpy(),
            "array_row": df.get("array_row", pd.Series(-1, index=df.index)).astype("int32").to_numpy(),
            "array_col": df.get("array_col", pd.Series(-1, index=df.index)).astype("int32").to_numpy(),
            "x_px": df["x_px"].astype("float64").to_numpy(),
            "y_px": df["y_px"].astype("float64").to_numpy(),
            "x_um": df.get("x_um", pd.Series(np.nan, index=df.index)).astype("float64").to_numpy(),
            "y_um": df.get("y_um", pd.Series(np.nan, index=df.index)).astype("float64").to_numpy(),
        }
    )
    return out


def spots_from_obs(obs: pd.DataFrame, barcodes: Any, centres_px: np.ndarray) -> pd.DataFrame:
    """A spot table from AnnData-style ``obs`` (optional ``in_tissue``, ``array_row``,
    ``array_col``, ``x_um``, ``y_um``) and (N, 2) centres (x, y) in level-0 px."""
    xy = np.asarray(centres_px, dtype=float)
    cols: dict[str, Any] = {"barcode": np.asarray(barcodes).astype(str), "x_px": xy[:, 0], "y_px": xy[:, 1]}
    for c in ("in_tissue", "array_row", "array_col", "x_um", "y_um"):
        if c in obs:
            cols[c] = obs[c].to_numpy()
    return normalise_spots(pd.DataFrame(cols))


def check_spots_inside(spots: pd.DataFrame, slide: Slide, problems: list[Problem], positions: Path | str | None = None) -> None:
    """Every spot centre must lie on the image; otherwise it is the wrong image (e.g. a
    downscaled copy) or the wrong coordinates. Spots without a position (NaN) get their
    own problem, naming ``positions`` (the file the coordinates come from)."""
    if spots.empty:
        return
    x = spots["x_px"].to_numpy(dtype=float)
    y = spots["y_px"].to_numpy(dtype=float)
    problems.extend(coordinate_problems(positions, spots))
    finite = np.isfinite(x) & np.isfinite(y)
    negative = finite & ((x < 0) | (y < 0))
    beyond = finite & ((x > slide.width) | (y > slide.height))
    bars = spots["barcode"].to_numpy()

    def where(mask: np.ndarray) -> str:
        k = int(np.flatnonzero(mask)[0])
        xs, ys = x[mask], y[mask]
        return (
            f"the first is barcode {str(bars[k])!r} at x={x[k]:.1f}, y={y[k]:.1f}; those spots span "
            f"x={xs.min():.0f}..{xs.max():.0f}, y={ys.min():.0f}..{ys.max():.0f}"
        )

    if negative.any():
        problems.append(
            Problem(
                positions if positions is not None else slide.path,
                f"{int(negative.sum())} of {len(spots)} spot centres have negative pixel coordinates ({where(negative)}; "
                f"the image is {slide.width} x {slide.height} px). Pixel coordinates start at 0 at the image's top-left "
                "corner: the positions file is corrupt or in another frame; re-copy it, or check the alignment",
            )
        )
    if beyond.any():
        problems.append(
            Problem(
                slide.path,
                f"{int(beyond.sum())} of {len(spots)} spot centres lie outside the image ({slide.width} x {slide.height} px; "
                f"{where(beyond)}). The image is smaller than the spot coordinates: give the full-resolution image the "
                "spots were aligned to (not a hires/lowres copy), or check the positions file",
            )
        )


def positive_field(
    values: dict[str, Any],
    key: str,
    path: Path | str | None,
    problems: list[Problem],
    *,
    default: float | None = None,
    nan_is_missing: bool = False,
) -> float | None:
    """``values[key]`` as a positive finite number; ``default`` when the key is absent or
    null (or NaN, with ``nan_is_missing``: tables written by pandas mark unknown values
    so). A value that is present but NaN, zero, negative or not a number records a
    problem naming the file, the field and the value (and returns ``default``)."""
    raw = values.get(key)
    if raw is None or (nan_is_missing and isinstance(raw, float) and np.isnan(raw)):
        return default
    v: float | None
    if isinstance(raw, bool):
        v = None
    else:
        try:
            v = float(raw)
        except (TypeError, ValueError):
            v = None
    if v is not None and np.isfinite(v) and v > 0:
        return v
    what = "not a number" if v is None else ("NaN" if np.isnan(v) else "infinite" if np.isinf(v) else "not positive")
    problems.append(
        Problem(
            path,
            f"field {key!r} is {raw!r} ({what}); expected a positive number. Fix: re-copy the file from the "
            "pipeline's output (an edited or truncated copy?)",
        )
    )
    return default


def find_image(folder: Path, explicit: Path | None, problems: list[Problem]) -> Path | None:
    """The image given (``image``), or the single slide file in ``folder``."""
    if explicit is not None:
        if not explicit.exists():
            problems.append(Problem(explicit, "the image given (image) does not exist"))
            return None
        return explicit
    cands = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith(".")
    )
    if len(cands) == 1:
        return cands[0]
    if not cands:
        problems.append(
            Problem(
                folder,
                "no full-resolution image found beside the sample",
                fix(f"pass {IMAGE} (TIFF, OME-TIFF, SVS, NDPI, ...)", IMAGE),
            )
        )
    else:
        names = ", ".join(p.name for p in cands)
        problems.append(Problem(folder, f"several candidate images ({names})", fix(f"pass {IMAGE} to choose one", IMAGE)))
    return None
