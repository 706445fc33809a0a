"""The TileDB-SOMA part of a catalog: obs (one row per pair), var (gene union), X/counts.

Rows are appended under the catalog lock with explicitly allocated ``soma_joinid``s.
Visibility is decided by the manifests, not by SOMA: a reader only ever asks for the
rows of committed ingests (obs filtered by ``ingest_id``), so rows of an unfinished
or crashed ingest are never seen.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from hestkit.fixes import REPAIR

__all__ = [
    "MEASUREMENT",
    "OBS_SCHEMA",
    "X_BY_GENE_LAYER",
    "X_LAYER",
    "append_rows",
    "consolidate",
    "create_experiment",
    "obs_row_count",
    "read_X",
    "read_obs",
    "read_obs_ranges",
    "read_var",
]

MEASUREMENT = "RNA"
X_LAYER = "counts"
#: The same counts stored gene-major (TileDB column-major tile and cell order, one gene
#: per space tile, small data tiles), so that reading a few genes over many spots touches
#: only those genes' tiles instead of every non-zero of the rows (``X/counts`` is
#: row-major: right for reading whole rows, a pair's expression). Catalogs created
#: before it have only ``counts``; readers then use that.
X_BY_GENE_LAYER = "counts_by_gene"
BY_GENE_PLATFORM_CONFIG: dict[str, Any] = {
    "tiledb": {
        "create": {
            "capacity": 4096,
            "tile_order": "col-major",
            "cell_order": "col-major",
            "dims": {"soma_dim_0": {"tile": 2048}, "soma_dim_1": {"tile": 1}},
        }
    }
}
#: :func:`read_X` reads :data:`X_BY_GENE_LAYER` when the genes asked for are at most this
#: fraction of var (and the layer exists).
BY_GENE_MAX_FRACTION = 1 / 8

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
        ("tissue_fraction", pa.float32()),
    ]
)
#: obs columns added after catalog 1.0: absent from the obs array of older catalogs;
#: readers return them as this fill value, writers skip them there.
OPTIONAL_OBS_COLUMNS: dict[str, float] = {"tissue_fraction": float("nan")}


def _missing_optional(obs_array: Any) -> list[str]:
    """Optional obs columns the (open) obs array of this catalog lacks."""
    names = set(obs_array.schema.names)
    return [c for c in OPTIONAL_OBS_COLUMNS if c not in names]


def _fill_optional(tbl: pa.Table, missing: Sequence[str]) -> pa.Table:
    for c in missing:
        if c not in tbl.column_names:
            f = OBS_SCHEMA.field(c)
            tbl = tbl.append_column(f, pa.array(np.full(len(tbl), OPTIONAL_OBS_COLUMNS[c]), f.type))
    return tbl


VAR_SCHEMA = pa.schema([("var_id", pa.large_string()), ("gene_id", pa.large_string())])


def _soma():  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tiledbsoma

    return tiledbsoma


def _join(base: str, *parts: str) -> str:
    from ._store import join

    return join(base, *parts)


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
        x.add_new_sparse_ndarray(X_BY_GENE_LAYER, type=pa.float32(), shape=(1, 1), platform_config=BY_GENE_PLATFORM_CONFIG)
    finally:
        exp.close()


def obs_row_count(uri: str | Path) -> int:
    """Obs rows written so far, committed or not (committed ones are those of the manifests)."""
    soma = _soma()
    u, ctx = _at(uri, "obs")
    with soma.open(u, "r", context=ctx) as o:
        return _count(o)


def _count(df) -> int:  # type: ignore[no-untyped-def]
    """Rows written: obs rows are written one whole commit attempt per write, with the
    consecutive joinids allocated to it, so the rows are exactly joinids 0 .. the non-empty
    domain's end (read from the fragment list at open, where ``count`` reads every
    fragment's metadata: ~0.2 ms a fragment, and a catalog gains one per commit)."""
    ned = df.non_empty_domain()
    if not ned or ned[0] is None:
        return 0
    hi = int(ned[0][1])
    return int(df.count) if hi == 0 else hi + 1  # an empty array reports (0, 0) too


def append_rows(
    uri: str | Path,
    obs: pd.DataFrame,
    counts: sp.csr_matrix,
    genes: Sequence[str],
    gene_ids: Sequence[str],
    *,
    rollback_on_error: bool = True,
) -> tuple[int, dict[str, int]]:
    """Append ``obs`` rows (columns of ``OBS_SCHEMA``) with their ``counts`` (rows x genes).

    The caller holds the catalog lock. Returns the first allocated ``soma_joinid`` (rows
    get consecutive ids) and the var joinid of every gene. When a step fails (a full disk
    while a domain grows, say) the arrays are rolled back to their state before the call
    (:func:`rollback`), unless ``rollback_on_error`` is False (the caller snapshots and
    rolls back itself, e.g. over a longer commit).
    """
    if not rollback_on_error:
        return _append_rows(uri, obs, counts, genes, gene_ids)
    arrays = array_uris(uri)
    before = snapshot(arrays)
    try:
        return _append_rows(uri, obs, counts, genes, gene_ids)
    except BaseException as exc:
        try:
            rollback(arrays, before)
        except Exception as undo:  # noqa: BLE001 - the failure to report is the original one
            exc.add_note(f"rolling back the SOMA arrays failed too ({undo}); run a catalog check with {REPAIR}")
        raise


def _append_rows(
    uri: str | Path, obs: pd.DataFrame, counts: sp.csr_matrix, genes: Sequence[str], gene_ids: Sequence[str]
) -> tuple[int, dict[str, int]]:
    from ._faults import fault_point

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
    # 1. grow the domains when they are too small (a schema change: its own open/close).
    # Each resize is a new TileDB schema version that every later open of the array
    # loads, so domains grow geometrically: O(log n) versions, not one per commit.
    with soma.open(exp_uri, "w", context=ctx) as exp:
        rna = exp.ms[MEASUREMENT]
        if new and _domain_size(rna.var) < n_var:
            rna.var.tiledbsoma_resize_soma_joinid_shape(_grown(_domain_size(rna.var), n_var))
            fault_point("schema:var")
        if n and _domain_size(exp.obs) < start + n:
            exp.obs.tiledbsoma_resize_soma_joinid_shape(_grown(_domain_size(exp.obs), start + n))
            fault_point("schema:obs")
        for layer in _layers(rna.X):
            X = rna.X[layer]
            shape = tuple(int(x) for x in X.shape)
            if shape[0] < start + n or shape[1] < n_var:
                X.resize((_grown(shape[0], start + n), _grown(shape[1], n_var)))
                fault_point(f"schema:X/{layer}")
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
            fault_point("rows:var")
        if n:
            cols: dict[str, object] = {"soma_joinid": np.arange(start, start + n, dtype=np.int64)}
            skip = set(_missing_optional(exp.obs))  # an older catalog: its obs has no such column
            for c in sorted(skip):
                if c in obs.columns and not pd.isna(obs[c]).all():
                    warnings.warn(
                        f"{uri}: obs of this catalog predates the {c!r} column; the values of this ingest are not "
                        "stored (read back as NaN); re-ingest into a new catalog to keep them",
                        stacklevel=2,
                    )
            fields = [f for f in OBS_SCHEMA if f.name not in skip]
            for f in fields:
                if f.name in OPTIONAL_OBS_COLUMNS and f.name not in obs.columns:
                    cols[f.name] = np.full(n, OPTIONAL_OBS_COLUMNS[f.name])  # a caller without it
                else:
                    cols[f.name] = obs[f.name].to_numpy()
            exp.obs.write(pa.Table.from_pydict(cols, schema=pa.schema([("soma_joinid", pa.int64()), *fields])))
            fault_point("rows:obs")
        coo = counts.tocoo()
        if coo.nnz:
            col_map = np.array([gene_map[g] for g in genes], dtype=np.int64)
            cells = pa.Table.from_pydict(
                {
                    "soma_dim_0": coo.row.astype(np.int64) + start,
                    "soma_dim_1": col_map[coo.col],
                    "soma_data": coo.data.astype(np.float32),
                }
            )
            for layer in _layers(rna.X):
                rna.X[layer].write(cells)
                fault_point(f"rows:X/{layer}")
    return start, gene_map


#: The folders of a TileDB array that a write or a schema change adds entries to.
_ARRAY_DIRS = ("__commits", "__fragment_meta", "__fragments", "__meta", "__schema")


def array_uris(uri: str | Path) -> list[str]:
    """The URIs of the experiment's SOMA arrays that commits write, in the order a
    rollback undoes them (X layers first, obs last: obs's row count allocates joinids,
    so while any X cell of a failed attempt remains, its obs rows keep their ids)."""
    from ._store import Layout

    exp_uri = str(uri).rstrip("/")
    names = Layout(exp_uri).names_in(_join(exp_uri, "ms", MEASUREMENT, "X"))  # no TileDB open
    layers = [X_LAYER, X_BY_GENE_LAYER] if X_BY_GENE_LAYER in names else [X_LAYER]
    return [
        *(_join(exp_uri, "ms", MEASUREMENT, "X", layer) for layer in layers),
        _join(exp_uri, "ms", MEASUREMENT, "var"),
        _join(exp_uri, "obs"),
    ]


def _names(layout: Any, dir_uri: str) -> set[str]:
    return set(layout.names_in(dir_uri))


def snapshot(arrays: Sequence[str]) -> dict[str, set[str]]:
    """The entries of each array's schema, commit, fragment and metadata folders (taken
    under the writers' lock before a commit writes; :func:`rollback` deletes the rest)."""
    from ._store import Layout

    out: dict[str, set[str]] = {}
    for a in arrays:
        layout = Layout(a)
        for d in _ARRAY_DIRS:
            out[_join(a, d)] = _names(layout, _join(a, d))
    return out


def rollback(arrays: Sequence[str], before: Mapping[str, set[str]]) -> list[str]:
    """Delete every entry a failed commit added to ``arrays`` since ``before`` (schema
    versions of grown domains, half-written ones included, fragments, commit markers),
    so the arrays are exactly as before the commit. The caller holds the writers' lock
    (no one else writes the arrays meanwhile). Per array, commit markers go first (a
    fragment stops being visible before its data goes) and the schema last. Returns the
    URIs deleted."""
    from ._store import Layout

    removed: list[str] = []
    for a in arrays:
        layout = Layout(a)
        for d in _ARRAY_DIRS:
            du = _join(a, d)
            if du not in before:
                continue
            for name in sorted(_names(layout, du) - before[du]):
                u = _join(du, name)
                layout.remove_tree(u)
                layout.remove_file(u)
                removed.append(u)
    return removed


def _domain_size(df: Any) -> int:
    """Rows a SOMA dataframe's current ``soma_joinid`` domain holds."""
    lo, hi = df.domain[0]
    return int(hi) - int(lo) + 1


def _grown(current: int, need: int) -> int:
    """A new domain size holding ``need``: at least 1.5x the current one."""
    return current if current >= need else max(need, current + current // 2, 1024)


def _layers(x: Any) -> list[str]:
    """The X layers a commit writes: ``counts`` and, where the catalog has it, the
    gene-major copy."""
    return [X_LAYER, X_BY_GENE_LAYER] if X_BY_GENE_LAYER in x else [X_LAYER]


#: TileDB settings for :func:`consolidate`: smaller per-attribute merge buffers than
#: TileDB's default, which held ~2x the peak memory (`bench/bench_compact_memory.py`).
CONSOLIDATION_CONFIG: dict[str, str] = {"sm.consolidation.buffer_size": str(8 * 2**20)}


def consolidate(uri: str | Path, progress: Callable[[str, int, int], None] | None = None) -> list[str]:
    """Merge the fragments of every SOMA array of the experiment (obs, var, each X layer)
    into one, then delete the merged ones (TileDB consolidation + vacuum); returns the
    arrays done. Each commit adds one fragment per array, and reads pay a cost per
    fragment (a HEST-1k-sized catalog ingested sample by sample holds ~1,229).

    The caller holds the writers' lock. Readers that opened an array before its vacuum
    and are still reading it may fail (their fragments are gone); a new read sees the
    merged fragment. The cell values and joinids do not change."""
    soma = _soma()
    exp_uri, ctx = _at(uri)
    with soma.open(exp_uri, "r", context=ctx) as exp:
        layers = _layers(exp.ms[MEASUREMENT].X)
    ctx = ctx.replace(tiledb_config=CONSOLIDATION_CONFIG)
    arrays = [("obs",), ("ms", MEASUREMENT, "var"), *(("ms", MEASUREMENT, "X", layer) for layer in layers)]
    done = []
    for k, parts in enumerate(arrays):
        u = _at(uri, *parts)[0]
        with soma.open(u, "w", context=ctx) as arr:
            merge = getattr(getattr(arr, "_handle", None), "consolidate_and_vacuum", None)
            if merge is None:
                from .errors import CatalogError

                raise CatalogError(
                    f"{u}: this tiledbsoma ({soma.__version__}) has no fragment consolidation; "
                    "upgrade tiledbsoma (pip install -U tiledbsoma) to compact the catalog"
                )
            merge(["fragments"])
            merge(["fragment_meta", "commits"])
        done.append("/".join(parts))
        if progress is not None:
            progress("compact SOMA arrays", k + 1, len(arrays))
    return done


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
        tbl = _fill_optional(obs.read(value_filter=filt).concat(), _missing_optional(obs))
    return _obs_frame(_sorted_by_joinid(tbl))


def _empty_obs() -> pd.DataFrame:
    return _obs_frame(pa.schema([("soma_joinid", pa.int64()), *OBS_SCHEMA]).empty_table())


#: obs columns that are one value per committed ingest (the writer fills them so);
#: :func:`read_obs_ranges` reads them once per sample, not once per row.
PER_SAMPLE_COLUMNS = ("sample_id", "ingest_id", "organ", "technology", "species", "patient", "pixel_size_um", "spot_size_um")
#: obs columns that vary per row.
PER_ROW_COLUMNS = (
    "soma_joinid",
    "obs_id",
    "barcode",
    "in_tissue",
    "array_row",
    "array_col",
    "x_px",
    "y_px",
    "x_um",
    "y_um",
    "patch_index",
    "tissue_fraction",
)


def read_obs_ranges(
    uri: str | Path, ranges: Sequence[tuple[int, int, str]], constants: Sequence[Mapping[str, Any]] | None = None
) -> pd.DataFrame:
    """Obs rows of committed samples, each given as its manifest's ``(soma_joinid_start,
    soma_joinid_stop, ingest_id)``: a coordinate read of exactly those rows (no scan of
    the other samples' rows), in joinid order.

    With ``constants`` (one mapping per range, holding the range's
    :data:`PER_SAMPLE_COLUMNS` values as its manifest records them), only the per-row
    columns (:data:`PER_ROW_COLUMNS`, about half of a row's bytes) are read: the
    per-sample ones are repeated from ``constants``, as the writer filled them. Every
    row must come back. Otherwise (and
    without ``constants``) whole rows are read and only those whose ``ingest_id`` is the
    range's own are kept, so only committed rows are ever returned."""
    soma = _soma()
    keyed = sorted(((int(a), int(b), str(i), k) for k, (a, b, i) in enumerate(ranges) if int(b) > int(a)), key=lambda r: r[0])
    if not keyed:
        return _empty_obs()
    starts = np.array([r[0] for r in keyed], dtype=np.int64)
    stops = np.array([r[1] for r in keyed], dtype=np.int64)
    lens = stops - starts
    coords: slice | np.ndarray
    if np.all(starts[1:] == stops[:-1]):
        coords = slice(int(starts[0]), int(stops[-1]) - 1)  # SOMA slices are inclusive
    else:
        coords = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens) + np.arange(int(lens.sum()))
    consts = _constants_table([constants[r[3]] for r in keyed], [r[2] for r in keyed]) if constants is not None else None
    u, ctx = _at(uri, "obs")
    with soma.open(u, "r", context=ctx) as obs:
        missing = _missing_optional(obs)
        if consts is not None:
            names = [c for c in PER_ROW_COLUMNS if c not in missing]
            tbl = _sorted_by_joinid(obs.read(coords=(coords,), column_names=names).concat())
            if len(tbl) == int(lens.sum()):
                return _with_constants(_fill_optional(tbl, missing), consts, lens)
        tbl = _fill_optional(_sorted_by_joinid(obs.read(coords=(coords,)).concat()), missing)
    j = tbl["soma_joinid"].to_numpy()
    k = np.searchsorted(starts, j, side="right") - 1
    expected = pa.DictionaryArray.from_arrays(pa.array(k, pa.int32()), pa.array([r[2] for r in keyed], pa.large_string()))
    same = pc.equal(tbl["ingest_id"], expected.cast(pa.large_string()))
    ok = (j < stops[k]) & np.asarray(same.to_numpy(zero_copy_only=False), dtype=bool)
    if not ok.all():
        tbl = tbl.filter(pa.array(ok))
    return _obs_frame(tbl)


def obs_text(v: Any) -> str:
    """How the writer stores an optional text attribute in obs: ``""`` for missing."""
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def _constants_table(consts: Sequence[Mapping[str, Any]], ingest_ids: Sequence[str]) -> pa.Table | None:
    """One row per range with its per-sample values, or None when one is missing."""
    cols: dict[str, list[Any]] = {c: [] for c in PER_SAMPLE_COLUMNS}
    for c, iid in zip(consts, ingest_ids, strict=True):
        if c.get("ingest_id") not in (None, iid) or not all(k in c for k in PER_SAMPLE_COLUMNS if k != "ingest_id"):
            return None
        for k in PER_SAMPLE_COLUMNS:
            v = iid if k == "ingest_id" else c[k]
            if k in ("pixel_size_um", "spot_size_um"):
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    return None
                cols[k].append(float(v))
            else:
                cols[k].append(obs_text(v))
    return pa.table({k: pa.array(v, OBS_SCHEMA.field(k).type) for k, v in cols.items()})


def _with_constants(tbl: pa.Table, consts: pa.Table, lens: np.ndarray) -> pd.DataFrame:
    """obs from ``tbl`` (the per-row columns; the rows of range ``k`` in order) with the
    per-sample columns repeated over each range's rows, in :data:`OBS_SCHEMA` order."""
    k = np.repeat(np.arange(len(lens), dtype=np.int32), lens)
    cols: dict[str, Any] = {}
    for c in PER_SAMPLE_COLUMNS:
        vals = consts[c].to_numpy(zero_copy_only=False)
        if c in _TEXT_PER_SAMPLE:
            codes, cats = pd.factorize(vals)
            cols[c] = pd.Categorical.from_codes(codes.astype(np.int32)[k], categories=pd.Index(cats, dtype=object))
        else:
            cols[c] = np.asarray(vals, dtype=np.float64)[k]
    for c in PER_ROW_COLUMNS:
        col = tbl[c]
        if pa.types.is_large_string(col.type) or pa.types.is_string(col.type):
            cols[c] = pd.arrays.ArrowStringArray(col)  # the chunks as they are: no copy
        else:
            cols[c] = col.to_numpy()
    names = ["soma_joinid", *(f.name for f in OBS_SCHEMA)]
    return pd.DataFrame({n: cols[n] for n in names}, copy=False)


def _sorted_by_joinid(tbl: pa.Table) -> pa.Table:
    j = tbl["soma_joinid"].to_numpy()
    if len(j) > 1 and not bool(np.all(j[1:] > j[:-1])):
        tbl = tbl.take(pa.array(np.argsort(j, kind="stable")))
    return tbl


#: Per-sample text columns, held as pandas categoricals (one string per sample, not per row).
_TEXT_PER_SAMPLE = tuple(c for c in PER_SAMPLE_COLUMNS if pa.types.is_large_string(OBS_SCHEMA.field(c).type))


def _obs_frame(tbl: pa.Table, categorical: bool = True) -> pd.DataFrame:
    """obs as pandas: per-row text columns as pyarrow-backed strings (no Python object per
    cell: 2 M rows convert in a fraction of a second), per-sample text columns
    (``sample_id``, ``organ``, ...) as categoricals."""
    df: pd.DataFrame = tbl.to_pandas(
        types_mapper={pa.large_string(): pd.StringDtype("pyarrow"), pa.string(): pd.StringDtype("pyarrow")}.get
    )
    if categorical:
        for c in _TEXT_PER_SAMPLE:
            if c in df.columns:
                vals = df[c].astype(object)
                df[c] = pd.Categorical(vals, categories=pd.Index(pd.unique(vals), dtype=object))
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
    """Counts for the given rows and genes, as CSR in the order given.

    A few genes (at most :data:`BY_GENE_MAX_FRACTION` of var) are read from the
    gene-major layer when the catalog has it (the cost follows those genes' non-zeros,
    not every non-zero of the rows); other reads, and catalogs without that layer, read
    the row-major ``counts``."""
    soma = _soma()
    obs_j = np.asarray(obs_joinids, dtype=np.int64)
    var_j = np.asarray(var_joinids, dtype=np.int64)
    out_shape = (len(obs_j), len(var_j))
    if not len(obs_j) or not len(var_j):
        return sp.csr_matrix(out_shape, dtype=np.float32)
    obs_run = _is_run(obs_j)
    obs_u = obs_j if obs_run or _is_increasing(obs_j) else np.unique(obs_j)
    var_u = var_j if _is_increasing(var_j) else np.unique(var_j)
    x_uri, ctx = _at(uri, "ms", MEASUREMENT, "X")
    n_var = _by_gene_layer(uri)
    layer = X_BY_GENE_LAYER if n_var and len(var_u) <= n_var * BY_GENE_MAX_FRACTION else X_LAYER
    with soma.open(_join(x_uri, layer), "r", context=ctx) as X:
        tbl = X.read(coords=(_as_coords(obs_u), _as_coords(var_u))).tables().concat()
    small = max(out_shape) < 2**31 and tbl.num_rows < 2**31  # int32 indices: half the bytes to move
    idx = np.dtype(np.int32) if small else np.dtype(np.int64)
    ri = _positions(obs_j, tbl["soma_dim_0"].to_numpy(), obs_run, idx)
    ci = _positions(var_j, tbl["soma_dim_1"].to_numpy(), False, idx)
    d = tbl["soma_data"].to_numpy().astype(np.float32, copy=False)
    return sp.csr_matrix((d, (ri, ci)), shape=out_shape)


def _positions(wanted: np.ndarray, got: np.ndarray, run: bool, dtype: np.dtype) -> np.ndarray:
    """The position in ``wanted`` of each id of ``got`` (all of them are in ``wanted``;
    where an id repeats, its first position), as ``dtype``: an offset for a run, a lookup
    table when the ids span a modest range, else a binary search."""
    if run:
        return np.subtract(got, wanted[0], dtype=dtype, casting="unsafe")
    lo, hi = int(wanted.min()), int(wanted.max())
    if hi - lo < 8 * len(wanted) + 2**20:
        lut = np.empty(hi - lo + 1, dtype=dtype)
        lut[wanted[::-1] - lo] = np.arange(len(wanted) - 1, -1, -1)  # reversed: the first wins
        return lut.take(np.subtract(got, lo, dtype=dtype, casting="unsafe") if hi - lo < 2**31 else got - lo)
    sorter = np.argsort(wanted, kind="stable")
    return sorter[np.searchsorted(wanted, got, sorter=sorter)].astype(dtype, copy=False)


#: Per X collection URI: 0 without the gene-major layer, else the var size seen (layers
#: are made with their catalog and never removed; var only grows, so a stale size only
#: makes :func:`read_X` choose the gene-major layer a little less often).
_BY_GENE: dict[str, int] = {}


def _by_gene_layer(uri: str | Path) -> int:
    x_uri, ctx = _at(uri, "ms", MEASUREMENT, "X")
    hit = _BY_GENE.get(x_uri)
    if hit is None:
        soma = _soma()
        with soma.open(x_uri, "r", context=ctx) as x:
            has = X_BY_GENE_LAYER in x
        hit = 0
        if has:  # var's written rows (its domain is grown ahead of need)
            with soma.open(_at(uri, "ms", MEASUREMENT, "var")[0], "r", context=ctx) as var:
                ned = var.non_empty_domain()[0]
            hit = max(1, int(ned[1]) + 1 if ned else 1)
        _BY_GENE[x_uri] = hit
    return hit


def _is_increasing(a: np.ndarray) -> bool:
    return len(a) < 2 or bool(np.all(a[1:] > a[:-1]))


def _is_run(a: np.ndarray) -> bool:
    """``a`` is lo, lo + 1, ..., hi."""
    return bool(len(a)) and int(a[-1]) - int(a[0]) + 1 == len(a) and _is_increasing(a)
