"""Zoo presets through the user-facing paths: `seal models`, `seal embed --encoder --out`,
`seal fit --backbone PRESET@WEIGHTS` (LoRA targets, encoder.json rebuilding without
hestkit) and VORTEX's backbone spec. Reduced presets keep it fast."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import catalog
from cli.seal import app
from seal import zoo

runner = CliRunner()


@pytest.fixture()
def tiny(tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Reduced UNI and Virchow2 registered as presets, each with a file in its published layout."""
    files = {}
    for base in ("uni", "virchow2"):
        p = replace(zoo.PRESETS[base].reduced(), name=f"{base}-tiny")
        zoo.register(p)
        src = zoo.build(p, seed=11)
        for prm in src.parameters():
            prm.data.add_(torch.randn_like(prm) * 0.05)
        f = tmp_path / f"{base}-tiny" / "pytorch_model.bin"
        f.parent.mkdir()
        torch.save({k[len("trunk.") :]: v for k, v in src.state_dict().items()}, f)  # timm layout: no trunk. prefix
        files[base] = f
    yield files
    for base in ("uni", "virchow2"):
        zoo.unregister(f"{base}-tiny")


def test_seal_models_lists_presets_with_sizes() -> None:
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0, r.output
    for name in ("uni", "uni2-h", "conch-v1", "conch-v1.5", "virchow2", "h-optimus-1", "h0-mini", "ctranspath", "resnet50-imagenet"):
        assert name in r.output
    row = next(line for line in r.output.splitlines() if "│ virchow2 " in line)
    assert "2560" in row and "224px" in row and "631.2" in row


def test_embed_writes_npz_in_view_order(small_catalog: Path, tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "e" / "uni.npz"
    args = ["embed", str(small_catalog), "--encoder", f"uni-tiny@{tiny['uni']}", "--out", str(out), "--samples", "s1", "--samples", "s0"]
    r = runner.invoke(app, [*args, "--workers", "0", "--device", "cpu", "--no-cache"])
    assert r.exit_code == 0, r.output
    z = np.load(out)
    view = catalog.open(small_catalog).pairs(sample_ids=["s1", "s0"])
    assert z["embeddings"].dtype == np.float32 and z["embeddings"].shape == (len(view), 96)
    assert list(z["sample_id"]) == list(view.obs["sample_id"].astype(str))
    assert list(z["barcode"]) == list(view.obs["barcode"].astype(str))
    # the rows are the model's embeddings of those pairs' patches
    from seal.data import PatchTransform
    from seal.encoders import parse_encoder

    enc = parse_encoder(f"uni-tiny@{tiny['uni']}").open("cpu")
    tf = PatchTransform(**{k: enc.data_config[k] for k in ("input_size", "mean", "std")})
    with torch.no_grad():
        first = enc.model(torch.stack([tf(view.patch(i)) for i in (0, len(view) - 1)])).numpy()
    np.testing.assert_allclose(z["embeddings"][[0, -1]], first, rtol=1e-4, atol=1e-5)
    bad = runner.invoke(app, ["embed", str(small_catalog), "--encoder", f"virchow2-tiny@{tiny['uni']}", "--no-cache"])
    assert bad.exit_code == 1 and "does not fit preset virchow2-tiny" in bad.output and "use uni-tiny@" in bad.output


def _resolve(v: Any) -> Any:
    """encoder.json's kwargs without hestkit: {"$ref": "mod.Name", **partial_args}."""
    if isinstance(v, dict) and "$ref" in v:
        mod, _, name = v["$ref"].rpartition(".")
        obj = getattr(importlib.import_module(mod), name)
        extra = {k: x for k, x in v.items() if k != "$ref"}
        return partial(obj, **extra) if extra else obj
    return v


def test_fit_on_a_preset_puts_lora_on_swiglu_and_writes_a_rebuildable_encoder(
    small_catalog: Path, tiny: dict[str, Path], tmp_path: Path
) -> None:
    import timm
    from safetensors.torch import load_file

    from seal.io import load_encoder
    from seal.models import LoraSpec
    from seal.train import FitConfig, fit

    cfg = FitConfig(
        backbone=f"virchow2-tiny@{tiny['virchow2']}", epochs=1, batch_size=16, lr=1e-3, num_workers=0,
        max_steps_per_epoch=1, lora=LoraSpec(rank=4, alpha=4, dropout=0.0, blocks=1), n_genes=20, device="cpu",
        samples=("s0", "s1"), val_fraction=0.0,
    )
    out = fit(small_catalog, cfg, tmp_path / "m", progress=False)
    targets = set(json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"])
    assert targets == {f"trunk.blocks.1.{m}" for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    info = json.loads((out / "encoder.json").read_text())
    rec = info["recipe"]
    assert info["backbone"] == "virchow2-tiny" and rec["output"] == "cls+mean" and info["dim"] == 192
    assert info["data_config"]["mean"] == [0.485, 0.456, 0.406]
    # rebuild with timm alone, as docs/models.md shows
    trunk = timm.create_model(rec["timm_name"], pretrained=False, num_classes=0, **{k: _resolve(v) for k, v in rec["kwargs"].items()})
    state = load_file(str(out / "encoder.safetensors"))
    trunk.load_state_dict({k[len("trunk.") :]: v for k, v in state.items()}, strict=True)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        tok = trunk.eval().forward_features(x)
        want = torch.cat([tok[:, 0], tok[:, trunk.num_prefix_tokens :].mean(1)], dim=-1)
        got = load_encoder(out)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the tuned encoder differs from the frozen original only through LoRA on the last block
    orig = torch.load(tiny["virchow2"], weights_only=True)
    assert torch.equal(state["trunk.blocks.0.mlp.fc1.weight"], orig["blocks.0.mlp.fc1.weight"])
    assert not torch.equal(state["trunk.blocks.1.mlp.fc1.weight"], orig["blocks.1.mlp.fc1.weight"])


def test_vortex_backbone_accepts_a_preset_spec(tiny: dict[str, Path]) -> None:
    from seal.vortex.config import ModelConfig
    from seal.vortex.encoder import backbone_data_config, build_backbone

    bb, name, _ = build_backbone(ModelConfig(backbone=f"uni-tiny@{tiny['uni']}"))
    ref = torch.load(tiny["uni"], weights_only=True)
    assert torch.equal(bb.state_dict()["trunk.cls_token"], ref["cls_token"])
    assert backbone_data_config(bb)["input_size"] == [3, 32, 32] and int(bb.num_features) == 96
    bare, _, _ = build_backbone(ModelConfig(backbone=name), load=False)
    assert not torch.equal(bare.state_dict()["trunk.cls_token"], ref["cls_token"])
