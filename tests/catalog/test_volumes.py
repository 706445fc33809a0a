"""Volumes in the catalog: ingest round trips, section links, 3D pairs, bad input."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import catalog
import catalog.volumes
from catalog.errors import LinkError, QueryError, VolumeExistsError
from hestkit.errors import ReaderError, VolumeError, VoxelSizeError
from hestkit.sample import ReadOptions
from hestkit.synthetic import SyntheticVolume, make_volume
from hestkit.volume import VolumePairSpec
from hestkit.volume_readers import open_volume

REPO = Path(__file__).resolve().parents[2]
SPEC = VolumePairSpec(size_um=48.0, size_px=48, depth_um=6.0, n_slices=3)


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVolume:
    return make_volume(
        tmp_path_factory.mktemp("vcohort") / "vol0",
        volume_id="vol0",
        seed=5,
        shape_zyx=(16, 160, 160),
        voxel_size_um=(2.0, 2.0, 2.0),
        section_depths_um=(9.0, 17.0, 25.0),
        modality="otls",
        n_genes=24,
        section_pixel_size_um=1.0,
        landmark_noise_um=0.3,
    )


@pytest.fixture(scope="module")
def vcat(vol: SyntheticVolume, tmp_path_factory: pytest.TempPathFactory) -> catalog.Catalog:
    cat = catalog.create(tmp_path_factory.mktemp("vcat") / "catalog")
    cat.ingest_volume(vol.path, "vol0", modality="otls", organ="Prostate", patient="P5")
    rep = cat.ingest([s.path for s in vol.sections], options=ReadOptions(organ="Prostate", patient="P5"), workers=1)
    assert not rep.failed, rep.failed[0].message
    s0, s1, _ = vol.sections
    cat.link_section(s0.sample_id, "vol0", s0.z_um, landmarks=s0.landmarks_path)
    cat.link_section(s1.sample_id, "vol0", s1.z_um, affine=s1.affine_path)
    return cat  # the third section stays unlinked (used by the channel-mismatch test)


def snapshot(root: Path) -> dict[str, str]:
    """Every file of a catalog (but the lock) and a hash of its content."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".lock":
            out[str(p.relative_to(root))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


# -- ingest ------------------------------------------------------------------------------------
def test_ingest_volume_roundtrips_voxels_and_size(vol: SyntheticVolume, vcat: catalog.Catalog) -> None:
    from ome_zarr_models.v05.image import Image as NgffImage

    src = open_volume(vol.path)
    stored = vcat.volume("vol0")
    assert stored.shape_zyx == vol.shape_zyx and stored.channels == 2
    assert stored.voxel_size_um == pytest.approx(vol.voxel_size_um)
    full = (slice(0, 16), slice(0, 160), slice(0, 160))
    np.testing.assert_array_equal(stored.read(*full), src.read(*full))
    row = vcat.volumes().set_index("volume_id").loc["vol0"]
    assert row["modality"] == "otls" and row["organ"] == "Prostate" and row["patient"] == "P5"
    assert row["shape_zyx"] == (16, 160, 160) and row["voxel_size_um"] == (2.0, 2.0, 2.0) and row["n_sections"] == 2
    m = vcat.volume_manifest("vol0")
    assert m["encoding-type"] == "hestkit-volume-manifest" and m["encoding-version"] == "1.0.0"
    group = zarr.open_group(str(vcat.path / m["zarr_path"]), mode="r")
    assert group.attrs["encoding-type"] == "hestkit-volume" and group.attrs["encoding-version"] == "1.0.0"
    assert group["0"].chunks[1:] == (16, 160, 160) or group["0"].chunks[0] == 1
    NgffImage.from_zarr(group)  # valid OME-NGFF 0.5


def _formats(tmp: Path, a: np.ndarray) -> dict[str, tuple[Path, tuple[float, float, float] | None]]:
    """The same (z, y, x, c) array in each input format hestkit reads."""
    out: dict[str, tuple[Path, tuple[float, float, float] | None]] = {}
    p = tmp / "v.ome.tif"
    md = {"axes": "ZCYX", "PhysicalSizeZ": 4.0, "PhysicalSizeY": 1.5, "PhysicalSizeX": 1.5}
    tifffile.imwrite(p, np.moveaxis(a, 3, 1), ome=True, metadata=md, photometric="minisblack")
    out["ome-tiff"] = (p, None)
    p = tmp / "plain.tif"
    with tifffile.TiffWriter(p) as tw:
        for plane in a[..., 0]:
            tw.write(plane, metadata=None)
    out["multipage-tiff"] = (p, (4.0, 1.5, 1.5))
    d = tmp / "slices"
    d.mkdir()
    for k, plane in enumerate(a[..., 0]):
        Image.fromarray(plane).save(d / f"z{k}.png")
    out["slice-folder"] = (d, (4.0, 1.5, 1.5))
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    root = zarr.group(store=parse_url(tmp / "oz.zarr", mode="w").store)
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    write_image(
        np.moveaxis(a, 3, 0),
        root,
        axes=axes,
        scale_factors=[],
        coordinate_transformations=[[{"type": "scale", "scale": [1, 4.0, 1.5, 1.5]}]],
    )
    out["ome-zarr"] = (tmp / "oz.zarr", None)
    return out


def test_ingest_each_input_format(tmp_path: Path) -> None:
    a = np.random.default_rng(9).integers(0, 256, (6, 40, 52, 2), dtype=np.uint8)
    cat = catalog.create(tmp_path / "cat")
    for name, (path, vs) in _formats(tmp_path, a).items():
        single = name in ("multipage-tiff", "slice-folder")
        res = cat.ingest_volume(path, name, vs, modality="microct" if single else "otls")
        stored = cat.volume(name)
        want = a[..., :1] if single else a
        assert stored.voxel_size_um == pytest.approx((4.0, 1.5, 1.5)), name
        np.testing.assert_array_equal(stored.read(slice(0, 6), slice(0, 40), slice(0, 52)), want, err_msg=name)
        assert res.voxel_size_um == pytest.approx((4.0, 1.5, 1.5))
    assert sorted(cat.volumes()["volume_id"]) == sorted(["ome-tiff", "multipage-tiff", "slice-folder", "ome-zarr"])


def test_section_stack_assembles_the_sections(vol: SyntheticVolume, tmp_path: Path) -> None:
    cat = catalog.create(tmp_path / "cat")
    secs = vol.sections
    cat.ingest_section_stack([s.image_path for s in secs], [s.affine for s in secs], 8.0, "stack", pixel_size_um=2.0)
    v = cat.volume("stack")
    assert v.channels == 3 and v.shape_zyx[0] == 3 and v.voxel_size_um == pytest.approx((8.0, 2.0, 2.0))
    j, i = np.meshgrid(np.arange(30, 130), np.arange(30, 130), indexing="ij")
    for k, s in enumerate(secs):
        plane = v.read(slice(k, k + 1), slice(30, 130), slice(30, 130))[0].astype(float)
        pts = np.stack([np.full(j.size, s.z_um), (j.ravel() + 0.5) * 2.0, (i.ravel() + 0.5) * 2.0], axis=1)
        truth = vol.tissue.render(pts, "he").reshape(plane.shape).astype(float)
        r = np.corrcoef(plane.ravel(), truth.ravel())[0, 1]
        assert r > 0.9, (k, r)


# -- links and pairs -----------------------------------------------------------------------------
def test_link_section_maps_spots_to_their_voxels(vol: SyntheticVolume, vcat: catalog.Catalog) -> None:
    s0 = vol.sections[0]
    link = vcat.section_link(s0.sample_id)
    assert link.affine_source == "landmarks" and len(link.residuals_um) == 6
    assert float(link.residuals_um.max()) < 1.0
    view = vcat.volume_pairs(volume_ids=["vol0"], sample_ids=[s0.sample_id], spec=SPEC)
    truth = dict(zip(s0.barcodes, s0.centres_um_zyx, strict=True))
    got = view.obs[["z_um", "y_um", "x_um"]].to_numpy()
    want = np.array([truth[b] for b in view.obs["barcode"]])
    assert len(view) > 3
    assert np.abs(got - want).max() < 1.0  # landmark noise 0.3 um
    # a known spot lands in the right voxel, and that voxel holds the tissue rendered there
    vs = np.asarray(vol.voxel_size_um)
    k = int(np.argmin(np.abs((want / vs) % 1 - 0.5).max(axis=1)))  # the spot farthest from voxel faces
    idx = np.floor(got[k] / vs).astype(int)
    np.testing.assert_array_equal(idx, np.floor(want[k] / vs).astype(int))
    voxel = vcat.volume("vol0").read(*(slice(int(a), int(a) + 1) for a in idx))[0, 0, 0]
    np.testing.assert_array_equal(voxel, vol.render(vol.voxel_centres_um(idx[None]))[0])


def test_every_pair_shows_its_own_morphology(vol: SyntheticVolume, vcat: catalog.Catalog) -> None:
    """Pixel-level: the centre plane of each pair is the stored volume sampled (trilinear) at
    that pair's pixel centres around its spot; and it matches the tissue at its own spot
    better than the tissue at any other spot."""
    from scipy.ndimage import map_coordinates

    view = vcat.volume_pairs(volume_ids=["vol0"], spec=SPEC)
    stored = vcat.volume("vol0").read(slice(0, 16), slice(0, 160), slice(0, 160)).astype(float)
    vs = np.asarray(vol.voxel_size_um)
    offs = (np.arange(SPEC.size_px) + 0.5) * SPEC.pixel_size_um - SPEC.size_um / 2
    gy, gx = np.meshgrid(offs, offs, indexing="ij")
    truths, centres = [], []
    subs = view.subvolumes(range(len(view)))
    for i in range(len(view)):
        zc, yc, xc = view.obs.loc[i, ["z_um", "y_um", "x_um"]].to_numpy(dtype=float)
        pts = np.stack([np.full(gy.size, zc), yc + gy.ravel(), xc + gx.ravel()], axis=1)
        coords = (pts / vs - 0.5).T
        expect = np.stack([map_coordinates(stored[..., c], coords, order=1, mode="nearest") for c in range(2)], axis=1)
        centre = subs[i, SPEC.centre_slice].reshape(-1, 2).astype(float)
        inside = ((pts >= vs / 2) & (pts <= np.array(vol.tissue.extent_um) - vs / 2)).all(axis=1)
        err = np.abs(centre - expect)[inside]
        # cv2 quantises bilinear sample positions to 1/32 voxel: a few levels at the sharpest
        # edges (~200 levels per voxel); a shift of one output pixel would cost ~50 there
        assert err.max() <= 8.0 and np.percentile(err, 99) <= 2.5 and err.mean() < 0.5, (i, err.max(), err.mean())
        np.testing.assert_array_equal(subs[i], view[i][0])
        truths.append(vol.render(pts).astype(float).ravel())
        centres.append(centre.ravel())
    r = np.corrcoef(np.array(centres), np.array(truths))[: len(view), len(view) :]
    assert (np.diag(r) > 0.6).all(), np.diag(r)
    assert (np.argmax(r, axis=1) == np.arange(len(view))).all()


def test_volume_pair_view_api(vol: SyntheticVolume, vcat: catalog.Catalog) -> None:
    view = vcat.volume_pairs(volume_ids=["vol0"], spec=SPEC)
    assert set(view.obs["sample_id"]) == {vol.sections[0].sample_id, vol.sections[1].sample_id}
    assert {"volume_id", "z_um", "y_um", "x_um", "x_um_tech", "y_um_tech", "barcode", "patient"} <= set(view.obs.columns)
    assert view.genes == vol.genes
    sub, e = view[0]
    assert sub.shape == (3, 48, 48, 2) and sub.dtype == np.uint8 and e.dtype == np.float32 and e.shape == (24,)
    X = view.expression()
    np.testing.assert_array_equal(X[0].toarray().ravel(), e)
    # the counts are the section's own counts of that barcode
    s_by = {s.sample_id: s for s in vol.sections}
    for i in (0, len(view) - 1):
        s = s_by[view.obs.loc[i, "sample_id"]]
        row = s.barcodes.index(view.obs.loc[i, "barcode"])
        np.testing.assert_array_equal(X[i].toarray().ravel(), s.counts[row].toarray().ravel())
    small = view.subset([1, 2]).with_genes(["EPCAM", "ACTB"])
    assert len(small) == 2 and small.expression().shape == (2, 2)
    np.testing.assert_array_equal(small[0][0], view[1][0])
    clone = pickle.loads(pickle.dumps(view))
    np.testing.assert_array_equal(clone[0][0], sub)
    ds = view.to_torch(expression_transform=np.log1p)
    x, y = ds[0]
    assert tuple(x.shape) == (3, 2, 48, 48) and float(x.max()) <= 1.0 and tuple(y.shape) == (24,)
    assert vcat.sections(volume_id="vol0")["z_um"].tolist() == [9.0, 17.0]
    # the volume is 32 um deep: every plane is near a face, which the link records
    assert any("padded" in w for w in vcat.section_link(vol.sections[0].sample_id).warnings)


# -- bad input: clear errors, catalog untouched ------------------------------------------------------
def test_bad_volumes_leave_the_catalog_untouched(vcat: catalog.Catalog, tmp_path: Path) -> None:
    before = snapshot(vcat.path)
    a = np.random.default_rng(1).integers(0, 256, (4, 20, 20), dtype=np.uint8)
    plain = tmp_path / "plain.tif"
    with tifffile.TiffWriter(plain) as tw:
        for plane in a:
            tw.write(plane, metadata=None)
    with pytest.raises(VoxelSizeError, match=r"voxel_size_um=\(Z, Y, X\)"):
        vcat.ingest_volume(plain, "novox")
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    for k in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb / f"{k}.png")
    with pytest.raises(VolumeError, match="expects 1 channel"):
        vcat.ingest_volume(rgb, "rgbct", (1.0, 1.0, 1.0), modality="microct")
    broken = tmp_path / "broken"
    broken.mkdir()
    for k in range(40):
        Image.fromarray(a[k % 4]).save(broken / f"{k:02d}.png")
    (broken / "39.png").write_bytes(b"not a png")  # fails after the first slabs are written
    with pytest.raises(ReaderError, match=r"39\.png"):
        vcat.ingest_volume(broken, "broken", (1.0, 1.0, 1.0))
    with pytest.raises(VolumeExistsError, match="overwrite=True"):
        vcat.ingest_volume(plain, "vol0", (1.0, 1.0, 1.0))
    with pytest.raises(VolumeError, match="volume id"):
        vcat.ingest_volume(plain, "bad id!", (1.0, 1.0, 1.0))
    assert snapshot(vcat.path) == before


def test_bad_links_leave_the_catalog_untouched(vol: SyntheticVolume, vcat: catalog.Catalog) -> None:
    s2 = vol.sections[2]
    before = snapshot(vcat.path)
    good = s2.affine.to_array()
    with pytest.raises(LinkError, match="outside the volume"):
        vcat.link_section(s2.sample_id, "vol0", 40.0, affine=good)
    with pytest.raises(LinkError, match="outside the volume"):
        vcat.link_section(s2.sample_id, "vol0", -1.0, affine=good)
    src = np.array([[0.0, 0.0], [100.0, 0.0]])
    with pytest.raises(LinkError, match="at least 3"):
        vcat.link_section(s2.sample_id, "vol0", 20.0, landmarks=(src, src))
    line = np.array([[0.0, 0.0], [100.0, 100.0], [200.0, 200.0], [300.0, 300.0]])
    with pytest.raises(LinkError, match="degenerate"):
        vcat.link_section(s2.sample_id, "vol0", 20.0, landmarks=(line, line * 0.5))
    with pytest.raises(LinkError, match="degenerate"):
        vcat.link_section(s2.sample_id, "vol0", 20.0, affine=[[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(LinkError, match="last row"):
        vcat.link_section(s2.sample_id, "vol0", 20.0, affine=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.001, 0.0, 1.0]])
    far = good.copy()
    far[:2, 2] += 5000.0
    with pytest.raises(LinkError, match="none of the sample's"):
        vcat.link_section(s2.sample_id, "vol0", 20.0, affine=far)
    with pytest.raises(QueryError, match="no volume"):
        vcat.link_section(s2.sample_id, "nope", 20.0, affine=good)
    with pytest.raises(LinkError, match="already linked"):
        vcat.link_section(vol.sections[0].sample_id, "vol0", 9.0, affine=good)
    assert snapshot(vcat.path) == before


def test_volumes_of_different_channels_cannot_share_a_view(vol: SyntheticVolume, vcat: catalog.Catalog, tmp_path: Path) -> None:
    from hestkit.volume_readers import ArrayVolume

    s2 = vol.sections[2]
    gray = ArrayVolume(np.full((16, 160, 160), 100, np.uint8), vol.voxel_size_um, name="gray")
    vcat.ingest_volume(gray, "ct1", modality="microct")
    vcat.link_section(s2.sample_id, "ct1", s2.z_um, affine=s2.affine_path)
    with pytest.raises(QueryError, match="differ in channel count"):
        vcat.volume_pairs(spec=SPEC)
    v1 = vcat.volume_pairs(volume_ids=["ct1"], spec=SPEC)
    assert v1[0][0].shape == (3, 48, 48, 1) and (v1[0][0] == 100).all()
    with pytest.raises(QueryError, match="unknown volume"):
        vcat.volume_pairs(volume_ids=["nope"])


def test_crashed_volume_ingest_is_invisible(vol: SyntheticVolume, tmp_path: Path) -> None:
    cat = catalog.create(tmp_path / "cat")
    code = "import catalog, sys; c = catalog.open(sys.argv[1]); c.ingest_volume(sys.argv[2], 'crash', modality='otls')"
    env = {**os.environ, "HESTKIT_TEST_KILL_AT": "volume-before-manifest", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code, str(cat.path), str(vol.path)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert list((cat.path / "volumes").glob("crash--*.zarr"))  # the image was complete, the manifest not
    assert cat.volumes().empty
    with pytest.raises(QueryError):
        cat.volume("crash")
    cat.ingest_volume(vol.path, "crash", modality="otls")  # a re-run succeeds
    assert list(cat.volumes()["volume_id"]) == ["crash"]


@settings(max_examples=40, deadline=None)
@given(
    angle=st.floats(-3.1, 3.1),
    scale=st.floats(0.2, 2.0),
    tx=st.floats(-500, 500),
    ty=st.floats(-500, 500),
    z=st.floats(0, 100),
    flip=st.booleans(),
)
def test_link_maths_recover_the_affine(angle: float, scale: float, tx: float, ty: float, z: float, flip: bool) -> None:
    """Landmarks of any similarity (with or without a mirror) fit back exactly, and the link
    maps section pixels to the volume frame (z, y, x) as the affine says."""
    from hestkit.geometry import Affine, fit_affine

    c, s = np.cos(angle) * scale, np.sin(angle) * scale
    m = np.array([[c, -s, tx], [s, c, ty], [0, 0, 1.0]])
    if flip:
        m[:, 0] *= -1
    aff = Affine.from_array(m)
    src = np.array([[0, 0], [800, 30], [400, 500], [50, 900], [900, 900.0]])
    fitted, resid = fit_affine(src, aff.apply(src))
    assert resid.max() < 1e-6
    catalog.volumes._check_affine(fitted, "t")
    link = catalog.volumes.SectionLink("s", "v", z, fitted, "landmarks", resid)
    pts = np.array([[10.0, 20.0], [333.0, 444.0]])
    zyx = link.to_volume_um(pts)
    xy = aff.apply(pts)
    np.testing.assert_allclose(zyx, np.stack([np.full(2, z), xy[:, 1], xy[:, 0]], axis=1), atol=1e-6)
