"""The TileDB-SOMA part of a catalog: obs (one row per pair), var (gene union), X/counts.

Rows are appended under the catalog lock with explicitly allocated ``soma_joinid``s.
Visibility is decided by the manifests, not by SOMA: a reader only ever asks for the
rows of committed ingests (obs filtered by ``ingest_id``), so rows of an unfinished
or crashed ingest are never seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

__all__ = [
    "MEASUREMENT",
    "OBS_SCHEMA",
    "X_LAYER",
    "append_rows",
    "create_experiment",
    "obs_row_count",
    "read_X",
    "read_obs",
    "read_obs_ranges",
    "read_var",
]

MEASUREMENT = "RNA"
X_LAYER = "counts"

OBS_SCHEMA = pa.schema(
    [
        ("obs_id", pa.large_string()),
        ("sample_id", pa.large_string()),
        ("ingest_id", pa.large_string()),
        ("barcode", pa.large_string()),
        ("organ", pa.large_string()),
        ("technology", pa.large_string()),
        ("species", pa.large_string()),
        ("patient", pa.large_string()),
        ("in_tissue", pa.int8()),
        ("array_row", pa.int32()),
        ("array_col", pa.int32()),
        ("x_px", pa.float64()),
        ("y_px", pa.float64()),
        ("x_um", pa.float64()),
        ("y_um", pa.float64()),
        ("pixel_size_um", pa.float64()),
        ("spot_size_um", pa.float64()),
        ("patch_index", pa.int64()),
    ]
)
VAR_SCHEMA = pa.schema([("var_id", pa.large_string()), ("gene_id", pa.large_string())])


def _soma():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tiledbsoma

    return tiledbsoma


def _at(uri: str | Path, *parts: str) -> tuple[str, Any]:
    """The URI of an element below the experiment and the TileDB context for it (S3
    settings from the environment, or None locally)."""
    from ._store import join, soma_context

    return join(str(uri), *parts), soma_context(uri)


def create_experiment(uri: str | Path) -> None:
    soma = _soma()
    u, ctx = _at(uri)
    exp = soma.Experiment.create(u, context=ctx)
    try:
        exp.add_new_dataframe("obs", schema=OBS_SCHEMA, index_column_names=["soma_joinid"], domain=[(0, 0)])
        ms = exp.add_new_collection("ms", soma.Collection)
        rna = ms.add_new_collection(MEASUREMENT, soma.Measurement)
        rna.add_new_dataframe("var", schema=VAR_SCHEMA, index_column_names=["soma_joinid"], domain=[(0, 0)])
        x = rna.add_new_collection("X", soma.Collection)
        x.add_new_sparse_ndarray(X_LAYER, type=pa.float32(), shape=(1, 1))
    finally:
        exp.close()


def obs_row_count(uri: str | Path) -> int:
    """Obs rows written so far, committed or not (committed ones are those of the manifests)."""
    soma = _soma()
    u, ctx = _at(uri, "obs")
    with soma.open(u, "r", context=ctx) as o:
        return _count(o)


def _count(df) -> int:  # type: ignore[no-untyped-def]
    return int(df.count)


def append_rows(
    uri: str | Path, obs: pd.DataFrame, counts: sp.csr_matrix, genes: Sequence[str], gene_ids: Sequence[str]
) -> tuple[int, dict[str, int]]:
    """Append ``obs`` rows (columns of ``OBS_SCHEMA``) with their ``counts`` (rows x genes).

    The caller holds the catalog lock. Returns the first allocated ``soma_joinid`` (rows
    get consecutive ids) and the var joinid of every gene.
    """
    soma = _soma()
    n = len(obs)
    exp_uri, ctx = _at(uri)
    with soma.open(_at(uri, "obs")[0], "r", context=ctx) as o:
        start = _count(o)
    with soma.open(_at(uri, "ms", MEASUREMENT, "var")[0], "r", context=ctx) as vr:
        var = vr.read(column_names=["soma_joinid", "var_id"]).concat().to_pandas()
    known = dict(zip(var["var_id"].astype(str), var["soma_joinid"].astype(np.int64), strict=True))
    n_var_old = len(known)
    new = [(g, gid) for g, gid in zip(genes, gene_ids, strict=True) if g not in known]
    for k, (g, _) in enumerate(new):
        known[g] = n_var_old + k
    n_var = n_var_old + len(new)
    gene_map = {g: int(known[g]) for g in genes}
    # 1. grow the domains (a schema change: its own open/close)
    with soma.open(exp_uri, "w", context=ctx) as exp:
        rna = exp.ms[MEASUREMENT]
        if new:
            rna.var.tiledbsoma_resize_soma_joinid_shape(n_var)
        if n:
            exp.obs.tiledbsoma_resize_soma_joinid_shape(start + n)
        X = rna.X[X_LAYER]
        shape = tuple(X.shape)
        new_shape = (max(shape[0], start + n), max(shape[1], n_var))
        if new_shape != shape:
            X.resize(new_shape)
    # 2. write the rows
    with soma.open(exp_uri, "w", context=ctx) as exp:
        rna = exp.ms[MEASUREMENT]
        if new:
            rna.var.write(
                pa.table(
                    {
                        "soma_joinid": np.arange(n_var_old, n_var, dtype=np.int64),
                        "var_id": pa.array([g for g, _ in new], type=pa.large_string()),
                        "gene_id": pa.array([str(gid) for _, gid in new], type=pa.large_string()),
                    }
                )
            )
        if n:
            cols: dict[str, object] = {"soma_joinid": np.arange(start, start + n, dtype=np.int64)}
            for f in OBS_SCHEMA:
                cols[f.name] = obs[f.name].to_numpy()
            exp.obs.write(pa.Table.from_pydict(cols, schema=pa.schema([("soma_joinid", pa.int64()), *OBS_SCHEMA])))
        coo = counts.tocoo()
        if coo.nnz:
            col_map = np.array([gene_map[g] for g in genes], dtype=np.int64)
            rna.X[X_LAYER].write(
                pa.Table.from_pydict(
                    {
                        "soma_dim_0": coo.row.astype(np.int64) + start,
                        "soma_dim_1": col_map[coo.col],
                        "soma_data": coo.data.astype(np.float32),
                    }
                )
            )
    return start, gene_map


def read_obs(uri: str | Path, ingest_ids: Sequence[str], value_filter: str | None = None) -> pd.DataFrame:
    """Obs rows of the given committed ingests (and an optional extra SOMA filter)."""
    soma = _soma()
    if not ingest_ids:
        return _empty_obs()
    quoted = ", ".join("'" + i.replace("'", "") + "'" for i in ingest_ids)
    filt = f"ingest_id in [{quoted}]"
    if value_filter:
        filt = f"({filt}) and ({value_filter})"
    u, ctx = _at(uri, "obs")
    with soma.open(u, "r", context=ctx) as obs:
        tbl = obs.read(value_filter=filt).concat()
    return _obs_frame(_sorted_by_joinid(tbl))


def _empty_obs() -> pd.DataFrame:
    return _obs_frame(pa.schema([("soma_joinid", pa.int64()), *OBS_SCHEMA]).empty_table())


def read_obs_ranges(uri: str | Path, ranges: Sequence[tuple[int, int, str]]) -> pd.DataFrame:
    """Obs rows of committed samples, each given as its manifest's ``(soma_joinid_start,
    soma_joinid_stop, ingest_id)``: a coordinate read of exactly those rows (no scan of
    the other samples' rows). Rows whose ``ingest_id`` is not the range's own (never in a
    consistent catalog) are dropped, so only committed rows are ever returned."""
    soma = _soma()
    rs = sorted((int(a), int(b), str(i)) for a, b, i in ranges if int(b) > int(a))
    if not rs:
        return _empty_obs()
    starts = np.array([a for a, _, _ in rs], dtype=np.int64)
    stops = np.array([b for _, b, _ in rs], dtype=np.int64)
    coords: slice | np.ndarray
    if np.all(starts[1:] == stops[:-1]):
        coords = slice(int(starts[0]), int(stops[-1]) - 1)  # SOMA slices are inclusive
    else:
        lens = stops - starts
        coords = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) + np.arange(int(lens.sum()))
    u, ctx = _at(uri, "obs")
    with soma.open(u, "r", context=ctx) as obs:
        tbl = obs.read(coords=(coords,)).concat()
    tbl = _sorted_by_joinid(tbl)
    j = tbl["soma_joinid"].to_numpy()
    k = np.searchsorted(starts, j, side="right") - 1
    expected = pa.DictionaryArray.from_arrays(pa.array(k, pa.int32()), pa.array([i for _, _, i in rs], pa.large_string()))
    same = pc.equal(tbl["ingest_id"], expected.cast(pa.large_string()))
    ok = (j < stops[k]) & np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)
    if not ok.all():
        tbl = tbl.filter(pa.array(ok))
    return _obs_frame(tbl)


def _sorted_by_joinid(tbl: pa.Table) -> pa.Table:
    j = tbl["soma_joinid"].to_numpy()
    if len(j) > 1 and not bool(np.all(j[1:] > j[:-1])):
        tbl = tbl.take(pa.array(np.argsort(j, kind="stable")))
    return tbl


def _obs_frame(tbl: pa.Table) -> pd.DataFrame:
    """obs as pandas; text columns as pyarrow-backed strings (no Python object per cell:
    the whole catalog's 2 M rows convert in a fraction of a second)."""
    df: pd.DataFrame = tbl.to_pandas(
        types_mapper={pa.large_string(): pd.StringDtype("pyarrow"), pa.string(): pd.StringDtype("pyarrow")}.get
    )
    return df.reset_index(drop=True)


def read_var(uri: str | Path) -> pd.DataFrame:
    soma = _soma()
    u, ctx = _at(uri, "ms", MEASUREMENT, "var")
    with soma.open(u, "r", context=ctx) as var:
        return var.read().concat().to_pandas()


def _as_coords(sorted_unique: np.ndarray) -> slice | np.ndarray:
    """A run of consecutive joinids as one (inclusive) SOMA slice, else the points."""
    lo, hi = int(sorted_unique[0]), int(sorted_unique[-1])
    return slice(lo, hi) if hi - lo + 1 == len(sorted_unique) else sorted_unique


def read_X(uri: str | Path, obs_joinids: np.ndarray, var_joinids: np.ndarray) -> sp.csr_matrix:
    """Counts for the given rows and genes, as CSR in the order given."""
    soma = _soma()
    obs_j = np.asarray(obs_joinids, dtype=np.int64)
    var_j = np.asarray(var_joinids, dtype=np.int64)
    out_shape = (len(obs_j), len(var_j))
    if not len(obs_j) or not len(var_j):
        return sp.csr_matrix(out_shape, dtype=np.float32)
    obs_run = _is_run(obs_j)
    obs_u = obs_j if obs_run or _is_increasing(obs_j) else np.unique(obs_j)
    var_u = var_j if _is_increasing(var_j) else np.unique(var_j)
    u, ctx = _at(uri, "ms", MEASUREMENT, "X", X_LAYER)
    with soma.open(u, "r", context=ctx) as X:
        tbl = X.read(coords=(_as_coords(obs_u), _as_coords(var_u))).tables().concat()
    r = tbl["soma_dim_0"].to_numpy()
    c = tbl["soma_dim_1"].to_numpy()
    d = tbl["soma_data"].to_numpy()
    if obs_run:  # rows are joinids lo..hi in order: the position is the offset
        ri = r - obs_j[0]
    else:
        o_sorter = np.argsort(obs_j, kind="stable")
        ri = o_sorter[np.searchsorted(obs_j, r, sorter=o_sorter)]
    v_sorter = np.argsort(var_j, kind="stable")
    ci = v_sorter[np.searchsorted(var_j, c, sorter=v_sorter)]
    return sp.csr_matrix((d.astype(np.float32), (ri, ci)), shape=out_shape)


def _is_increasing(a: np.ndarray) -> bool:
    return len(a) < 2 or bool(np.all(a[1:] > a[:-1]))


def _is_run(a: np.ndarray) -> bool:
    """``a`` is lo, lo + 1, ..., hi."""
    return bool(len(a)) and int(a[-1]) - int(a[0]) + 1 == len(a) and _is_increasing(a)
