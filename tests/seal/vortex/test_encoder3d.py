"""Native 3D encoders: the inflated ViT reduces to its 2D model on depth-constant input, the 3D CNN
sees depth, tuning modes freeze what they say, and both save and load as VORTEX models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seal.data import ExpressionPrep
from seal.vortex import ModelConfig, TrainConfig, build_model, load_model
from seal.vortex.encoder3d import Cnn3DEncoder
from seal.vortex.model import save_model


def _vit3d(tuning: str = "full", **kw: object) -> ModelConfig:
    return ModelConfig(
        backbone="test_vit", create_kwargs={"img_size": 32}, n_slices=4, encoder3d="vit3d", tubelet=2, tuning=tuning, **kw  # type: ignore[arg-type]
    )


def test_inflated_vit_equals_its_2d_model_on_depth_constant_volumes() -> None:
    torch.manual_seed(0)
    model, px = build_model(_vit3d(channel_rule="gray"), 5, 1)
    enc = model.encoder.eval()
    plane = torch.rand(2, 1, 1, px, px)
    x = plane.expand(2, 4, 1, px, px).contiguous()
    vit = enc.backbone.eval()  # type: ignore[union-attr]
    rgb = (plane[:, 0].expand(2, 3, px, px) - enc.mean[:, :, 0]) / enc.std[:, :, 0]  # type: ignore[index]
    with torch.no_grad():
        want = vit(rgb)
        got = enc(x)
        # inflation: every tubelet of a depth-constant volume embeds exactly as the 2D patch embedding of its plane
        tok3d = enc.tubelet_embed(rgb[:, :, None].expand(2, 3, 4, px, px))  # type: ignore[operator]
        tok2d = vit.patch_embed.proj(rgb)  # type: ignore[union-attr,operator]
    assert tok3d.shape[2] == 2 and all(torch.allclose(tok3d[:, :, t], tok2d, atol=1e-5) for t in range(2))
    # the whole encoder stays close to the 2D model (the [CLS] token attends to each patch token twice)
    assert got.shape == (2, enc.dim) and torch.nn.functional.cosine_similarity(got, want).min() > 0.9
    # once depth varies, the 3D model sees it (the 2D model of one plane cannot)
    y = x.clone()
    y[:, 2:] = torch.rand_like(y[:, 2:])
    with torch.no_grad():
        assert not torch.allclose(enc(y), got, atol=1e-3)
    assert model.predict(x).shape == (2, 5)


def test_vit3d_tuning_modes_and_errors() -> None:
    lora, _ = build_model(_vit3d("lora"), 5, 2)
    names = [n for n, p in lora.encoder.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and "tubelet_embed.weight" in names and "depth_embed" in names
    assert not any(n.endswith("qkv.base_layer.weight") or n.endswith("patch_embed.proj.weight") for n in names)
    frozen, _ = build_model(_vit3d("frozen"), 5, 2)
    assert {n for n, p in frozen.encoder.named_parameters() if p.requires_grad} >= {"tubelet_embed.weight", "depth_embed"}
    assert not any(p.requires_grad for p in frozen.encoder.backbone.parameters())  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="must divide"):
        ModelConfig(backbone="test_vit", n_slices=5, encoder3d="vit3d", tubelet=2)
    with pytest.raises(ValueError, match="VisionTransformer"):
        build_model(ModelConfig(backbone="resnet18", n_slices=4, encoder3d="vit3d", tubelet=2, tuning="full"), 5, 1)
    with pytest.raises(ValueError, match="unknown 3D encoder"):
        ModelConfig(backbone="test_vit", encoder3d="nope")  # type: ignore[arg-type]


def test_cnn3d_sees_depth_and_trains_from_scratch_only() -> None:
    torch.manual_seed(0)
    enc = Cnn3DEncoder(channels=2, n_slices=5, width=8).eval()
    x = torch.rand(3, 5, 2, 32, 32)
    with torch.no_grad():
        a = enc(x)
        b = enc(x.flip(1))
    assert a.shape == (3, 64) and not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="planes"):
        enc(torch.rand(1, 4, 2, 32, 32))
    with pytest.raises(ValueError, match="tuning='full'"):
        ModelConfig(backbone=None, encoder3d="cnn3d", tuning="lora")
    model, px = build_model(ModelConfig(backbone=None, encoder3d="cnn3d", tuning="full", n_slices=3, cnn_width=8), 4, 1)
    assert px == 64 and model.predict(torch.rand(2, 3, 1, px, px)).shape == (2, 4)


@pytest.mark.parametrize("encoder3d", ["vit3d", "cnn3d"])
def test_3d_models_save_and_load(encoder3d: str, tmp_path: Path) -> None:
    cfg = _vit3d("lora") if encoder3d == "vit3d" else ModelConfig(backbone=None, encoder3d="cnn3d", tuning="full", n_slices=4, cnn_width=8)
    model, px = build_model(cfg, 3, 1, seed=3)
    prep = ExpressionPrep(genes=("A", "B", "C"), mean=(0.0,) * 3, std=(1.0,) * 3)
    meta = {"model": cfg.to_dict(), "train": TrainConfig().to_dict(), "channels": 1, "size_px": px, "backbone_name": model.backbone_name,
            "backbone_kwargs": model.backbone_kwargs}
    save_model(tmp_path, model.eval(), prep, meta)
    back = load_model(tmp_path)
    x = torch.rand(2, 4, 1, px, px)
    with torch.no_grad():
        assert torch.allclose(back.model.predict(x), model.predict(x), atol=1e-5)
    assert back.model_cfg.encoder3d == encoder3d
