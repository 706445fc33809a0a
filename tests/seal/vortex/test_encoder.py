"""The 3D encoder on small in-memory tensors: shapes, channel rules, aggregation, LoRA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seal.vortex import ChannelMapper, ModelConfig, SubvolumeTransform, build_model, make_aggregator
from seal.vortex.channels import stain_matrix


@pytest.mark.parametrize("aggregation", ["attention", "transformer", "mean"])
@pytest.mark.parametrize("channels,rule", [(1, "pseudo_he"), (2, "learned"), (2, "gray"), (3, "pseudo_he")])
def test_encoder_shapes(aggregation: str, channels: int, rule: str) -> None:
    cfg = ModelConfig(backbone="test_vit", create_kwargs={"img_size": 32}, n_slices=4, aggregation=aggregation, channel_rule=rule)  # type: ignore[arg-type]
    model, px = build_model(cfg, 7, channels)
    assert px == 32
    x = torch.rand(3, 4, channels, px, px)
    tokens = model.encoder.slice_tokens(x)
    assert tokens.shape == (3, 4, model.encoder.dim)
    assert model.embed_volume(x).shape == (3, model.encoder.dim)
    assert model.predict(x).shape == (3, 7)
    with pytest.raises(ValueError, match="channels"):
        model.encoder(torch.rand(3, 4, 3 if channels != 3 else 1, px, px))
    with pytest.raises(ValueError, match="slices"):
        model.encoder(torch.rand(3, 5, channels, px, px))


def test_attention_weights_and_depth_order() -> None:
    torch.manual_seed(0)
    agg = make_aggregator("attention", 5, 16)
    x = torch.randn(4, 5, 16)
    w = agg.weights(x)  # type: ignore[operator]
    assert torch.allclose(w.sum(1), torch.ones(4), atol=1e-6)
    with torch.no_grad():
        agg.depth.copy_(torch.randn(5, 16))
    # with a depth embedding, reversing the slices changes the result
    assert not torch.allclose(agg(x), agg(x.flip(1)))


def test_channel_rules() -> None:
    zero = torch.zeros(1, 2, 4, 4)
    assert torch.allclose(ChannelMapper(2, "pseudo_he")(zero), torch.ones(1, 3, 4, 4))  # no stain = white
    nuc = torch.zeros(1, 2, 4, 4)
    nuc[:, 0] = 1.0
    rgb = ChannelMapper(2, "pseudo_he")(nuc)[0, :, 0, 0]
    assert torch.allclose(rgb, torch.exp(-stain_matrix(2)[0]))  # hematoxylin: blue-purple
    assert rgb[2] > rgb[0] > rgb[1]
    small = torch.full((1, 1, 2, 2), 0.01)
    learned = ChannelMapper(1, "learned")(small)
    fixed = ChannelMapper(1, "pseudo_he")(small)
    assert torch.allclose(learned, fixed, atol=1e-3)  # learned starts at the linearised rule
    grey = ChannelMapper(1, "gray")(torch.full((1, 1, 2, 2), 0.3))
    assert grey.shape == (1, 3, 2, 2) and torch.allclose(grey, torch.full_like(grey, 0.3))
    with pytest.raises(ValueError, match="4 channels"):
        ChannelMapper(4)


def test_lora_trains_only_adapters() -> None:
    cfg = ModelConfig(backbone="test_vit", create_kwargs={"img_size": 32}, n_slices=3, tuning="lora")
    model, px = build_model(cfg, 5, 1)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone_trainable = [n for n in names if n.startswith("encoder.backbone.")]
    assert backbone_trainable and all("lora_" in n for n in backbone_trainable)
    assert any(n.startswith("encoder.aggregator.") for n in names) and any(n.startswith("head.") for n in names)
    frozen = {
        n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("encoder.backbone.") and not p.requires_grad
    }
    lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss = model.predict(torch.rand(4, 3, 1, px, px)).pow(2).mean()
    loss.backward()
    opt.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in lora_b.items())
    full = build_model(ModelConfig(backbone="test_vit", create_kwargs={"img_size": 32}, n_slices=3, tuning="frozen"), 5, 1)[0]
    assert not any(p.requires_grad for n, p in full.named_parameters() if n.startswith("encoder.backbone."))


def test_subvolume_transform_is_one_transform_per_subvolume() -> None:
    rng = np.random.default_rng(0)
    one = rng.integers(0, 255, (1, 16, 16, 1), dtype=np.uint8)
    sub = np.repeat(one, 4, axis=0)  # four identical planes
    torch.manual_seed(1)
    x = SubvolumeTransform(8, augment=True)(sub)
    assert x.shape == (4, 1, 8, 8)
    assert all(torch.equal(x[0], x[k]) for k in range(4))  # same flip/rotation/jitter on every plane
    plain = SubvolumeTransform(16)(sub)
    assert torch.allclose(plain[0, 0], torch.from_numpy(one[0, :, :, 0]).float() / 255)


def test_backbone_from_local_weights_or_seal_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    import timm
    from safetensors.torch import save_file

    src = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.5)  # distinguishable from any seeded initialisation
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    seal_dir = tmp_path / "seal_model"
    seal_dir.mkdir()
    save_file(sd, str(seal_dir / "encoder.safetensors"))
    (seal_dir / "encoder.json").write_text(json.dumps({"backbone": "test_vit", "create_kwargs": {"img_size": 32}, "dim": 64}))
    for cfg in (
        ModelConfig(
            backbone="test_vit",
            weights=str(tmp_path / "w.safetensors"),
            create_kwargs={"img_size": 32},
            n_slices=2,
            tuning="full",
        ),
        ModelConfig(seal_model=str(seal_dir), n_slices=2, tuning="lora"),
    ):
        model, px = build_model(cfg, 3, 1)
        assert px == 32
        got = model.encoder.backbone.state_dict()
        key = next(k for k in got if k.endswith("patch_embed.proj.weight"))
        assert torch.equal(got[key], sd["patch_embed.proj.weight"])
