"""Legacy Spatial Transcriptomics (Stahl et al. 2016): counts table + ST Spot Detector file.

A sample folder holds, per sample (``STEM``):

- a counts table ``STEM.tsv`` (or ``.tsv.gz``): tab-separated, spots x genes, row ids
  ``XxY``, empty first header cell, often NOT filtered to tissue (genes x spots tables
  are transposed).
- a spot detector file: ``spot_data-selection-STEM.tsv`` (only the spots under tissue,
  header ``x y new_x new_y pixel_x pixel_y``) or ``spot_data-all-STEM.tsv`` /
  ``alignment_table_STEM.tsv`` (every spot plus ``selected``, 1 = under tissue).
  ``pixel_x`` is the image column and ``pixel_y`` the row of the spot centre.
- the H&E image the detector was run on (``STEM.jpg``, ``STEM.tif``, ... or ``--image``).

Spots join on the detector's integer ``x``, ``y`` (``XxY``); ids written as refined
positions (``10.05x12.1``) join on ``new_x``, ``new_y`` rounded to 2 decimals.

Pixel size: an affine from ``(new_x * P, new_y * P)`` um onto ``(pixel_x, pixel_y)``,
fitted on every detector row; ``P`` is the pitch between consecutive integer ``x``:

- "1k" array: a full square grid, neighbours 200 um apart: ``P = 200``.
- "2k" array: a checkerboard (every ``x + y`` of one parity, diagonal neighbour pairs
  present), whose nearest neighbours are diagonal. STUtility assumes a 141 um minimum
  spot distance there; 141 um = 100 um x sqrt(2), so ``P = 100``. That is STUtility's
  assumption, not stated in the files: ``--pixel-size-um`` overrides.

Spots: only the selected ones (``in_tissue`` = 1); ``barcode`` = the counts row id,
``array_col`` = ``x`` (it runs along image columns), ``array_row`` = ``y``.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from ..errors import Fix, Opt, PixelSizeError, Problem, ReaderError, ValidationError, fix
from ..fixes import ALIGNMENT, IDS, IMAGE, SAMPLE_ID, ids
from ..geometry import estimate_pixel_size_from_grid, fit_affine, resolve_pixel_size
from ..sample import ReadOptions, SampleRef, SampleSource
from ..slide import SLIDE_SUFFIXES, open_slide
from ._common import check_spots_inside, find_image, normalise_spots

__all__ = [
    "DETECTOR_COLUMNS",
    "ST_1K_PITCH_UM",
    "ST_2K_PITCH_UM",
    "ST_SPOT_DIAMETER_UM",
    "StReader",
    "detect_st_layout",
    "read_spot_detector",
    "read_st_counts",
]

ST_SPOT_DIAMETER_UM = 100.0
#: Distance between consecutive integer ``x`` (or ``y``) of the 1k array, micrometres.
ST_1K_PITCH_UM = 200.0
#: Same for the 2k checkerboard array (diagonal neighbours 100 * sqrt(2) = 141 um apart).
ST_2K_PITCH_UM = 100.0
DETECTOR_COLUMNS = ("x", "y", "new_x", "new_y", "pixel_x", "pixel_y")
#: Relative x/y scale difference above which a warning says the image is stretched.
_ANISOTROPY_WARN = 0.05

_SPOT_ID = re.compile(r"^\s*(-?\d+(?:\.\d*)?)x(-?\d+(?:\.\d*)?)\s*$")
_DETECTOR_PREFIX = re.compile(r"^(?:spot[_-]?data[_-](?:selection|all)|alignment[_-]?table)[_-]?", re.IGNORECASE)
_COUNTS_HINT = "STEM.tsv, tab-separated spots x genes with XxY row ids and an empty first header cell"
_DETECTOR_HINT = (
    "spot_data-selection-{stem}.tsv, spot_data-all-{stem}.tsv or alignment_table_{stem}.tsv "
    "(ST Spot Detector output, header x y new_x new_y pixel_x pixel_y [selected])"
)


# -- cheap file sniffing -------------------------------------------------------------
def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _first_lines(path: Path, n: int = 2, limit: int = 8_000_000) -> list[str]:
    try:
        with _open_text(path) as fh:
            return [fh.readline(limit).rstrip("\r\n") for _ in range(n)]
    except (OSError, EOFError, ValueError):
        return []


def _cells(line: str) -> list[str]:
    return [c.strip().strip('"') for c in line.split("\t")]


def _is_tsv(p: Path) -> bool:
    n = p.name.lower()
    return p.is_file() and not n.startswith(".") and (n.endswith(".tsv") or n.endswith(".tsv.gz"))


def _sniff(path: Path) -> tuple[Literal["counts", "detector"] | None, bool]:
    """What a ``.tsv`` is (by its first two lines) and, for a detector, whether it has ``selected``."""
    lines = _first_lines(path, 2)
    head, row = (_cells(lines[0]), _cells(lines[1])) if lines else ([""], [""])
    if head[:3] == ["x", "y", "new_x"]:
        return "detector", "selected" in head
    if head[0] == "" and len(head) > 1 and (_SPOT_ID.match(row[0]) or _SPOT_ID.match(head[1])):
        return "counts", False
    return None, False


def _stem(p: Path) -> str:
    n = p.name
    for suf in (".tsv.gz", ".tsv", ".ome.tiff", ".ome.tif"):
        if n.lower().endswith(suf):
            return n[: -len(suf)]
    return p.stem


def _tokens(s: str) -> list[str]:
    return [t for t in re.split(r"[-_. ]+", s.lower()) if t]


def _pick(key: str, cands: Sequence[tuple[str, Path]]) -> list[Path]:
    """Candidates whose key equals ``key`` (case-insensitive), else those whose name
    contains the tokens of ``key`` in a row (``MOB1`` matches ``HE_MOB1``, not ``MOB10``)."""
    exact = [p for k, p in cands if k.lower() == key.lower()]
    want = _tokens(key)
    n = len(want)
    fuzzy = [p for k, p in cands if n and any(_tokens(k)[i : i + n] == want for i in range(len(_tokens(k)) - n + 1))]
    return exact or fuzzy


# -- readers of the two tables -------------------------------------------------------
def read_st_counts(path: Path) -> pd.DataFrame:
    """Read an ST counts table as a spots x genes DataFrame of integer counts.

    Row index: the spot ids as written (``XxY``); columns: the gene names as written.
    A genes x spots table is transposed. Raises :class:`ReaderError` when the file
    is not a counts table or holds non-numeric, negative or non-integer values.
    """
    fix = f"give the ST counts table {_COUNTS_HINT}"
    try:
        df = pd.read_csv(path, sep="\t", index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise ReaderError(path, f"cannot be parsed as a tab-separated counts table ({exc})", fix) from exc
    if df.empty:
        raise ReaderError(path, "holds no spots or no genes", fix)
    df.index = df.index.astype(str)
    df.columns = df.columns.astype(str)

    def frac(labels: pd.Index) -> float:
        return float(labels.str.match(_SPOT_ID.pattern).mean())

    if frac(df.index) < 0.5:
        if frac(df.columns) >= 0.5:
            df = df.T
        else:
            raise ReaderError(path, f"its row ids are not XxY spot ids (e.g. {', '.join(map(str, df.index[:3]))})", fix)
    bad = [str(c) for c, t in df.dtypes.items() if not pd.api.types.is_numeric_dtype(t)]
    if bad:
        raise ReaderError(
            path,
            f"{len(bad)} gene column(s) hold non-numeric values (e.g. {', '.join(bad[:3])})",
            "counts must be integers; re-export the raw counts table",
        )
    values = df.to_numpy()
    for bad_cells, what in (
        (~np.isfinite(values), "empty or non-finite"),
        (values != np.round(values), "non-integer (normalised data?)"),
        (values < 0, "negative"),
    ):
        if bad_cells.any():
            raise ReaderError(
                path, f"{int(bad_cells.sum())} cells are {what}", "hestkit stores raw counts; give the raw counts table"
            )
    return df


def read_spot_detector(path: Path) -> pd.DataFrame:
    """Read an ST Spot Detector file (selection, all-spots or alignment table).

    Returns the table with numeric ``x, y, new_x, new_y, pixel_x, pixel_y`` and a
    ``selected`` column (all 1 for a selection-only file). Raises :class:`ReaderError`.
    """
    fix = "use the ST Spot Detector output (tab-separated, header x y new_x new_y pixel_x pixel_y [selected])"
    try:
        df = pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise ReaderError(path, f"cannot be parsed as a spot detector table ({exc})", fix) from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in DETECTOR_COLUMNS if c not in df.columns]
    if missing:
        raise ReaderError(path, f"lacks the column(s) {', '.join(missing)} (found {', '.join(df.columns)})", fix)
    cols = [*DETECTOR_COLUMNS, "selected"] if "selected" in df.columns else list(DETECTOR_COLUMNS)
    bad = [c for c in cols if not pd.api.types.is_numeric_dtype(df[c]) or not np.isfinite(df[c].to_numpy(float)).all()]
    if bad:
        raise ReaderError(path, f"column(s) {', '.join(bad)} hold non-numeric or empty values", fix)
    if not (np.round(df[["x", "y"]]) == df[["x", "y"]]).all().all():
        raise ReaderError(path, "columns x, y are not integer array coordinates", fix)
    df = df[cols].copy()
    df["x"] = df["x"].astype(np.int64)
    df["y"] = df["y"].astype(np.int64)
    if "selected" not in df.columns:
        df["selected"] = 1
    if df.duplicated(["x", "y"]).any():
        raise ReaderError(path, "lists some x, y array positions more than once", fix)
    return df


def detect_st_layout(x: ArrayLike, y: ArrayLike) -> tuple[Literal["1k", "2k"], float]:
    """``("2k", 100.0)`` for a checkerboard array, else ``("1k", 200.0)``: the layout
    and the pitch in um between consecutive integer ``x`` (see the module docstring)."""
    xi = np.asarray(x, dtype=np.int64).ravel()
    yi = np.asarray(y, dtype=np.int64).ravel()
    if xi.size >= 2:
        parity = (xi + yi) % 2
        if (parity == parity[0]).all():
            keys = set(zip(xi.tolist(), yi.tolist(), strict=True))
            if any((a + 1, b + 1) in keys or (a + 1, b - 1) in keys for a, b in keys):
                return "2k", ST_2K_PITCH_UM
    return "1k", ST_1K_PITCH_UM


def _join(ids: pd.Index, sel: pd.DataFrame) -> tuple[NDArray[np.int64], list[str]]:
    """Row of the counts table of each selected detector spot (-1 = absent), and the
    spot ids of the absent ones."""
    keys: dict[tuple[float, float], int] = {}  # integer ids as (x, y), refined ones rounded to 2 decimals
    for i, s in enumerate(ids):
        if m := _SPOT_ID.match(s):
            keys.setdefault((round(float(m.group(1)), 2), round(float(m.group(2)), 2)), i)
    rows = np.full(len(sel), -1, dtype=np.int64)
    absent = []
    cols = zip(sel["x"].tolist(), sel["y"].tolist(), sel["new_x"].tolist(), sel["new_y"].tolist(), strict=True)
    for k, (x, y, nx, ny) in enumerate(cols):
        r = keys.get((x, y))
        if r is None and not (round(nx, 2).is_integer() and round(ny, 2).is_integer()):
            r = keys.get((round(nx, 2), round(ny, 2)))
        if r is None:
            absent.append(f"{x}x{y}")
        else:
            rows[k] = r
    return rows, absent


def _classify(folder: Path) -> tuple[list[Path], dict[Path, bool]]:
    """Counts tables and spot detector files of a folder (the bool: has ``selected``)."""
    counts: list[Path] = []
    detectors: dict[Path, bool] = {}
    for p in sorted(folder.iterdir()):
        kind, has_selected = _sniff(p) if _is_tsv(p) else (None, False)
        if kind == "counts":
            counts.append(p)
        elif kind == "detector":
            detectors[p] = has_selected
    return counts, detectors


def _pair_one(cpath: Path, picks: list[Path], what: str, prefer: dict[Path, bool] | None) -> Path | None:
    if len(picks) > 1 and prefer is not None:
        # spot_data-all / alignment table preferred over the selection file of the same sample
        keys = {_DETECTOR_PREFIX.sub("", _stem(p)).lower() for p in picks}
        full = [p for p in picks if prefer[p]]
        picks = full if len(keys) == 1 and len(full) == 1 else picks
    if len(picks) > 1:
        raise ReaderError(
            cpath,
            f"several {what} files could belong to it ({', '.join(p.name for p in picks)})",
            _alone(f"keep one, name it after the counts table ({_stem(cpath)}), or ingest it alone with", _stem(cpath), ALIGNMENT if prefer is not None else IMAGE),
        )
    return picks[0] if picks else None


def _alone(text: str, stem: str, *more: Opt) -> Fix:
    """``text ids=('STEM',) and image=PATH``: the fix that ingests one sample alone."""
    one = ids(stem)
    return fix(f"{text} {' and '.join(str(o) for o in (one, *more))}", one, *more)


def _pair(
    folder: Path, counts: list[Path], n_all: int, detectors: dict[Path, bool], given: list[Path | None]
) -> list[dict[str, Any]]:
    """Per counts table, its detector file and image: named after it, else the only one."""
    images = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith(".")
    )
    out: list[dict[str, Any]] = [{"counts": str(c), "single": len(counts) == 1} for c in counts]
    kinds = (("detector", "spot detector", list(detectors), _DETECTOR_PREFIX, detectors), ("image", "image", images, None, None))
    for (key, what, files, prefix, prefer), fixed in zip(kinds, given, strict=True):
        cands = [(prefix.sub("", _stem(p)) if prefix else _stem(p), p) for p in files]
        used: dict[Path, str] = {}
        seen: set[Path] = set()  # also the selection files superseded by their sample's full table
        for cpath, ex in zip(counts, out, strict=True):
            picks = _pick(_stem(cpath), cands)
            if not picks and n_all == 1 and key == "detector":
                picks = list(files)
            seen.update(picks)
            found = fixed if fixed is not None else _pair_one(cpath, picks, what, prefer)
            if found is not None and fixed is None:
                if found in used:
                    raise ReaderError(
                        found, f"pairs with both {used[found]} and {cpath.name}", "name each file after its counts table"
                    )
                used[found] = cpath.name
            ex[key] = None if found is None else str(found)
        lone = [Path(ex["counts"]).name for ex in out if ex[key] is None and not (key == "image" and ex["single"])]
        spare = [p.name for p in files if p not in seen]
        if lone and spare and fixed is None:
            raise ReaderError(
                folder,
                f"cannot tell which {what} file belongs to {', '.join(lone)} (unpaired: {', '.join(spare)})",
                fix(
                    "name each file after its counts table (MOB1.tsv <-> alignment_table_MOB1.tsv or "
                    f"spot_data-selection-MOB1.tsv <-> MOB1.jpg), or ingest one sample with {IDS}",
                    IDS,
                ),
            )
    return out


def _read(
    path: Path | None, missing: str, read: Callable[[Path], pd.DataFrame], problems: list[Problem], fx: Fix | None = None
) -> pd.DataFrame | None:
    if path is None or not path.exists():
        problems.append(Problem(path, "missing") if path is not None else Problem(None, missing, fx))
        return None
    try:
        return read(path)
    except ReaderError as exc:
        problems.append(Problem.of(exc))
        return None


def _estimate(det: pd.DataFrame, pitch: float, subject: str) -> tuple[float | None, list[str]]:
    """Pixel size from the whole array, and a warning when x and y scale differently."""
    grid = det[["new_x", "new_y"]].to_numpy(float) * pitch
    px = det[["pixel_x", "pixel_y"]].to_numpy(float)
    estimated = estimate_pixel_size_from_grid(grid, px)
    if estimated is None:
        return None, []
    m = fit_affine(grid, px)[0].to_array()[:2, :2]
    scales = (1.0 / float(np.hypot(*m[:, 0])), 1.0 / float(np.hypot(*m[:, 1])))
    if abs(scales[0] - scales[1]) / min(scales) <= _ANISOTROPY_WARN:
        return estimated, []
    return estimated, [
        f"{subject}: the image is scaled unequally along x and y ({scales[0]:.4g} vs {scales[1]:.4g} um/px for a "
        f"{pitch:g} um array pitch); using their geometric mean. Patches of this sample are slightly stretched"
    ]


class StReader:
    """Legacy ST folder: counts table(s) ``STEM.tsv`` + ST Spot Detector file(s) + H&E."""

    name = "st"
    description = (
        "legacy Spatial Transcriptomics folder: STEM.tsv counts (XxY spot ids) + spot_data-selection-STEM.tsv "
        "or alignment_table_STEM.tsv (x y new_x new_y pixel_x pixel_y) + the H&E image"
    )

    def can_open(self, path: Path) -> bool:
        if path.is_file() and not (_is_tsv(path) and _sniff(path)[0] == "counts"):
            return False
        folder = path.parent if path.is_file() else path
        if not folder.is_dir():
            return False
        counts, detectors = _classify(folder)
        return bool(counts) and bool(detectors)

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]:
        """One sample per counts table (``PATH`` may also be one ``STEM.tsv``); id = ``STEM``."""
        folder = path.parent if path.is_file() else path
        if not folder.is_dir() or (path.is_file() and not _is_tsv(path)):
            raise ReaderError(path, "is not an ST folder or .tsv counts table", "point at the folder holding the counts table")
        all_counts, detectors = _classify(folder)
        counts = [path] if path.is_file() else all_counts
        stems = [_stem(c) for c in counts]
        if options.ids:
            unknown = [i for i in options.ids if i not in stems]
            if unknown:
                raise ReaderError(
                    folder,
                    f"no counts table for id(s) {', '.join(unknown)}",
                    fix(f"choose {IDS} among the counts tables present ({', '.join(stems) or 'none'})", IDS),
                )
            counts = [c for c, s in zip(counts, stems, strict=True) if s in options.ids]
            stems = [_stem(c) for c in counts]
        alignment: Path | None = getattr(options, "alignment", None)
        for opt, given in ((SAMPLE_ID, options.sample_id), (IMAGE, options.image), (ALIGNMENT, alignment)):
            if given is not None and len(counts) > 1:
                raise ReaderError(
                    folder,
                    f"{opt} names one sample but {len(counts)} counts tables were found ({', '.join(stems)})",
                    fix(f"pass {IDS} with one of them, or drop {opt} (each sample then uses the files named after it)", IDS, opt),
                )
        if not counts:  # one sample whose load reports what is missing
            det = alignment or (next(iter(detectors)) if len(detectors) == 1 else None)
            extra = {"counts": None, "detector": None if det is None else str(det), "image": None, "single": True}
            return [SampleRef(self.name, options.sample_id or folder.name, folder, options, extra)]
        n_all = 1 if path.is_file() else len(all_counts)
        pairs = _pair(folder, counts, n_all, detectors, [alignment, options.image])
        ids = [options.sample_id] if options.sample_id else stems
        return [SampleRef(self.name, sid, folder, options, ex) for sid, ex in zip(ids, pairs, strict=True)]

    def load(self, ref: SampleRef) -> SampleSource:
        folder, opts, extra = ref.path, ref.options, ref.extra
        subject = f"ST sample {ref.sample_id!r} at {folder}"
        problems: list[Problem] = []
        cpath = Path(extra["counts"]) if extra.get("counts") else None
        dpath = Path(extra["detector"]) if extra.get("detector") else None
        stem = _stem(cpath) if cpath is not None else ref.sample_id
        table = _read(cpath, f"{folder}: no counts table: expected {_COUNTS_HINT}", read_st_counts, problems)
        no_det = f"{folder}: no spot detector file for {stem}.tsv: expected {_DETECTOR_HINT.format(stem=stem)}"
        det = _read(dpath, f"{no_det}, or pass {ALIGNMENT}", read_spot_detector, problems, fix("", ALIGNMENT))
        image_path: Path | None = Path(extra["image"]) if extra.get("image") else None
        if image_path is not None and not image_path.exists():
            problems.append(Problem(image_path, "the image does not exist"))
            image_path = None
        elif image_path is None and extra.get("single", True):
            image_path = find_image(folder, opts.image, problems)
        elif image_path is None:
            alone = _alone(f"name the H&E {stem}.jpg (or .tif, ...), or ingest it alone with", stem, IMAGE)
            problems.append(Problem(folder, f"no image for {stem}.tsv: {alone}", alone))

        spots = counts = None
        layout, pitch = "1k", ST_1K_PITCH_UM
        estimated: float | None = None
        warnings: list[str] = []
        if det is not None and dpath is not None:
            layout, pitch = detect_st_layout(det["x"], det["y"])
            estimated, warnings = _estimate(det, pitch, ref.sample_id)
            sel = det[det["selected"] == 1].reset_index(drop=True)
            if sel.empty:
                problems.append(Problem(dpath, "selects no spot (no row with selected = 1); redo the tissue selection"))
            elif table is not None and cpath is not None:
                rows, absent = _join(table.index, sel)
                if absent:
                    show = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
                    problems.append(
                        Problem(
                            cpath,
                            f"{len(absent)} of {len(sel)} spots under tissue in {dpath.name} are missing from this counts table "
                            f"({show}); the two files come from different runs, or the table was filtered",
                        )
                    )
                else:
                    values = table.to_numpy()[rows]
                    big = values.size and values.max() > np.iinfo(np.int32).max
                    counts = sp.csr_matrix(values.astype(np.int64 if big else np.int32))
                    df = sel.rename(columns={"x": "array_col", "y": "array_row", "pixel_x": "x_px", "pixel_y": "y_px"})
                    df = df.assign(barcode=table.index[rows].astype(str), x_um=sel["new_x"] * pitch, y_um=sel["new_y"] * pitch)
                    spots = normalise_spots(df)  # in_tissue = 1
                    if spots["barcode"].duplicated().any():
                        problems.append(Problem(cpath, "lists some spot ids more than once"))

        embedded = decision = None
        if image_path is not None:
            try:
                with open_slide(image_path) as slide:
                    if spots is not None:
                        check_spots_inside(spots, slide, problems, dpath or cpath)
                    embedded = slide.embedded_pixel_size_um
            except ReaderError as exc:
                problems.append(Problem.of(exc))
            try:
                decision = resolve_pixel_size(
                    embedded=embedded,
                    estimated=estimated,
                    override=opts.pixel_size_um,
                    subject=f"{ref.sample_id} ({image_path.name})",
                )
            except PixelSizeError as exc:
                problems.append(Problem(image_path, str(exc)))
        if problems:
            raise ValidationError(subject, problems)
        if spots is None or counts is None or table is None or decision is None or image_path is None:
            raise ValidationError(subject, [Problem(folder, "incomplete sample")])
        genes = [str(g) for g in table.columns]
        metadata: dict[str, Any] = {
            "organ": opts.organ,
            "species": opts.species,
            "patient": opts.patient,
            "array_pitch_um": pitch,
            "layout": layout,
            "n_spots_in_counts_table": len(table),
        }
        return SampleSource(
            sample_id=ref.sample_id,
            technology="st",
            counts=counts,
            genes=genes,
            gene_ids=list(genes),
            spots=spots,
            image_path=image_path,
            pixel_size=decision,
            spot_diameter_um=ST_SPOT_DIAMETER_UM,
            spot_shape="circle",
            metadata=metadata,
            source_paths=[str(p) for p in (cpath, dpath, image_path) if p is not None],
            warnings=([decision.warning] if decision.warning else []) + warnings,
            counts_path=str(cpath) if cpath is not None else None,
            spots_path=str(dpath or cpath) if (dpath or cpath) is not None else None,
        )
