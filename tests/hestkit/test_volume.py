"""Volumes: readers of each 3D input format, the OME-Zarr writer, sub-volume geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hestkit.errors import ReaderError, VolumeError, VoxelSizeError
from hestkit.ngff import NgffVolumeWriter, pyramid_plan, write_volume_ngff
from hestkit.volume import (
    VolumePairSpec,
    _z_weights,
    best_volume_level,
    extract_subvolume,
    extract_subvolumes,
)
from hestkit.volume_readers import ArrayVolume, NgffVolume, open_volume


def _vol(shape=(12, 70, 90, 2), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# -- readers: each format round-trips voxel values and voxel size ----------------------------------
def test_ome_tiff_zcyx_roundtrip(tmp_path: Path) -> None:
    a = _vol()
    p = tmp_path / "v.ome.tif"
    md = {"axes": "ZCYX", "PhysicalSizeZ": 3.0, "PhysicalSizeY": 0.75, "PhysicalSizeX": 0.75}
    tifffile.imwrite(p, np.moveaxis(a, 3, 1), ome=True, metadata=md, photometric="minisblack")
    v = open_volume(p)
    assert v.shape_zyx == (12, 70, 90) and v.channels == 2
    assert v.voxel_size_um == pytest.approx((3.0, 0.75, 0.75))
    np.testing.assert_array_equal(v.read(slice(0, 12), slice(0, 70), slice(0, 90)), a)
    np.testing.assert_array_equal(v.read(slice(3, 5), slice(10, 20), slice(7, 9)), a[3:5, 10:20, 7:9])


def test_ome_tiff_units_are_converted(tmp_path: Path) -> None:
    a = _vol((4, 20, 20, 1))[..., 0]
    p = tmp_path / "v.ome.tif"
    md = {"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "nm", "PhysicalSizeY": 0.001, "PhysicalSizeYUnit": "mm"}
    md.update({"PhysicalSizeX": 1.0, "PhysicalSizeXUnit": "µm"})
    tifffile.imwrite(p, a, ome=True, metadata=md)
    assert open_volume(p).voxel_size_um == pytest.approx((0.002, 1.0, 1.0))


def test_imagej_hyperstack_spacing(tmp_path: Path) -> None:
    a = _vol((6, 30, 40, 1))[..., 0]
    p = tmp_path / "ij.tif"
    tifffile.imwrite(p, a, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"spacing": 2.5, "unit": "micron", "axes": "ZYX"})
    v = open_volume(p)
    assert v.voxel_size_um == pytest.approx((2.5, 0.5, 0.5))
    np.testing.assert_array_equal(v.read(slice(0, 6), slice(0, 30), slice(0, 40))[..., 0], a)


def test_plain_multipage_tiff_needs_voxel_size(tmp_path: Path) -> None:
    a = _vol((5, 16, 18, 1))[..., 0]
    p = tmp_path / "stack.tif"
    with tifffile.TiffWriter(p) as tw:
        for plane in a:
            tw.write(plane, contiguous=False)
    with pytest.raises(VoxelSizeError, match=r"voxel_size_um=\(Z, Y, X\)"):
        open_volume(p)
    v = open_volume(p, (4.0, 1.0, 1.0))
    assert v.shape_zyx == (5, 16, 18)
    np.testing.assert_array_equal(v.read(slice(1, 4), slice(0, 16), slice(0, 18))[..., 0], a[1:4])


def test_slice_folder_natural_order(tmp_path: Path) -> None:
    a = _vol((11, 20, 24, 3))
    d = tmp_path / "slices"
    d.mkdir()
    for k in range(11):
        Image.fromarray(a[k]).save(d / f"slice_{k}.png")  # slice_10 sorts after slice_9
    v = open_volume(d, (5.0, 1.0, 1.0))
    assert v.shape_zyx == (11, 20, 24) and v.channels == 3
    np.testing.assert_array_equal(v.read(slice(0, 11), slice(0, 20), slice(0, 24)), a)


def test_slice_folder_size_mismatch_names_the_file(tmp_path: Path) -> None:
    d = tmp_path / "slices"
    d.mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(d / "a1.png")
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(d / "a2.png")
    v = open_volume(d, (1.0, 1.0, 1.0))
    with pytest.raises(ReaderError, match=r"a2\.png"):
        v.read(slice(0, 2), slice(0, 10), slice(0, 10))


def test_third_party_ome_zarr(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    a = _vol((10, 64, 80, 2))
    root = zarr.group(store=parse_url(tmp_path / "oz.zarr", mode="w").store)
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    write_image(
        np.moveaxis(a, 3, 0),
        root,
        axes=axes,
        scale_factors=[],
        coordinate_transformations=[[{"type": "scale", "scale": [1, 3.0, 0.5, 0.5]}]],
        storage_options={"chunks": (1, 5, 32, 32)},
    )
    v = open_volume(tmp_path / "oz.zarr")
    assert isinstance(v, NgffVolume)
    assert v.voxel_size_um == pytest.approx((3.0, 0.5, 0.5))
    np.testing.assert_array_equal(v.read(slice(0, 10), slice(0, 64), slice(0, 80)), a)


def test_uint16_is_windowed(tmp_path: Path) -> None:
    a = np.linspace(1000, 5000, 4 * 10 * 10).reshape(4, 10, 10).astype(np.uint16)
    v = open_volume(_write_ome(tmp_path / "u16.ome.tif", a), intensity_range=(1000, 5000))
    out = v.read(slice(0, 4), slice(0, 10), slice(0, 10))[..., 0]
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    np.testing.assert_allclose(out.astype(float), (a - 1000.0) * 255 / 4000, atol=0.51)


def _write_ome(p: Path, a: np.ndarray) -> Path:
    tifffile.imwrite(
        p,
        a,
        ome=True,
        photometric="minisblack",
        metadata={"axes": "ZYX", "PhysicalSizeZ": 1.0, "PhysicalSizeY": 1.0, "PhysicalSizeX": 1.0},
    )
    return p


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(ReaderError, match="does not exist"):
        open_volume(tmp_path / "missing.tif")
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(ReaderError, match="not a volume format"):
        open_volume(tmp_path / "x.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReaderError, match="no slice images"):
        open_volume(tmp_path / "empty")
    with pytest.raises(VoxelSizeError):
        open_volume(_write_ome(tmp_path / "v.ome.tif", np.zeros((2, 4, 4), np.uint8)), (1.0, -1.0, 1.0))


# -- the OME-Zarr writer --------------------------------------------------------------------------
def test_ngff_pyramid_is_valid_and_pooled(tmp_path: Path) -> None:
    from ome_zarr_models.v05.image import Image as NgffImage

    a = _vol((8, 96, 80, 2))
    w = write_volume_ngff(ArrayVolume(a, (1.0, 1.0, 1.0)), tmp_path / "v.zarr", chunks_zyx=(4, 32, 32))
    assert w.factors == [(1, 1, 1)]
    w = NgffVolumeWriter(
        tmp_path / "p.zarr", (8, 96, 80), channels=2, voxel_size_um=(1.0, 1.0, 1.0), chunks_zyx=(4, 32, 32), min_side=24
    )
    w.write_from(ArrayVolume(a, (1.0, 1.0, 1.0)), tile_yx=32)
    w.build_pyramid()
    assert w.factors[:2] == [(1, 1, 1), (2, 2, 2)]
    NgffImage.from_zarr(zarr.open_group(str(tmp_path / "p.zarr"), mode="r"))  # validates the NGFF 0.5 metadata
    from ome_zarr_models.common.omero import Omero

    omero = Omero.model_validate(zarr.open_group(str(tmp_path / "p.zarr"), mode="r").attrs["ome"]["omero"])  # type: ignore[index]
    assert [(c.model_extra or {}).get("label") for c in omero.channels] == ["c0", "c1"]
    assert all((c.window.min, c.window.max) == (0, 255) for c in omero.channels)  # uint8: the dtype's range
    f = NgffVolumeWriter(tmp_path / "f.zarr", (4, 32, 32), channels=1, voxel_size_um=(1, 1, 1), dtype="float32", channel_names=["EPCAM"])
    f.write_block((0, 0, 0), np.linspace(-2.0, 3.0, 4 * 32 * 32, dtype=np.float32).reshape(4, 32, 32))
    f.windows_from_data(level=0)
    (ch,) = Omero.model_validate(f.group.attrs["ome"]["omero"]).channels
    assert (ch.model_extra or {}).get("label") == "EPCAM" and (ch.window.min, ch.window.max) == (-2.0, 3.0)
    assert -2.0 < ch.window.start < ch.window.end < 3.0
    # lazily as xarray, with micrometre voxel-centre coordinates and named channels
    import dask.array as da

    xa = open_volume(tmp_path / "p.zarr").to_xarray(level=1)  # type: ignore[attr-defined]
    assert xa.dims == ("c", "z", "y", "x") and isinstance(xa.data, da.Array)
    np.testing.assert_allclose(xa["y"].values, (np.arange(48) + 0.5) * 2.0)
    assert list(xa["c"].values) == ["c0", "c1"] and xa["x"].attrs["units"] == "micrometer"
    np.testing.assert_array_equal(xa.isel(c=1).values, open_volume(tmp_path / "p.zarr").read(slice(0, 4), slice(0, 48), slice(0, 40), 1)[..., 1])
    with pytest.raises(ValueError, match="level 9"):
        open_volume(tmp_path / "p.zarr").to_xarray(level=9)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="channel names"):
        NgffVolumeWriter(tmp_path / "g.zarr", (4, 32, 32), channels=2, voxel_size_um=(1, 1, 1), channel_names=["a"])
    v = open_volume(tmp_path / "p.zarr")
    assert len(v.levels) == len(w.factors) and v.levels[1].scale_zyx == (2.0, 2.0, 2.0)
    lvl1 = v.read(slice(0, 4), slice(0, 48), slice(0, 40), 1).astype(float)
    expect = a.astype(float).reshape(4, 2, 48, 2, 40, 2, 2).mean(axis=(1, 3, 5))
    assert np.abs(lvl1 - expect).max() <= 0.5


def test_pyramid_plan_keeps_thick_sections() -> None:
    plan = pyramid_plan((40, 4000, 4000), (4.0, 0.5, 0.5), min_side=256)
    assert plan[1] == (1, 2, 2)  # 4 um sections are not pooled in z while pixels are finer
    assert all(fz * 4.0 <= 1.5 * fy * 0.5 or fz == 1 for fz, fy, _ in plan)


# -- sub-volume geometry ----------------------------------------------------------------------------
def test_voxel_aligned_cut_is_exact() -> None:
    a = _vol((20, 100, 100, 2), seed=3)
    v = ArrayVolume(a, (2.0, 1.0, 1.0))
    spec = VolumePairSpec(size_um=40, size_px=40, depth_um=6, n_slices=3)
    # centre on the corner between voxels 49/50 in y and 59/60 in x, depth = centre of plane 7
    out = extract_subvolume(v, (15.0, 50.0, 60.0), spec)
    np.testing.assert_array_equal(out, a[6:9, 30:70, 40:80])


def test_cut_outside_is_filled_and_batched_equals_single() -> None:
    a = _vol((10, 60, 60, 1), seed=4)
    v = ArrayVolume(a, (1.0, 1.0, 1.0))
    spec = VolumePairSpec(size_um=20, size_px=20, depth_um=3, n_slices=3)
    one = extract_subvolume(v, (0.5, 5.0, 5.0), spec, fill=7)
    assert (one[0] == 7).all()  # plane above the volume
    assert (one[1, :5, :5] == 7).all() and (one[1, 5:, 5:, 0] == a[0, :15, :15, 0]).all()
    centres = np.array([[0.5, 5.0, 5.0], [5.5, 30.0, 30.0], [9.5, 59.0, 2.0]])
    many = extract_subvolumes(v, centres, spec, fill=7, block_px=16)
    for i, c in enumerate(centres):
        np.testing.assert_array_equal(many[i], extract_subvolume(v, tuple(c), spec, fill=7))


def test_z_weights_box_and_linear() -> None:
    w = _z_weights(np.array([4.0]), 4.0, 1.0, 0, 10)  # slab [2, 6) = slices 2..5
    np.testing.assert_allclose(w[0], [0, 0, 0.25, 0.25, 0.25, 0.25, 0, 0, 0, 0])
    w = _z_weights(np.array([2.5]), 1.0, 2.0, 0, 4)  # between slice centres 1 and 3 um
    np.testing.assert_allclose(w[0], [0.25, 0.75, 0, 0])  # 2.5 um is 3/4 of the way to the centre of slice 1


def test_best_level_picks_coarsest_sufficient(tmp_path: Path) -> None:
    a = _vol((16, 128, 128, 1))
    w = NgffVolumeWriter(
        tmp_path / "p.zarr", (16, 128, 128), channels=1, voxel_size_um=(0.25, 0.25, 0.25), chunks_zyx=(8, 32, 32), min_side=16
    )
    w.write_from(ArrayVolume(a, (0.25,) * 3))
    w.build_pyramid()
    v = open_volume(tmp_path / "p.zarr")
    assert best_volume_level(v, VolumePairSpec(size_um=112, size_px=224, depth_um=4, n_slices=4)) == 1  # 0.5 um in-plane
    assert best_volume_level(v, VolumePairSpec(size_um=112, size_px=112, depth_um=8, n_slices=4)) == 2


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    vz=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    vxy=st.sampled_from([0.25, 0.5, 1.0, 2.0]),
    fz=st.floats(0.3, 0.7),
    fy=st.floats(0.3, 0.7),
    fx=st.floats(0.3, 0.7),
    size_px=st.sampled_from([16, 24]),
    ps=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_linear_ramp_lands_where_the_frame_says(
    vz: float, vxy: float, fz: float, fy: float, fx: float, size_px: int, ps: float
) -> None:
    """On a volume whose value is linear in (z, y, x) um, every output pixel of a sub-volume
    equals the ramp at that pixel's centre in the volume frame (any voxel size, any centre)."""
    shape = (24, 80, 80)
    ext = np.array(shape) * np.array([vz, vxy, vxy])
    zc, yc, xc = fz * ext[0], fy * ext[1], fx * ext[2]
    spec = VolumePairSpec(size_um=size_px * ps, size_px=size_px, depth_um=3 * vz, n_slices=3)
    gz, gy, gx = [(np.arange(n) + 0.5) * v for n, v in zip(shape, (vz, vxy, vxy), strict=True)]
    cz, cy, cx = 0.9 / ext[0] * 60, 0.5 / ext[1] * 120, 0.3 / ext[2] * 120

    def ramp(z, y, x):  # type: ignore[no-untyped-def]
        return 20.0 + cz * z + cy * y + cx * x

    a = ramp(gz[:, None, None], gy[None, :, None], gx[None, None, :])
    v = ArrayVolume(np.rint(a).astype(np.uint8), (vz, vxy, vxy))
    out = extract_subvolume(v, (zc, yc, xc), spec)[..., 0].astype(float)
    ux = xc - spec.size_um / 2 + (np.arange(size_px) + 0.5) * ps
    uy = yc - spec.size_um / 2 + (np.arange(size_px) + 0.5) * ps
    uz = zc + spec.slice_offsets_um()
    # only pixels whose sampling footprint lies inside the volume (no clamping at the faces)
    margin = max(ps, vxy) * 2
    okx = (ux > margin) & (ux < ext[2] - margin)
    oky = (uy > margin) & (uy < ext[1] - margin)
    okz = (uz - spec.slice_spacing_um / 2 >= 0) & (uz + spec.slice_spacing_um / 2 <= ext[0])
    expect = ramp(uz[:, None, None], uy[None, :, None], ux[None, None, :])
    sel = okz[:, None, None] & oky[None, :, None] & okx[None, None, :]
    if sel.any():
        assert np.abs(out - expect)[sel].max() <= 1.6  # rounding of the stored ramp and of the output


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        VolumePairSpec(size_px=4)
    with pytest.raises(ValueError):
        VolumePairSpec(n_slices=0)
    s = VolumePairSpec()
    assert s.pixel_size_um == 0.5 and s.centre_slice == 4 and s.slice_offsets_um()[4] == 0.0
    with pytest.raises(VolumeError):
        extract_subvolume(ArrayVolume(np.zeros((2, 4, 4), np.uint8), (1, 1, 1)), (np.nan, 1.0, 1.0), s)


def test_coarser_level_gives_the_same_picture(tmp_path: Path) -> None:
    """A smooth volume cut from level 1 (0.5 um voxels for 0.5 um pixels) and from level 0
    (0.25 um voxels, low-passed) agree: levels share one frame."""
    z, y, x = np.meshgrid(np.arange(16), np.arange(128), np.arange(128), indexing="ij")
    a = (120 + 60 * np.sin(y / 9.0) * np.cos(x / 13.0) + 3 * z).astype(np.uint8)
    w = NgffVolumeWriter(
        tmp_path / "s.zarr", a.shape, channels=1, voxel_size_um=(0.25, 0.25, 0.25), chunks_zyx=(8, 32, 32), min_side=16
    )
    w.write_from(ArrayVolume(a, (0.25,) * 3))
    w.build_pyramid()
    v = open_volume(tmp_path / "s.zarr")
    spec = VolumePairSpec(size_um=16, size_px=32, depth_um=1.0, n_slices=1)
    c = (2.0, 16.0, 15.0)
    l0 = extract_subvolume(v, c, spec, level=0).astype(float)
    l1 = extract_subvolume(v, c, spec, level=1).astype(float)
    assert best_volume_level(v, spec) == 1
    assert np.abs(l0 - l1)[:, 2:-2, 2:-2].mean() < 1.5


def test_pyramid_blocks_and_odd_edges(tmp_path: Path) -> None:
    """Levels are pooled block by block (several blocks here) and odd edges replicate."""
    a = _vol((5, 1100, 71, 1), seed=7)
    w = NgffVolumeWriter(
        tmp_path / "o.zarr", (5, 1100, 71), channels=1, voxel_size_um=(1.0, 1.0, 1.0), chunks_zyx=(2, 16, 16), min_side=300
    )
    w.write_from(ArrayVolume(a, (1.0, 1.0, 1.0)), tile_yx=256)
    w.build_pyramid()
    assert w.factors[1] == (2, 2, 2)
    got = open_volume(tmp_path / "o.zarr").read(slice(0, 3), slice(0, 550), slice(0, 36), 1)[..., 0].astype(float)
    p = np.pad(a[..., 0].astype(float), ((0, 1), (0, 0), (0, 1)), mode="edge")
    want = np.rint(p.reshape(3, 2, 550, 2, 36, 2).mean(axis=(1, 3, 5)))
    np.testing.assert_array_equal(got, want)
