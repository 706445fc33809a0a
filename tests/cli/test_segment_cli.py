"""``hestkit segment``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cli.hestkit import app
from hestkit.synthetic.slides import make_slide_cohort
from hestkit.tissue import TissueMask

runner = CliRunner()


def test_segment_writes_geojson_and_preview(tmp_path: Path) -> None:
    df = make_slide_cohort(tmp_path, n_slides=1, size_px=2048, mpp=2.0, seed=1)
    out, preview = tmp_path / "m.geojson", tmp_path / "p.png"
    res = runner.invoke(app, ["segment", df.path[0], "--out", str(out), "--preview", str(preview)])
    assert res.exit_code == 0, res.output
    assert "tissue pieces" in res.output
    mask = TissueMask.from_geojson(out)
    truth = np.asarray(Image.open(df.truth_mask[0])) > 0
    pred = mask.raster(int(df.truth_downsample[0]))
    assert (pred & truth).sum() / (pred | truth).sum() > 0.9
    assert json.loads(out.read_text())["hestkit"]["pixel_size_um"] == 2.0
    assert Image.open(preview).size[0] == 1024
    # default output beside the slide
    res = runner.invoke(app, ["segment", df.path[0], "--target-mpp", "16"])
    assert res.exit_code == 0, res.output
    assert Path(df.path[0] + ".tissue.geojson").exists()


def test_segment_bad_input(tmp_path: Path) -> None:
    res = runner.invoke(app, ["segment", str(tmp_path / "missing.tif")])
    assert res.exit_code == 1
    assert "does not exist" in res.output
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    res = runner.invoke(app, ["segment", str(bad)])
    assert res.exit_code == 1 and "bad.tif" in res.output
