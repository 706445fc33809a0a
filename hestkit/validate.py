"""Checks every sample passes before it is staged, whatever reader read it.

Readers check their own files (layout, columns, units); this module checks what every
:class:`~hestkit.sample.SampleSource` must satisfy to become pairs, so a new reader
gets the same guarantees without repeating them:

* counts are raw counts: finite, non-negative integers below 2^31 (fractional values
  only with ``allow_non_integer``); checked on the stored values of the sparse matrix
  only, so the cost is one pass over its non-zeros;
* each barcode appears once, every gene has a one-line, non-empty name;
* in-tissue spots have numeric (not NaN) pixel coordinates;
* the sample has spots, genes and spots in tissue (:func:`require_pairs` checks again
  after the spots outside the image were dropped).

Every problem names the file it comes from, the first offending barcode / gene and the
value, and the fix; all problems of a sample are reported at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from .errors import NoPairsError, Problem, ValidationError, fix
from .fixes import ALLOW_NON_INTEGER
from .patches import PatchPlan
from .sample import SampleSource
from .slide import Slide

__all__ = [
    "MAX_COUNT",
    "CountCheck",
    "check_counts",
    "check_plan",
    "check_source",
    "coordinate_problems",
    "duplicate_barcode_problem",
    "gene_name_problems",
    "require_pairs",
]

#: Counts must be below this (2^31): larger values are corrupt data, not molecules.
MAX_COUNT = 2**31
#: Stored values checked at a time (bounds the temporaries of the count check).
_CHUNK = 1 << 22


@dataclass(frozen=True)
class CountCheck:
    """One kind of bad count: the predicate's name, how many entries, and the first one."""

    kind: str
    n: int
    barcode: str
    gene: str
    value: float

    def message(self) -> str:
        limit = f" (>= 2^31 = {MAX_COUNT:,})" if self.kind == "absurd" else ""
        return (
            f"{self.n:,} {self.kind} count{'s' if self.n != 1 else ''}{limit} in the matrix; the first is {_fmt(self.value)} "
            f"at barcode {self.barcode!r}, gene {self.gene!r}"
        )


def _fmt(v: float) -> str:
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def check_counts(
    counts: sp.spmatrix | sp.sparray | NDArray[np.generic],
    barcodes: list[str] | NDArray[np.generic] | pd.Series,
    genes: list[str],
    *,
    allow_non_integer: bool = False,
) -> list[CountCheck]:
    """The kinds of bad values in ``counts`` (spots x genes), each with its first entry
    in row-major order. Looks at the stored values only (implicit zeros are fine)."""
    m = counts if isinstance(counts, sp.csr_matrix) else sp.csr_matrix(counts)
    data = m.data
    if data.size == 0 or data.dtype.kind not in "iufb":
        return []
    bars = np.asarray(barcodes)
    # kind -> [count, first index]; the values are checked in chunks so that the
    # temporaries stay small (a Visium HD matrix holds 10^8 stored values)
    tally: dict[str, list[int]] = {}

    def note(mask: NDArray[np.bool_], kind: str, offset: int) -> None:
        hits = np.flatnonzero(mask)
        if hits.size:
            t = tally.setdefault(kind, [0, offset + int(hits[0])])
            t[0] += int(hits.size)

    floats = data.dtype.kind == "f"
    wide = data.dtype.itemsize > 4
    for lo in range(0, data.size, _CHUNK):
        d = data[lo : lo + _CHUNK]
        if floats:
            nan, inf = np.isnan(d), np.isinf(d)
            note(nan, "NaN", lo)
            note(inf, "infinite", lo)
            finite = ~(nan | inf)
            note(finite & (d < 0), "negative", lo)
            note(finite & (d >= MAX_COUNT), "absurd", lo)
            if not allow_non_integer:
                with np.errstate(invalid="ignore"):
                    note(finite & (d != np.floor(d)), "non-integer", lo)
        else:
            if data.dtype.kind == "i":
                note(d < 0, "negative", lo)
            if wide:
                note(d >= MAX_COUNT, "absurd", lo)
    found: list[CountCheck] = []
    for kind in ("NaN", "infinite", "negative", "absurd", "non-integer"):
        if kind not in tally:
            continue
        n, k = tally[kind]
        row = int(np.searchsorted(m.indptr, k, side="right") - 1)
        found.append(CountCheck(kind, n, str(bars[row]), str(genes[int(m.indices[k])]), float(data[k])))
    return found


def _counts_problem(path: str | Path | None, bad: list[CountCheck], allow_non_integer: bool) -> Problem:
    text = "; ".join(c.message() for c in bad)
    only_fraction = all(c.kind == "non-integer" for c in bad)
    if only_fraction:
        fx = fix(
            "give raw counts (the integer UMI counts, e.g. layers['counts'] or the filtered_feature_bc_matrix), or pass "
            f"{ALLOW_NON_INTEGER} (ReadOptions) to keep non-negative fractional values "
            "such as normalised data; it is recorded in the manifest",
            ALLOW_NON_INTEGER,
        )
    else:
        fx = fix(
            "expected raw counts: finite, non-negative and below 2^31"
            + ("" if allow_non_integer else f" (integers, or fractional with {ALLOW_NON_INTEGER})")
            + "; re-export the matrix from the pipeline that made it",
            *(() if allow_non_integer else (ALLOW_NON_INTEGER,)),
        )
    return Problem(path, f"{text}. Fix: {fx}", fx)


def duplicate_barcode_problem(path: str | Path | None, barcodes: pd.Series | list[str]) -> Problem | None:
    """A problem naming the first barcode that appears more than once, or None."""
    s = pd.Series(np.asarray(barcodes, dtype=object).astype(str))
    dup = s.duplicated(keep=False)
    if not dup.any():
        return None
    names = pd.unique(s[dup])
    first = str(names[0])
    n_first = int((s == first).sum())
    more = f" (and {len(names) - 1:,} more barcode(s) likewise)" if len(names) > 1 else ""
    return Problem(
        path,
        f"barcode {first!r} appears {n_first} times in the matrix{more}; each barcode must name one spot. "
        "Fix: de-duplicate the matrix (the rows of a merged or concatenated run?) or give each spot its own barcode",
    )


def gene_name_problems(path: str | Path | None, genes: list[str], gene_ids: list[str]) -> list[Problem]:
    """Problems for empty and multi-line gene names (each kind once, with its first gene)."""
    out: list[Problem] = []
    names = [str(g) for g in genes]
    empty = [i for i, g in enumerate(names) if not g.strip()]
    multi = [i for i, g in enumerate(names) if "\n" in g or "\r" in g]
    if empty:
        i = empty[0]
        gid = gene_ids[i] if i < len(gene_ids) else "?"
        out.append(
            Problem(
                path,
                f"{len(empty):,} gene name(s) are empty; the first is feature #{i} (id {gid!r}). "
                "Fix: give every feature a name (e.g. its gene id) in the features table",
            )
        )
    if multi:
        i = multi[0]
        out.append(
            Problem(
                path,
                f"{len(multi):,} gene name(s) span several lines; the first is feature #{i}: {names[i]!r}. "
                "Fix: gene names are one line each; the features table looks corrupt or mis-parsed",
            )
        )
    return out


def coordinate_problems(path: str | Path | None, spots: pd.DataFrame) -> list[Problem]:
    """Problems for in-tissue spots whose pixel coordinates are NaN (or not finite)."""
    if spots.empty:
        return []
    live = spots[spots["in_tissue"].to_numpy() > 0] if "in_tissue" in spots else spots
    x = live["x_px"].to_numpy(dtype=float)
    y = live["y_px"].to_numpy(dtype=float)
    bad = ~np.isfinite(x) | ~np.isfinite(y)
    if not bad.any():
        return []
    k = int(np.flatnonzero(bad)[0])
    bc = str(live["barcode"].iloc[k])
    return [
        Problem(
            path,
            f"{int(bad.sum()):,} of {len(live):,} in-tissue spots have no pixel position (NaN or infinite); "
            f"the first is barcode {bc!r} at x={float(x[k])}, y={float(y[k])}. "
            "Fix: the positions file is incomplete or was edited; re-copy it from the pipeline's output",
        )
    ]


def check_source(source: SampleSource, *, allow_non_integer: bool = False) -> None:
    """Raise :class:`~hestkit.errors.ValidationError` (every problem at once) or
    :class:`~hestkit.errors.NoPairsError` if ``source`` cannot become pairs as it is."""
    counts_path = source.counts_file
    problems: list[Problem] = []
    dup = duplicate_barcode_problem(counts_path, source.spots["barcode"])
    if dup is not None:
        problems.append(dup)
    problems.extend(gene_name_problems(counts_path, source.genes, source.gene_ids))
    problems.extend(coordinate_problems(source.spots_file, source.spots))
    bad = check_counts(source.counts, source.spots["barcode"].to_numpy(), source.genes, allow_non_integer=allow_non_integer)
    if bad:
        problems.append(_counts_problem(counts_path, bad, allow_non_integer))
    if problems:
        raise ValidationError(f"sample {source.sample_id!r}", problems)
    n_spots, n_genes = source.counts.shape
    n_in = int((source.spots["in_tissue"].to_numpy() > 0).sum()) if n_spots else 0
    if n_spots == 0:
        said = f" (the reader said: {'; '.join(source.warnings)})" if source.warnings else ""
        require_pairs(source.sample_id, counts_path, 0, f"the matrix lists 0 spots (barcodes){said}")
    if n_genes == 0:
        require_pairs(source.sample_id, counts_path, 0, f"the matrix lists 0 genes (for {n_spots:,} spots)")
    if n_in == 0:
        require_pairs(
            source.sample_id,
            source.spots_file,
            0,
            f"0 of {n_spots:,} spots are in tissue (in_tissue = 0 for every spot)",
        )


def require_pairs(sample_id: str, path: str | Path | None, n_pairs: int, reason: str) -> None:
    """Raise :class:`~hestkit.errors.NoPairsError` ("no pairs: REASON") when ``n_pairs`` is 0."""
    if n_pairs > 0:
        return
    where = f"{path}: " if path else ""
    raise NoPairsError(
        f"{sample_id}: no pairs: {where}{reason}; nothing was written. "
        "Fix: check that this is the sample you meant (the right matrix, positions and image), "
        "or leave it out of the ingest"
    )


def check_plan(source: SampleSource, plan: PatchPlan, slide: Slide) -> None:
    """Raise :class:`~hestkit.errors.NoPairsError` when planning dropped every spot of
    ``source`` (each one's patch would leave the image)."""
    if plan.n_pairs > 0:
        return
    side = plan.window_level_px * plan.level_downsample
    require_pairs(
        source.sample_id,
        slide.path,
        0,
        f"all {len(plan.dropped_outside):,} in-tissue spots were dropped: each one's patch ({side:.0f} level-0 px wide, "
        f"centred on the spot) would leave the image ({slide.width} x {slide.height} px)",
    )
