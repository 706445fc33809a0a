"""A torch Dataset over a :class:`~catalog.views.PairView`, safe for many DataLoader workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from .views import PairView
from .volume_views import VolumePairView

__all__ = ["PairDataset", "VolumePairDataset", "default_image_transform", "default_volume_transform"]


def default_image_transform(patch: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float().div_(255.0)


class PairDataset(Dataset[tuple[Any, ...]]):
    """Items are ``(image, expression)``, or ``(image, expression, measured)`` with
    ``return_mask=True``.

    ``image`` is ``transform(patch)`` (default: float tensor CHW in [0, 1]);
    ``expression`` is a float32 tensor over the view's genes, raw counts passed through
    ``expression_transform`` (e.g. ``np.log1p``) if given. With ``preload_expression``
    (default) the counts of the whole view are read once, here, as a sparse matrix;
    patches are always read lazily. Zarr handles (and, for an ``s3://`` catalog, the S3
    clients, from the worker's own environment) are opened per worker process.

    ``measured`` is a bool tensor over the genes: False where the pair's sample did not
    measure the gene (its expression value is then 0 but not a measurement; mask it out of
    a loss). :attr:`measured_by_sample` holds the (n_samples x n_genes) table it comes from.
    """

    def __init__(
        self,
        view: PairView,
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        expression_transform: Callable[[np.ndarray], np.ndarray] | None = None,
        preload_expression: bool = True,
        return_mask: bool = False,
    ) -> None:
        self.view = view
        self.transform = transform or default_image_transform
        self.expression_transform = expression_transform
        self.return_mask = return_mask
        self._X: sp.csr_matrix | None = view.expression() if preload_expression else None
        #: (n_samples, n_genes) bool, rows in the order of ``view.sample_ids``.
        self.measured_by_sample = torch.from_numpy(view.measured.to_numpy(dtype=bool))
        self._codes = view._sample_codes

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        patch = self.view.patch(i)
        if self._X is not None:
            e = np.asarray(self._X[i].toarray()).ravel().astype(np.float32)
        else:
            e = self.view._row_expression(self.view._index(i))
        if self.expression_transform is not None:
            e = np.asarray(self.expression_transform(e), dtype=np.float32)
        if self.return_mask:
            return self.transform(patch), torch.from_numpy(e), self.measured_by_sample[int(self._codes[self.view._index(i)])]
        return self.transform(patch), torch.from_numpy(e)


def default_volume_transform(subvolume: np.ndarray) -> torch.Tensor:
    """(S, H, W, C) uint8 -> (S, C, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(subvolume)).permute(0, 3, 1, 2).float().div_(255.0)


class VolumePairDataset(Dataset[tuple[Any, torch.Tensor]]):
    """Items are ``(subvolume, expression)`` from a :class:`~catalog.volume_views.VolumePairView`.

    ``subvolume`` is ``transform(array)`` (default: float tensor (S, C, H, W) in [0, 1]);
    ``expression`` as in :class:`PairDataset`. Volume handles are opened per worker process.
    """

    def __init__(
        self,
        view: VolumePairView,
        *,
        transform: Callable[[np.ndarray], Any] | None = None,
        expression_transform: Callable[[np.ndarray], np.ndarray] | None = None,
        preload_expression: bool = True,
    ) -> None:
        self.view = view
        self.transform = transform or default_volume_transform
        self.expression_transform = expression_transform
        self._X: sp.csr_matrix | None = view.expression() if preload_expression else None

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        sub = self.view.subvolume(i)
        if self._X is not None:
            e = np.asarray(self._X[i].toarray()).ravel().astype(np.float32)
        else:
            e = self.view.pairs._row_expression(self.view._index(i))
        if self.expression_transform is not None:
            e = np.asarray(self.expression_transform(e), dtype=np.float32)
        return self.transform(sub), torch.from_numpy(e)
