"""10x Xenium output bundles, paired with a post-Xenium H&E through square pseudo-spots.

Transcripts (``transcripts.parquet``) are pooled into squares of side ``S`` micrometres
(``ReadOptions.spot_size_um``, default 55; HEST-1k used 100), axis-aligned in the
Xenium micrometre frame and tiling it from its origin: cell ``(i, j)`` covers
``[i S, (i + 1) S) x [j S, (j + 1) S)`` in ``(x_location, y_location)``. A transcript is
kept when ``qv >= 20`` and it is not a control (name prefixes in
:data:`XENIUM_CONTROL_PREFIXES`; also ``is_gene == False`` where that column exists).
Every cell with at least one kept transcript becomes a pseudo-spot:

* barcode ``sq{S:g}um_{i}_{j}`` (e.g. ``sq55um_12_7``), ``array_col = i``, ``array_row = j``;
* ``x_um, y_um`` = its centre ``((i + 0.5) S, (j + 0.5) S)`` in the Xenium frame;
* ``x_px, y_px`` = that centre in H&E level-0 pixels, through the inverse alignment
  (see :mod:`hestkit.readers._xenium_align`).

Genes (columns): the Gene Expression features of ``cell_feature_matrix.h5`` in panel
order when that file is readable (a panel gene without a kept transcript stays, with
zero counts), then any other kept feature name, sorted; without the h5, the sorted
union of kept feature names. Rows are sorted by ``(array_row, array_col)``.

The parquet is read in record batches (never whole) and counts are accumulated with
``np.unique`` on packed integer keys, so memory follows the number of non-zero
(pseudo-spot, gene) pairs, not the number of transcripts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from ..errors import Fix, OptionError, Problem, ReaderError, ValidationError, fix
from ..fixes import IMAGE, PIXEL_SIZE_UM, SPOT_SIZE_UM
from ..geometry import resolve_pixel_size
from ..sample import ReadOptions, SampleRef, SampleSource
from ..slide import SLIDE_SUFFIXES, open_slide
from ._common import normalise_spots
from ._xenium_align import KEYPOINT_RMS_WARN_UM, XeniumAlignment, find_alignment_file, read_alignment
from ._xenium_obs import CellObservations, morphology_hint, morphology_request, read_cells

__all__ = [
    "XENIUM_CONTROL_PREFIXES",
    "XENIUM_DEFAULT_SPOT_SIZE_UM",
    "XENIUM_MIN_QV",
    "PooledTranscripts",
    "XeniumReader",
    "pool_transcripts",
    "pseudo_spot_barcode",
    "read_experiment",
    "read_gene_panel",
]

XENIUM_DEFAULT_SPOT_SIZE_UM = 55.0
XENIUM_MIN_QV = 20.0
XENIUM_CONTROL_PREFIXES = (
    "NegControlProbe_",
    "NegControlCodeword_",
    "UnassignedCodeword_",
    "BLANK_",
    "DeprecatedCodeword_",
    "Intergenic_Region_",
)
_TRANSCRIPT_COLUMNS = ("feature_name", "x_location", "y_location", "qv")

# Packed keys: ((j + OFF) << 21 | (i + OFF)) << 21 | gene, all below 2**63.
_BITS = 21
_MASK = (1 << _BITS) - 1
_OFF = 1 << (_BITS - 1)
#: Pending (key, count) pairs before the accumulator compacts them (at least).
_SQUASH_MIN = 1 << 22


def pseudo_spot_barcode(spot_size_um: float, i: int, j: int) -> str:
    """Barcode of pseudo-spot ``(i, j)`` (column i along x, row j along y)."""
    return f"sq{spot_size_um:g}um_{i}_{j}"


@dataclass(frozen=True, eq=False)
class PooledTranscripts:
    """Kept transcripts pooled into square pseudo-spots (non-empty ones only).

    ``counts`` is pseudo-spots x genes; ``i``/``j`` are the column (x) and row (y)
    indices of each pseudo-spot, rows sorted by ``(j, i)``.
    """

    counts: sp.csr_matrix
    genes: list[str]
    i: NDArray[np.int64]
    j: NDArray[np.int64]
    spot_size_um: float
    min_qv: float
    n_transcripts_total: int
    n_kept: int
    n_dropped_qv: int
    n_dropped_control: int
    n_dropped_invalid: int
    xoa_layout: str
    feature_name_binary: bool

    @property
    def n_spots(self) -> int:
        return len(self.i)

    def centres_um(self) -> NDArray[np.float64]:
        """(N, 2) pseudo-spot centres ``(x, y)`` in the Xenium micrometre frame."""
        s = self.spot_size_um
        return np.column_stack([(self.i + 0.5) * s, (self.j + 0.5) * s]).astype(np.float64)

    def barcodes(self) -> list[str]:
        return [pseudo_spot_barcode(self.spot_size_um, int(a), int(b)) for a, b in zip(self.i, self.j, strict=True)]

    def stats(self) -> dict[str, Any]:
        return {
            "n_transcripts_total": self.n_transcripts_total,
            "n_kept": self.n_kept,
            "n_dropped_qv": self.n_dropped_qv,
            "n_dropped_control": self.n_dropped_control,
            "n_dropped_invalid": self.n_dropped_invalid,
            "min_qv": self.min_qv,
            "xoa_layout": self.xoa_layout,
            "feature_name_binary": self.feature_name_binary,
        }


def _record_batches(pf: Any, columns: list[str], batch_size: int) -> Any:
    """Record batches, one row group at a time. (``ParquetFile.iter_batches`` kept ~15 MiB
    per million rows alive here, so memory grew with the file; reading row group by row
    group and dropping each one keeps it flat; see docs/benchmarks.md.)"""
    for rg in range(pf.num_row_groups):
        table = pf.read_row_group(rg, columns=columns)
        yield from table.to_batches(max_chunksize=batch_size)
        del table


class _Accumulator:
    """Sum of (packed key, count) pairs, compacted with np.unique as it grows."""

    def __init__(self) -> None:
        self._keys: list[NDArray[np.int64]] = []
        self._vals: list[NDArray[np.int64]] = []
        self._pending = 0
        self._compacted = 0

    def add(self, keys: NDArray[np.int64], vals: NDArray[np.int64]) -> None:
        if keys.size == 0:
            return
        self._keys.append(keys)
        self._vals.append(vals)
        self._pending += keys.size
        if self._pending > max(self._compacted, _SQUASH_MIN):
            self._squash()

    def _squash(self) -> None:
        if not self._keys:
            return
        k = np.concatenate(self._keys)
        v = np.concatenate(self._vals)
        self._keys, self._vals = [], []
        # sort once, then sum runs of equal keys: about 4 int64 arrays of the merged size
        order = np.argsort(k, kind="stable")
        k = k[order]
        v = v[order]
        del order
        starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
        uniq = k[starts]
        summed = np.add.reduceat(v, starts) if starts.size else v[:0]
        del k, v
        self._keys, self._vals = [uniq.astype(np.int64, copy=False)], [summed.astype(np.int64, copy=False)]
        self._pending = self._compacted = int(uniq.size)

    def result(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        self._squash()
        if not self._keys:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        return self._keys[0], self._vals[0]


def _names_of(dictionary: Any) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in dictionary.to_pylist()]


def pool_transcripts(
    path: str | Path,
    spot_size_um: float,
    *,
    min_qv: float = XENIUM_MIN_QV,
    batch_size: int = 1_000_000,
    gene_panel: Sequence[str] | None = None,
) -> PooledTranscripts:
    """Pool the kept transcripts of a Xenium ``transcripts.parquet`` into squares of side
    ``spot_size_um``, reading it batch by batch (see the module docstring for the rules).

    ``gene_panel`` (e.g. from :func:`read_gene_panel`) fixes the first genes and their
    order; kept names outside it follow, sorted. Without it, genes are sorted.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    p = Path(path)
    s = float(spot_size_um)
    if not (math.isfinite(s) and s > 0):
        raise OptionError(f"spot_size_um must be a positive number, got {spot_size_um!r}")
    recopy = "re-copy transcripts.parquet from the Xenium output bundle"
    try:
        pf = pq.ParquetFile(p)
    except (OSError, pa.ArrowException) as exc:
        raise ReaderError(p, f"is not a readable parquet file ({exc})", recopy) from exc
    schema = pf.schema_arrow
    missing = [c for c in _TRANSCRIPT_COLUMNS if c not in schema.names]
    if missing:
        raise ReaderError(
            p, f"lacks the column(s) {', '.join(missing)} (found {', '.join(schema.names)})", "use the Xenium transcripts.parquet"
        )
    has_is_gene = "is_gene" in schema.names
    layout = ">=2" if (has_is_gene or "codeword_index" in schema.names) else "1.x"
    fn_type = schema.field("feature_name").type
    if pa.types.is_dictionary(fn_type):
        fn_type = fn_type.value_type
    binary = pa.types.is_binary(fn_type) or pa.types.is_large_binary(fn_type)
    columns = [*_TRANSCRIPT_COLUMNS, *(["is_gene"] if has_is_gene else [])]

    names: list[str] = []
    code_of: dict[str, int] = {}  # one entry per distinct feature name, not per transcript
    is_control: list[bool] = []
    acc = _Accumulator()
    total = dropped_qv = dropped_ctrl = dropped_invalid = kept_n = 0
    try:
        for batch in _record_batches(pf, columns, batch_size):
            n = batch.num_rows
            if n == 0:
                continue
            total += n
            col = batch.column("feature_name")
            enc = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
            local = _names_of(enc.dictionary)
            lut = np.empty(len(local) + 1, dtype=np.int64)
            for k, name in enumerate(local):
                code = code_of.get(name)
                if code is None:
                    code = code_of[name] = len(names)
                    names.append(name)
                    is_control.append(name == "" or name.startswith(XENIUM_CONTROL_PREFIXES))
                lut[k] = code
            lut[-1] = -1  # null feature name
            idx = np.asarray(pc.fill_null(enc.indices, len(local)).to_numpy(zero_copy_only=False), dtype=np.int64)
            codes = lut[idx]
            ctrl_lut = np.asarray([*is_control, True], dtype=bool)
            control = ctrl_lut[codes]  # -1 (null) picks the trailing True
            if has_is_gene:
                gene_flag = np.asarray(pc.fill_null(batch.column("is_gene"), True).to_numpy(zero_copy_only=False), dtype=bool)
                control |= ~gene_flag
            qv = np.asarray(batch.column("qv").to_numpy(zero_copy_only=False), dtype=np.float64)
            x = np.asarray(batch.column("x_location").to_numpy(zero_copy_only=False), dtype=np.float64)
            y = np.asarray(batch.column("y_location").to_numpy(zero_copy_only=False), dtype=np.float64)
            good_qv = qv >= min_qv
            finite = np.isfinite(x) & np.isfinite(y)
            keep = ~control & good_qv & finite
            dropped_ctrl += int(control.sum())
            dropped_qv += int((~control & ~good_qv).sum())
            dropped_invalid += int((~control & good_qv & ~finite).sum())
            nk = int(keep.sum())
            kept_n += nk
            if nk == 0:
                continue
            ci = np.floor(x[keep] / s).astype(np.int64)
            cj = np.floor(y[keep] / s).astype(np.int64)
            lim = _OFF - 1
            if ci.min() < -lim or cj.min() < -lim or ci.max() >= lim or cj.max() >= lim:
                raise ReaderError(
                    p,
                    f"transcript coordinates reach {float(np.abs(x[keep]).max()):.0f}, {float(np.abs(y[keep]).max()):.0f} um, "
                    f"more than {lim} pseudo-spots of {s:g} um from the origin",
                    fix(f"use a larger spot size ({SPOT_SIZE_UM}), or check that x_location/y_location are micrometres", SPOT_SIZE_UM),
                )
            if len(names) > _MASK:
                raise ReaderError(p, f"has more than {_MASK} distinct feature names", recopy)
            packed = (((cj + _OFF) << _BITS) | (ci + _OFF)) << _BITS | codes[keep]
            uniq, cnt = np.unique(packed, return_counts=True)
            acc.add(uniq.astype(np.int64), cnt.astype(np.int64))
    except (OSError, pa.ArrowException) as exc:
        raise ReaderError(p, f"could not be read ({exc})", recopy) from exc

    keys, vals = acc.result()
    gene_code = keys & _MASK
    cell_key = keys >> _BITS
    cells, row = np.unique(cell_key, return_inverse=True)
    used = np.unique(gene_code)
    kept_names = {names[int(c)] for c in used}
    order: list[str] = list(dict.fromkeys(gene_panel)) if gene_panel is not None else []
    in_order = set(order)
    order += sorted(kept_names - in_order)
    col_of = {g: k for k, g in enumerate(order)}
    remap = np.full(max(len(names), 1), -1, dtype=np.int64)
    for c in used:
        remap[int(c)] = col_of[names[int(c)]]
    cols = remap[gene_code]
    dtype = np.int32 if (vals.size == 0 or int(vals.max()) < 2**31) else np.int64
    counts = sp.csr_matrix((vals.astype(dtype), (row.ravel(), cols)), shape=(cells.size, len(order)), dtype=dtype)
    counts.sum_duplicates()
    counts.sort_indices()
    return PooledTranscripts(
        counts=counts,
        genes=order,
        i=((cells & _MASK) - _OFF).astype(np.int64),
        j=((cells >> _BITS) - _OFF).astype(np.int64),
        spot_size_um=s,
        min_qv=float(min_qv),
        n_transcripts_total=total,
        n_kept=kept_n,
        n_dropped_qv=dropped_qv,
        n_dropped_control=dropped_ctrl,
        n_dropped_invalid=dropped_invalid,
        xoa_layout=layout,
        feature_name_binary=binary,
    )


def read_experiment(folder: Path) -> dict[str, Any]:
    """``experiment.xenium`` as a dict with a positive float ``pixel_size`` (um per
    morphology-image pixel), or raise :class:`ReaderError`."""
    path = folder / "experiment.xenium"
    fix = "copy experiment.xenium from the Xenium output bundle (it holds the morphology pixel size, about 0.2125 um)"
    if not path.is_file():
        raise ReaderError(path, "is missing, so the morphology pixel size is unknown", fix)
    try:
        exp = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ReaderError(path, f"is not valid JSON ({exc})", fix) from exc
    if not isinstance(exp, dict):
        raise ReaderError(path, "is not a JSON object", fix)
    v = exp.get("pixel_size")
    try:
        px = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        px = float("nan")
    if not (math.isfinite(px) and 0.0 < px < 100.0):
        raise ReaderError(path, f"has no usable 'pixel_size' (found {v!r}); expected micrometres per morphology pixel", fix)
    exp["pixel_size"] = px
    return exp


def read_gene_panel(path: Path) -> tuple[list[str], list[str]]:
    """Names and ids of the Gene Expression features of a Xenium ``cell_feature_matrix.h5``
    (features only; the matrix is not read)."""
    import h5py

    def text(a: Any) -> list[str]:
        return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(a)]

    fix = "re-copy cell_feature_matrix.h5 from the Xenium bundle, or delete it to order genes by name"
    try:
        with h5py.File(path, "r") as f:
            feats = f["matrix/features"]
            names = text(feats["name"][:])
            ids = text(feats["id"][:]) if "id" in feats else list(names)
            types = text(feats["feature_type"][:]) if "feature_type" in feats else ["Gene Expression"] * len(names)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ReaderError(path, f"has no readable matrix/features ({exc})", fix) from exc
    keep = [k for k, t in enumerate(types) if t == "Gene Expression" and not names[k].startswith(XENIUM_CONTROL_PREFIXES)]
    return [names[k] for k in keep], [ids[k] for k in keep]


def _find_he_image(folder: Path, explicit: Path | None, problems: list[Problem]) -> Path | None:
    """``image``, or the single slide file in the bundle that is not a morphology image."""
    if explicit is not None:
        if not explicit.is_file():
            problems.append(Problem(explicit, "the H&E image given (image) does not exist"))
            return None
        return explicit
    cands = sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in SLIDE_SUFFIXES
        and not p.name.startswith(".")
        and not p.name.lower().startswith("morphology")
    )
    if len(cands) == 1:
        return cands[0]
    if not cands:
        he = fix(f"pass the post-Xenium H&E (TIFF, OME-TIFF, ...) as {IMAGE}", IMAGE)
        morph = morphology_hint(folder)
        both = he if morph is None else Fix(f"{he}{morph}", (*he.options, *morph.options))
        problems.append(Problem(folder, "no H&E image in the bundle", both))
    else:
        names = ", ".join(p.name for p in cands)
        problems.append(Problem(folder, f"several candidate H&E images ({names})", fix(f"pass {IMAGE} to choose one", IMAGE)))
    return None


class XeniumReader:
    """Xenium output bundle (``experiment.xenium``, ``transcripts.parquet``) plus the
    post-Xenium H&E and its alignment; transcripts pooled into square pseudo-spots."""

    name = "xenium"
    description = (
        "10x Xenium output bundle (experiment.xenium + transcripts.parquet) with the post-Xenium H&E (image) and "
        "*_he_imagealignment.csv or Xenium Explorer keypoints (alignment)"
    )

    def can_open(self, path: Path) -> bool:
        return path.is_dir() and (
            (path / "experiment.xenium").is_file()
            or ((path / "transcripts.parquet").is_file() and (path / "cells.parquet").is_file())
        )

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]:
        sid = options.sample_id or path.name
        return [SampleRef(self.name, sid, path, options)]

    def load(self, ref: SampleRef) -> SampleSource:
        folder, opts = ref.path, ref.options
        subject = f"Xenium sample {ref.sample_id!r} at {folder}"
        problems: list[Problem] = []
        warnings: list[str] = []

        def note(exc: ReaderError) -> None:
            problems.append(Problem.of(exc))

        s = XENIUM_DEFAULT_SPOT_SIZE_UM if opts.spot_size_um is None else float(opts.spot_size_um)
        if not (math.isfinite(s) and s > 0):
            problems.append(
                Problem(None, f"spot size {opts.spot_size_um!r} um is not a positive number", fix(f"pass {SPOT_SIZE_UM} > 0", SPOT_SIZE_UM))
            )
        morph: Path | None = None
        try:
            morph = morphology_request(folder, opts.image)
        except ReaderError as exc:
            note(exc)
        exp: dict[str, Any] = {}
        try:
            exp = read_experiment(folder)
        except ReaderError as exc:
            if morph is not None and opts.pixel_size_um is not None:
                exp = {"pixel_size": float(opts.pixel_size_um)}  # the morphology's pixel size, given
            elif morph is not None:
                problems.append(
                    Problem.of(exc, fix(f"give the morphology image's pixel size ({PIXEL_SIZE_UM})", PIXEL_SIZE_UM))
                )
            else:
                note(exc)
        tpath = folder / "transcripts.parquet"
        if not tpath.is_file():
            problems.append(Problem(tpath, "missing; copy transcripts.parquet from the Xenium output bundle"))
        else:
            try:
                import pyarrow.parquet as pq

                names = pq.read_schema(tpath).names
                lacking = [c for c in _TRANSCRIPT_COLUMNS if c not in names]
                if lacking:
                    problems.append(
                        Problem(tpath, f"lacks the column(s) {', '.join(lacking)}; use the Xenium transcripts.parquet")
                    )
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
                problems.append(Problem(tpath, f"is not a readable parquet file ({exc}); re-copy it from the bundle"))
        image_path = morph if morph is not None else _find_he_image(folder, opts.image, problems)
        image_size: tuple[int, int, float | None] | None = None  # width, height, embedded pixel size
        if image_path is not None:
            try:
                with open_slide(image_path) as slide:
                    image_size = (slide.width, slide.height, slide.embedded_pixel_size_um)
            except ReaderError as exc:
                note(exc)
        apath: Path | None = None
        if morph is None:  # the morphology image is the Xenium frame itself: no alignment
            apath = opts.alignment if opts.alignment is not None else find_alignment_file(folder, image_path, problems)
        alignment: XeniumAlignment | None = None
        if apath is not None:
            try:
                alignment = read_alignment(apath)
            except ReaderError as exc:
                note(exc)
        panel: list[str] | None = None
        panel_ids: dict[str, str] = {}
        hpath = folder / "cell_feature_matrix.h5"
        if hpath.is_file():
            try:
                pnames, pids = read_gene_panel(hpath)
                if pnames:
                    panel, panel_ids = pnames, dict(zip(pnames, pids, strict=True))
            except ReaderError as exc:
                warnings.append(f"{ref.sample_id}: {exc}; genes are ordered by name instead")
        if problems or image_size is None or (alignment is None and morph is None) or image_path is None:
            raise ValidationError(subject, problems or [Problem(folder, "incomplete sample")])

        cells: CellObservations | None = None
        try:
            if opts.cells:
                cells = read_cells(folder, XENIUM_CONTROL_PREFIXES)
            pooled = pool_transcripts(tpath, s, gene_panel=panel)
        except ReaderError as exc:
            raise ValidationError(subject, [Problem.of(exc)]) from exc
        morph_px = float(exp["pixel_size"])
        centres_um = pooled.centres_um() if cells is None else cells.centres_um
        n_obs = pooled.n_spots if cells is None else len(cells.barcodes)
        if not n_obs:
            centres_px = np.empty((0, 2))
        elif alignment is None:
            centres_px = centres_um / morph_px  # the morphology image's pixels
        else:
            centres_px = alignment.um_to_he_px(centres_um, morph_px)
        width, height, embedded = image_size
        inside = (centres_px[:, 0] >= 0) & (centres_px[:, 1] >= 0) & (centres_px[:, 0] < width) & (centres_px[:, 1] < height)
        if n_obs == 0:
            problems.append(
                Problem(
                    tpath,
                    f"no transcript kept out of {pooled.n_transcripts_total} (qv < {pooled.min_qv:g}: {pooled.n_dropped_qv}, "
                    f"controls: {pooled.n_dropped_control}); nothing to pair",
                )
            )
        elif not inside.any():
            lo, hi = centres_px.min(axis=0), centres_px.max(axis=0)
            problems.append(
                Problem(
                    image_path,
                    f"transcripts outside the image: wrong alignment or image? None of the {pooled.n_spots} pseudo-spot "
                    f"centres falls on the {width} x {height} px image (they map to x {lo[0]:.0f}..{hi[0]:.0f}, "
                    f"y {lo[1]:.0f}..{hi[1]:.0f} px through "
                    f"{alignment.path.name if alignment is not None else 'the morphology pixel size'}). "
                    + (
                        "Check that the image is the post-Xenium H&E at full resolution and the alignment its registration "
                        "(H&E px -> morphology px)"
                        if alignment is not None
                        else "The morphology image must be the run's whole image (pixel (0, 0) at the Xenium origin), "
                        "not a crop, and its pixel size that of experiment.xenium"
                    ),
                )
            )
        if problems:
            raise ValidationError(subject, problems)

        he_px = alignment.he_pixel_size_um(morph_px) if alignment is not None else morph_px
        decision = resolve_pixel_size(
            embedded=embedded, estimated=he_px, override=opts.pixel_size_um, subject=f"{ref.sample_id} ({image_path.name})"
        )
        if decision.warning:
            warnings.append(decision.warning)
        meta: dict[str, Any] = {
            "organ": opts.organ,
            "species": opts.species,
            "patient": opts.patient,
            "xenium_pixel_size_um": morph_px,
            "analysis_sw_version": exp.get("analysis_sw_version"),
            "spot_size_um": s if cells is None else "cell",
            "barcode_format": "sq{S:g}um_{i}_{j} (i = array_col along x, j = array_row along y)"
            if cells is None
            else "cell_id of cells.parquet (one pair per cell, centred on its centroid)",
            "gene_order": "cell_feature_matrix.h5 panel" if panel is not None else "sorted",
            **pooled.stats(),
            "n_pseudo_spots": pooled.n_spots,
            "n_centres_inside_image": int(inside.sum()),
        }
        if cells is not None:
            meta.update(cells.stats)
        if alignment is None:
            with open_slide(image_path) as mslide:
                describe = getattr(mslide._b, "describe", None)
                meta["image"] = "morphology"
                meta["morphology_render"] = describe() if describe is not None else "as stored (not a channel image)"
        else:
            meta.update(
                {
                    "image": "H&E",
                    "alignment_source": str(alignment.path),
                    "alignment_kind": alignment.kind,
                    "alignment_discovered": opts.alignment is None,
                    "he_to_morph": alignment.he_to_morph.to_array().tolist(),
                    "he_pixel_size_um_from_alignment": he_px,
                }
            )
        res = alignment.residuals_um(morph_px) if alignment is not None else None
        if res is not None and alignment is not None:
            rms = float(np.sqrt(np.mean(res**2)))
            meta.update(
                {
                    "alignment_residuals_um": [float(r) for r in res],
                    "alignment_residual_rms_um": rms,
                    "alignment_residual_max_um": float(res.max()),
                    "alignment_residuals_he_px": [float(r) / he_px for r in res],
                }
            )
            if rms > KEYPOINT_RMS_WARN_UM:
                warnings.append(
                    f"{ref.sample_id}: the keypoints in {alignment.path.name} fit an affine with RMS residual {rms:.1f} um "
                    f"(max {float(res.max()):.1f} um, over {KEYPOINT_RMS_WARN_UM:g} um): pairs may be misaligned; "
                    "re-check the keypoints in Xenium Explorer"
                )
        table: dict[str, Any] = {
            "in_tissue": 1,
            "x_px": centres_px[:, 0],
            "y_px": centres_px[:, 1],
            "x_um": centres_um[:, 0],
            "y_um": centres_um[:, 1],
        }
        if cells is None:
            table.update({"barcode": pooled.barcodes(), "array_row": pooled.j, "array_col": pooled.i})
        else:
            table["barcode"] = cells.barcodes
        spots = normalise_spots(pd.DataFrame(table))
        files = [folder / "experiment.xenium", tpath, image_path] + ([alignment.path] if alignment is not None else [])
        files += [hpath] if panel is not None or cells is not None else []
        files += [folder / "cells.parquet"] if cells is not None else []
        return SampleSource(
            sample_id=ref.sample_id,
            technology="xenium",
            counts=pooled.counts if cells is None else cells.counts,
            genes=list(pooled.genes) if cells is None else cells.genes,
            gene_ids=[panel_ids.get(g, g) for g in pooled.genes] if cells is None else cells.gene_ids,
            spots=spots,
            image_path=image_path,
            pixel_size=decision,
            spot_diameter_um=s if cells is None else cells.diameter_um,
            spot_shape="square" if cells is None else "circle",
            metadata=meta,
            source_paths=[str(p) for p in files if p.exists()],
            warnings=warnings,
            counts_path=str(tpath),
            spots_path=str(tpath),
        )
