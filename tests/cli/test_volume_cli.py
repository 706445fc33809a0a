"""``hestkit ingest-volume``, ``hestkit link-section`` and volumes in ``hestkit ls``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

import catalog
from cli.hestkit import app
from hestkit.synthetic import SyntheticVolume, make_volume

runner = CliRunner()


@pytest.fixture(scope="module")
def vol(tmp_path_factory: pytest.TempPathFactory) -> SyntheticVolume:
    return make_volume(
        tmp_path_factory.mktemp("cli_vol") / "blockA",
        volume_id="blockA",
        seed=8,
        shape_zyx=(12, 128, 128),
        voxel_size_um=(2.0, 2.0, 2.0),
        section_depths_um=(10.0, 14.0),
        modality="microct",
        n_genes=12,
        section_pixel_size_um=1.0,
        landmark_noise_um=0.2,
    )


def test_ingest_volume_link_section_ls(vol: SyntheticVolume, tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    r = runner.invoke(
        app,
        [
            "ingest-volume",
            str(vol.path),
            "--catalog",
            str(cat),
            "--volume-id",
            "blockA",
            "--organ",
            "Prostate",
            "--patient",
            "P8",
            "-q",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "12 x 128 x 128 voxels" in r.output and "2 x 2 x 2 um" in r.output
    s0, s1 = vol.sections
    r = runner.invoke(
        app, ["ingest", str(s0.path), str(s1.path), "--catalog", str(cat), "--organ", "Prostate", "-q", "--workers", "1"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["link-section", str(cat), s0.sample_id, "--volume", "blockA", "--z-um", "10", "--landmarks", str(s0.landmarks_path)]
    )
    assert r.exit_code == 0, r.output
    assert "landmark residuals" in r.output and f"linked {s0.sample_id} to volume blockA at z = 10 um" in r.output
    r = runner.invoke(
        app, ["link-section", str(cat), s1.sample_id, "--volume", "blockA", "--z-um", "14", "--affine", str(s1.affine_path)]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ls", str(cat)])
    assert r.exit_code == 0 and "blockA" in r.output and "microct" in r.output and "2 linked sections" in r.output
    c = catalog.open(cat)
    link = c.section_link(s0.sample_id)
    assert float(link.residuals_um.max()) < 1.0
    view = c.volume_pairs(genes=["EPCAM"])
    assert len(view) > 0 and view[0][0].shape == (9, 224, 224, 1)


def test_cli_bad_input_exits_nonzero(vol: SyntheticVolume, tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    plain = tmp_path / "plain.tif"
    with tifffile.TiffWriter(plain) as tw:
        for _ in range(3):
            tw.write(np.zeros((16, 16), np.uint8), metadata=None)
    r = runner.invoke(app, ["ingest-volume", str(plain), "--catalog", str(cat), "--volume-id", "v", "-q"])
    assert r.exit_code == 1 and "--voxel-size-um" in r.output
    r = runner.invoke(
        app, ["ingest-volume", str(plain), "--catalog", str(cat), "--volume-id", "v", "--voxel-size-um", "3", "1", "1", "-q"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ingest", str(vol.sections[0].path), "--catalog", str(cat), "-q", "--workers", "1"])
    assert r.exit_code == 0, r.output
    sid = vol.sections[0].sample_id
    r = runner.invoke(
        app, ["link-section", str(cat), sid, "--volume", "v", "--z-um", "100", "--affine", str(vol.sections[0].affine_path)]
    )
    assert r.exit_code == 1 and "outside the volume" in r.output
    lm = tmp_path / "two.csv"
    lm.write_text("x_px,y_px,x_um,y_um\n0,0,0,0\n10,0,5,0\n")
    r = runner.invoke(app, ["link-section", str(cat), sid, "--volume", "v", "--z-um", "1", "--landmarks", str(lm)])
    assert r.exit_code == 1 and "at least 3" in r.output
    r = runner.invoke(app, ["link-section", str(cat), sid, "--volume", "v", "--z-um", "1"])
    assert r.exit_code == 1 and "--affine" in r.output
    assert catalog.open(cat).sections().empty


def test_ingest_section_stack_csv(vol: SyntheticVolume, tmp_path: Path) -> None:
    s0, s1 = vol.sections
    m0 = s0.affine.to_array()
    csv = tmp_path / "stack.csv"
    csv.write_text(
        "image,affine,a00,a01,a02,a10,a11,a12\n"
        f"{s0.image_path},,{m0[0, 0]},{m0[0, 1]},{m0[0, 2]},{m0[1, 0]},{m0[1, 1]},{m0[1, 2]}\n"
        f"{s1.image_path},{s1.affine_path},,,,,,\n"
    )
    cat = tmp_path / "cat"
    args = ["ingest-volume", str(csv), "--catalog", str(cat), "--volume-id", "serial", "--modality", "he-stack", "-q"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "--voxel-size-um" in r.output
    r = runner.invoke(app, [*args, "--voxel-size-um", "4", "2", "2"])
    assert r.exit_code == 0, r.output
    v = catalog.open(cat).volume("serial")
    assert v.channels == 3 and v.shape_zyx[0] == 2 and v.voxel_size_um == pytest.approx((4.0, 2.0, 2.0))
    # plane 1 is section 1's H&E warped into the volume grid: tissue (darker than glass) in the middle
    mid = v.read(slice(1, 2), slice(54, 74), slice(54, 74))[0].astype(float)
    assert mid.mean() < 235
    row = catalog.open(cat).volumes().iloc[0]
    assert row["modality"] == "he-stack"


def test_link_section_auto_places_the_section(tmp_path: Path) -> None:
    v = make_volume(
        tmp_path / "blockR", volume_id="blockR", seed=2, shape_zyx=(20, 200, 200), section_depths_um=(18.0,),
        rotation_deg=15.0, section_pixel_size_um=1.0, n_genes=8,
    )
    cat, sec = tmp_path / "cat", v.sections[0]
    assert runner.invoke(app, ["ingest-volume", str(v.path), "--catalog", str(cat), "--volume-id", "blockR", "-q"]).exit_code == 0
    r = runner.invoke(app, ["ingest", str(sec.path), "--catalog", str(cat), "-q", "--workers", "1"])
    assert r.exit_code == 0, r.output
    sid = catalog.open(cat).samples()["sample_id"].iloc[0]
    r = runner.invoke(app, ["link-section", str(cat), sid, "--volume", "blockR"])
    assert r.exit_code == 1 and "--auto" in r.output
    r = runner.invoke(app, ["link-section", str(cat), sid, "--volume", "blockR", "--auto", "--z-um", "3"])
    assert r.exit_code == 1 and "none of --z-um" in r.output
    png = tmp_path / "fit.png"
    r = runner.invoke(app, ["link-section", str(cat), sid, "--volume", "blockR", "--auto", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    assert "automatic placement" in r.output and png.stat().st_size > 10_000
    link = catalog.open(cat).section_link(sid)
    assert link.affine_source == "auto" and abs(link.z_um - 18.0) <= 4.0
    pts = sec.centres_px[sec.in_tissue]
    assert np.abs(link.affine.apply(pts) - sec.affine.apply(pts)).max() < 10.0
    assert link.auto_fit is not None and link.auto_fit["confidence"] > 0.5 and len(link.auto_fit["depth_profile"]) == 20
