"""Lazy 3D pairs: a sub-volume centred on each spot of the linked sections, and its counts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import NDArray

from hestkit.errors import DataError
from hestkit.volume import VolumePairSpec, extract_subvolume, extract_subvolumes
from hestkit.volume_readers import NgffVolume

from .views import PairView

if TYPE_CHECKING:
    from .torch import VolumePairDataset

__all__ = ["VolumePairView"]


class VolumePairView:
    """A selection of 3D pairs. Holds obs and ids only; voxels and counts are read when asked.

    ``obs`` has one row per pair: the 2D pair's columns (``sample_id``, ``barcode``,
    ``x_px``/``y_px`` = spot centre in level-0 px of the section's WSI, ...) plus
    ``volume_id`` and ``z_um``, ``y_um``, ``x_um`` = the spot CENTRE in the volume frame
    (micrometres from the outer corner of voxel (0, 0, 0)); the section technology's own
    frame moves to ``x_um_tech``/``y_um_tech``. Parts of a sub-volume outside its volume are
    0 (255 for ``he-stack`` volumes: glass). ``view[i]`` is ``(subvolume, expression)``:
    a ``(n_slices, size_px, size_px, C)`` uint8 sub-volume (:class:`VolumePairSpec`) and
    float32 raw counts over :attr:`genes`. Views pickle cheaply (paths, not handles).
    """

    def __init__(
        self,
        pairs: PairView,
        obs: pd.DataFrame,
        volumes: dict[str, tuple[str, tuple[float, float, float]]],
        spec: VolumePairSpec,
        fills: dict[str, int] | None = None,
    ) -> None:
        if len(obs) != len(pairs):
            raise DataError(f"obs has {len(obs)} rows, the 2D pairs {len(pairs)}")
        self.pairs = pairs
        self.obs = obs
        self.spec = spec
        self._volumes = dict(volumes)
        self._fills = dict(fills or {})
        self._handles: dict[str, NgffVolume] = {}
        self._pid = os.getpid()
        self._vid = obs["volume_id"].to_numpy() if len(obs) else np.zeros(0, object)
        self._centres = obs[["z_um", "y_um", "x_um"]].to_numpy(dtype=np.float64) if len(obs) else np.zeros((0, 3))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    @property
    def genes(self) -> list[str]:
        return self.pairs.genes

    @property
    def root(self) -> str:
        return self.pairs.root

    @property
    def channels(self) -> int:
        """Channels of the sub-volumes (all volumes of a view share it)."""
        vids = sorted(self._volumes)
        return self.volume(vids[0]).channels if vids else 0

    def __len__(self) -> int:
        return len(self.obs)

    def __repr__(self) -> str:
        nv = self.obs["volume_id"].nunique() if len(self.obs) else 0
        ns = self.obs["sample_id"].nunique() if len(self.obs) else 0
        s = self.spec
        return (
            f"VolumePairView({len(self)} pairs from {ns} sections of {nv} volumes, {len(self.genes)} genes, "
            f"{s.n_slices}x{s.size_px}x{s.size_px} over {s.depth_um:g}x{s.size_um:g}x{s.size_um:g} um)"
        )

    # -- selection ---------------------------------------------------------------------
    def subset(self, rows: NDArray[np.integer] | slice | list[int]) -> VolumePairView:
        """A view of some rows (positions), keeping the genes."""
        idx = np.arange(len(self))[rows]
        obs = self.obs.iloc[idx].reset_index(drop=True)
        keep = set(obs["volume_id"].unique())
        vols = {k: v for k, v in self._volumes.items() if k in keep}
        return VolumePairView(self.pairs.subset(idx), obs, vols, self.spec, self._fills)

    def with_genes(self, genes: list[str]) -> VolumePairView:
        return VolumePairView(self.pairs.with_genes(genes), self.obs, self._volumes, self.spec, self._fills)

    def with_spec(self, spec: VolumePairSpec) -> VolumePairView:
        """The same pairs cut with another sub-volume geometry."""
        return VolumePairView(self.pairs, self.obs, self._volumes, spec, self._fills)

    # -- reading -----------------------------------------------------------------------
    def volume(self, volume_id: str) -> NgffVolume:
        """The stored volume (opened once per process)."""
        if os.getpid() != self._pid:
            self._handles = {}
            self._pid = os.getpid()
        h = self._handles.get(volume_id)
        if h is None:
            path, vs = self._volumes[volume_id]
            h = NgffVolume(path)
            h.set_voxel_size(vs)
            self._handles[volume_id] = h
        return h

    def expression(self, genes: list[str] | None = None) -> sp.csr_matrix:
        """Raw counts, n_pairs x n_genes (CSR, float32), as :meth:`PairView.expression`."""
        return self.pairs.expression(genes)

    def _index(self, i: int) -> int:
        return self.pairs._index(i)

    def subvolume(self, i: int) -> NDArray[np.uint8]:
        """The ``(n_slices, size_px, size_px, C)`` uint8 sub-volume of pair ``i``."""
        i = self._index(i)
        c = self._centres[i]
        vid = str(self._vid[i])
        return extract_subvolume(
            self.volume(vid), (float(c[0]), float(c[1]), float(c[2])), self.spec, fill=self._fills.get(vid, 0)
        )

    def subvolumes(self, rows: NDArray[np.integer] | list[int]) -> NDArray[np.uint8]:
        """Sub-volumes of many pairs ``(len(rows), n_slices, size_px, size_px, C)``, each volume's
        blocks read once."""
        idx = np.asarray([self._index(int(r)) for r in rows], dtype=np.int64)
        out = np.zeros((len(idx), self.spec.n_slices, self.spec.size_px, self.spec.size_px, max(self.channels, 1)), np.uint8)
        for vid in np.unique(self._vid[idx]) if len(idx) else []:
            sel = np.flatnonzero(self._vid[idx] == vid)
            out[sel] = extract_subvolumes(
                self.volume(str(vid)), self._centres[idx[sel]], self.spec, fill=self._fills.get(str(vid), 0)
            )
        return out

    def patch(self, i: int) -> NDArray[np.uint8]:
        """The 2D H&E patch of pair ``i`` (from the section's own slide, as in :class:`PairView`)."""
        return self.pairs.patch(i)

    def __getitem__(self, i: int) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
        """``(subvolume, expression)``."""
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index pairs with an int, got {type(i).__name__}; use .subset() for many")
        i = self._index(int(i))
        return self.subvolume(i), self.pairs._row_expression(i)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in range(len(self)):
            yield self[i]

    def to_torch(self, **kwargs: Any) -> VolumePairDataset:
        """A :class:`catalog.torch.VolumePairDataset` over this view (see its arguments);
        needs the ``train`` extra (torch)."""
        from hestkit.extras import require

        require("VolumePairView.to_torch", ("torch",))
        from .torch import VolumePairDataset

        return VolumePairDataset(self, **kwargs)
