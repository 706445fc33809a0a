from __future__ import annotations

import numpy as np
import pytest
import torch

from seal.losses import clip_loss, expression_loss, kl_divergence, pearson_loss, standardised_mse


def _logsoftmax(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return a - m - np.log(np.exp(a - m).sum(axis=axis, keepdims=True))


def test_clip_loss_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    logits = an @ bn.T / 0.05
    i2e = -np.mean(np.diag(_logsoftmax(logits, 1)))
    e2i = -np.mean(np.diag(_logsoftmax(logits.T, 1)))
    got = clip_loss(torch.tensor(a), torch.tensor(b), 0.05)
    assert float(got) == pytest.approx(0.5 * (i2e + e2i), rel=1e-5)
    # aligned pairs give a lower loss than shuffled ones
    assert float(clip_loss(torch.tensor(a), torch.tensor(a))) < float(clip_loss(torch.tensor(a), torch.tensor(a[::-1].copy())))


def test_pearson_and_standardised_mse_match_numpy() -> None:
    rng = np.random.default_rng(1)
    p, t = rng.normal(size=(16, 4)), rng.normal(size=(16, 4))
    r = [np.corrcoef(p[:, j], t[:, j])[0, 1] for j in range(4)]
    assert float(pearson_loss(torch.tensor(p), torch.tensor(t))) == pytest.approx(np.mean(1 - np.array(r)), rel=1e-5)
    mean, std = rng.normal(size=4), rng.uniform(0.5, 2, size=4)
    smse = np.mean(((p - mean) / std - (t - mean) / std) ** 2)
    got = standardised_mse(torch.tensor(p), torch.tensor(t), torch.tensor(mean), torch.tensor(std))
    assert float(got) == pytest.approx(smse, rel=1e-5)
    both = expression_loss(torch.tensor(p), torch.tensor(t), torch.tensor(mean), torch.tensor(std))
    assert float(both) == pytest.approx(np.mean(1 - np.array(r)) + smse, rel=1e-5)
    assert float(pearson_loss(torch.tensor(p), torch.tensor(p))) == pytest.approx(0.0, abs=1e-6)


def test_kl_matches_closed_form() -> None:
    rng = np.random.default_rng(2)
    mu, lv = rng.normal(size=(3, 6)), rng.normal(size=(3, 6)) * 0.3
    kl = np.mean(np.sum(-0.5 * (1 + lv - mu**2 - np.exp(lv)), axis=1))
    assert float(kl_divergence(torch.tensor(mu), torch.tensor(lv))) == pytest.approx(kl, rel=1e-6)
