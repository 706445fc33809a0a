from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hestkit.errors import PixelSizeError
from hestkit.geometry import (
    Affine,
    estimate_pixel_size_from_grid,
    fit_affine,
    resolve_pixel_size,
    visium_array_to_um,
)

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    angle=st.floats(-math.pi, math.pi),
    scale=st.floats(0.05, 20.0),
    tx=finite,
    ty=finite,
    flip=st.booleans(),
)
def test_fit_affine_recovers_a_similarity(angle: float, scale: float, tx: float, ty: float, flip: bool) -> None:
    c, s = math.cos(angle), math.sin(angle)
    m = np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty], [0, 0, 1.0]])
    if flip:
        m[:, 0] *= -1
    true = Affine.from_array(m)
    rng = np.random.default_rng(0)
    src = rng.uniform(-500, 500, (30, 2))
    fitted, resid = fit_affine(src, true.apply(src))
    np.testing.assert_allclose(fitted.to_array(), m, rtol=1e-6, atol=1e-6 * (1 + abs(tx) + abs(ty)))
    assert resid.max() < 1e-6 * (1 + abs(tx) + abs(ty))
    assert fitted.linear_scale == pytest.approx(scale, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(pts=st.lists(st.tuples(finite, finite), min_size=1, max_size=20))
def test_inverse_round_trip(pts: list[tuple[float, float]]) -> None:
    a = Affine.from_array([[0.011, 1.290, 808.0], [-1.290, 0.011, 73097.7], [0, 0, 1]])
    p = np.array(pts)
    np.testing.assert_allclose(a.inverse().apply(a.apply(p)), p, atol=1e-6)
    np.testing.assert_allclose((a.inverse() @ a).to_array(), np.eye(3), atol=1e-12)


def test_fit_affine_refuses_collinear_points() -> None:
    with pytest.raises(ValueError, match="collinear"):
        fit_affine([[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1], [2, 2]])


def test_visium_lattice_neighbours_are_100um_apart() -> None:
    # array_col steps by 2 along a row; odd rows are shifted by one column
    um = visium_array_to_um([0, 0, 1], [0, 2, 1])
    assert np.linalg.norm(um[1] - um[0]) == pytest.approx(100.0)
    assert np.linalg.norm(um[2] - um[0]) == pytest.approx(100.0)
    assert np.linalg.norm(um[2] - um[1]) == pytest.approx(100.0)


@settings(max_examples=40, deadline=None)
@given(px_um=st.floats(0.1, 5.0), angle=st.floats(-0.2, 0.2), noise=st.floats(0, 0.5))
def test_pixel_size_from_grid(px_um: float, angle: float, noise: float) -> None:
    rows, cols = np.meshgrid(np.arange(10), np.arange(0, 20, 2), indexing="ij")
    cols = cols + (rows % 2)
    um = visium_array_to_um(rows.ravel(), cols.ravel())
    c, s = math.cos(angle), math.sin(angle)
    px = (um @ np.array([[c, -s], [s, c]]).T) / px_um + 300
    px += np.random.default_rng(1).normal(0, noise, px.shape)
    assert estimate_pixel_size_from_grid(um, px) == pytest.approx(px_um, rel=0.01)


def test_pixel_size_degenerate_grid_gives_none() -> None:
    assert estimate_pixel_size_from_grid([[0, 0], [100, 0]], [[0, 0], [200, 0]]) is None


def test_resolve_pixel_size_rules() -> None:
    d = resolve_pixel_size(embedded=0.5, estimated=0.51)
    assert (d.value, d.source, d.warning) == (0.5, "embedded", None)
    d = resolve_pixel_size(embedded=0.25, estimated=0.5)
    assert d.value == 0.5 and d.source == "estimated"
    assert d.warning is not None and "spot spacing" in d.warning
    assert resolve_pixel_size(embedded=0.25, estimated=0.5, override=0.3).value == 0.3
    assert resolve_pixel_size(embedded=None, estimated=0.7).source == "estimated"
    assert resolve_pixel_size(embedded=None, estimated=None, metadata=0.9).source == "metadata"
    with pytest.raises(PixelSizeError, match="pixel_size_um=UM"):
        resolve_pixel_size(embedded=None, estimated=None)
    with pytest.raises(PixelSizeError):
        resolve_pixel_size(embedded=None, estimated=None, override=-1.0)
