"""10x Visium HD (Space Ranger ``binned_outputs/``), pooled into square pseudo-spots.

Layout read: ``PATH/binned_outputs/square_NNNum/`` with ``filtered_feature_bc_matrix.h5``
(or the MEX folder), ``spatial/tissue_positions.parquet`` and
``spatial/scalefactors_json.json``. Only the FINEST bin size present is read.

Pooling (decisions, documented for users):

- A pseudo-spot is a block of ``k x k`` bins, ``k = round(S / bin_um)``, with ``S`` the
  requested side (``ReadOptions.spot_size_um``, default :data:`VISIUM_HD_DEFAULT_SPOT_UM`).
  Blocks tile the bin grid from array index 0: bin ``(array_row, array_col)`` belongs to
  block ``(array_row // k, array_col // k)``. The true side, ``k * bin_um``, is the spot
  diameter of the sample (``spot_shape = "square"``).
- Counts of a pseudo-spot are the sums of its member bins in the filtered matrix. The
  ``filtered_feature_bc_matrix.h5`` (CSC, one column per barcode) is STREAMED: its
  barcodes, ``indptr`` and counts are read in chunks of :data:`_CHUNK_BINS` barcodes, each
  chunk pooled with one sparse product ``P @ X`` (``P``: blocks x chunk bins, one nonzero
  per bin) and added to the running blocks x genes sum. The counts of the millions of
  2 um bins are thus never in memory at once (let alone dense).
- Locating the bins. Space Ranger bin barcodes encode their grid position,
  ``s_002um_{array_row:05d}_{array_col:05d}-1``. When every barcode of
  ``tissue_positions.parquet`` has that form (one template), agrees with its
  ``array_row``/``array_col`` and is listed once, the table is streamed in batches into
  one byte per cell of the bins' bounding grid (not listed / listed / in tissue) plus the
  subsample the affine is fitted on; the matrix barcodes are then parsed chunk by chunk
  (vectorised on the fixed-width bytes) and looked up on that grid: every bin is checked
  to be listed (else the same "absent" problem as the join), and its ``in_tissue`` is the
  table's (the filtered matrix is not trusted to hold only in-tissue bins). Under one
  template a barcode and its ``(row, col)`` determine each other, so this is exactly the
  join, without any per-bin array: peak memory grows only by that byte per grid cell and
  with the pooled output, whose running ``acc + P @ X`` sum briefly holds three copies of
  the blocks x genes counts (``bench/bench_visium_hd_memory.py``: 401 / 412 / 489 MiB at
  1 / 4 / 9 M bins, vs 413 / 711 / 1260 MiB with the join, 5762 MiB reading the 9 M bin
  matrix whole). The positions are read one row group at a time, single-threaded: Arrow's
  reader over all row groups holds memory that grows with their number. FALLBACK (any other barcode format, a barcode that disagrees with its
  indices, a duplicate, a MEX matrix, a CSV table, a matrix barcode that does not parse):
  the whole positions columns are read and joined on the barcodes (vectorised: 64-bit
  hashes of the barcode bytes in a pandas index, every match verified byte for byte; an
  exact sort-based join if two hashes ever collide), about 125 bytes per bin at the peak.
  A MEX folder (``filtered_feature_bc_matrix/``) is read whole (not streamed), then pooled
  the same way; so is a ``tissue_positions.csv``.
- Only blocks with at least one in-tissue bin AND nonzero total counts become
  pseudo-spots (all of them ``in_tissue = 1``); a sample whose matrix has no counts at all
  loads with zero pseudo-spots and a warning (ingest then reports 0 pairs).
- The centre of a pseudo-spot is the geometric centre of the FULL ``k x k`` block (also
  for partial blocks at the tissue edge, whose bins' mean differs), mapped to image pixels
  by an affine fitted from ``(array_col, array_row)`` to ``(pxl_col, pxl_row)`` over the
  bins of the positions table (an even subsample of :data:`_FIT_MAX_BINS` beyond that).
  No orientation is assumed: in real runs ``array_col`` runs opposite to image x and the
  grid is rotated about 0.9 degrees.
- Barcodes: ``s_{side:03d}um_{block_row:05d}_{block_col:05d}-1``, the Space Ranger bin
  scheme with the pseudo-spot side (um) and block indices. ``array_row``/``array_col`` are
  the block indices; ``x_um``/``y_um`` the block centre in the bin grid frame (um along
  ``array_col`` and ``array_row``, origin at the centre of bin (0, 0) of the size read):
  ``((block_col * k + (k - 1) / 2) * bin_um, (block_row * k + (k - 1) / 2) * bin_um)``.
- Pixel size: ``microns_per_pixel`` of the scalefactors (or, in older runs without it, the
  bin pitch of the fitted affine) is the estimate; the image's embedded pixel size is
  cross-checked against it with :func:`~hestkit.geometry.resolve_pixel_size` (embedded wins
  within 5 %, otherwise ``microns_per_pixel`` wins with a warning); ``--pixel-size-um``
  overrides both. When the image is Space Ranger's ``tissue_hires_image.png`` or
  ``tissue_lowres_image.png``, coordinates and pixel size are scaled by its scale factor.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from ..errors import Problem, ReaderError, ValidationError
from ..geometry import Affine, fit_affine, resolve_pixel_size
from ..sample import ReadOptions, SampleRef, SampleSource
from ..slide import Slide, open_slide
from ._common import check_spots_inside, find_image, normalise_spots
from ._tenx import H5_FIX, Matrix, _decode, make_unique, open_10x_h5, read_10x_mex
from .visium import _POS_COLUMNS, read_tissue_positions

__all__ = [
    "VISIUM_HD_DEFAULT_SPOT_UM",
    "BinFolder",
    "PooledBins",
    "VisiumHDReader",
    "bin_folders",
    "fit_bin_grid",
    "pool_bins",
    "pool_bins_streamed",
    "pseudo_spot_barcodes",
]

#: Default side of a Visium HD pseudo-spot in micrometres (28 x 28 bins of 2 um).
VISIUM_HD_DEFAULT_SPOT_UM = 56.0
_FOLDER_RE = re.compile(r"^square_(\d+(?:\.\d+)?)um$")
#: Most bins used to fit the array-to-pixel affine (an even subsample beyond that).
_FIT_MAX_BINS = 500_000
#: Barcodes (columns of the HDF5 matrix) read and pooled per chunk.
_CHUNK_BINS = 500_000
#: Rows of ``tissue_positions.parquet`` decoded per batch.
_POSITION_BATCH = 262_144
#: Barcodes hashed per step of the barcode join (bounds its temporaries).
_HASH_STEP = 1_000_000
#: Space Ranger's downscaled images and the scale factor that maps full-resolution pixels onto them.
_FLAT_IMAGES = {"tissue_hires_image.png": "tissue_hires_scalef", "tissue_lowres_image.png": "tissue_lowres_scalef"}


class BinFolder:
    """One ``binned_outputs/square_*um`` folder and its bin size (None when unknown)."""

    __slots__ = ("bin_um", "path", "scalefactors", "scalefactors_error")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.scalefactors: dict[str, Any] | None = None
        self.scalefactors_error: str | None = None
        spath = self.scalefactors_path
        if spath.exists():
            try:
                loaded = json.loads(spath.read_text())
                if not isinstance(loaded, dict):
                    raise ValueError("not a JSON object")
                self.scalefactors = loaded
            except (ValueError, UnicodeDecodeError, OSError) as exc:
                self.scalefactors_error = f"is not valid JSON ({exc})"
        self.bin_um = self._bin_size()

    @property
    def scalefactors_path(self) -> Path:
        return self.path / "spatial" / "scalefactors_json.json"

    def _bin_size(self) -> float | None:
        v = (self.scalefactors or {}).get("bin_size_um")
        if isinstance(v, int | float) and math.isfinite(v) and v > 0:
            return float(v)
        m = _FOLDER_RE.match(self.path.name)
        return float(m.group(1)) if m else None

    def matrix_path(self) -> Path | None:
        for name in ("filtered_feature_bc_matrix.h5", "filtered_feature_bc_matrix"):
            p = self.path / name
            if p.exists():
                return p
        return None

    def positions_path(self) -> Path | None:
        for name in ("tissue_positions.parquet", "tissue_positions.csv"):
            p = self.path / "spatial" / name
            if p.exists():
                return p
        return None


def bin_folders(path: Path) -> list[Path]:
    """The ``binned_outputs/square_*um`` folders under a Space Ranger output folder."""
    root = path / "binned_outputs"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("square_*um") if p.is_dir())


def fit_bin_grid(array_row: ArrayLike, array_col: ArrayLike, pxl_row: ArrayLike, pxl_col: ArrayLike) -> tuple[Affine, float]:
    """Affine from bin indices ``(array_col, array_row)`` to full-resolution pixels
    ``(pxl_col, pxl_row)`` = image ``(x, y)``, and the largest fit residual in pixels.

    Beyond :data:`_FIT_MAX_BINS` bins an evenly spaced subsample is used (the bins lie on
    an exact grid, so this loses nothing). Raises ``ValueError`` for fewer than 3
    non-collinear bins.
    """
    # Columns stay in their own (numeric) dtype until the subsample is taken: no full-length float copies.
    r, c, prow, pcol = (_numeric(a) for a in (array_row, array_col, pxl_row, pxl_col))
    ok = np.isfinite(r) & np.isfinite(c) & np.isfinite(prow) & np.isfinite(pcol)
    idx = np.flatnonzero(ok)
    del ok
    if idx.size > _FIT_MAX_BINS:
        idx = idx[np.linspace(0, idx.size - 1, _FIT_MAX_BINS).astype(np.int64)]
    src = np.column_stack([c[idx].astype(float), r[idx].astype(float)])
    dst = np.column_stack([pcol[idx].astype(float), prow[idx].astype(float)])
    aff, resid = fit_affine(src, dst)
    return aff, float(resid.max()) if resid.size else 0.0


def _numeric(a: ArrayLike) -> NDArray[Any]:
    x = np.asarray(a)
    return x if x.dtype.kind in "biuf" else x.astype(float)


class PooledBins:
    """Bins pooled into ``k x k`` blocks: one row per block that has any bin."""

    __slots__ = ("block_col", "block_row", "counts", "has_tissue", "k", "n_bins")

    def __init__(
        self,
        k: int,
        block_row: NDArray[np.int64],
        block_col: NDArray[np.int64],
        counts: sp.csr_matrix,
        n_bins: NDArray[np.int64],
        has_tissue: NDArray[np.bool_],
    ) -> None:
        self.k = k
        self.block_row = block_row
        self.block_col = block_col
        self.counts = counts
        self.n_bins = n_bins
        self.has_tissue = has_tissue

    def centres_grid(self) -> NDArray[np.float64]:
        """``(N, 2)`` centre ``(col, row)`` of each FULL block in bin-index units."""
        half = (self.k - 1) / 2.0
        return np.column_stack([self.block_col * self.k + half, self.block_row * self.k + half]).astype(np.float64)


def pool_bins(
    array_row: ArrayLike, array_col: ArrayLike, counts: sp.spmatrix, k: int, in_tissue: ArrayLike | None = None
) -> PooledBins:
    """Sum the rows of ``counts`` (bins x genes) over blocks ``(array_row // k, array_col // k)``.

    One sparse product with a CSR pooling matrix (blocks x bins, one nonzero per bin);
    blocks come out sorted by ``(block_row, block_col)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    r = np.asarray(array_row, dtype=np.int64)
    c = np.asarray(array_col, dtype=np.int64)
    x = sp.csr_matrix(counts)
    n = r.size
    if x.shape[0] != n or c.size != n:
        raise ValueError(f"{n} rows/cols given for a counts matrix of {x.shape[0]} bins")
    if n == 0:
        return _empty_pool(k, x.shape[1], x.dtype)
    block_row, block_col, inverse = _blocks(r, c, k)
    n_blocks = block_row.size
    pool = sp.csr_matrix((np.ones(n, dtype=x.dtype), (inverse, np.arange(n))), shape=(n_blocks, n))
    pooled = sp.csr_matrix(pool @ x)
    pooled.sort_indices()
    n_bins = np.bincount(inverse, minlength=n_blocks).astype(np.int64)
    tissue = np.ones(n, dtype=bool) if in_tissue is None else np.asarray(in_tissue).astype(bool)
    has_tissue = np.bincount(inverse, weights=tissue.astype(np.float64), minlength=n_blocks) > 0
    return PooledBins(k, block_row, block_col, pooled, n_bins, has_tissue)


def _empty_pool(k: int, n_genes: int, dtype: Any) -> PooledBins:
    empty = np.empty(0, dtype=np.int64)
    return PooledBins(k, empty, empty, sp.csr_matrix((0, n_genes), dtype=dtype), empty, np.empty(0, dtype=bool))


def _blocks(r: NDArray[np.int64], c: NDArray[np.int64], k: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """``(block_row, block_col)`` of each distinct block, sorted, and the block of each bin (n >= 1)."""
    br, bc = np.floor_divide(r, k), np.floor_divide(c, k)
    br0, bc0 = br.min(), bc.min()
    width = int(bc.max() - bc0) + 1
    keys = (br - br0) * width + (bc - bc0)
    del br, bc
    uniq, inverse = np.unique(keys, return_inverse=True)
    return uniq // width + br0, uniq % width + bc0, inverse.astype(np.int64, copy=False)


def pool_bins_streamed(
    array_row: ArrayLike,
    array_col: ArrayLike,
    chunks: Iterator[tuple[int, sp.csr_matrix]],
    n_genes: int,
    k: int,
    in_tissue: ArrayLike | None = None,
    dtype: Any = np.int64,
) -> PooledBins:
    """:func:`pool_bins` of the blocks that hold an in-tissue bin, with the counts given as
    consecutive row chunks ``(first_row, csr rows x n_genes)`` of the bins x genes matrix.

    Each chunk is pooled with one sparse product and added to the running blocks x genes
    sum, so only one chunk of the counts is in memory. Blocks without an in-tissue bin are
    not pooled (they are left out of the result). ``dtype`` is that of the counts.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    r = np.asarray(array_row).astype(np.int64, copy=False)
    c = np.asarray(array_col).astype(np.int64, copy=False)
    n = r.size
    if c.size != n:
        raise ValueError(f"{n} rows but {c.size} cols given")
    if n == 0:
        for _ in chunks:
            pass
        return _empty_pool(k, n_genes, dtype)
    block_row, block_col, inverse = _blocks(r, c, k)
    del r, c
    n_blocks = block_row.size
    n_bins = np.bincount(inverse, minlength=n_blocks).astype(np.int64)
    tissue = np.ones(n, dtype=bool) if in_tissue is None else np.asarray(in_tissue).astype(bool)
    has_tissue = np.bincount(inverse, weights=tissue, minlength=n_blocks) > 0
    del tissue
    cand = np.flatnonzero(has_tissue)
    target = np.full(n_blocks, -1, dtype=np.int64)
    target[cand] = np.arange(cand.size)
    target = target[inverse]  # pooled row of each bin, -1 for blocks without tissue
    del inverse
    acc = sp.csr_matrix((cand.size, n_genes), dtype=dtype)
    seen = 0
    for start, x in chunks:
        m = x.shape[0]
        if start != seen or x.shape[1] != n_genes or start + m > n:
            raise ValueError(f"chunk of rows {start}..{start + m} x {x.shape[1]} does not follow row {seen} of {n} x {n_genes}")
        seen += m
        t = target[start : start + m]
        rows = np.flatnonzero(t >= 0)
        if rows.size:
            pool = sp.csr_matrix((np.ones(rows.size, dtype=x.dtype), (t[rows], rows)), shape=(cand.size, m))
            acc = sp.csr_matrix(acc + pool @ x)
    if seen != n:
        raise ValueError(f"chunks cover {seen} of {n} bins")
    acc.sum_duplicates()
    acc.sort_indices()
    return PooledBins(k, block_row[cand], block_col[cand], acc, n_bins[cand], has_tissue[cand])


def _side_label(side_um: float) -> str:
    return f"{round(side_um):03d}" if abs(side_um - round(side_um)) < 1e-9 else f"{side_um:g}".replace(".", "p")


def pseudo_spot_barcodes(side_um: float, block_row: ArrayLike, block_col: ArrayLike) -> list[str]:
    """``s_{side:03d}um_{block_row:05d}_{block_col:05d}-1`` for each block."""
    label = _side_label(side_um)
    rows = np.asarray(block_row, dtype=np.int64).tolist()
    cols = np.asarray(block_col, dtype=np.int64).tolist()
    return [f"s_{label}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]


def _finest(folder: Path, problems: list[Problem]) -> BinFolder | None:
    folders = [BinFolder(p) for p in bin_folders(folder)]
    if not folders:
        problems.append(Problem(folder / "binned_outputs", "no square_NNNum/ folder (e.g. square_002um/) found"))
        return None
    unknown = [f for f in folders if f.bin_um is None]
    for f in unknown:
        problems.append(
            Problem(
                f.path,
                "unknown bin size: its scalefactors_json.json has no bin_size_um and the folder name is not "
                "square_NNNum (e.g. square_002um); rename the folder as Space Ranger does or add bin_size_um",
            )
        )
    if unknown:
        return None
    return min(folders, key=lambda f: float(f.bin_um or 0.0))


_H5_FIX = H5_FIX


def _as_bytes(values: ArrayLike) -> NDArray[np.bytes_]:
    """Strings as a fixed-width bytes array (UTF-8); no Python objects kept."""
    a = np.asarray(values)
    if a.dtype.kind == "S":
        return a.ravel()
    if a.size == 0:
        return np.empty(0, dtype="S1")
    if a.dtype.kind == "U":
        return np.char.encode(a.ravel(), "utf-8")
    return np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in a.ravel()], dtype=np.bytes_)


def _arrow_bytes(arr: pa.Array) -> NDArray[np.bytes_]:
    """An Arrow string column as a fixed-width bytes array, from its buffers (no Python objects)."""
    t = arr.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        arr = pc.cast(arr, pa.string())
    if arr.null_count:
        arr = pc.fill_null(
            arr, pa.scalar(b"" if pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type) else "", arr.type)
        )
    n = len(arr)
    if n == 0:
        return np.empty(0, dtype="S1")
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    off_dtype = np.dtype(np.int64 if large else np.int32)
    bufs = arr.buffers()
    offs = np.frombuffer(bufs[1], dtype=off_dtype, count=n + 1, offset=arr.offset * off_dtype.itemsize).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.empty(0, dtype=np.uint8)
    data = data[offs[0] : offs[-1]]
    lens = np.diff(offs)
    width = max(int(lens.max()), 1)
    out = np.zeros((n, width), dtype=np.uint8)
    if (lens == width).all():
        out[:] = data.reshape(n, width)
    else:
        out[np.arange(width)[None, :] < lens[:, None]] = data
    return out.view(f"S{width}").ravel()


class _Positions:
    """The columns of ``tissue_positions`` the reader needs, as flat arrays (numeric columns in
    their file dtype, barcodes as fixed-width bytes)."""

    __slots__ = ("array_col", "array_row", "barcode", "in_tissue", "pxl_col", "pxl_row")

    def __init__(
        self,
        barcode: NDArray[np.bytes_],
        in_tissue: NDArray[np.bool_],
        array_row: NDArray[Any],
        array_col: NDArray[Any],
        pxl_row: NDArray[Any],
        pxl_col: NDArray[Any],
    ) -> None:
        self.barcode = barcode
        self.in_tissue = in_tissue
        self.array_row = array_row
        self.array_col = array_col
        self.pxl_row = pxl_row
        self.pxl_col = pxl_col


def _open_positions_parquet(path: Path) -> pq.ParquetFile:
    """The parquet file, its 6 columns checked (missing or non-numeric: :class:`ReaderError`)."""
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    missing = [c for c in _POS_COLUMNS if c not in schema.names]
    if missing:
        raise ReaderError(
            path,
            f"lacks the column(s) {', '.join(missing)} (found {', '.join(map(str, schema.names))})",
            "use the tissue_positions file written by Space Ranger (header barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres)",
        )
    for c in _POS_COLUMNS[1:]:
        t = schema.field(c).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise ReaderError(path, f"column {c} is not numeric", "re-copy the file; it looks edited or corrupt")
    return pf


def _read_positions(path: Path) -> _Positions:
    """``tissue_positions.parquet`` in batches of its 6 columns (a CSV goes through
    :func:`~hestkit.readers.visium.read_tissue_positions`). Same checks and messages."""
    if path.suffix != ".parquet":
        df = read_tissue_positions(path)
        return _Positions(
            _as_bytes(df["barcode"].astype(str).to_numpy()),
            df["in_tissue"].to_numpy() > 0,
            df["array_row"].to_numpy(),
            df["array_col"].to_numpy(),
            df["pxl_row_in_fullres"].to_numpy(),
            df["pxl_col_in_fullres"].to_numpy(),
        )
    try:
        pf = _open_positions_parquet(path)
        n = pf.metadata.num_rows
        cols: dict[str, NDArray[Any] | None] = dict.fromkeys(_POS_COLUMNS)
        start = 0
        for batch in pf.iter_batches(batch_size=_POSITION_BATCH, columns=_POS_COLUMNS):
            m = batch.num_rows
            if start + m > n:
                raise ValueError(f"more rows than the {n} of its metadata")
            for c in _POS_COLUMNS:
                if c == "barcode":
                    v = _arrow_bytes(batch.column(c))
                else:
                    v = batch.column(c).to_numpy(zero_copy_only=False)
                    v = v > 0 if c == "in_tissue" else v
                cols[c] = _fill(cols[c], n, start, v)
            start += m
        if start != n:
            raise ValueError(f"{start} rows where its metadata says {n}")
        pa.default_memory_pool().release_unused()  # the decoded batches are gone: give their pages back
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, ReaderError):
            raise
        raise ReaderError(
            path, f"cannot be parsed as a positions table ({exc})", "re-copy it from Space Ranger's outs/spatial/"
        ) from exc

    def col(c: str, empty: str) -> NDArray[Any]:
        v = cols[c]
        return np.empty(0, dtype=empty) if v is None else v

    return _Positions(
        col("barcode", "S1"),
        col("in_tissue", "bool"),
        col("array_row", "int64"),
        col("array_col", "int64"),
        col("pxl_row_in_fullres", "float64"),
        col("pxl_col_in_fullres", "float64"),
    )


def _fill(out: NDArray[Any] | None, n: int, start: int, values: NDArray[Any]) -> NDArray[Any]:
    """Write ``values`` at ``start`` of a preallocated array of ``n`` (made on the first batch,
    widened when a later batch needs a wider dtype: longer barcodes, nulls in an int column)."""
    if out is None:
        out = np.empty(n, dtype=values.dtype)
    elif not np.can_cast(values.dtype, out.dtype, "safe"):
        out = out.astype(np.result_type(out.dtype, values.dtype))
    out[start : start + values.size] = values
    return out


class _BinMatrix:
    """A feature-barcode matrix of bins, read by chunks of barcodes: the barcodes (fixed-width
    bytes), the Gene Expression features kept, and :meth:`chunks` over all features."""

    def __init__(
        self,
        path: Path,
        barcodes: NDArray[np.bytes_] | None,
        n_bins: int,
        names: list[str],
        ids: list[str],
        types: list[str] | None,
        dtype: Any,
    ) -> None:
        self.path = path
        self._barcodes = barcodes
        self.n_bins = n_bins
        self.n_features = len(names)
        self.dtype = np.dtype(dtype)
        # Gene Expression features only, as _tenx does: all features when all or none are.
        keep = np.array([t == "Gene Expression" for t in types], dtype=bool) if types is not None else None
        self.keep: NDArray[np.intp] | None = None
        self.keep_mask: NDArray[np.bool_] | None = None
        if keep is not None and keep.any() and not keep.all():
            self.keep = np.flatnonzero(keep)
            self.keep_mask = keep
            names, ids = [names[i] for i in self.keep], [ids[i] for i in self.keep]
        self.names = names
        self.ids = ids
        #: Stored entries in the kept features, counted while streaming.
        self.nnz = 0

    @property
    def barcodes(self) -> NDArray[np.bytes_]:
        """All barcodes as fixed-width bytes (read on first use: only the join path needs them)."""
        if self._barcodes is None:
            self._barcodes = self._read_barcodes()
        return self._barcodes

    @barcodes.setter
    def barcodes(self, value: NDArray[np.bytes_]) -> None:
        self._barcodes = value

    def _read_barcodes(self) -> NDArray[np.bytes_]:  # pragma: no cover - abstract
        raise NotImplementedError

    def barcode_chunks(self, size: int) -> Iterator[tuple[int, NDArray[np.bytes_]]]:
        """The barcodes in the same chunks as :meth:`chunks`."""
        bc = self.barcodes
        for a in range(0, self.n_bins, size):
            yield a, bc[a : a + size]

    def chunks(self, size: int) -> Iterator[tuple[int, sp.csr_matrix]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _count(self, indices: NDArray[Any]) -> None:
        self.nnz += int(indices.size) if self.keep_mask is None else int(np.count_nonzero(self.keep_mask[indices]))


class _H5BinMatrix(_BinMatrix):
    """10x HDF5 v3 ``filtered_feature_bc_matrix.h5`` (CSC features x barcodes): shapes and the
    ends of ``indptr`` checked on opening; ``barcodes``, ``indptr``, ``data`` and ``indices``
    sliced per chunk of barcodes (the barcodes are read whole only for the join fallback)."""

    def __init__(self, path: Path) -> None:
        with open_10x_h5(path) as g:
            try:
                n_feat, n_bc = (int(v) for v in g["shape"][:])
                ip_ds = g["indptr"]
                n_ip = int(ip_ds.shape[0]) if len(ip_ds.shape) == 1 else -1
                ends = (int(ip_ds[0]), int(ip_ds[-1])) if n_ip > 0 else (0, -1)
                n_data, n_ind = len(g["data"]), len(g["indices"])
                dtype = g["data"].dtype
                feats = g["features"]
                names = _decode(feats["name"][:])
                ids = _decode(feats["id"][:]) if "id" in feats else list(names)
                types = _decode(feats["feature_type"][:]) if "feature_type" in feats else None
                n_barcodes = len(g["barcodes"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ReaderError(path, f"the matrix is corrupt or inconsistent ({exc})", _H5_FIX) from exc
        if n_barcodes != n_bc or len(names) != n_feat:
            raise ReaderError(
                path,
                f"shape says {n_feat} features x {n_bc} barcodes but it lists {len(names)} features and {n_barcodes} barcodes",
                _H5_FIX,
            )
        # indptr is checked here at its ends; that it never decreases is checked per chunk.
        if n_ip != n_bc + 1 or ends[0] != 0 or ends[1] != n_data or n_ind != n_data:
            raise ReaderError(
                path,
                f"the matrix is corrupt or inconsistent (indptr of {n_ip} entries for {n_bc} barcodes, "
                f"{n_data} values and {n_ind} indices)",
                _H5_FIX,
            )
        super().__init__(path, None, n_bc, names, ids, types, dtype)

    def _read_barcodes(self) -> NDArray[np.bytes_]:
        return np.concatenate([bc for _, bc in self.barcode_chunks(max(self.n_bins, 1))] or [np.empty(0, dtype="S1")])

    def barcode_chunks(self, size: int) -> Iterator[tuple[int, NDArray[np.bytes_]]]:
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                ds = f["matrix/barcodes"]
                for a in range(0, self.n_bins, size):
                    yield a, _as_bytes(ds[a : min(a + size, self.n_bins)])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReaderError(self.path, f"the matrix is corrupt or inconsistent ({exc})", _H5_FIX) from exc

    def chunks(self, size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        import h5py

        # indices are int64 on disk; read as int32 when that holds every feature (half the memory)
        ind_dtype = np.dtype(np.int32 if self.n_features < 2**31 else np.int64)
        try:
            with h5py.File(self.path, "r") as f:
                data_ds, ind_ds, ip_ds = f["matrix/data"], f["matrix/indices"], f["matrix/indptr"]
                for a in range(0, self.n_bins, size):
                    b = min(a + size, self.n_bins)
                    ip = np.asarray(ip_ds[a : b + 1], dtype=np.int64)
                    if ip.size != b - a + 1 or bool((ip[1:] < ip[:-1]).any()):
                        raise ValueError(f"indptr decreases (or is cut short) within barcodes {a}..{b}")
                    lo, hi = int(ip[0]), int(ip[-1])
                    data = data_ds[lo:hi] if hi > lo else np.empty(0, dtype=self.dtype)
                    ind = ind_ds.astype(ind_dtype)[lo:hi] if hi > lo else np.empty(0, dtype=ind_dtype)
                    if ind.size and (int(ind.min()) < 0 or int(ind.max()) >= self.n_features):
                        raise ValueError(f"feature indices of barcodes {a}..{b} run outside 0..{self.n_features - 1}")
                    self._count(ind)
                    # The CSC columns of these barcodes are the CSR rows of barcodes x features.
                    yield a, sp.csr_matrix((data, ind, ip - lo), shape=(b - a, self.n_features))
        except (OSError, ValueError, KeyError) as exc:
            raise ReaderError(self.path, f"the matrix is corrupt or inconsistent ({exc})", _H5_FIX) from exc


class _MexBinMatrix(_BinMatrix):
    """A MEX folder: read whole by :func:`~hestkit.readers._tenx.read_10x_mex` (not streamed;
    MEX is text and has no index to seek), then served in the same chunks."""

    def __init__(self, path: Path) -> None:
        m: Matrix = read_10x_mex(path)  # already Gene Expression only
        bc = _as_bytes(np.asarray(m.barcodes, dtype=object))
        super().__init__(path, bc, int(bc.size), m.names, m.ids, None, m.counts.dtype)
        self.counts: sp.csr_matrix | None = m.counts

    def chunks(self, size: int) -> Iterator[tuple[int, sp.csr_matrix]]:
        x = self.counts
        if x is None:
            raise RuntimeError("chunks() of a MEX matrix can be read once")
        self.counts = None
        for a in range(0, self.n_bins, size):
            part = sp.csr_matrix(x[a : a + size])
            self._count(part.indices)
            yield a, part


def _open_matrix(path: Path) -> _BinMatrix:
    return _MexBinMatrix(path) if path.is_dir() else _H5BinMatrix(path)


def _read_parts(bf: BinFolder, problems: list[Problem]) -> tuple[_BinMatrix | None, _Positions | None, _PositionGrid | None]:
    """The matrix and the positions: a :class:`_PositionGrid` for an HDF5 matrix and a
    parquet whose barcodes encode the bins (streamed, no per-bin arrays kept), the whole
    :class:`_Positions` otherwise (the join path)."""
    matrix: _BinMatrix | None = None
    positions: _Positions | None = None
    grid: _PositionGrid | None = None
    mpath, ppath = bf.matrix_path(), bf.positions_path()
    if mpath is None:
        problems.append(Problem(bf.path, "no filtered_feature_bc_matrix.h5 (or filtered_feature_bc_matrix/ MEX folder)"))
    else:
        try:
            matrix = _open_matrix(mpath)
        except ReaderError as exc:
            problems.append(Problem(exc.path, f"{exc.found}. Fix: {exc.fix}"))
    if ppath is None:
        problems.append(Problem(bf.path / "spatial", "no tissue_positions.parquet; copy it from Space Ranger's binned_outputs"))
    else:
        try:
            if isinstance(matrix, _H5BinMatrix) and ppath.suffix == ".parquet":
                grid = _read_position_grid(ppath)
            if grid is None:
                positions = _read_positions(ppath)
        except ReaderError as exc:
            problems.append(Problem(exc.path, f"{exc.found}. Fix: {exc.fix}"))
    if bf.scalefactors_error is not None:
        problems.append(Problem(bf.scalefactors_path, bf.scalefactors_error))
    elif bf.scalefactors is None:
        problems.append(
            Problem(bf.scalefactors_path, f"missing; copy spatial/scalefactors_json.json of {bf.path.name} from Space Ranger")
        )
    return matrix, positions, grid


def _hash_bytes(a: NDArray[np.bytes_], width: int) -> NDArray[np.uint64]:
    """64-bit hash of each string, its bytes NUL-padded to ``width`` (a multiple of 8)."""
    out = np.empty(a.size, dtype=np.uint64)
    mul, shift = np.uint64(0x9E3779B97F4A7C15), np.uint64(29)
    for s in range(0, a.size, _HASH_STEP):
        words = np.ascontiguousarray(a[s : s + _HASH_STEP].astype(f"S{width}")).view(np.uint64).reshape(-1, width // 8)
        h = np.full(words.shape[0], 0xCBF29CE484222325, dtype=np.uint64)
        for j in range(words.shape[1]):
            h ^= words[:, j]
            h *= mul
            h ^= h >> shift
        out[s : s + h.size] = h
    return out


def _join_exact(keys: NDArray[np.bytes_], query: NDArray[np.bytes_]) -> NDArray[np.int64] | None:
    order = np.argsort(keys, kind="stable")
    ks = keys[order]
    if ks.size > 1 and bool((ks[1:] == ks[:-1]).any()):
        return None
    if ks.size == 0:
        return np.full(query.size, -1, dtype=np.int64)
    i = np.minimum(np.searchsorted(ks, query), ks.size - 1)
    return np.where(ks[i] == query, order[i], -1).astype(np.int64)


def _join(keys: NDArray[np.bytes_], query: NDArray[np.bytes_]) -> NDArray[np.int64] | None:
    """Index in ``keys`` of each ``query`` (-1 when absent); None when ``keys`` has duplicates.

    Vectorised: a pandas index of 64-bit hashes of the bytes, every match then checked byte
    for byte; an exact sort-based join when two hashes collide.
    """
    width = -(-max(keys.dtype.itemsize, query.dtype.itemsize, 1) // 8) * 8
    index = pd.Index(_hash_bytes(keys, width))
    if index.has_duplicates:
        return _join_exact(keys, query)
    rows = np.asarray(index.get_indexer(pd.Index(_hash_bytes(query, width))), dtype=np.int64)
    del index
    for s in range(0, rows.size, _HASH_STEP):  # verify byte for byte, in steps (bounded temporaries)
        r = rows[s : s + _HASH_STEP]
        found = np.flatnonzero(r >= 0)
        if not bool((keys[r[found]] == query[s : s + _HASH_STEP][found]).all()):
            return _join_exact(keys, query)
    return rows


def _bins_of_matrix(
    matrix: _BinMatrix, positions: _Positions, mpath: Path, ppath: Path, problems: list[Problem]
) -> NDArray[np.int64] | None:
    """Row of ``positions`` of each matrix barcode (None, with a problem, when any is absent)."""
    rows = _join(positions.barcode, matrix.barcodes)
    if rows is None:
        problems.append(Problem(ppath, "lists some barcodes more than once"))
        return None
    absent = np.flatnonzero(rows < 0)
    if absent.size:
        show = ", ".join(matrix.barcodes[i].decode("utf-8", "replace") for i in absent[:5]) + (" ..." if absent.size > 5 else "")
        problems.append(
            Problem(
                mpath,
                f"{absent.size} of {matrix.n_bins} barcodes of the matrix are absent from {ppath.name} ({show}); "
                "the matrix and the positions come from different runs or bin sizes",
            )
        )
        return None
    return rows


def _pool_matrix(matrix: _BinMatrix, positions: _Positions, rows: NDArray[np.int64], k: int) -> PooledBins:
    """Stream the matrix into the blocks that hold an in-tissue bin (Gene Expression columns)."""
    pooled = pool_bins_streamed(
        positions.array_row[rows],
        positions.array_col[rows],
        matrix.chunks(_CHUNK_BINS),
        matrix.n_features,
        k,
        positions.in_tissue[rows],
        dtype=matrix.dtype,
    )
    if matrix.keep is not None:
        pooled.counts = sp.csr_matrix(pooled.counts[:, matrix.keep])
    return pooled


# -- bins located by their barcodes (no join) ----------------------------------------------

#: A Space Ranger bin barcode: ``s_{bin:03d}um_{array_row:05d}_{array_col:05d}-1``.
_HD_BARCODE = re.compile(rb"^s_\d{3}um_\d{5}_\d{5}-1$")
_HD_DIGITS = np.zeros(21, dtype=bool)
_HD_DIGITS[8:13] = _HD_DIGITS[14:19] = True
_POW10 = 10 ** np.arange(4, -1, -1, dtype=np.int64)
#: Grid cells allowed per positions row (plus a constant) before the grid gives way to the join.
_GRID_CELLS_PER_ROW = 8


def _parse_bin_barcodes(bc: NDArray[np.bytes_], template: bytes) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
    """``(array_row, array_col)`` encoded in each barcode, or None unless every one is
    ``template`` (a Space Ranger bin barcode) with other digits in its row and column fields.

    Vectorised on the fixed-width bytes. Under one template a barcode and its ``(row, col)``
    determine each other, so locating bins this way is the same as joining on the barcode.
    """
    n = bc.size
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    width, L = bc.dtype.itemsize, len(template)
    if bc.dtype.kind != "S" or width < L or L != _HD_DIGITS.size:
        return None
    a = np.ascontiguousarray(bc).view(np.uint8).reshape(n, width)
    if width > L and bool(a[:, L:].any()):
        return None
    t = np.frombuffer(template, dtype=np.uint8)
    if not bool((a[:, :L][:, ~_HD_DIGITS] == t[~_HD_DIGITS]).all()):
        return None
    d = a[:, :L][:, _HD_DIGITS] - np.uint8(48)  # bytes below '0' wrap above 9
    if bool((d > 9).any()):
        return None
    d64 = d.astype(np.int64)
    return d64[:, :5] @ _POW10, d64[:, 5:] @ _POW10


class _PositionGrid:
    """What the reader needs of ``tissue_positions.parquet`` when its barcodes encode the bins'
    array indices: the barcode template, one byte per cell of the bounding grid of the bins
    (0: not listed, 1: listed, 2: listed and in tissue) and the subsample of rows the
    array-to-pixel affine is fitted on (the rows :func:`fit_bin_grid` would pick)."""

    __slots__ = ("col0", "fit", "n_cols", "row0", "state", "template")

    def __init__(
        self, template: bytes, row0: int, col0: int, n_cols: int, state: NDArray[np.uint8], fit: list[NDArray[Any]]
    ) -> None:
        self.template = template
        self.row0, self.col0, self.n_cols = row0, col0, n_cols
        self.state = state
        self.fit = fit

    def lookup(self, r: NDArray[np.int64], c: NDArray[np.int64]) -> NDArray[np.uint8]:
        """State of each bin (0 outside the grid)."""
        rr, cc = r - self.row0, c - self.col0
        inside = (rr >= 0) & (cc >= 0) & (cc < self.n_cols) & (rr * self.n_cols + cc < self.state.size)
        out = np.zeros(r.size, dtype=np.uint8)
        out[inside] = self.state[rr[inside] * self.n_cols + cc[inside]]
        return out


def _batches(pf: pq.ParquetFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Batches of ``columns``, one row group at a time and single-threaded: a reader over all
    row groups (or threaded) holds memory that grows with the number of row groups
    (measured: 72 vs 24 MiB of Arrow allocations at 18 row groups)."""
    for rg in range(pf.num_row_groups):
        yield from pf.iter_batches(batch_size=_POSITION_BATCH, row_groups=[rg], columns=columns, use_threads=False)


def _read_position_grid(path: Path) -> _PositionGrid | None:
    """:class:`_PositionGrid` of a parquet positions table, streamed in batches in two
    passes (bounds and finite rows, then the grid and the fit subsample); None when the
    table does not fit the scheme (a barcode that is not a bin barcode of one template or
    disagrees with its array_row/array_col, a duplicate, a non-finite index, an empty table,
    a grid much larger than the table): the reader then joins on the barcodes instead."""
    try:
        pf = _open_positions_parquet(path)
        n = pf.metadata.num_rows
        if n == 0:
            return None
        idx_cols, pxl_cols = ["array_row", "array_col"], ["pxl_row_in_fullres", "pxl_col_in_fullres"]
        lo, hi, n_fit = [np.inf, np.inf], [-np.inf, -np.inf], 0
        for batch in _batches(pf, idx_cols + pxl_cols):
            r, c, pr, pc = (_numeric(batch.column(x).to_numpy(zero_copy_only=False)) for x in idx_cols + pxl_cols)
            if r.size == 0:
                continue
            if not (bool(np.isfinite(r).all()) and bool(np.isfinite(c).all())):
                return None
            n_fit += int(np.count_nonzero(np.isfinite(pr) & np.isfinite(pc)))
            for i, v in enumerate((r, c)):
                lo[i], hi[i] = min(lo[i], float(v.min())), max(hi[i], float(v.max()))
        if not all(math.isfinite(v) for v in lo + hi) or min(lo) < 0:
            return None
        row0, col0 = int(lo[0]), int(lo[1])
        n_rows, n_cols = int(hi[0]) - row0 + 1, int(hi[1]) - col0 + 1
        if n_rows * n_cols > _GRID_CELLS_PER_ROW * n + 2**20:
            return None
        state = np.zeros(n_rows * n_cols, dtype=np.uint8)
        # the rows fit_bin_grid picks: all finite ones, or an even subsample of them
        picks = np.arange(n_fit) if n_fit <= _FIT_MAX_BINS else np.linspace(0, n_fit - 1, _FIT_MAX_BINS).astype(np.int64)
        fit_parts: list[list[NDArray[Any]]] = [[], [], [], []]
        template: bytes | None = None
        seen_fit = 0
        for batch in _batches(pf, _POS_COLUMNS):
            bc = _arrow_bytes(batch.column("barcode"))
            if bc.size == 0:
                continue
            if template is None:
                template = bytes(bc[0])
                if not _HD_BARCODE.match(template):
                    return None
            parsed = _parse_bin_barcodes(bc, template)
            r, c, pr, pc = (_numeric(batch.column(x).to_numpy(zero_copy_only=False)) for x in idx_cols + pxl_cols)
            if parsed is None or not (bool((parsed[0] == r).all()) and bool((parsed[1] == c).all())):
                return None
            cell = (parsed[0] - row0) * n_cols + (parsed[1] - col0)
            if bool(state[cell].any()) or np.unique(cell).size != cell.size:
                return None  # duplicates: the join reports them
            state[cell] = 1 + (batch.column("in_tissue").to_numpy(zero_copy_only=False) > 0)
            ok = np.flatnonzero(np.isfinite(r) & np.isfinite(c) & np.isfinite(pr) & np.isfinite(pc))
            a, b = np.searchsorted(picks, [seen_fit, seen_fit + ok.size])
            take = ok[picks[a:b] - seen_fit]
            for part, v in zip(fit_parts, (r, c, pr, pc), strict=True):
                part.append(v[take])
            seen_fit += ok.size
        pa.default_memory_pool().release_unused()
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, ReaderError):
            raise
        raise ReaderError(
            path, f"cannot be parsed as a positions table ({exc})", "re-copy it from Space Ranger's outs/spatial/"
        ) from exc
    if template is None:
        return None
    return _PositionGrid(template, row0, col0, n_cols, state, [np.concatenate(p) for p in fit_parts])


class _BlockPlan:
    """The blocks of the bins of a matrix located on a :class:`_PositionGrid`: a dense grid of
    block cells ``(block_row - br0) * width + (block_col - bc0)`` (sorted like
    :func:`_blocks`), with the bins of each cell and whether one of them is in tissue."""

    __slots__ = ("bc0", "br0", "has_tissue", "k", "n_bins", "width")

    def __init__(self, grid: _PositionGrid, k: int) -> None:
        self.k = k
        self.br0, self.bc0 = grid.row0 // k, grid.col0 // k
        n_rows = grid.state.size // grid.n_cols
        self.width = (grid.col0 + grid.n_cols - 1) // k - self.bc0 + 1
        n_cells = ((grid.row0 + n_rows - 1) // k - self.br0 + 1) * self.width
        self.n_bins = np.zeros(n_cells, dtype=np.int64)
        self.has_tissue = np.zeros(n_cells, dtype=bool)

    def cells(self, r: NDArray[np.int64], c: NDArray[np.int64]) -> NDArray[np.int64]:
        return (r // self.k - self.br0) * self.width + (c // self.k - self.bc0)


def _plan_blocks(
    matrix: _BinMatrix, grid: _PositionGrid, k: int, mpath: Path, ppath: Path, problems: list[Problem]
) -> tuple[bool, _BlockPlan | None]:
    """Stream the matrix barcodes onto ``grid``: ``(False, None)`` when one does not parse
    (the caller joins instead); ``(True, None)`` with a problem when some are absent from the
    positions (the join's message); else ``(True, plan)``. Every bin is checked against the
    positions table (listed, in tissue), so the filtered matrix is not trusted blindly."""
    plan = _BlockPlan(grid, k)
    n_absent, shown = 0, list[str]()
    for _, bc in matrix.barcode_chunks(_CHUNK_BINS):
        parsed = _parse_bin_barcodes(bc, grid.template)
        if parsed is None:
            return False, None
        state = grid.lookup(*parsed)
        absent = np.flatnonzero(state == 0)
        if absent.size:
            n_absent += absent.size
            shown += [bc[i].decode("utf-8", "replace") for i in absent[: 6 - len(shown)]]
            continue
        cells = plan.cells(*parsed)
        plan.n_bins += np.bincount(cells, minlength=plan.n_bins.size)
        plan.has_tissue[cells[state == 2]] = True
    if n_absent:
        show = ", ".join(shown[:5]) + (" ..." if n_absent > 5 else "")
        problems.append(
            Problem(
                mpath,
                f"{n_absent} of {matrix.n_bins} barcodes of the matrix are absent from {ppath.name} ({show}); "
                "the matrix and the positions come from different runs or bin sizes",
            )
        )
        return True, None
    return True, plan


def _pool_grid(matrix: _BinMatrix, grid: _PositionGrid, plan: _BlockPlan) -> PooledBins:
    """:func:`_pool_matrix` with the bins located by their barcodes, chunk by chunk."""
    k, n_cells = plan.k, plan.n_bins.size
    acc = sp.csr_matrix((n_cells, matrix.n_features), dtype=matrix.dtype)
    for (a, x), (a2, bc) in zip(matrix.chunks(_CHUNK_BINS), matrix.barcode_chunks(_CHUNK_BINS), strict=True):
        parsed = _parse_bin_barcodes(bc, grid.template)
        if a != a2 or parsed is None or bc.size != x.shape[0]:
            raise ReaderError(matrix.path, "the matrix changed while it was read", _H5_FIX)
        t = plan.cells(*parsed)
        rows = np.flatnonzero(plan.has_tissue[t])
        if rows.size:
            pool = sp.csr_matrix((np.ones(rows.size, dtype=x.dtype), (t[rows], rows)), shape=(n_cells, x.shape[0]))
            acc = sp.csr_matrix(acc + pool @ x)
    acc.sum_duplicates()
    acc.sort_indices()
    cand = np.flatnonzero(plan.has_tissue)
    block_row, block_col = cand // plan.width + plan.br0, cand % plan.width + plan.bc0
    pooled = PooledBins(k, block_row, block_col, sp.csr_matrix(acc[cand]), plan.n_bins[cand], plan.has_tissue[cand])
    if matrix.keep is not None:
        pooled.counts = sp.csr_matrix(pooled.counts[:, matrix.keep])
    return pooled


def _pseudo_spots(pooled: PooledBins, bin_um: float, affine: Affine, coord_scale: float) -> tuple[pd.DataFrame, PooledBins]:
    """Spot table and pooled counts of the blocks with an in-tissue bin and nonzero counts."""
    k = pooled.k
    totals = np.asarray(pooled.counts.sum(axis=1)).ravel()
    keep = np.flatnonzero(pooled.has_tissue & (totals > 0))
    pooled = PooledBins(
        k, pooled.block_row[keep], pooled.block_col[keep], pooled.counts[keep], pooled.n_bins[keep], pooled.has_tissue[keep]
    )
    grid = pooled.centres_grid()
    px = affine.apply(grid) * coord_scale
    um = grid * bin_um
    df = pd.DataFrame(
        {
            "barcode": pseudo_spot_barcodes(k * bin_um, pooled.block_row, pooled.block_col),
            "in_tissue": np.ones(len(keep), dtype=np.int8),
            "array_row": pooled.block_row,
            "array_col": pooled.block_col,
            "x_px": px[:, 0],
            "y_px": px[:, 1],
            "x_um": um[:, 0],
            "y_um": um[:, 1],
        }
    )
    return normalise_spots(df), pooled


class VisiumHDReader:
    """Space Ranger Visium HD output folder (``binned_outputs/square_*um/``), pooled into
    square pseudo-spots of ``k x k`` bins of the finest bin size present."""

    name = "visium-hd"
    description = (
        "10x Visium HD Space Ranger output folder (binned_outputs/square_NNNum/ with filtered_feature_bc_matrix.h5 + "
        "spatial/tissue_positions.parquet); bins pooled into square pseudo-spots (default 56 um)"
    )

    def can_open(self, path: Path) -> bool:
        return path.is_dir() and bool(bin_folders(path))

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]:
        sid = options.sample_id or (path.parent.name if path.name == "outs" else path.name)
        return [SampleRef(self.name, sid, path, options)]

    def load(self, ref: SampleRef) -> SampleSource:
        folder, opts = ref.path, ref.options
        subject = f"Visium HD sample {ref.sample_id!r} at {folder}"
        problems: list[Problem] = []
        bf = _finest(folder, problems)
        matrix, positions, grid = _read_parts(bf, problems) if bf is not None else (None, None, None)
        side_req = VISIUM_HD_DEFAULT_SPOT_UM if opts.spot_size_um is None else float(opts.spot_size_um)
        k = 0
        if bf is not None and bf.bin_um is not None:
            k = round(side_req / bf.bin_um) if math.isfinite(side_req) and side_req > 0 else 0
            if k < 1:
                problems.append(
                    Problem(
                        None,
                        f"pseudo-spot size {side_req:g} um holds no whole bin of {bf.bin_um:g} um; "
                        f"pass --spot-size-um of at least {bf.bin_um:g}",
                    )
                )
        image_path = find_image(folder, opts.image, problems)
        scalef: dict[str, Any] = (bf.scalefactors if bf is not None else None) or {}
        key = _FLAT_IMAGES.get(image_path.name) if image_path is not None else None
        coord_scale = float(scalef.get(key, 1.0)) if key else 1.0

        rows = plan = None
        affine: Affine | None = None
        max_resid = 0.0
        mpath, ppath = (bf.matrix_path(), bf.positions_path()) if bf is not None else (None, None)
        if matrix is not None and (positions is not None or grid is not None) and mpath is not None and ppath is not None:
            fit_error: ValueError | None = None
            fitted = False
            if grid is not None:
                # Bins located by their barcodes, chunk by chunk; the join if one does not parse.
                try:
                    affine, max_resid = fit_bin_grid(*grid.fit)
                except ValueError as exc:
                    fit_error = exc
                fitted = True
                try:
                    parsed, plan = _plan_blocks(matrix, grid, max(k, 1), mpath, ppath, problems)
                except ReaderError as exc:
                    problems.append(Problem(exc.path, f"{exc.found}. Fix: {exc.fix}"))
                    parsed = True
                if not parsed:
                    grid = None
                    try:
                        positions = _read_positions(ppath)
                    except ReaderError as exc:
                        problems.append(Problem(exc.path, f"{exc.found}. Fix: {exc.fix}"))
            if grid is None and positions is not None:
                # The grid is fitted first so that the pixel columns are freed before the join,
                # and the barcodes right after it: the peak memory holds neither.
                if not fitted:
                    try:
                        affine, max_resid = fit_bin_grid(
                            positions.array_row, positions.array_col, positions.pxl_row, positions.pxl_col
                        )
                    except ValueError as exc:
                        fit_error = exc
                positions.pxl_row = positions.pxl_col = np.empty(0)
                rows = _bins_of_matrix(matrix, positions, mpath, ppath, problems)
                matrix.barcodes = positions.barcode = np.empty(0, dtype="S1")
            if fit_error is not None:
                problems.append(Problem(ppath, f"the bins do not define a grid ({fit_error})"))
            if affine is not None and max_resid > 0.5 * affine.linear_scale:
                problems.append(
                    Problem(
                        ppath,
                        f"bin pixel positions are not an affine image of the array indices (worst residual "
                        f"{max_resid:.1f} px, a bin is {affine.linear_scale:.1f} px); the file looks edited or corrupt",
                    )
                )

        spots = pooled = None
        located = (grid is not None and plan is not None) or (rows is not None and positions is not None)
        if located and affine is not None and matrix is not None and bf is not None and k >= 1:
            try:
                if grid is not None and plan is not None:
                    pooled = _pool_grid(matrix, grid, plan)
                else:
                    assert positions is not None and rows is not None
                    pooled = _pool_matrix(matrix, positions, rows, k)
            except ReaderError as exc:
                problems.append(Problem(exc.path, f"{exc.found}. Fix: {exc.fix}"))
            else:
                spots, pooled = _pseudo_spots(pooled, float(bf.bin_um or 0.0), affine, coord_scale)
        del positions, rows, grid, plan

        slide = None
        if image_path is not None:
            try:
                slide = open_slide(image_path)
            except ReaderError as exc:
                problems.append(Problem(exc.path, f"{exc.found}. Fix: {exc.fix}"))
        if slide is not None and spots is not None:
            check_spots_inside(spots, slide, problems)
        if problems:
            if slide is not None:
                slide.close()
            raise ValidationError(subject, problems)
        if (
            bf is None
            or spots is None
            or pooled is None
            or slide is None
            or image_path is None
            or matrix is None
            or affine is None
        ):
            raise ValidationError(subject, [Problem(folder, "incomplete sample")])  # unreachable: a problem was recorded
        return self._source(ref, bf, matrix, spots, pooled, affine, max_resid, slide, image_path, coord_scale, side_req)

    def _source(
        self,
        ref: SampleRef,
        bf: BinFolder,
        matrix: _BinMatrix,
        spots: pd.DataFrame,
        pooled: PooledBins,
        affine: Affine,
        max_resid: float,
        slide: Slide,
        image_path: Path,
        coord_scale: float,
        side_req: float,
    ) -> SampleSource:
        opts = ref.options
        bin_um = float(bf.bin_um or 0.0)
        k = pooled.k
        side = k * bin_um
        scalef = bf.scalefactors or {}
        raw_mpp = scalef.get("microns_per_pixel")
        mpp = float(raw_mpp) if isinstance(raw_mpp, int | float) and math.isfinite(raw_mpp) and raw_mpp > 0 else None
        # microns_per_pixel is 10x's own value; without it the bin pitch of the fit gives it.
        estimated_full = mpp if mpp is not None else bin_um / affine.linear_scale
        embedded = slide.embedded_pixel_size_um
        slide.close()
        decision = resolve_pixel_size(
            embedded=embedded,
            estimated=estimated_full / coord_scale,
            override=opts.pixel_size_um,
            subject=f"{ref.sample_id} ({image_path.name})",
        )
        warnings = [decision.warning] if decision.warning else []
        if abs(side - side_req) > 1e-6:
            warnings.append(
                f"{ref.sample_id}: pseudo-spot side {side_req:g} um is not a whole number of {bin_um:g} um bins; "
                f"using {k} x {k} bins = {side:g} um"
            )
        if len(spots) == 0:
            warnings.append(
                f"{ref.sample_id}: no pseudo-spot has both an in-tissue bin and nonzero counts "
                f"({matrix.n_bins} bins in the matrix, {matrix.nnz} nonzero entries); no pairs"
            )
        mpath, ppath = bf.matrix_path(), bf.positions_path()
        metadata = {
            "organ": opts.organ,
            "species": opts.species,
            "patient": opts.patient,
            "bins_folder": bf.path.name,
            "bin_size_um": bin_um,
            "bins_per_side": k,
            "pseudo_spot_side_um": side,
            "pseudo_spot_side_um_requested": side_req,
            "pseudo_spot_barcode": "s_{side:03d}um_{block_row:05d}_{block_col:05d}-1; block = (array_row // k, array_col // k)",
            "n_bins": matrix.n_bins,
            "n_pseudo_spots": len(spots),
            "bins_per_pseudo_spot_mean": float(pooled.n_bins.mean()) if len(pooled.n_bins) else 0.0,
            "microns_per_pixel": mpp,
            "array_to_pixel_affine": [list(r) for r in affine.matrix[:2]],
            "array_to_pixel_max_residual_px": max_resid,
            "coordinate_scale": coord_scale,
        }
        spath = bf.scalefactors_path
        return SampleSource(
            sample_id=ref.sample_id,
            technology="visium-hd",
            counts=pooled.counts,
            genes=make_unique(matrix.names),
            gene_ids=matrix.ids,
            spots=spots,
            image_path=image_path,
            pixel_size=decision,
            spot_diameter_um=side,
            spot_shape="square",
            metadata=metadata,
            source_paths=[str(p) for p in (mpath, ppath, spath, image_path) if p is not None],
            warnings=warnings,
        )
