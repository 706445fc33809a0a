"""Baseline (d): fixed 3D texture and intensity features of each sub-volume + a ridge probe.

No learning in the features: every number is a fixed function of the voxels, so the
baseline is both a yardstick (how much of the expression the morphology explains with
hand-made descriptors) and a safety net (when the deep model does no better, it is not
earning its cost). Per channel of a ``(S, H, W)`` sub-volume (``S`` planes in depth):

- intensity: 8-bin histogram over 0..255 (shares), mean, std, 10/50/90th percentiles;
- local variance: variance in 4 x 4 px windows of each plane, mean and std over windows;
- gradients: mean and std of ``|d/dz|``, ``|d/dy|``, ``|d/dx|`` (finite differences);
- radial power spectrum per plane: log power in 6 rings of spatial frequency, averaged over
  planes, plus its spread over planes (how texture changes with depth);
- 3D structure tensor (gradients smoothed over the sub-volume): the three eigenvalues of the
  mean tensor normalised by its trace, linearity / planarity / sphericity, and the
  orientation of the main axis relative to z;
- depth profile: std over planes of the plane means (tissue changing along z);
- the same intensity moments on the central half in-plane (a second, tighter scale).

The probe: standardised features, then (by default) all pairwise products (a quadratic
expansion, as expression is a non-linear function of morphology), then ridge with the
regularisation chosen by generalised cross-validation on the fit set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import NotFittedError
from .errors import VortexShapeError

__all__ = ["TextureProbe", "feature_names", "subvolume_features"]

_HIST_BINS = 8
_RINGS = 6
_WIN = 4


def _plane_spectrum(planes: NDArray[np.float32]) -> NDArray[np.float64]:
    """Log power in ``_RINGS`` rings of radial frequency, per plane: ``(S, _RINGS)``."""
    s, h, w = planes.shape
    centred = planes - planes.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.rfft2(centred)) ** 2
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    r = np.sqrt(fy**2 + fx**2)
    edges = np.linspace(0.0, 0.5, _RINGS + 1)
    out = np.empty((s, _RINGS))
    for k in range(_RINGS):
        ring = (r > edges[k]) & (r <= edges[k + 1])
        out[:, k] = np.log1p(power[:, ring].mean(axis=1) / (h * w)) if ring.any() else 0.0
    return out


def _structure_tensor(v: NDArray[np.float32]) -> list[float]:
    gz, gy, gx = np.gradient(v) if v.shape[0] > 1 else (np.zeros_like(v), *np.gradient(v, axis=(1, 2)))
    t = np.array(
        [
            [np.mean(gz * gz), np.mean(gz * gy), np.mean(gz * gx)],
            [np.mean(gy * gz), np.mean(gy * gy), np.mean(gy * gx)],
            [np.mean(gx * gz), np.mean(gx * gy), np.mean(gx * gx)],
        ]
    )
    vals, vecs = np.linalg.eigh(t)
    vals = np.clip(vals[::-1], 0.0, None)
    tr = float(vals.sum()) or 1.0
    l1, l2, l3 = (float(x) / tr for x in vals)
    main = vecs[:, -1]
    return [l1, l2, l3, l1 - l2, l2 - l3, l3, abs(float(main[0]))]


def _moments(x: NDArray[np.float32]) -> list[float]:
    p10, p50, p90 = np.percentile(x, (10, 50, 90))
    return [float(x.mean()), float(x.std()), float(p10), float(p50), float(p90)]


def _channel_features(v: NDArray[np.float32]) -> list[float]:
    s, h, w = v.shape
    hist = np.histogram(v, bins=_HIST_BINS, range=(0.0, 255.0))[0] / v.size
    feats = [*hist.tolist(), *_moments(v)]
    hh, ww = h // _WIN * _WIN, w // _WIN * _WIN
    blocks = v[:, :hh, :ww].reshape(s, hh // _WIN, _WIN, ww // _WIN, _WIN)
    lv = blocks.var(axis=(2, 4))
    feats += [float(lv.mean()), float(lv.std())]
    for ax in (0, 1, 2):
        if v.shape[ax] > 1:
            d = np.abs(np.diff(v, axis=ax))
            feats += [float(d.mean()), float(d.std())]
        else:
            feats += [0.0, 0.0]
    spec = _plane_spectrum(v)
    feats += spec.mean(axis=0).tolist() + spec.std(axis=0).tolist()
    feats += _structure_tensor(v)
    feats.append(float(v.mean(axis=(1, 2)).std()))
    feats += _moments(v[:, h // 4 : h - h // 4, w // 4 : w - w // 4])
    return feats


def feature_names(channels: int) -> list[str]:
    """Names of the columns :func:`subvolume_features` returns, in order."""
    one = (
        [f"hist{k}" for k in range(_HIST_BINS)]
        + ["mean", "std", "p10", "p50", "p90", "localvar_mean", "localvar_std"]
        + [f"grad_{a}_{m}" for a in "zyx" for m in ("mean", "std")]
        + [f"ring{k}_mean" for k in range(_RINGS)]
        + [f"ring{k}_depth_std" for k in range(_RINGS)]
        + ["st_l1", "st_l2", "st_l3", "st_linearity", "st_planarity", "st_sphericity", "st_axis_z"]
        + ["depth_profile_std"]
        + [f"centre_{m}" for m in ("mean", "std", "p10", "p50", "p90")]
    )
    return [f"c{c}_{n}" for c in range(channels) for n in one]


def subvolume_features(subs: NDArray[Any]) -> NDArray[np.float32]:
    """``(N, S, H, W, C)`` uint8 sub-volumes -> ``(N, F)`` fixed texture features."""
    a = np.asarray(subs)
    if a.ndim != 5:
        raise VortexShapeError(f"sub-volumes must be (N, S, H, W, C), got shape {a.shape}")
    out = np.empty((a.shape[0], len(feature_names(a.shape[4]))), dtype=np.float32)
    for i in range(a.shape[0]):
        row: list[float] = []
        for c in range(a.shape[4]):
            row += _channel_features(a[i, ..., c].astype(np.float32))
        out[i] = row
    return out


@dataclass
class TextureProbe:
    """Standardise -> (quadratic expansion) -> ridge with GCV-chosen alpha, on texture features."""

    quadratic: bool = True
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 5, 15))
    _mean: NDArray[np.float64] | None = None
    _std: NDArray[np.float64] | None = None
    _model: Any = None

    def _expand(self, f: NDArray[Any]) -> NDArray[np.float64]:
        if self._mean is None or self._std is None:
            raise NotFittedError("fit the probe before predicting")
        z = (np.asarray(f, dtype=np.float64) - self._mean) / self._std
        if not self.quadratic:
            return z
        iu = np.triu_indices(z.shape[1])
        quad = (z[:, :, None] * z[:, None, :])[:, iu[0], iu[1]] / np.sqrt(z.shape[1])
        return np.concatenate([z, quad], axis=1)

    def fit(self, features: NDArray[Any], targets: NDArray[Any]) -> TextureProbe:
        from sklearn.linear_model import RidgeCV

        f = np.asarray(features, dtype=np.float64)
        self._mean = f.mean(axis=0)
        std = f.std(axis=0)
        self._std = np.where(std > 1e-8, std, 1.0)
        self._model = RidgeCV(alphas=self.alphas).fit(self._expand(f), np.asarray(targets, dtype=np.float64))
        return self

    @property
    def alpha(self) -> float:
        return float(self._model.alpha_)

    def predict(self, features: NDArray[Any]) -> NDArray[np.float32]:
        if self._model is None:
            raise NotFittedError("fit the probe before predicting")
        pred: NDArray[np.float32] = self._model.predict(self._expand(features)).astype(np.float32)
        return pred
