"""SEAL's objective: contrastive alignment plus expression reconstruction and prediction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F

__all__ = [
    "ObjectiveWeights",
    "clip_loss",
    "expression_loss",
    "gather_features",
    "kl_divergence",
    "pearson_loss",
    "seal_objective",
    "standardised_mse",
]


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` over DDP processes keeping gradients for the local part
    (identity without an initialised process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def clip_loss(image: torch.Tensor, expression: torch.Tensor, temperature: float = 0.05, centre: bool = False) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised image and expression embeddings; the
    positive of row i is column i (features are gathered across processes under DDP).

    ``centre`` subtracts each side's batch mean (over all processes) before normalising: a
    randomly initialised (and, less so, a pretrained) encoder maps every patch close to one
    common direction (cosine ~0.99 between patches of a random ViT), which leaves the
    normalised logits nearly equal and the loss stuck at ln(batch); centring compares what
    differs between patches. Centring changes the cosines, so retrieval with such a model
    centres too (``seal eval`` reads ``centre_embeddings`` from the model directory)."""
    img, exp = gather_features(image.float()), gather_features(expression.float())
    if centre:
        img = img - img.mean(dim=0, keepdim=True)
        exp = exp - exp.mean(dim=0, keepdim=True)
    img = F.normalize(img, dim=-1)
    exp = F.normalize(exp, dim=-1)
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


class ObjectiveWeights(Protocol):
    """The settings of :func:`seal_objective` (SEAL's and VORTEX's training configs)."""

    @property
    def temperature(self) -> float: ...

    @property
    def w_clip(self) -> float: ...

    @property
    def w_recon(self) -> float: ...

    @property
    def w_pred(self) -> float: ...

    @property
    def kl_weight(self) -> float: ...


def seal_objective(
    image_emb: torch.Tensor,
    expr: torch.Tensor,
    vae: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    head: Callable[[torch.Tensor], torch.Tensor],
    mean: torch.Tensor,
    std: torch.Tensor,
    w: ObjectiveWeights,
) -> dict[str, torch.Tensor]:
    """The training objective for an image (or volume) embedding and its expression: InfoNCE
    between the embedding and the expression VAE's mean, the VAE's reconstruction, expression
    predicted from the embedding by ``head``, and the VAE's KL term; each part and their
    weighted sum (``"loss"``)."""
    mu, logvar, recon = vae(expr)
    parts = {
        "clip": clip_loss(image_emb, mu, w.temperature, centre=bool(getattr(w, "centre_embeddings", False))),
        "recon": expression_loss(recon, expr, mean, std),
        "pred": expression_loss(head(image_emb), expr, mean, std),
        "kl": kl_divergence(mu.float(), logvar.float()),
    }
    parts["loss"] = w.w_clip * parts["clip"] + w.w_recon * parts["recon"] + w.w_pred * parts["pred"] + w.kl_weight * parts["kl"]
    return parts
