"""Issue 17 §2: multi-scale context (a coarser, wider sub-volume beside the model's own)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

import catalog
from hestkit.synthetic.volume import SyntheticVolumeCohort
from seal.vortex import ModelConfig, build_model, finetune, load_model, pretrain
from seal.vortex.context import ContextEncoder, ContextPairView, context_spec
from seal.vortex.data import SubvolumeTransform
from seal.vortex.predict import PredictConfig, predict_catalog
from seal.vortex.train import model_view, pair_spec


def test_context_encoder_starts_as_the_single_scale_model(tiny_cfg: ModelConfig) -> None:
    cfg = dataclasses.replace(tiny_cfg, context_scale=2.0)
    model, px = build_model(cfg, 6, 1, seed=0)
    assert isinstance(model.encoder, ContextEncoder) and model.input_groups == 2
    x = torch.rand(3, 2 * cfg.n_slices, 1, px, px)
    with torch.no_grad():
        e = model.embed_volume(x)
        own = model.encoder.inner(x[:, : cfg.n_slices])
        x2 = x.clone()
        x2[:, cfg.n_slices :] = torch.rand_like(x2[:, cfg.n_slices :])
    assert e.shape == (3, model.encoder.dim) and model.predict(x).shape == (3, 6)
    assert torch.allclose(e, own, atol=1e-5)  # fuse starts at [I | 0]: context is added by training
    assert torch.allclose(model.embed_volume(x2), e, atol=1e-5)
    with pytest.raises(ValueError, match="context planes"):
        model.embed_volume(x[:, : cfg.n_slices])
    with pytest.raises(ValueError, match="context_scale must be >= 1"):
        dataclasses.replace(tiny_cfg, context_scale=0.5)
    assert context_spec(tiny_cfg, 32) is None
    spec = context_spec(cfg, 32)
    assert (spec.size_um, spec.depth_um, spec.size_px, spec.n_slices) == (224.0, 40.0, 32, cfg.n_slices)


def test_depth_flip_keeps_each_scale_in_its_half() -> None:
    s = 4
    sub = np.repeat(np.arange(2 * s, dtype=np.uint8)[:, None, None, None] * 20 + 10, 8, axis=1).repeat(8, axis=2)
    tf = SubvolumeTransform(8, augment=True, groups=2)
    flipped = 0
    torch.manual_seed(0)
    for _ in range(12):
        means = tf(sub).mean(dim=(1, 2, 3))
        assert means[:s].max() < means[s:].min()  # the model's planes never mix with the context's
        flipped += int(means[0] > means[s - 1])
    assert 0 < flipped < 12


def test_context_pairs_train_finetune_and_predict_blockwise(
    vortex_cohort: tuple[SyntheticVolumeCohort, Path], tiny_cfg: ModelConfig, train_cfg: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, cat_path = vortex_cohort
    cfg = dataclasses.replace(tiny_cfg, context_scale=2.0)
    cat = catalog.open(cat_path)
    view = model_view(cat, cfg, 32, volumes=["vol2"], sections=["vol2_s1"])
    assert isinstance(view, ContextPairView)
    sub, _ = view[0]
    assert sub.shape == (2 * cfg.n_slices, 32, 32, 1)
    wide = view.view.with_spec(context_spec(cfg, 32))
    assert np.array_equal(sub[cfg.n_slices :], wide.subvolume(0)) and np.array_equal(sub[: cfg.n_slices], view.view.subvolume(0))
    assert view.subset([1, 2]).subvolumes([0]).shape == (1, 2 * cfg.n_slices, 32, 32, 1)

    pre = pretrain(cat_path, cfg, train_cfg(2, max_steps_per_epoch=3), tmp_path / "pre", volumes=["vol0", "vol1"], progress=False)
    state = load_file(str(pre / "model.safetensors"))
    w = state["encoder.fuse.weight"]
    assert not torch.equal(w[:, w.shape[0] :], torch.zeros_like(w[:, w.shape[0] :]))  # the context branch learned
    log = [json.loads(x) for x in (pre / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    lm = load_model(pre)
    assert lm.model_cfg.context_scale == 2.0 and lm.model.input_groups == 2
    ft = finetune(cat_path, pre, "vol2", tmp_path / "ft", cfg=train_cfg(1, max_steps_per_epoch=2), sections=["vol2_s0"], progress=False)

    import hestkit.volume as hv

    calls: list[tuple[int, float]] = []
    real = hv.extract_subvolumes

    def counting(volume: Any, centres: Any, spec: Any = None, **kw: Any) -> Any:
        calls.append((len(centres), spec.size_um))
        return real(volume, centres, spec, **kw)

    monkeypatch.setattr(hv, "extract_subvolumes", counting)
    out = tmp_path / "pred.zarr"
    pcfg = PredictConfig(stride_um=(100.0, 40.0), block_points=(1, 4, 4), device="cpu")
    predict_catalog(cat_path, ft, "vol2", out, pcfg, progress=False)
    g = zarr.open_group(str(out), mode="r")
    assert np.asarray(g["0"]).shape == (24, 2, 8, 8)
    vattrs: dict[str, Any] = dict(g.attrs["vortex"])  # type: ignore[arg-type]
    assert vattrs["context_spec"]["size_um"] == 224.0
    values = np.asarray(g["0"])
    mask = np.asarray(g["labels/tissue_mask/0"])[0].astype(bool)
    assert np.isfinite(values).all() and values[:, mask].std() > 0
    # block by block: one read of the model's sub-volumes and one of the context per block (8 blocks)
    own = [n for n, size in calls if size == pair_spec(cfg, 32).size_um]
    wide_calls = [n for n, size in calls if size == 224.0]
    assert len(own) == 8 and all(n == 16 for n in own)
    assert 1 <= len(wide_calls) <= 8 and all(n <= 16 for n in wide_calls)
