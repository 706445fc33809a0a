"""SEAL's objective: contrastive alignment plus expression reconstruction and prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_loss", "expression_loss", "gather_features", "kl_divergence", "pearson_loss", "standardised_mse"]


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` over DDP processes keeping gradients for the local part
    (identity without an initialised process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def clip_loss(image: torch.Tensor, expression: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised image and expression embeddings; the
    positive of row i is column i (features are gathered across processes under DDP)."""
    img = gather_features(F.normalize(image.float(), dim=-1))
    exp = gather_features(F.normalize(expression.float(), dim=-1))
    logits = img @ exp.t() / temperature
    target = torch.arange(len(img), device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def pearson_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over genes of (1 - Pearson r over the batch)."""
    p = pred.float() - pred.float().mean(dim=0, keepdim=True)
    t = target.float() - target.float().mean(dim=0, keepdim=True)
    r = (p * t).sum(dim=0) / (p.norm(dim=0) * t.norm(dim=0) + eps)
    return (1.0 - r).mean()


def standardised_mse(pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """MSE after z-scoring both with the training mean/std of each gene."""
    s = std.clamp_min(1e-6)
    return F.mse_loss((pred.float() - mean) / s, (target.float() - mean) / s)


def expression_loss(pred: torch.Tensor, target: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-gene (1 - Pearson) plus standardised MSE."""
    return pearson_loss(pred, target) + standardised_mse(pred, target, mean, std)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), mean over the batch."""
    return -0.5 * torch.mean(torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1))
