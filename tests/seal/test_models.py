from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from seal.errors import BackboneError, WeightsError
from seal.models import LoraSpec, SealModel, create_backbone, load_weights, lora_targets, wrap_lora


def test_lora_wraps_last_block_only_and_freezes_the_rest() -> None:
    m = create_backbone("test_vit")
    n_blocks = len(m.blocks)
    targets = lora_targets(m, 1)
    assert targets and all(t.startswith(f"blocks.{n_blocks - 1}.") for t in targets)
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"qkv", "proj", "fc1", "fc2"}
    enc = wrap_lora(m, LoraSpec(rank=4, alpha=4, dropout=0.0, blocks=1))
    model = SealModel(enc, n_genes=30, dim=m.num_features)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(("lora_" in n) or n.startswith(("vae.", "head.")) for n in trainable)
    # count: each adapted Linear(in, out) gets r*(in + out) LoRA parameters
    mods = dict(m.named_modules())
    expected = sum(4 * (mods[t].in_features + mods[t].out_features) for t in targets)
    got = sum(p.numel() for n, p in model.encoder.named_parameters() if p.requires_grad)
    assert got == expected
    all_blocks = lora_targets(create_backbone("test_vit"), 0)
    assert len(all_blocks) == 4 * n_blocks


def test_lora_on_a_cnn_uses_convolutions() -> None:
    m = create_backbone("test_resnet")
    t = lora_targets(m, 1)
    assert t and all(isinstance(dict(m.named_modules())[x], torch.nn.Conv2d) for x in t)


def test_unknown_backbone() -> None:
    with pytest.raises(BackboneError, match="not a timm model"):
        create_backbone("vit_tinyyy_patch16_224")


def test_weights_that_do_not_fit(tmp_path: Path) -> None:
    other = create_backbone("test_vit2").state_dict()
    p = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in other.items()}, str(p))
    with pytest.raises(WeightsError, match="do not fit"):
        load_weights(create_backbone("test_vit"), p)
    good = tmp_path / "good.pth"
    src = create_backbone("test_vit", seed=5)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, good)
    dst = create_backbone("test_vit", seed=6)
    load_weights(dst, good)
    x = torch.randn(2, 3, 160, 160)
    assert torch.allclose(src.eval()(x), dst.eval()(x))
    with pytest.raises(WeightsError, match="not found"):
        load_weights(dst, tmp_path / "missing.safetensors")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_weights(dst, tmp_path / "junk.bin")
