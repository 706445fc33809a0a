"""``texture``: a fixed, weight-free tile encoder of hand-made colour and texture features.

A cheap baseline for slide-level (and patch-level) evaluation, usable wherever an encoder
spec is (``seal slide-embed --encoder texture``, ``seal slide-eval``, ``seal embed``,
``seal hest-bench``): every number is a fixed function of the pixels, so it needs no
weights, runs on CPU at thousands of tiles per second, and tells how much of a label simple
colour and texture statistics already explain (when a deep encoder does no better, it is
not earning its cost). It is the 2D counterpart of VORTEX's baseline (d)
(:mod:`seal.vortex.texture`).

The module takes RGB tiles in ``[0, 1]`` (its data config has mean 0, std 1 and
``input_size`` 0: tiles are used at the size they are cut, never resampled, so texture
scales stay those of the requested um/px) and returns, per tile (:func:`feature_names`):

- stain: optical density (``-log10`` of the transmitted light) unmixed into haematoxylin,
  eosin and a residual with Ruifrok & Johnston's fixed H&E vectors (scikit-image's
  ``rgb2hed``); per channel mean, std, 10/50/90th percentiles and an 8-bin histogram of the
  densities over fixed ranges (shares of pixels);
- brightness: an 8-bin histogram of luminance over ``[0, 1]``, its mean and std;
- local variance of luminance in 3 x 3 and 7 x 7 windows (mean and std over the tile);
- gradients (Sobel): mean and std of the magnitude, and the coherence of the tile's mean
  structure tensor (0: isotropic, 1: one orientation);
- local binary patterns (Ojala et al. 2002), rotation-invariant uniform ("riu2"), 8
  neighbours at radius 1 and at radius 2 (10-bin histograms);
- radial power spectrum of luminance: log mean power in 6 rings of spatial frequency;
- scale-space blobs: differences of Gaussians of luminance at sigma 1, 2, 4 and 8 px
  (``G(s) - G(2 s)``, bright blobs > 0, dark blobs < 0): mean bright and dark response and
  the 2nd and 98th percentiles per scale (percentiles keep a single structure of that size
  in the tile from being averaged away).

All statistics are computed in torch on the batch, so the encoder runs on the GPU too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TEXTURE_DATA_CONFIG", "TEXTURE_VERSION", "TextureEncoder", "feature_names"]

#: Bumped when the features change (part of the encoder's cache key).
TEXTURE_VERSION = "1"

#: ``input_size`` 0: tiles are used at their own size; no normalisation.
TEXTURE_DATA_CONFIG: dict[str, list[float] | list[int]] = {"input_size": [3, 0, 0], "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}

# Ruifrok & Johnston (2001) H&E(-DAB) stain vectors, rows normalised (as skimage.color.rgb2hed).
_STAINS = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_STAINS = _STAINS / _STAINS.norm(dim=1, keepdim=True)
_UNMIX = torch.linalg.inv(_STAINS).to(torch.float32)  # od (rgb) @ _UNMIX -> (h, e, residual)
#: Histogram ranges of the three densities (OD units), chosen to cover H&E tiles.
_OD_RANGES = ((0.0, 1.2), (0.0, 0.6), (-0.3, 0.3))
_BINS = 8
_RINGS = 6
_DOG_SIGMAS = (1.0, 2.0, 4.0, 8.0)
_STAIN_NAMES = ("haem", "eosin", "resid")


def feature_names() -> list[str]:
    """Names of the encoder's output columns, in order."""
    names: list[str] = []
    for s in _STAIN_NAMES:
        names += [f"{s}_{m}" for m in ("mean", "std", "p10", "p50", "p90")] + [f"{s}_hist{k}" for k in range(_BINS)]
    names += [f"lum_hist{k}" for k in range(_BINS)] + ["lum_mean", "lum_std"]
    names += ["locvar3_mean", "locvar3_std", "locvar7_mean", "locvar7_std"]
    names += ["grad_mean", "grad_std", "grad_coherence"]
    names += [f"lbp_r{r}_{k}" for r in (1, 2) for k in range(10)]
    names += [f"ring{k}" for k in range(_RINGS)]
    names += [f"dog{s:g}_{m}" for s in _DOG_SIGMAS for m in ("bright", "dark", "p2", "p98")]
    return names


def _hist(v: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    """Shares of the pixels of each row of ``v (B, N)`` in ``bins`` equal bins over
    ``[lo, hi]`` (values outside go to the end bins)."""
    idx = ((v - lo) / (hi - lo) * bins).floor().clamp_(0, bins - 1).long()
    out = torch.zeros(v.shape[0], bins, device=v.device, dtype=torch.float32)
    out.scatter_add_(1, idx, torch.ones_like(v, dtype=torch.float32))
    return out / v.shape[1]


def _quantiles(v: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """Quantiles (linear interpolation) of each row of ``v (B, N)``: ``(B, len(qs))``."""
    return torch.quantile(v, torch.tensor(qs, device=v.device, dtype=v.dtype), dim=1).T


def _moments(v: torch.Tensor) -> torch.Tensor:
    q = _quantiles(v, (0.1, 0.5, 0.9))
    return torch.cat([v.mean(1, keepdim=True), v.std(1, keepdim=True), q], dim=1)


def _local_var(lum: torch.Tensor, k: int) -> torch.Tensor:
    m = nn.functional.avg_pool2d(lum, k, stride=1, padding=k // 2, count_include_pad=False)
    m2 = nn.functional.avg_pool2d(lum * lum, k, stride=1, padding=k // 2, count_include_pad=False)
    v = (m2 - m * m).clamp_min(0).flatten(1)
    return torch.stack([v.mean(1), v.std(1)], dim=1)


def _gradients(lum: torch.Tensor) -> torch.Tensor:
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=lum.device) / 8.0
    gx = nn.functional.conv2d(nn.functional.pad(lum, (1, 1, 1, 1), mode="replicate"), kx.view(1, 1, 3, 3))
    gy = nn.functional.conv2d(nn.functional.pad(lum, (1, 1, 1, 1), mode="replicate"), kx.T.contiguous().view(1, 1, 3, 3))
    mag = torch.sqrt(gx * gx + gy * gy).flatten(1)
    jxx, jyy, jxy = (gx * gx).mean((1, 2, 3)), (gy * gy).mean((1, 2, 3)), (gx * gy).mean((1, 2, 3))
    coherence = torch.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy) / (jxx + jyy + 1e-8)
    return torch.stack([mag.mean(1), mag.std(1), coherence], dim=1)


def _riu2_table() -> torch.Tensor:
    """Rotation-invariant uniform LBP code (0..9) of each 8-bit neighbour pattern."""
    table = torch.empty(256, dtype=torch.long)
    for code in range(256):
        bits = [(code >> i) & 1 for i in range(8)]
        transitions = sum(bits[i] != bits[(i + 1) % 8] for i in range(8))
        table[code] = sum(bits) if transitions <= 2 else 9
    return table


_RIU2 = _riu2_table()


def _lbp(lum: torch.Tensor, radius: int) -> torch.Tensor:
    """riu2 LBP histogram (10 bins) of each tile, 8 neighbours at ``radius`` (bilinear)."""
    b, _, h, w = lum.shape
    if h <= 2 * radius or w <= 2 * radius:
        return torch.zeros(b, 10, device=lum.device)
    centre = lum[:, 0, radius : h - radius, radius : w - radius]
    code = torch.zeros_like(centre, dtype=torch.long)
    for i in range(8):
        a = 2 * math.pi * i / 8
        dy, dx = -radius * math.sin(a), radius * math.cos(a)
        y0, x0 = math.floor(dy), math.floor(dx)
        fy, fx = dy - y0, dx - x0

        def shifted(oy: int, ox: int) -> torch.Tensor:
            return lum[:, 0, radius + oy : h - radius + oy, radius + ox : w - radius + ox]

        if abs(fy) < 1e-6 and abs(fx) < 1e-6:
            nb = shifted(y0, x0)
        else:
            nb = (
                shifted(y0, x0) * (1 - fy) * (1 - fx)
                + shifted(y0, min(x0 + 1, radius)) * (1 - fy) * fx
                + shifted(min(y0 + 1, radius), x0) * fy * (1 - fx)
                + shifted(min(y0 + 1, radius), min(x0 + 1, radius)) * fy * fx
            )
        code |= ((nb - centre) >= -1e-4).long() << i
    idx = _RIU2.to(lum.device)[code].flatten(1)
    out = torch.zeros(b, 10, device=lum.device)
    out.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float32))
    return out / idx.shape[1]


def _spectrum(lum: torch.Tensor) -> torch.Tensor:
    _, _, h, w = lum.shape
    centred = lum[:, 0] - lum[:, 0].mean((1, 2), keepdim=True)
    power = torch.fft.rfft2(centred).abs() ** 2 / (h * w)
    fy = torch.fft.fftfreq(h, device=lum.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=lum.device)[None, :]
    r = torch.sqrt(fy * fy + fx * fx)
    edges = torch.linspace(0.0, 0.5, _RINGS + 1).tolist()
    cols = []
    for k in range(_RINGS):
        ring = (r > edges[k]) & (r <= edges[k + 1])
        cols.append(torch.log1p(1e3 * power[:, ring].mean(1)) if bool(ring.any()) else torch.zeros(lum.shape[0], device=lum.device))
    return torch.stack(cols, dim=1)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, 1, H, W)`` (edges replicated)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=img.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = nn.functional.conv2d(nn.functional.pad(img, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return nn.functional.conv2d(nn.functional.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def _blobs(lum: torch.Tensor) -> torch.Tensor:
    cols = []
    for s in _DOG_SIGMAS:
        d = (_blur(lum, s) - _blur(lum, 2 * s)).flatten(1)
        q = _quantiles(d, (0.02, 0.98))
        cols += [d.clamp_min(0).mean(1, keepdim=True), (-d).clamp_min(0).mean(1, keepdim=True), q]
    return torch.cat(cols, dim=1)


class TextureEncoder(nn.Module):
    """``(B, 3, H, W)`` RGB in ``[0, 1]`` -> ``(B, num_features)`` fixed colour/texture
    features (see the module docstring). No parameters; deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features = len(feature_names())
        self.register_buffer("unmix", _UNMIX.clone(), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fixed statistics in fp32 even under the callers' bf16 autocast (quantiles, sums of shares)
        with torch.autocast(x.device.type, enabled=False):
            return self._features(x.float().clamp(0.0, 1.0))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        od = -torch.log10(x.clamp_min(1.0 / 255.0))  # (B, 3, H, W)
        hed = torch.einsum("bchw,cs->bshw", od, self.unmix).flatten(2)  # (B, 3, N)
        feats = []
        for s, (lo, hi) in enumerate(_OD_RANGES):
            v = hed[:, s]
            feats += [_moments(v), _hist(v, lo, hi, _BINS)]
        lum = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        flat = lum.flatten(1)
        feats += [_hist(flat, 0.0, 1.0, _BINS), flat.mean(1, keepdim=True), flat.std(1, keepdim=True)]
        feats += [_local_var(lum, 3), _local_var(lum, 7), _gradients(lum), _lbp(lum, 1), _lbp(lum, 2), _spectrum(lum), _blobs(lum)]
        out = torch.cat([f.reshape(b, -1).float() for f in feats], dim=1)
        return out
