"""The deep tissue segmenter plumbing: local weights, resampling, tiles, class mapping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.hestkit import app
from hestkit.synthetic.slides import make_slide_cohort
from hestkit.tissue import segment_tissue
from seal.errors import WeightsError
from seal.tissue import DeepLabTissueSegmenter, _deeplab


def _weights(path: Path) -> Path:
    """A randomly initialised network whose head says 'tissue' (class 1) everywhere, saved
    as a Lightning-style checkpoint like HEST's (model. prefixes, an aux head)."""
    torch.manual_seed(0)
    model = _deeplab()
    head = model.classifier[4]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-50.0, 50.0]))
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd["model.aux_classifier.4.weight"] = torch.zeros(2, 256, 1, 1)
    torch.save({"state_dict": sd}, path)
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> str:
    df = make_slide_cohort(tmp_path_factory.mktemp("deep"), n_slides=1, size_px=1024, mpp=2.0, seed=2)
    return str(df.path[0])


def test_deeplab_segmenter_maps_classes_back(slide: str, tmp_path: Path) -> None:
    seg = DeepLabTissueSegmenter(_weights(tmp_path / "t.ckpt"), model_mpp=16.0, tile_px=64)
    m = segment_tissue(slide, target_mpp=8.0, method=seg)  # a 256 px working image, resampled to 128 for the network
    assert m.method == "deeplabv3"
    assert m.fraction(0, 0, m.width, m.height) == pytest.approx(1.0, abs=0.01)
    seg.tissue_class = 0  # the same network read for the other class: no tissue anywhere
    assert segment_tissue(slide, target_mpp=8.0, method=seg).n_pieces == 0


def test_deeplab_weights_errors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        DeepLabTissueSegmenter(tmp_path / "missing.ckpt")
    torch.save({"fc.weight": torch.zeros(2, 3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="not a 2-class DeepLabV3"):
        DeepLabTissueSegmenter(tmp_path / "other.pth")


def test_cli_segment_weights_error(slide: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["segment", slide, "--weights", str(tmp_path / "nope.ckpt")])
    assert res.exit_code == 1 and "nope.ckpt: weights file not found" in res.output
