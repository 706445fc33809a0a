"""Learned aggregation of per-slice embeddings over depth.

``(B, S, D)`` slice tokens (slice 0 = shallowest) -> ``(B, D)``. Every aggregator adds a
learned depth embedding per slice position (zero at start), so the order of the slices
can matter:

``attention`` (default)
    Gated attention pooling (Ilse et al. 2018): ``a_s = softmax_s(w . (tanh(V h_s) *
    sigmoid(U h_s)))``, output ``sum_s a_s h_s``.
``transformer``
    A small pre-norm transformer encoder over the slice tokens plus a learned [CLS]
    token (``layers`` layers, ``heads`` heads, MLP 2 D); output the normalised [CLS].
``mean``
    The plain mean over slices (no parameters besides the depth embedding), a baseline.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .errors import VortexConfigError, VortexShapeError

__all__ = ["AGGREGATIONS", "Aggregation", "AttentionPool", "DepthAggregator", "MeanPool", "SliceTransformer", "make_aggregator"]

Aggregation = Literal["attention", "transformer", "mean"]
AGGREGATIONS: tuple[str, ...] = ("attention", "transformer", "mean")


class DepthAggregator(nn.Module):
    """Base: holds the depth embedding ``(S, D)``."""

    def __init__(self, n_slices: int, dim: int) -> None:
        super().__init__()
        self.n_slices = n_slices
        self.dim = dim
        self.depth = nn.Parameter(torch.zeros(n_slices, dim))

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.n_slices or x.shape[2] != self.dim:
            raise VortexShapeError(f"expected slice tokens (B, {self.n_slices}, {self.dim}), got {tuple(x.shape)}")
        return x + self.depth.to(x.dtype)


class AttentionPool(DepthAggregator):
    """Gated attention pooling over slices."""

    def __init__(self, n_slices: int, dim: int, hidden: int = 128) -> None:
        super().__init__(n_slices, dim)
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(B, S)`` (sum to 1 over slices)."""
        h = self._tokens(x)
        return torch.softmax(self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.weights(x)
        return (a.unsqueeze(-1) * x).sum(dim=1)


class SliceTransformer(DepthAggregator):
    """A small transformer encoder over slice tokens with a [CLS] token."""

    def __init__(self, n_slices: int, dim: int, layers: int = 1, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__(n_slices, dim)
        if dim % heads:
            heads = max(h for h in range(1, heads + 1) if dim % h == 0)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._tokens(x)
        h = torch.cat([self.cls.expand(len(h), -1, -1).to(h.dtype), h], dim=1)
        out: torch.Tensor = self.norm(self.encoder(h)[:, 0])
        return out


class MeanPool(DepthAggregator):
    """Mean over slices (after the depth embedding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tokens(x).mean(dim=1)


def make_aggregator(kind: Aggregation, n_slices: int, dim: int, *, layers: int = 1, heads: int = 4) -> DepthAggregator:
    """The aggregator named ``kind`` (see module doc)."""
    if kind == "attention":
        return AttentionPool(n_slices, dim)
    if kind == "transformer":
        return SliceTransformer(n_slices, dim, layers=layers, heads=heads)
    if kind == "mean":
        return MeanPool(n_slices, dim)
    raise VortexConfigError(f"unknown aggregation {kind!r}: expected one of {', '.join(AGGREGATIONS)}")
