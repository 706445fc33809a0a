"""Synthetic 3D cohorts: files in real formats, truth consistent across volume and sections."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from hestkit.readers import scan
from hestkit.sample import ReadOptions
from hestkit.synthetic import SyntheticVolumeCohort, make_volume_cohort
from hestkit.synthetic._expression import gene_programs
from hestkit.synthetic._field import N_PROGRAMS
from hestkit.volume_readers import open_volume


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVolumeCohort:
    return make_volume_cohort(
        tmp_path_factory.mktemp("vc"),
        seed=2,
        n_volumes=2,
        shape_zyx=(8, 150, 150),
        voxel_size_um=(3.0, 2.0, 2.0),
        section_depths_um=(12.0,),
        modality="microct",
        n_genes=16,
        section_pixel_size_um=1.0,
    )


def test_volume_file_is_the_rendered_truth(cohort: SyntheticVolumeCohort) -> None:
    v = cohort.volumes[0]
    r = open_volume(v.path)
    assert r.voxel_size_um == pytest.approx((3.0, 2.0, 2.0)) and r.shape_zyx == (8, 150, 150) and r.channels == 1
    with tifffile.TiffFile(v.path) as tf:
        assert tf.is_ome
    k = np.array([[1, 10, 20], [4, 75, 75], [7, 149, 0]])
    got = np.stack([r.read(slice(a, a + 1), slice(b, b + 1), slice(c, c + 1))[0, 0, 0] for a, b, c in k])
    np.testing.assert_array_equal(got, v.render(v.voxel_centres_um(k)))


def test_sections_are_visium_and_consistent(cohort: SyntheticVolumeCohort) -> None:
    v = cohort.volumes[1]
    s = v.sections[0]
    refs = scan(s.path, ReadOptions(), "auto")
    assert len(refs) == 1 and refs[0].reader == "visium"
    # section pixel -> volume um is the recorded affine; the H&E shows the tissue at that plane
    with tifffile.TiffFile(s.image_path) as tf:
        img = tf.series[0].levels[0].asarray()
    i = int(np.flatnonzero(s.in_tissue)[0])
    x, y = s.centres_px[i]
    px = img[int(y), int(x)].astype(int)  # pixel (x, y) has its centre at (x + 0.5, y + 0.5)
    xy = s.affine.apply([[x + 0.5, y + 0.5]])[0]
    want = v.tissue.render(np.array([[s.z_um, xy[1], xy[0]]]), "he")[0].astype(int)
    assert np.abs(px - want).max() <= 12  # JPEG
    cx, cy = s.affine.apply([[x, y]])[0]  # spot centres are continuous coordinates
    np.testing.assert_allclose(s.centres_um_zyx[i], [s.z_um, cy, cx])
    lm = np.loadtxt(s.landmarks_path, delimiter=",", skiprows=1)
    np.testing.assert_allclose(s.affine.apply(lm[:, :2]), lm[:, 2:], atol=1e-3)
    np.testing.assert_allclose(np.loadtxt(s.affine_path, delimiter=","), s.affine.to_array(), rtol=1e-8)


def test_counts_follow_the_true_expression(cohort: SyntheticVolumeCohort) -> None:
    for v in cohort.volumes:
        s = v.sections[0]
        keep = s.in_tissue
        mu = v.true_expression(s.centres_um_zyx[keep])
        counts = s.counts[np.flatnonzero(keep)].toarray()
        prog = gene_programs(counts.shape[1], N_PROGRAMS)
        for k in range(N_PROGRAMS):
            a, b = counts[:, prog == k].sum(axis=1), mu[:, prog == k].sum(axis=1)
            if b.std() > 0.2 * b.mean():
                assert np.corrcoef(np.log1p(a), np.log1p(b))[0, 1] > 0.5, (v.volume_id, k)


def test_morphology_carries_the_programmes(cohort: SyntheticVolumeCohort) -> None:
    """Nuclei density, lumens, stroma brightness and texture period track programmes 0-3."""
    v = cohort.volumes[0]
    rng = np.random.default_rng(0)
    ext = np.array(v.tissue.extent_um)
    centres = rng.uniform(0.2, 0.8, size=(60, 3)) * ext
    centres = centres[v.tissue.in_tissue(centres)]
    a = v.tissue.activity(centres)
    nuc = []
    for c in centres:
        pts = c + rng.uniform(-25, 25, size=(3000, 3)) * [0.2, 1, 1]
        nuc.append(v.tissue.components(pts)["nucleus"].mean())
    assert np.corrcoef(a[:, 0], nuc)[0, 1] > 0.5


def test_same_seed_same_cohort(tmp_path: Path) -> None:
    kw = {
        "seed": 4,
        "n_volumes": 1,
        "shape_zyx": (4, 60, 60),
        "section_depths_um": (4.0,),
        "n_genes": 8,
        "section_pixel_size_um": 2.0,
    }
    a = make_volume_cohort(tmp_path / "a", **kw)  # type: ignore[arg-type]
    b = make_volume_cohort(tmp_path / "b", **kw)  # type: ignore[arg-type]
    full = (slice(0, 4), slice(0, 60), slice(0, 60))
    np.testing.assert_array_equal(open_volume(a.volumes[0].path).read(*full), open_volume(b.volumes[0].path).read(*full))
    assert (a.volumes[0].sections[0].counts != b.volumes[0].sections[0].counts).nnz == 0


@pytest.mark.parametrize("fmt", ["ome-tiff", "ome-zarr"])
def test_large_volume_is_mirrored_tissue(tmp_path: Path, fmt: str) -> None:
    from hestkit.synthetic import make_large_volume

    p = make_large_volume(
        tmp_path / ("big.ome.tif" if fmt == "ome-tiff" else "big.zarr"),
        shape_zyx=(6, 70, 90),
        tile_zyx=(4, 32, 32),
        fmt=fmt,  # type: ignore[arg-type]
    )
    v = open_volume(p)
    assert v.shape_zyx == (6, 70, 90) and v.voxel_size_um == pytest.approx((2.0, 2.0, 2.0))
    a = v.read(slice(0, 6), slice(0, 70), slice(0, 90))[..., 0]
    np.testing.assert_array_equal(a[:, :, 32:64], a[:, :, 31::-1])  # the second tile mirrors the first
    np.testing.assert_array_equal(a[4:6], a[3:1:-1])
    assert a.std() > 10
