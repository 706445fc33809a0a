"""Visium HD bins, private helpers of :mod:`hestkit.readers.visium_hd`: the positions table,
the bin matrices (HDF5 streamed in chunks, MEX whole) and locating bins by their barcodes
(a verified hash join, or the barcode grid when every barcode encodes its position)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from ..errors import DataError, ReaderError, StateError
from ._tenx import H5_FIX, Matrix, _decode, open_10x_h5, read_10x_mex
from .visium import _POS_COLUMNS, read_tissue_positions


def _numeric(a: ArrayLike) -> NDArray[Any]:
    x = np.asarray(a)
    return x if x.dtype.kind in "biuf" else x.astype(float)


#: Most bins used to fit the array-to-pixel affine (an even subsample beyond that).
_FIT_MAX_BINS = 500_000
#: Rows of ``tissue_positions.parquet`` decoded per batch.
_POSITION_BATCH = 262_144
#: Barcodes hashed per step of the barcode join (bounds its temporaries).
_HASH_STEP = 1_000_000


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


@contextmanager
def _positions_errors(path: Path) -> Iterator[None]:
    """An Arrow, I/O or value error while streaming a positions table becomes one
    :class:`ReaderError` that names the file and the fix (reader errors pass through)."""
    try:
        yield
    except ReaderError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ReaderError(
            path, f"cannot be parsed as a positions table ({exc})", "re-copy it from Space Ranger's outs/spatial/"
        ) from exc


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
    with _positions_errors(path):
        pf = _open_positions_parquet(path)
        n = pf.metadata.num_rows
        cols: dict[str, NDArray[Any] | None] = dict.fromkeys(_POS_COLUMNS)
        start = 0
        for batch in pf.iter_batches(batch_size=_POSITION_BATCH, columns=_POS_COLUMNS):
            m = batch.num_rows
            if start + m > n:
                raise DataError(f"more rows than the {n} of its metadata")
            for c in _POS_COLUMNS:
                if c == "barcode":
                    v = _arrow_bytes(batch.column(c))
                else:
                    v = batch.column(c).to_numpy(zero_copy_only=False)
                    v = v > 0 if c == "in_tissue" else v
                cols[c] = _fill(cols[c], n, start, v)
            start += m
        if start != n:
            raise DataError(f"{start} rows where its metadata says {n}")
        pa.default_memory_pool().release_unused()  # the decoded batches are gone: give their pages back

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
                raise ReaderError(path, f"the matrix is corrupt or inconsistent ({exc})", H5_FIX) from exc
        if n_barcodes != n_bc or len(names) != n_feat:
            raise ReaderError(
                path,
                f"shape says {n_feat} features x {n_bc} barcodes but it lists {len(names)} features and {n_barcodes} barcodes",
                H5_FIX,
            )
        # indptr is checked here at its ends; that it never decreases is checked per chunk.
        if n_ip != n_bc + 1 or ends[0] != 0 or ends[1] != n_data or n_ind != n_data:
            raise ReaderError(
                path,
                f"the matrix is corrupt or inconsistent (indptr of {n_ip} entries for {n_bc} barcodes, "
                f"{n_data} values and {n_ind} indices)",
                H5_FIX,
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
            raise ReaderError(self.path, f"the matrix is corrupt or inconsistent ({exc})", H5_FIX) from exc

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
                        raise DataError(f"indptr decreases (or is cut short) within barcodes {a}..{b}")
                    lo, hi = int(ip[0]), int(ip[-1])
                    data = data_ds[lo:hi] if hi > lo else np.empty(0, dtype=self.dtype)
                    ind = ind_ds.astype(ind_dtype)[lo:hi] if hi > lo else np.empty(0, dtype=ind_dtype)
                    if ind.size and (int(ind.min()) < 0 or int(ind.max()) >= self.n_features):
                        raise DataError(f"feature indices of barcodes {a}..{b} run outside 0..{self.n_features - 1}")
                    self._count(ind)
                    # The CSC columns of these barcodes are the CSR rows of barcodes x features.
                    yield a, sp.csr_matrix((data, ind, ip - lo), shape=(b - a, self.n_features))
        except (OSError, ValueError, KeyError) as exc:
            raise ReaderError(self.path, f"the matrix is corrupt or inconsistent ({exc})", H5_FIX) from exc


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
            raise StateError("chunks() of a MEX matrix can be read once")
        self.counts = None
        for a in range(0, self.n_bins, size):
            part = sp.csr_matrix(x[a : a + size])
            self._count(part.indices)
            yield a, part


def _open_matrix(path: Path) -> _BinMatrix:
    return _MexBinMatrix(path) if path.is_dir() else _H5BinMatrix(path)


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
    with _positions_errors(path):
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
    if template is None:
        return None
    return _PositionGrid(template, row0, col0, n_cols, state, [np.concatenate(p) for p in fit_parts])
