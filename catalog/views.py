"""Lazy views over the pairs of a catalog."""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hestkit.patches import PairSpec

from . import _soma
from ._genes import MeasuredGenes, UnmeasuredGeneWarning, warn_unmeasured
from ._store import join

if TYPE_CHECKING:
    from .torch import PairDataset

__all__ = ["PairView", "object_strings"]

_BLOCK_ROWS = 512


def object_strings(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` with its pyarrow-backed text columns as plain object (str) columns,
    for writers such as anndata that do not take arrow strings."""
    out = df.copy()
    for c in out.columns:
        if isinstance(out[c].dtype, pd.StringDtype):
            out[c] = out[c].astype(object)
    return out


class PairView:
    """A selection of spot-patch pairs. Holds obs and ids only; pixels and counts are read
    when asked: ``view[i]``, :meth:`patch`, :meth:`expression`, :meth:`to_torch`.

    ``obs`` has one row per pair (``sample_id``, ``barcode``, ``x_px``/``y_px`` = spot
    centre in level-0 px of that sample's WSI, ``patch_index``, ...). Views pickle
    cheaply (paths or ``s3://`` URIs, never open handles or credentials), so DataLoader
    workers can share one: each process opens its own handles on first use.

    **Unmeasured genes.** Samples of different panels measure different genes. A gene a
    sample did not measure reads as 0 in :meth:`expression` and ``view[i]`` (so that the
    matrix stays sparse), which is NOT a measured zero: :attr:`measured` (samples x genes)
    and :meth:`measured_mask` (pairs x genes) say which values are measurements, and
    ``expression(unmeasured="nan")`` gives a dense array with NaN for the others.
    :meth:`expression` warns (:class:`catalog.UnmeasuredGeneWarning`) when the selection
    holds such zeros.
    """

    def __init__(
        self,
        root: str | Path,
        obs: pd.DataFrame,
        genes: list[str],
        var_joinids: np.ndarray,
        patch_arrays: dict[str, str],
        spec: PairSpec,
        measured: MeasuredGenes | None = None,
    ) -> None:
        #: The catalog's location (local path or ``s3://`` URI).
        self.root = str(root)
        self.obs = obs
        self.genes = list(genes)
        self._var_j = np.asarray(var_joinids, dtype=np.int64)
        self._patch_arrays = dict(patch_arrays)
        self.spec = spec
        self._measured = measured or MeasuredGenes()
        self._mask: np.ndarray | None = None  # samples x genes, computed on first use
        self._obs_j = obs["soma_joinid"].to_numpy(dtype=np.int64) if len(obs) else np.zeros(0, np.int64)
        codes, names = pd.factorize(obs["sample_id"]) if len(obs) else (np.zeros(0, np.int64), pd.Index([]))
        self._sample_codes = np.asarray(codes, dtype=np.int64)
        self._sample_names = [str(x) for x in pd.Index(names)]
        self._pidx = obs["patch_index"].to_numpy(dtype=np.int64) if len(obs) else np.zeros(0, np.int64)
        self._arrays: dict[str, Any] = {}
        self._pid = os.getpid()
        self._cache: OrderedDict[int, sp.csr_matrix] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        state["_cache"] = OrderedDict()
        state["_mask"] = None
        return state

    def __len__(self) -> int:
        return len(self.obs)

    def __repr__(self) -> str:
        ns = self.obs["sample_id"].nunique() if len(self.obs) else 0
        return f"PairView({len(self)} pairs from {ns} samples, {len(self.genes)} genes)"

    # -- selection -------------------------------------------------------------
    def subset(self, rows: np.ndarray | slice | list[int]) -> PairView:
        """A view of some rows (positions), keeping the genes."""
        obs = self.obs.iloc[rows].reset_index(drop=True)
        for c in obs.columns:
            if isinstance(obs[c].dtype, pd.CategoricalDtype):
                obs[c] = obs[c].cat.remove_unused_categories()
        keep = set(obs["sample_id"].unique())
        arrays = {k: v for k, v in self._patch_arrays.items() if k in keep}
        return PairView(self.root, obs, self.genes, self._var_j, arrays, self.spec, self._measured)

    def with_genes(self, genes: list[str]) -> PairView:
        pos = {g: i for i, g in enumerate(self.genes)}
        missing = [g for g in genes if g not in pos]
        if missing:
            from .errors import QueryError

            raise QueryError(f"gene(s) not in this view: {', '.join(missing[:20])}")
        idx = [pos[g] for g in genes]
        return PairView(self.root, self.obs, list(genes), self._var_j[idx], self._patch_arrays, self.spec, self._measured)

    # -- reading ---------------------------------------------------------------
    def expression(self, genes: list[str] | None = None, unmeasured: str = "zero") -> Any:
        """Raw counts, n_pairs x n_genes, columns in the order of ``genes`` (default:
        :attr:`genes`).

        ``unmeasured="zero"`` (default): a float32 CSR matrix where genes a pair's sample
        did not measure are 0 (warns when there are such cells; :meth:`measured_mask`
        tells them apart). ``unmeasured="nan"``: a dense float32 array with NaN there."""
        if unmeasured not in ("zero", "nan"):
            from .errors import QueryError

            raise QueryError(f"unmeasured must be 'zero' or 'nan', got {unmeasured!r}")
        view = self if genes is None else self.with_genes(genes)
        X = _soma.read_X(join(self.root, "soma"), view._obs_j, view._var_j)
        lacking = view.lacking()
        if unmeasured == "nan":
            dense = np.asarray(X.toarray(), dtype=np.float32)
            if int(lacking.sum()):
                dense[~view.measured_mask()] = np.nan
            return dense
        warn_unmeasured(lacking, len(view._sample_names))
        return X

    @property
    def sample_ids(self) -> list[str]:
        """The view's samples, in the order of :attr:`measured`'s rows."""
        return list(self._sample_names)

    @property
    def measured(self) -> pd.DataFrame:
        """(n_samples x n_genes) bool: which of :attr:`genes` each sample measured (rows
        :attr:`sample_ids`). A gene a sample did not measure reads as 0 in
        :meth:`expression`; this tells such zeros from measured ones."""
        m = self._sample_mask()
        return pd.DataFrame(m, index=pd.Index(self._sample_names, name="sample_id"), columns=pd.Index(self.genes, name="gene"))

    def measured_mask(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """(n_pairs x n_genes) bool (or the given rows only): whether the pair's sample
        measured the gene."""
        m = self._sample_mask()
        codes = self._sample_codes if rows is None else self._sample_codes[rows]
        return m[codes] if len(m) else np.ones((len(codes), len(self.genes)), dtype=bool)

    def lacking(self) -> pd.Series:
        """Per gene of :attr:`genes`, how many of the view's samples did not measure it."""
        m = self._sample_mask()
        return pd.Series((~m).sum(axis=0), index=pd.Index(list(self.genes), name="gene"), name="n_samples_lacking")

    def _sample_mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = self._measured.sample_mask(self._sample_names, self._var_j)
        return self._mask

    def _array(self, sample_id: str) -> Any:
        import catalog._jpeg  # noqa: F401 - registers the codec

        from ._shards import PatchReader

        if os.getpid() != self._pid:
            self._arrays = {}
            self._cache = OrderedDict()
            self._pid = os.getpid()
        arr = self._arrays.get(sample_id)
        if arr is None:
            arr = PatchReader(self._patch_arrays[sample_id])
            self._arrays[sample_id] = arr
        return arr

    def patch(self, i: int) -> np.ndarray:
        """The (size, size, 3) uint8 patch of pair ``i``, centred on its spot."""
        i = self._index(i)
        return np.asarray(self._array(self._sample_names[self._sample_codes[i]])[int(self._pidx[i])])

    def _row_expression(self, i: int) -> np.ndarray:
        b = i // _BLOCK_ROWS
        blk = self._cache.get(b)
        if blk is None:
            lo, hi = b * _BLOCK_ROWS, min((b + 1) * _BLOCK_ROWS, len(self))
            blk = _soma.read_X(join(self.root, "soma"), self._obs_j[lo:hi], self._var_j)
            self._cache[b] = blk
            while len(self._cache) > 8:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(b)
        return np.asarray(blk[i - b * _BLOCK_ROWS].toarray()).ravel().astype(np.float32)

    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"pair index {i} out of range for a view of {n} pairs")
        return int(i % n)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(patch, expression)``: a (size, size, 3) uint8 patch and float32 raw counts over
        :attr:`genes`."""
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index pairs with an int, got {type(i).__name__}; use .subset() for many")
        i = self._index(int(i))
        return self.patch(i), self._row_expression(i)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in range(len(self)):
            yield self[i]

    def to_torch(self, **kwargs: Any) -> PairDataset:
        """A :class:`catalog.torch.PairDataset` over this view (see its arguments); needs
        the ``train`` extra (torch)."""
        from hestkit.extras import require

        require("PairView.to_torch", ("torch",))
        from .torch import PairDataset

        return PairDataset(self, **kwargs)

    def to_anndata(self) -> Any:
        """Expression with obs as an AnnData, in the scanpy / squidpy conventions of the
        AnnData export (:mod:`catalog._scanpy`): obs named ``{sample_id}_{barcode}`` (stable
        across re-ingests), ``obs['library_id']`` = sample id (squidpy's ``library_key``),
        ``obsm['spatial']`` = centres in level-0 px of each sample's WSI, ``var['gene_ids']``,
        and ``uns['spatial'][sample_id]`` (thumbnail as ``hires``, its scale factors) for
        every sample of the view."""
        import anndata as ad

        from . import _scanpy
        from .catalog import Catalog

        cat = Catalog(self.root)
        obs = object_strings(self.obs)
        obs.index = pd.Index((obs["sample_id"].astype(str) + "_" + obs["barcode"].astype(str)).to_numpy(), name=None)
        _scanpy.add_fullres_columns(obs)
        obs["library_id"] = _scanpy.library_ids(obs["sample_id"])
        measured = self.measured
        var = pd.DataFrame(
            {
                "gene_ids": _scanpy.gene_ids(cat, self.genes),
                "n_samples_measured": measured.sum(axis=0).to_numpy(dtype=np.int64),
            },
            index=pd.Index(self.genes, name=None),
        )
        with warnings.catch_warnings():  # recorded below instead: uns['hestkit']['measured']
            warnings.simplefilter("ignore", UnmeasuredGeneWarning)
            X = self.expression()
        a = ad.AnnData(X=X, obs=obs, var=var)
        a.obsm["spatial"] = obs[["x_px", "y_px"]].to_numpy(dtype=float)
        a.uns["spatial"] = {sid: _scanpy.spatial_library(cat, sid) for sid in self._sample_names}
        a.uns["hestkit"] = {
            "patch_size_px": self.spec.patch_size_px,
            "pixel_size_um": self.spec.pixel_size_um,
            "coordinates": "obsm['spatial'] = spot centre (x, y) in level-0 px of each sample's WSI",
            # genes a sample did not measure are 0 in X; these say which zeros are measurements
            "measured_samples": np.asarray(self._sample_names, dtype=object),
            "measured": measured.to_numpy(dtype=bool),
        }
        return a
