"""Grid and tissue-mask maths of dense prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hestkit.volume_readers import ArrayVolume
from seal.vortex._mask import otsu_threshold, tissue_fraction, volume_threshold
from seal.vortex.predict import grid_shape


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 400), st.integers(1, 4000), st.integers(1, 4000)),
    voxel=st.tuples(st.floats(0.3, 8.0), st.floats(0.3, 8.0), st.floats(0.3, 8.0)),
    stride=st.tuples(st.floats(2.0, 200.0), st.floats(2.0, 200.0), st.floats(2.0, 200.0)),
)
def test_grid_covers_the_volume(
    shape: tuple[int, int, int], voxel: tuple[float, float, float], stride: tuple[float, float, float]
) -> None:
    g = grid_shape(shape, voxel, stride)
    for n, s, v, d in zip(g, stride, voxel, shape, strict=True):
        extent = d * v
        assert n >= 1
        first, last = 0.5 * s, (n - 0.5) * s
        assert first < max(extent, s)  # the first point lies inside (or the grid has one point)
        assert n * s >= extent - 1e-6  # the cells of the grid tile the whole extent
        assert last < extent + 0.5 * s + 1e-6  # and no cell starts beyond it
        assert (n - 1) * s < extent + 1e-6


def test_otsu_and_tissue_fraction() -> None:
    hist = np.zeros(256)
    hist[20] = 1000
    hist[180] = 500
    t = otsu_threshold(hist)
    assert 20 <= t < 180
    planes = np.zeros((2, 4, 4, 1), np.uint8)
    planes[0, :2] = 200  # half tissue on a dark background
    frac = tissue_fraction(planes, t, "dark")
    assert frac.tolist() == [0.5, 0.0]
    assert tissue_fraction(255 - planes, 255 - t, "bright").tolist() == [0.5, 0.0]
    a = np.full((8, 32, 32, 1), 15, np.uint8)
    a[:, 8:24, 8:24] = 170
    assert 15 <= volume_threshold(ArrayVolume(a, (1.0, 1.0, 1.0))) < 170


@pytest.mark.gpu
def test_bf16_gpu_prediction_matches_cpu() -> None:
    from seal.vortex import ModelConfig, build_model

    model, px = build_model(ModelConfig(backbone="test_vit", create_kwargs={"img_size": 32}, n_slices=3), 4, 1)
    x = torch.rand(6, 3, 1, px, px)
    with torch.no_grad():
        cpu = model.eval().predict(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            gpu = model.cuda().predict(x.cuda()).float().cpu()
    assert torch.allclose(cpu, gpu, atol=0.05, rtol=0.05)
