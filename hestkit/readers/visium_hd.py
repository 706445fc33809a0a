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
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from ..errors import DataError, OptionError, Problem, ReaderError, ValidationError, fix
from ..fixes import SPOT_SIZE_UM
from ..geometry import Affine, fit_affine, resolve_pixel_size
from ..sample import ReadOptions, SampleRef, SampleSource
from ..slide import Slide, open_slide
from ._common import check_spots_inside, find_image, normalise_spots, positive_field
from ._tenx import H5_FIX, make_unique
from ._visium_hd_bins import (
    _FIT_MAX_BINS,
    _BinMatrix,
    _H5BinMatrix,
    _join,
    _numeric,
    _open_matrix,
    _parse_bin_barcodes,
    _PositionGrid,
    _Positions,
    _read_position_grid,
    _read_positions,
)

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
#: Barcodes (columns of the HDF5 matrix) read and pooled per chunk.
_CHUNK_BINS = 500_000
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
                    raise DataError("not a JSON object")
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
        raise OptionError(f"k must be >= 1, got {k}")
    r = np.asarray(array_row, dtype=np.int64)
    c = np.asarray(array_col, dtype=np.int64)
    x = sp.csr_matrix(counts)
    n = r.size
    if x.shape[0] != n or c.size != n:
        raise DataError(f"{n} rows/cols given for a counts matrix of {x.shape[0]} bins")
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
        raise OptionError(f"k must be >= 1, got {k}")
    r = np.asarray(array_row).astype(np.int64, copy=False)
    c = np.asarray(array_col).astype(np.int64, copy=False)
    n = r.size
    if c.size != n:
        raise DataError(f"{n} rows but {c.size} cols given")
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
            raise DataError(f"chunk of rows {start}..{start + m} x {x.shape[1]} does not follow row {seen} of {n} x {n_genes}")
        seen += m
        t = target[start : start + m]
        rows = np.flatnonzero(t >= 0)
        if rows.size:
            pool = sp.csr_matrix((np.ones(rows.size, dtype=x.dtype), (t[rows], rows)), shape=(cand.size, m))
            acc = sp.csr_matrix(acc + pool @ x)
    if seen != n:
        raise DataError(f"chunks cover {seen} of {n} bins")
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
            problems.append(Problem.of(exc))
    if ppath is None:
        problems.append(Problem(bf.path / "spatial", "no tissue_positions.parquet; copy it from Space Ranger's binned_outputs"))
    else:
        try:
            if isinstance(matrix, _H5BinMatrix) and ppath.suffix == ".parquet":
                grid = _read_position_grid(ppath)
            if grid is None:
                positions = _read_positions(ppath)
        except ReaderError as exc:
            problems.append(Problem.of(exc))
    if bf.scalefactors_error is not None:
        problems.append(Problem(bf.scalefactors_path, bf.scalefactors_error))
    elif bf.scalefactors is None:
        problems.append(
            Problem(bf.scalefactors_path, f"missing; copy spatial/scalefactors_json.json of {bf.path.name} from Space Ranger")
        )
    return matrix, positions, grid


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
            raise ReaderError(matrix.path, "the matrix changed while it was read", H5_FIX)
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
                        f"pseudo-spot size {side_req:g} um holds no whole bin of {bf.bin_um:g} um",
                        fix(f"pass {SPOT_SIZE_UM} of at least {bf.bin_um:g}", SPOT_SIZE_UM),
                    )
                )
        image_path = find_image(folder, opts.image, problems)
        scalef: dict[str, Any] = (bf.scalefactors if bf is not None else None) or {}
        key = _FLAT_IMAGES.get(image_path.name) if image_path is not None else None
        spath = bf.scalefactors_path if bf is not None else None
        coord_scale = (positive_field(scalef, key, spath, problems, default=1.0) or 1.0) if key else 1.0
        for field in ("microns_per_pixel", "bin_size_um"):  # present but unusable: say so, never fall back silently
            positive_field(scalef, field, spath, problems)

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
                    problems.append(Problem.of(exc))
                    parsed = True
                if not parsed:
                    grid = None
                    try:
                        positions = _read_positions(ppath)
                    except ReaderError as exc:
                        problems.append(Problem.of(exc))
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
                problems.append(Problem.of(exc))
            else:
                spots, pooled = _pseudo_spots(pooled, float(bf.bin_um or 0.0), affine, coord_scale)
        del positions, rows, grid, plan

        slide = None
        if image_path is not None:
            try:
                slide = open_slide(image_path)
            except ReaderError as exc:
                problems.append(Problem.of(exc))
        if slide is not None and spots is not None:
            check_spots_inside(spots, slide, problems, ppath)
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
            counts_path=str(mpath),
            spots_path=str(ppath),
        )
