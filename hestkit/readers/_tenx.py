"""10x Genomics feature-barcode matrices (HDF5 v3 and the MEX folder)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import scipy.sparse as sp

from ..errors import ReaderError

__all__ = ["H5_FIX", "Matrix", "make_unique", "open_10x_h5", "read_10x", "read_10x_h5", "read_10x_mex"]

H5_FIX = "re-copy the file from the Space Ranger outs/ folder, or point at the MEX folder instead"


@dataclass(frozen=True, eq=False)
class Matrix:
    """Counts as barcodes x features (CSR), with the feature names and ids."""

    counts: sp.csr_matrix
    barcodes: list[str]
    names: list[str]
    ids: list[str]


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def make_unique(names: list[str]) -> list[str]:
    """anndata's ``var_names_make_unique`` rule: later duplicates get ``-1``, ``-2``..."""
    seen: dict[str, int] = {}
    taken = set(names)
    out = []
    for n in names:
        if n not in seen:
            seen[n] = 0
            out.append(n)
            continue
        k = seen[n]
        while True:
            k += 1
            cand = f"{n}-{k}"
            if cand not in taken:
                break
        seen[n] = k
        taken.add(cand)
        out.append(cand)
    return out


def _gene_expression_only(m: Matrix, types: list[str] | None) -> Matrix:
    if types is None:
        return m
    keep = np.array([t == "Gene Expression" for t in types])
    if keep.all() or not keep.any():
        return m
    idx = np.flatnonzero(keep)
    return Matrix(
        m.counts[:, idx].tocsr(),
        m.barcodes,
        [m.names[i] for i in idx],
        [m.ids[i] for i in idx],
    )


@contextmanager
def open_10x_h5(path: Path) -> Iterator[Any]:
    """The ``matrix`` group of a 10x HDF5 v3 file, checked for its datasets; the file is
    closed on exit. Unreadable or foreign files raise :class:`ReaderError`."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ReaderError(path, f"is not a readable HDF5 file ({exc})", H5_FIX) from exc
    with f:
        if "matrix" not in f:
            found = ", ".join(f.keys()) or "nothing"
            raise ReaderError(
                path,
                f"has no 'matrix' group (found: {found}); Space Ranger < 3 v2 files are not supported",
                "use a 10x HDF5 v3 file (Space Ranger >= 1.0) or the MEX folder",
            )
        g = f["matrix"]
        missing = [k for k in ("barcodes", "data", "indices", "indptr", "shape", "features") if k not in g]
        if missing:
            raise ReaderError(path, f"the 'matrix' group lacks {', '.join(missing)}", H5_FIX)
        yield g


def read_10x_h5(path: Path) -> Matrix:
    """Read a 10x HDF5 v3 ``filtered_feature_bc_matrix.h5`` (CSC features x barcodes)."""
    fix = H5_FIX
    with open_10x_h5(path) as g:
        try:
            n_feat, n_bc = (int(v) for v in g["shape"][:])
            data = g["data"][:]
            indices = g["indices"][:]
            indptr = g["indptr"][:]
            csc = sp.csc_matrix((data, indices, indptr), shape=(n_feat, n_bc))
            feats = g["features"]
            names = _decode(feats["name"][:])
            ids = _decode(feats["id"][:]) if "id" in feats else list(names)
            types = _decode(feats["feature_type"][:]) if "feature_type" in feats else None
            barcodes = _decode(g["barcodes"][:])
        except (OSError, ValueError, KeyError) as exc:
            raise ReaderError(path, f"the matrix is corrupt or inconsistent ({exc})", fix) from exc
    if len(barcodes) != n_bc or len(names) != n_feat:
        raise ReaderError(
            path,
            f"shape says {n_feat} features x {n_bc} barcodes but it lists {len(names)} features and {len(barcodes)} barcodes",
            fix,
        )
    m = Matrix(csc.T.tocsr(), barcodes, names, ids)
    return _gene_expression_only(m, types)


def _read_lines(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:  # type: ignore[operator]
        return [line.rstrip("\n").split("\t") for line in fh if line.strip()]


def _first(folder: Path, *names: str) -> Path | None:
    for n in names:
        for cand in (folder / n, folder / f"{n}.gz"):
            if cand.exists():
                return cand
    return None


def read_10x_mex(folder: Path) -> Matrix:
    """Read a MEX folder: ``matrix.mtx[.gz]``, ``barcodes.tsv[.gz]``, ``features.tsv[.gz]``
    (or ``genes.tsv`` from Cell Ranger 2)."""
    mtx = _first(folder, "matrix.mtx")
    bcs = _first(folder, "barcodes.tsv")
    feats = _first(folder, "features.tsv", "genes.tsv")
    if mtx is None or bcs is None or feats is None:
        missing = [n for n, p in (("matrix.mtx.gz", mtx), ("barcodes.tsv.gz", bcs), ("features.tsv.gz", feats)) if p is None]
        raise ReaderError(
            folder, f"MEX folder lacks {', '.join(missing)}", "re-copy the filtered_feature_bc_matrix/ folder from Space Ranger"
        )
    try:
        m = scipy.io.mmread(mtx)
    except (ValueError, OSError, EOFError) as exc:
        raise ReaderError(mtx, f"is not a readable MatrixMarket file ({exc})", "re-copy it from Space Ranger's outs/") from exc
    barcodes = [r[0] for r in _read_lines(bcs)]
    frows = _read_lines(feats)
    ids = [r[0] for r in frows]
    names = [r[1] if len(r) > 1 else r[0] for r in frows]
    types = [r[2] for r in frows] if frows and all(len(r) > 2 for r in frows) else None
    csc = sp.csc_matrix(m)
    if csc.shape != (len(names), len(barcodes)):
        raise ReaderError(
            mtx,
            f"matrix is {csc.shape[0]} x {csc.shape[1]} but there are {len(names)} features and {len(barcodes)} barcodes",
            "the three MEX files come from different runs; re-copy them together",
        )
    return _gene_expression_only(Matrix(csc.T.tocsr(), barcodes, names, ids), types)


def read_10x(path: Path) -> Matrix:
    """An ``.h5`` file or a MEX folder."""
    return read_10x_mex(path) if path.is_dir() else read_10x_h5(path)
