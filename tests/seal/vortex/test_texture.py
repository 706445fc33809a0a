"""Baseline (d): fixed 3D texture features read the structure they claim to, and the probe fits."""

from __future__ import annotations

import numpy as np
import pytest

from seal.vortex.texture import TextureProbe, feature_names, subvolume_features


def _stripes(period: float, axis: int, n: int = 1, shape: tuple[int, int, int] = (8, 32, 32)) -> np.ndarray:
    grid = np.indices(shape)[axis].astype(float)
    v = 127.5 + 100 * np.sin(2 * np.pi * grid / period)
    return np.repeat(v[None, ..., None], n, axis=0).astype(np.uint8)


def test_features_see_orientation_frequency_and_intensity() -> None:
    names = feature_names(1)
    f = {k: dict(zip(names, row, strict=True)) for k, row in {
        "z": subvolume_features(_stripes(4, 0))[0],
        "x": subvolume_features(_stripes(4, 2))[0],
        "x_fine": subvolume_features(_stripes(2.5, 2))[0],
        "x_coarse": subvolume_features(_stripes(16, 2))[0],
    }.items()}
    assert subvolume_features(_stripes(4, 0, n=3)).shape == (3, len(names))
    # the structure tensor's main axis: along z for stripes that change with depth, in-plane otherwise
    assert f["z"]["c0_st_axis_z"] > 0.9 and f["x"]["c0_st_axis_z"] < 0.1
    assert f["z"]["c0_depth_profile_std"] > 10 * max(f["x"]["c0_depth_profile_std"], 1e-3)
    # in-plane stripes have no z gradient; z stripes have no in-plane gradient
    assert f["x"]["c0_grad_z_mean"] < 1e-6 < f["x"]["c0_grad_x_mean"]
    assert f["z"]["c0_grad_x_mean"] < 1e-6 < f["z"]["c0_grad_z_mean"]
    # the radial spectrum moves its peak ring with the stripe frequency
    ring = lambda d: int(np.argmax([d[f"c0_ring{k}_mean"] for k in range(6)]))  # noqa: E731
    assert ring(f["x_coarse"]) < ring(f["x"]) < ring(f["x_fine"])
    dark = subvolume_features(np.full((1, 4, 16, 16, 1), 20, np.uint8))[0]
    assert dict(zip(names, dark, strict=True))["c0_hist0"] == 1.0
    with pytest.raises(ValueError, match=r"\(N, S, H, W, C\)"):
        subvolume_features(np.zeros((4, 16, 16, 1), np.uint8))


def test_probe_learns_a_nonlinear_function_of_texture() -> None:
    rng = np.random.default_rng(0)
    periods = rng.uniform(3, 14, 160)
    subs = np.concatenate([_stripes(p, 2) for p in periods])
    noise = rng.integers(-20, 20, subs.shape)
    subs = np.clip(subs.astype(int) + noise, 0, 255).astype(np.uint8)
    y = np.stack([np.log(periods), (periods - 8) ** 2], axis=1)
    feats = subvolume_features(subs)
    probe = TextureProbe().fit(feats[:120], y[:120])
    pred = probe.predict(feats[120:])
    r = [np.corrcoef(pred[:, j], y[120:, j])[0, 1] for j in range(2)]
    assert min(r) > 0.8, r
    assert probe.alpha > 0
    with pytest.raises(RuntimeError, match="fit the probe"):
        TextureProbe().predict(feats)
