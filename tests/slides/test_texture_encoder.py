"""The ``texture`` encoder: a fixed colour/texture feature extractor usable as any encoder spec."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seal.data import PatchTransform
from seal.encoders import build_backbone, parse_encoder
from seal.errors import BackboneError
from seal.texture_encoder import TextureEncoder, _lbp, feature_names


def _tile(rng: np.random.Generator, size: int, n_dots: int, radius: float, colour: tuple[int, int, int]) -> np.ndarray:
    img = np.empty((size, size, 3), np.float64)
    img[:] = (228, 168, 204)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(n_dots):
        cy, cx = rng.uniform(0, size, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = colour
    img += rng.uniform(-4, 4, (size, size, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def test_spec_key_dim_and_errors() -> None:
    spec = parse_encoder("texture")
    assert spec.handcrafted and spec.label == "texture" and spec.dim == len(feature_names())
    assert spec.key == parse_encoder("texture").key and spec.key.startswith("texture-")
    assert spec.key != parse_encoder("timm:test_resnet").key
    enc = spec.open("cpu")
    assert enc.dim == spec.dim and enc.data_config["input_size"] == [3, 0, 0]
    with pytest.raises(BackboneError, match="no weights"):
        parse_encoder("texture@w.safetensors")
    with pytest.raises(BackboneError, match="fixed feature extractor"):
        build_backbone("texture")


def test_features_are_fixed_native_size_and_describe_the_tile() -> None:
    rng = np.random.default_rng(0)
    model, dcfg = parse_encoder("texture").load(torch.device("cpu"))
    tf = PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"])
    sparse = _tile(rng, 64, 3, 3.0, (112, 62, 150))
    dense = _tile(rng, 64, 40, 4.0, (86, 44, 132))
    pale = _tile(rng, 64, 3, 12.0, (246, 230, 240))
    x = torch.stack([tf(t) for t in (sparse, dense, pale)])
    assert x.shape == (3, 3, 64, 64)  # no resampling: the tile's own size
    f = model(x).numpy()
    assert f.shape == (3, len(feature_names())) and np.isfinite(f).all()
    assert np.array_equal(f, model(x).numpy())  # deterministic
    col = {n: i for i, n in enumerate(feature_names())}
    # histograms are shares
    for prefix in ("haem_hist", "eosin_hist", "lum_hist", "lbp_r1_", "lbp_r2_"):
        idx = [i for n, i in col.items() if n.startswith(prefix)]
        assert np.allclose(f[:, idx].sum(1), 1.0, atol=1e-5)
    # dense dark nuclei: more haematoxylin; pale lumens: brighter, bright blobs at their scale
    assert f[1, col["haem_mean"]] > f[0, col["haem_mean"]] + 0.05
    assert f[1, col["dog2_dark"]] > f[0, col["dog2_dark"]]
    assert f[2, col["lum_mean"]] > f[0, col["lum_mean"]] and f[2, col["dog4_bright"]] > f[0, col["dog4_bright"]]
    # fp32 statistics under a bf16 autocast (slide-embed's CUDA path)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = model(x)
    assert g.dtype == torch.float32 and np.allclose(g.numpy(), f, atol=1e-5)
    # another tile size works too (48 px)
    assert model(torch.stack([tf(sparse[:48, :48])])).shape == (1, len(feature_names()))


def test_lbp_matches_scikit_image() -> None:
    from skimage.feature import local_binary_pattern

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 40)).astype(np.uint8)
    for r in (1, 2):
        ref = local_binary_pattern(img, 8, r, method="uniform")[r:-r, r:-r].astype(int)
        want = np.bincount(ref.ravel(), minlength=10) / ref.size
        got = _lbp(torch.tensor(img, dtype=torch.float32)[None, None] / 255.0, r)[0].numpy()
        assert np.abs(got - want).max() < 0.02, (r, got, want)


def test_texture_encoder_has_no_parameters() -> None:
    assert sum(p.numel() for p in TextureEncoder().parameters()) == 0
