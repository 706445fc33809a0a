"""Automatic placement of a 2D section in a 3D volume: depth and in-plane affine without landmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hestkit.errors import RegistrationError
from hestkit.section_registration import masked_ncc, register_section
from hestkit.slide import open_slide
from hestkit.synthetic import SyntheticVolume, make_volume
from hestkit.volume_readers import open_volume

SLAB_UM = 4.0  # one slab of the default 3D pair (36 um over 9 planes)


def _volume(root: Path, seed: int, rot: float, z: float) -> SyntheticVolume:
    return make_volume(
        root / f"v{seed}", volume_id=f"v{seed}", seed=seed, shape_zyx=(24, 200, 200), section_depths_um=[z],
        rotation_deg=rot, section_pixel_size_um=1.0, n_genes=8,
    )


@pytest.fixture(scope="module")
def volumes(tmp_path_factory: pytest.TempPathFactory) -> dict[int, SyntheticVolume]:
    root = tmp_path_factory.mktemp("reg")
    return {0: _volume(root, 0, 30.0, 22.0), 1: _volume(root, 1, -20.0, 30.0)}


def test_masked_ncc_finds_a_known_offset_under_partial_overlap() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(60, 70))
    g = f[20:50, 25:65].copy()
    mf, mg = np.ones_like(f), np.ones_like(g)
    mg[:5] = 0  # part of the template is invalid: it must not count
    g[:5] = 100.0
    ncc, n = masked_ncc(f, mf, g, mg)
    ky, kx = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    assert (ky - (g.shape[0] - 1), kx - (g.shape[1] - 1)) == (20, 25)
    assert ncc.max() == pytest.approx(1.0, abs=1e-6) and n.max() == pytest.approx(mg.sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_register_finds_depth_and_affine(volumes: dict[int, SyntheticVolume], seed: int) -> None:
    v = volumes[seed]
    sec = v.sections[0]
    with open_slide(sec.image_path) as sl:
        thumb, factor = sl.thumbnail(512)
    r = register_section(thumb, sec.pixel_size_um, open_volume(v.path), section_px_per_image_px=factor, max_rotation_deg=45)
    assert abs(r.z_um - sec.z_um) <= SLAB_UM, (r.z_um, sec.z_um)
    pts = sec.centres_px[sec.in_tissue]
    err = np.linalg.norm(r.affine.apply(pts) - sec.affine.apply(pts), axis=1)
    assert err.max() < 10.0, err.max()  # micrometres, over every in-tissue spot
    true_rot = np.degrees(np.arctan2(sec.affine.to_array()[1, 0], sec.affine.to_array()[0, 0]))
    assert abs(r.rotation_deg - true_rot) < 1.0 and r.score > 0.8 and r.confidence > 0.5
    assert len(r.depth_profile) == 24 and len(r.residuals_um) > 0


def test_a_section_of_another_block_is_refused(volumes: dict[int, SyntheticVolume]) -> None:
    sec = volumes[1].sections[0]
    with open_slide(sec.image_path) as sl:
        thumb, factor = sl.thumbnail(512)
    with pytest.raises(RegistrationError, match="landmarks"):
        register_section(thumb, 1.0, open_volume(volumes[0].path), section_px_per_image_px=factor, max_rotation_deg=45)
    with pytest.raises(RegistrationError, match=r"z_range_um=\(10, 500\) is not within") as ei:
        register_section(thumb, 1.0, open_volume(volumes[0].path), z_range_um=(10.0, 500.0))
    from cli._common import error_text  # the CLI spells the same fix as its flags

    assert "--z-range-um 10 500 is not within" in error_text(ei.value) and "give --z-range-um Z0 Z1 within" in error_text(ei.value)
    with pytest.raises(RegistrationError, match="pixel size"):
        register_section(thumb, float("nan"), open_volume(volumes[0].path))
