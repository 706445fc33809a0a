"""Dense prediction into OME-Zarr: layout, resume, pictures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

import catalog
from hestkit.synthetic.volume import SyntheticVolumeCohort
from seal.vortex import load_model
from seal.vortex.errors import PredictionError
from seal.vortex.plots import render_prediction
from seal.vortex.predict import PredictConfig, predict_catalog, progress_path


def test_predict_writes_multiscale_ngff_and_resumes(
    vortex_cohort: tuple[SyntheticVolumeCohort, Path], pretrained_dir: Path, tmp_path: Path
) -> None:
    _, cat_path = vortex_cohort
    genes = load_model(pretrained_dir).prep.genes
    want = (genes[3], genes[0])
    cfg = PredictConfig(genes=want, stride_um=(50.0, 20.0), block_points=(1, 8, 8), device="cpu")
    out = tmp_path / "pred.zarr"
    predict_catalog(cat_path, pretrained_dir, "vol2", out, cfg, progress=False, stop_after_blocks=3)
    prog = json.loads(progress_path(out).read_text())
    assert len(prog["done"]) == 3  # interrupted after three of 4 x 2 x 2 blocks
    # a different request on the unfinished output is refused, not mixed in
    with pytest.raises(PredictionError, match="genes"):
        predict_catalog(
            cat_path,
            pretrained_dir,
            "vol2",
            out,
            PredictConfig(genes=want[:1], stride_um=(50.0, 20.0), block_points=(1, 8, 8)),
            progress=False,
        )
    predict_catalog(cat_path, pretrained_dir, "vol2", out, cfg, progress=False)
    assert not progress_path(out).exists()

    g = zarr.open_group(str(out), mode="r")
    ome = g.attrs["ome"]
    ms = ome["multiscales"][0]  # type: ignore[index]
    assert [a["name"] for a in ms["axes"]] == ["c", "z", "y", "x"]
    assert len(ms["datasets"]) >= 2
    lvl0 = g["0"]
    assert lvl0.shape == (2, 4, 16, 16)  # 80 x 800 x 800 um at 20 x 50 x 50 um
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 20.0, 50.0, 50.0]
    assert ms["datasets"][0]["coordinateTransformations"][1]["translation"] == [0.0, 10.0, 25.0, 25.0]
    assert g.attrs["vortex"]["genes"] == [w.upper() for w in want]  # type: ignore[index]
    for d in ms["datasets"][1:]:
        assert g[d["path"]].shape[0] == 2
    mask = np.asarray(g["labels/tissue_mask/0"])[0]
    assert g["labels"].attrs["ome"]["labels"] == ["tissue_mask"]  # type: ignore[index]
    assert "image-label" in g["labels/tissue_mask"].attrs["ome"]  # type: ignore[operator]
    assert 0.2 < mask.mean() < 0.95  # the tissue cylinder, not the corners
    values = np.asarray(lvl0)
    assert np.all(values[:, mask == 0] == 0) and np.isfinite(values).all() and values[:, mask == 1].std() > 0

    # the resumed result equals an uninterrupted run
    again = tmp_path / "again.zarr"
    predict_catalog(cat_path, pretrained_dir, "vol2", again, cfg, progress=False)
    np.testing.assert_allclose(np.asarray(zarr.open_group(str(again), mode="r")["0"]), values, rtol=1e-5, atol=1e-6)
    # a finished output is left as it is; another output folder needs --overwrite
    predict_catalog(cat_path, pretrained_dir, "vol2", out, cfg, progress=False)
    with pytest.raises(PredictionError, match="overwrite"):
        predict_catalog(cat_path, pretrained_dir, "vol2", tmp_path, cfg, progress=False)

    # the NGFF 0.5 metadata validates (image, labels group, label image), and readers see it
    from ome_zarr_models.v05.image import Image as NgffImage
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import Labels

    NgffImage.from_zarr(g)
    # every channel carries its gene name, a colour and a display window fitted to the float values
    from ome_zarr_models.common.omero import Omero

    omero = Omero.model_validate(g.attrs["ome"]["omero"])  # type: ignore[index]
    assert [(c.model_extra or {}).get("label") for c in omero.channels] == g.attrs["vortex"]["genes"]  # type: ignore[index]
    for c, plane in zip(omero.channels, values, strict=True):
        assert c.window.min <= c.window.start < c.window.end <= c.window.max
        assert c.window.max <= float(plane.max()) + 1e-5 and c.window.min >= float(plane.min()) - 1e-5
    Labels.from_zarr(g["labels"])
    ImageLabel.from_zarr(g["labels/tissue_mask"])
    from hestkit.ngff import ngff_to_xarray

    xa = ngff_to_xarray(out)
    assert list(xa["c"].values) == g.attrs["vortex"]["genes"]  # type: ignore[index]
    np.testing.assert_allclose(xa.values, values)
    np.testing.assert_allclose(xa["z"].values, (np.arange(values.shape[1]) + 0.5) * 20.0)  # voxel centres, um
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(out)))())
    assert nodes and len(nodes[0].data) == len(ms["datasets"])

    pics = render_prediction(out, catalog.open(cat_path).volume("vol2"), tmp_path / "pics", [want[0]])
    assert sorted(p.suffix for p in pics) == [".gif", ".png", ".png"]
    from PIL import Image

    gif = Image.open(next(p for p in pics if p.suffix == ".gif"))
    assert gif.n_frames == 16
    png = Image.open(pics[0])
    assert png.size[0] > 600 and np.asarray(png.convert("L")).std() > 10
