"""Bad input: clear errors that name the problem and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hestkit.synthetic.volume import SyntheticVolumeCohort
from hestkit.volume_readers import ArrayVolume
from seal.vortex import ChannelMismatchError, ModelDirError, finetune, load_model
from seal.vortex.errors import PredictionError
from seal.vortex.predict import PredictConfig, predict_catalog, predict_volume


def test_channel_mismatch(pretrained_dir: Path, tmp_path: Path) -> None:
    two = ArrayVolume(np.zeros((10, 60, 60, 2), dtype=np.uint8), (4.0, 4.0, 4.0), name="otls.ome.tif")
    with pytest.raises(ChannelMismatchError, match=r"has 2 channel\(s\) but the model .* 1-channel volumes"):
        predict_volume(two, pretrained_dir, tmp_path / "p.zarr", volume_name="otls", progress=False)
    assert not (tmp_path / "p.zarr").exists()


def test_channel_mismatch_on_finetune(
    vortex_cohort: tuple[SyntheticVolumeCohort, Path], pretrained_dir: Path, tmp_path: Path
) -> None:
    import catalog

    _, cat_path = vortex_cohort
    lm = load_model(pretrained_dir)
    lm.meta["channels"] = 2  # a model of 2-channel volumes, on a 1-channel volume
    with pytest.raises(ChannelMismatchError, match="volume 'vol2' has 1 channel"):
        lm.check_channels(int(catalog.open(cat_path).volume("vol2").channels), "volume 'vol2'")
    with pytest.raises(ModelDirError, match="not a VORTEX model directory"):
        finetune(cat_path, tmp_path, "vol2", tmp_path / "ft", progress=False)


def test_predict_bad_requests(vortex_cohort: tuple[SyntheticVolumeCohort, Path], pretrained_dir: Path, tmp_path: Path) -> None:
    _, cat_path = vortex_cohort
    with pytest.raises(PredictionError, match="NOTAGENE"):
        predict_catalog(cat_path, pretrained_dir, "vol2", tmp_path / "p.zarr", PredictConfig(genes=("notagene",)), progress=False)
    with pytest.raises(PredictionError, match="no volume 'volX'"):
        predict_catalog(cat_path, pretrained_dir, "volX", tmp_path / "p.zarr", progress=False)
    with pytest.raises(PredictionError, match="stride"):
        predict_catalog(
            cat_path, pretrained_dir, "vol2", tmp_path / "p.zarr", PredictConfig(stride_um=(0.0, 10.0)), progress=False
        )
    assert not (tmp_path / "p.zarr").exists()
