"""Multiple-instance models over a slide's tile features, and their training.

- :class:`ABMIL`: gated attention pooling (Ilse, Tomczak & Welling 2018, "Attention-based
  deep multiple instance learning"), as CLAM and TRIDENT use it: a projection of each
  tile's feature, attention ``a_i = w^T (tanh(V h_i) * sigmoid(U h_i))`` softmaxed over
  the bag, the attention-weighted mean, a linear head.
- :class:`MeanPool`: the linear probe on the mean of the bag's features.

Both take one bag ``(n_tiles, dim)`` at a time, so memory during training and inference is
bounded by one slide's features (bags are read from :class:`BagSource` on demand).
:func:`train_mil` trains with AdamW, early stopping on a validation part of the training
set, seeded; bf16 autocast on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .errors import ConfigError, ShapeError

__all__ = [
    "ABMIL",
    "BagSource",
    "MeanPool",
    "MilConfig",
    "MilModel",
    "Standardizer",
    "predict_mil",
    "train_mil",
]


#: Indices of bags: a sequence or an integer array.
Items: TypeAlias = "Sequence[int] | NDArray[np.int64]"


class BagSource(Protocol):
    """Where bags come from: ``bag(i)`` returns the ``(n_tiles, dim)`` features of item ``i``."""

    def bag(self, i: int) -> NDArray[np.float32]: ...


class MilModel(Protocol):
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


@dataclass(frozen=True)
class MilConfig:
    """Training settings shared by both models (defaults follow CLAM/TRIDENT's ABMIL)."""

    hidden: int = 256
    attention_dim: int = 128
    dropout: float = 0.25
    lr: float = 5e-4
    weight_decay: float = 1e-4
    max_epochs: int = 50
    patience: int = 10
    #: warm-up epochs: the weights kept (lowest validation loss) and the early stop are
    #: chosen among epochs ``min_epochs .. max_epochs`` only (all epochs when
    #: ``max_epochs <= min_epochs``: the last one is kept). On small cohorts the
    #: near-uniform attention of the first epochs gives cautious outputs whose validation
    #: loss is often lowest, which would select a model that has not found the region yet
    min_epochs: int = 20
    seed: int = 0
    device: str = "cpu"
    #: CPU threads for torch while training (None: leave torch's setting). Bags are small
    #: matrices, so one thread avoids oversubscription on shared machines.
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.max_epochs < 1 or self.patience < 1 or self.min_epochs < 0:
            raise ConfigError("max_epochs and patience must be >= 1, min_epochs >= 0")


class ABMIL(nn.Module):
    """Gated-attention MIL: ``(n, dim)`` -> (``n_out`` logits, attention over the n tiles)."""

    def __init__(self, dim: int, n_out: int, hidden: int = 256, attention_dim: int = 128, dropout: float = 0.25) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attn_v = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attn_u = nn.Sequential(nn.Linear(hidden, attention_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.attn_w = nn.Linear(attention_dim, 1)
        self.head = nn.Linear(hidden, n_out)

    def attention_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.attn_w(self.attn_v(h) * self.attn_u(h)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.proj(x)
        a = torch.softmax(self.attention_logits(h).float(), dim=0)
        pooled = (a.unsqueeze(-1).to(h.dtype) * h).sum(0)
        return self.head(pooled), a


class MeanPool(nn.Module):
    """Linear probe on the bag's mean feature (no attention)."""

    def __init__(self, dim: int, n_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.head(self.drop(x.mean(0))), None


class Standardizer:
    """Per-feature mean and std of the tiles of a set of bags, computed one bag at a time."""

    def __init__(self, mean: NDArray[np.float64], std: NDArray[np.float64]) -> None:
        self.mean = mean.astype(np.float32)
        self.std = np.where(std > 1e-8, std, 1.0).astype(np.float32)

    @classmethod
    def fit(cls, source: BagSource, items: Items) -> Standardizer:
        n = 0
        s: NDArray[np.float64] | None = None
        ss: NDArray[np.float64] | None = None
        for i in items:
            b = np.asarray(source.bag(i), dtype=np.float64)
            s = b.sum(0) if s is None else s + b.sum(0)
            ss = (b * b).sum(0) if ss is None else ss + (b * b).sum(0)
            n += len(b)
        if s is None or ss is None or n == 0:
            raise ShapeError("no tiles to standardise")
        mean = s / n
        var = np.maximum(ss / n - mean * mean, 0.0)
        return cls(mean, np.sqrt(var))

    def __call__(self, b: NDArray[np.float32]) -> NDArray[np.float32]:
        return (np.asarray(b, dtype=np.float32) - self.mean) / self.std


def _autocast(device: torch.device) -> torch.autocast:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return lambda out, y: nn.functional.cross_entropy(out.float().unsqueeze(0), y.long().view(1))
    return lambda out, y: nn.functional.mse_loss(out.float().view(1), y.float().view(1))


@torch.no_grad()
def predict_mil(
    model: nn.Module,
    source: BagSource,
    items: Items,
    norm: Standardizer,
    device: torch.device,
    *,
    with_attention: bool = False,
) -> tuple[NDArray[np.float64], list[NDArray[np.float32] | None]]:
    """Outputs (logits or the regression value) per item, and attention when asked."""
    model.eval()
    outs: list[NDArray[np.float64]] = []
    attns: list[NDArray[np.float32] | None] = []
    for i in items:
        x = torch.from_numpy(norm(source.bag(i))).to(device)
        with _autocast(device):
            out, a = model(x)
        outs.append(out.float().cpu().numpy().astype(np.float64))
        attns.append(a.float().cpu().numpy() if (with_attention and a is not None) else None)
    return np.stack(outs) if outs else np.zeros((0, 1)), attns


def train_mil(
    kind: str,
    source: BagSource,
    train_items: Items,
    val_items: Items,
    targets: NDArray[np.float64],
    task: str,
    n_out: int,
    dim: int,
    cfg: MilConfig,
    norm: Standardizer,
) -> tuple[nn.Module, dict[str, float]]:
    """Train an ``abmil`` or ``mean`` model on ``train_items`` (one bag per step, in a
    seeded random order), keeping the weights of the epoch with the lowest validation loss
    and stopping after ``cfg.patience`` epochs without improvement, both counted from epoch
    ``cfg.min_epochs`` (warm-up). ``targets[i]`` is the
    class index (classification) or the standardised value (regression) of item ``i``."""
    prev = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(kind, source, train_items, val_items, targets, task, n_out, dim, cfg, norm)
    finally:
        torch.set_num_threads(prev)


def _train(
    kind: str,
    source: BagSource,
    train_items: Items,
    val_items: Items,
    targets: NDArray[np.float64],
    task: str,
    n_out: int,
    dim: int,
    cfg: MilConfig,
    norm: Standardizer,
) -> tuple[nn.Module, dict[str, float]]:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(cfg.device)
    model: nn.Module
    if kind == "abmil":
        model = ABMIL(dim, n_out, cfg.hidden, cfg.attention_dim, cfg.dropout)
    elif kind == "mean":
        model = MeanPool(dim, n_out, 0.0)
    else:
        raise ConfigError(f"unknown MIL model {kind!r}; expected abmil or mean")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr if kind == "abmil" else cfg.lr * 5, weight_decay=cfg.weight_decay)
    loss_fn = _loss_fn(task)
    weights: torch.Tensor | None = None
    if task == "classification":
        counts = np.bincount(targets[list(train_items)].astype(int), minlength=n_out).astype(np.float64)
        w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_out, 0.0)
        weights = torch.tensor(w, dtype=torch.float32, device=device)
    best = math.inf
    best_state = copy.deepcopy(model.state_dict())
    best_epoch = 0
    stale = 0
    epoch = 0
    val = list(val_items) if len(val_items) else list(train_items)
    for epoch in range(cfg.max_epochs):
        model.train()
        for i in rng.permutation(np.asarray(train_items)):
            x = torch.from_numpy(norm(source.bag(int(i)))).to(device)
            y = torch.tensor(targets[int(i)], device=device)
            with _autocast(device):
                out, _ = model(x)
            loss = loss_fn(out, y)
            if weights is not None:
                loss = loss * weights[int(targets[int(i)])]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch + 1 < min(cfg.min_epochs, cfg.max_epochs):
            continue  # warm-up: attention has not focused yet; no selection, no stop
        outs, _ = predict_mil(model, source, val, norm, device)
        yv = torch.tensor(targets[val], device="cpu")
        vl = float(np.mean([float(loss_fn(torch.from_numpy(o), y)) for o, y in zip(outs, yv, strict=True)]))
        if vl < best - 1e-6:
            best, best_epoch, stale = vl, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    return model, {"best_epoch": float(best_epoch + 1), "epochs_run": float(epoch + 1), "val_loss": float(best)}
