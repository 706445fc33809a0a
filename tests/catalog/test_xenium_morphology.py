"""Issue 16, item 4: a Xenium run without H&E, paired with its own morphology image
(``--image morphology``), and cell-level pairs (``--spot-size-um cell``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from typer.testing import CliRunner

import catalog
from cli.hestkit import app
from hestkit.morphology import MorphologyBackend
from hestkit.patches import PairSpec
from hestkit.readers._tenx import read_10x_h5
from hestkit.sample import ReadOptions
from hestkit.slide import open_slide
from hestkit.synthetic import make_xenium

runner = CliRunner()
MORPH_UM = 1.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic XOA 1 bundle with no H&E in it, and a DAPI image with one bright
    nucleus (radius 6 um) at each cell centroid, at 1 um/px."""
    root = tmp_path_factory.mktemp("xen")
    t = make_xenium(
        root / "run", xoa="1", width_um=300.0, height_um=260.0, pixel_size_um_morph=MORPH_UM, he_dir=root / "he", seed=5
    )
    cells = pd.read_parquet(t.path / "cells.parquet")
    h, w = int(np.ceil(t.height_um / MORPH_UM)) + 20, int(np.ceil(t.width_um / MORPH_UM)) + 20
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    img = np.full((h, w), 100, np.uint16)
    for x, y in cells[["x_centroid", "y_centroid"]].to_numpy():
        img[(xx - x / MORPH_UM) ** 2 + (yy - y / MORPH_UM) ** 2 < 36] = 30000
    tifffile.imwrite(
        t.path / "morphology_focus.ome.tif", img, metadata={"axes": "YX", "PhysicalSizeX": MORPH_UM, "PhysicalSizeY": MORPH_UM}
    )
    return t.path


def test_no_he_error_offers_the_morphology_image(bundle: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["ingest", str(bundle), "--catalog", str(tmp_path / "c"), "-q", "--workers", "1"])
    assert r.exit_code == 1
    assert "no H&E image in the bundle" in r.output and "--image morphology" in r.output
    assert "morphology_focus.ome.tif" in r.output


def test_dapi_rendering_rule(tmp_path: Path) -> None:
    a = np.zeros((2, 40, 50), np.uint16)
    a[0, 10:20, 10:20] = 5000  # DAPI
    a[1, 25:35, 30:40] = 800  # boundary stain
    p = tmp_path / "morphology_focus.ome.tif"
    tifffile.imwrite(p, a, metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with open_slide(p) as s:
        rgb = s.read_region(0, 0, 0, 50, 40)
        assert isinstance(s._b, MorphologyBackend) and s._b.n_channels == 2
    assert tuple(rgb[15, 15]) == (0, 0, 255) and tuple(rgb[30, 35]) == (0, 255, 0) and tuple(rgb[2, 2]) == (0, 0, 0)


def test_ingest_with_the_morphology_image_and_cell_level_pairs(bundle: Path, tmp_path: Path) -> None:
    spec = PairSpec(32, 1.0)
    cat = catalog.create(tmp_path / "c", spec)
    rep = cat.ingest([bundle], options=ReadOptions(image=Path("morphology"), sample_id="sq"), workers=1)
    assert not rep.failed, rep.failed[0].message
    m = cat.manifest("sq")
    assert m["metadata"]["image"] == "morphology" and m["metadata"]["morphology_render"]["channels"] == 1
    assert m["image_path"].endswith("morphology_focus.ome.tif") and m["pixel_size_um"] == pytest.approx(MORPH_UM)
    assert m["background_rgb"] == [0, 0, 0] or max(m["background_rgb"]) < 10
    v = cat.pairs()
    # pseudo-spot centres are the Xenium frame / pixel size (no alignment)
    np.testing.assert_allclose(v.obs[["x_px", "y_px"]].to_numpy(), v.obs[["x_um", "y_um"]].to_numpy() / MORPH_UM)

    # one pair per cell, centred on it, counts from the cell-feature matrix
    rep = cat.ingest([bundle], options=ReadOptions(image=Path("morphology"), sample_id="cells", cells=True), workers=1)
    assert not rep.failed, rep.failed[0].message
    cells = pd.read_parquet(bundle / "cells.parquet").set_index("cell_id")
    mat = read_10x_h5(bundle / "cell_feature_matrix.h5")
    view = cat.pairs(sample_ids=["cells"])
    assert len(view) == len(mat.barcodes) == cat.manifest("cells")["n_pairs"]
    pos = {b: k for k, b in enumerate(mat.barcodes)}
    rows = [pos[b] for b in view.obs["barcode"]]
    np.testing.assert_allclose(view.obs["x_um"], cells.loc[view.obs["barcode"], "x_centroid"].to_numpy())
    np.testing.assert_allclose(view.obs["y_px"], cells.loc[view.obs["barcode"], "y_centroid"].to_numpy() / MORPH_UM)
    gcol = [mat.names.index(g) for g in view.genes]
    np.testing.assert_array_equal(view.expression().toarray(), mat.counts.toarray()[rows][:, gcol])
    # every patch shows its own nucleus: bright centre on a dark background
    for k in range(0, len(view), max(1, len(view) // 10)):
        p = view.patch(k).astype(int)
        assert p[14:18, 14:18].mean() > 200 and p[:3, :3].mean() < 60
    md = cat.manifest("cells")
    assert md["metadata"]["spot_size_um"] == "cell" and md["spot_shape"] == "circle"
    # the CLI spelling
    r = runner.invoke(
        app,
        ["ingest", str(bundle), "--catalog", str(tmp_path / "c"), "--image", "morphology", "--spot-size-um", "cell",
         "--sample-id", "cli_cells", "-q", "--workers", "1", "--patch-size", "32", "--patch-um-per-px", "1.0"],
    )
    assert r.exit_code == 0, r.output
    assert cat.manifest("cli_cells")["n_pairs"] == len(mat.barcodes)
    r = runner.invoke(app, ["ingest", str(bundle), "--catalog", str(tmp_path / "c"), "--spot-size-um", "huge"])
    assert r.exit_code == 1 and "'cell'" in r.output
