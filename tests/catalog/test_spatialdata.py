"""SpatialData out and in: export a sample, read it with spatialdata, ingest it again."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import catalog
from cli.hestkit import app
from hestkit.errors import ValidationError
from hestkit.readers import SpatialDataReader
from hestkit.sample import ReadOptions

from .conftest import Case

sd = pytest.importorskip("spatialdata")


@pytest.fixture(scope="module")
def exported(ingested: tuple[catalog.Catalog, list[Case]], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Case]:
    cat, cases = ingested
    out = tmp_path_factory.mktemp("sd") / "breastA.zarr"
    r = CliRunner().invoke(app, ["export", str(cat.path), "breastA", "--format", "spatialdata", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out, next(c for c in cases if c.sample_id == "breastA")


def test_export_opens_and_puts_spots_on_their_pixels(exported: tuple[Path, Case]) -> None:
    from spatialdata.transformations import get_transformation

    path, case = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sd.read_zarr(str(path))
    assert set(s.images) == {"he"} and set(s.shapes) == {"spots"} and set(s.tables) == {"table"}
    spots, image, table = s.shapes["spots"], s.images["he"], s.tables["table"]
    assert len(spots) == table.n_obs
    # spots -> global -> image pixels; the image there shows the spot's colour
    to_g_s = get_transformation(spots, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    to_g_i = get_transformation(image, "global").to_affine_matrix(("x", "y"), ("x", "y"))
    m = np.linalg.inv(to_g_i) @ to_g_s
    px = np.column_stack([spots.geometry.x, spots.geometry.y]) @ m[:2, :2].T + m[:2, 2]
    level0 = image["scale0"]["image"]
    t = case.truth
    idx = {b: i for i, b in enumerate(t.barcodes)}
    for k in range(0, len(spots), 7):
        x, y = px[k]
        patch = np.asarray(level0[:, int(y) - 3 : int(y) + 3, int(x) - 3 : int(x) + 3]).reshape(3, -1).mean(axis=1)
        assert np.abs(patch - t.colour(idx[spots.index[k]])).max() < 14
    # true size: radius 27.5 um in level-0 px
    assert float(spots["radius"].iloc[0]) == pytest.approx(27.5 / t.pixel_size_um)
    um = get_transformation(spots, "micrometres").to_affine_matrix(("x", "y"), ("x", "y"))
    assert um[0, 0] == pytest.approx(t.pixel_size_um)


def test_export_then_ingest_gives_the_same_pairs(
    ingested: tuple[catalog.Catalog, list[Case]], exported: tuple[Path, Case], tmp_path: Path
) -> None:
    cat, _ = ingested
    path, case = exported
    cat2 = catalog.create(tmp_path / "cat2")
    rep = cat2.ingest([path], options=ReadOptions(sample_id="breastA"), workers=1)
    assert not rep.failed, rep.failed[0].message
    a, b = cat.pairs(sample_ids=["breastA"]), cat2.pairs(sample_ids=["breastA"])
    assert list(a.obs["barcode"]) == list(b.obs["barcode"])
    np.testing.assert_allclose(a.obs[["x_px", "y_px"]].to_numpy(), b.obs[["x_px", "y_px"]].to_numpy(), atol=1e-6)
    np.testing.assert_array_equal(a.expression(a.genes).toarray(), b.expression(a.genes).toarray())
    m = cat2.manifest("breastA")
    assert m["technology"] == "visium" and m["organ"] == "Breast" and m["spot_diameter_um"] == pytest.approx(55.0)
    assert m["pixel_size_um"] == pytest.approx(cat.manifest("breastA")["pixel_size_um"])
    # patches cut from the store's image (its own pyramid) show each spot's own colour
    idx = {bc: i for i, bc in enumerate(case.truth.barcodes)}
    for k in range(0, len(b), 9):
        centre = b.patch(k)[104:120, 104:120].reshape(-1, 3).mean(axis=0)
        assert np.abs(centre - case.truth.colour(idx[b.obs["barcode"].iloc[k]])).max() < 14


def test_store_without_image_is_a_clear_error(exported: tuple[Path, Case], tmp_path: Path) -> None:
    path, _ = exported
    copy = tmp_path / "noimg.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sd.read_zarr(str(path))
        sd.SpatialData(shapes={"spots": s.shapes["spots"]}, tables={"table": s.tables["table"]}).write(str(copy))
    reader = SpatialDataReader()
    with pytest.raises(ValidationError, match="no image sharing a coordinate system"):
        reader.load(reader.scan(copy, ReadOptions())[0])


def test_store_with_a_scaled_image_maps_spots_through_the_transformations(
    ingested: tuple[catalog.Catalog, list[Case]], exported: tuple[Path, Case], tmp_path: Path
) -> None:
    """Like spatialdata-io's Visium stores: spots in full-resolution px, the image a
    downscaled copy carrying a Scale transformation to the same coordinate system."""
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    cat, _ = ingested
    path, case = exported
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = sd.read_zarr(str(path))
        half = s.images["he"]["scale1"]["image"]
        image = Image2DModel.parse(
            half.data, dims=("c", "y", "x"), transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))}
        )
        table = s.tables["table"]
        del table.uns["hestkit"]  # a foreign store: no hestkit metadata
        out = tmp_path / "scaled.zarr"
        sd.SpatialData(images={"hires": image}, shapes={"spots": s.shapes["spots"]}, tables={"table": table}).write(str(out))
    cat2 = catalog.create(tmp_path / "cat2")
    rep = cat2.ingest([out], options=ReadOptions(sample_id="scaled", organ="Breast"), workers=1)
    assert not rep.failed, rep.failed[0].message
    a, b = cat.pairs(sample_ids=["breastA"]), cat2.pairs(sample_ids=["scaled"])
    np.testing.assert_allclose(b.obs[["x_px", "y_px"]].to_numpy(), a.obs[["x_px", "y_px"]].to_numpy() / 2.0, atol=1e-6)
    m = cat2.manifest("scaled")
    # no micrometre system: the pixel size comes from the Visium grid, in the half-size image
    assert m["pixel_size_source"] == "estimated"
    assert m["pixel_size_um"] == pytest.approx(2 * case.truth.pixel_size_um, rel=0.01)
    assert m["spot_diameter_um"] == pytest.approx(55.0, rel=0.01)
