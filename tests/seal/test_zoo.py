"""The model zoo: every preset builds (reduced depth/width, same key layout), loads a
checkpoint written in its *published* layout, and gives the reference implementation's
embedding (output size, output rule, normalisation). Wrong layouts get a clear error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seal import zoo
from seal._zoo_layouts import load_preset_weights, load_seal_release
from seal.encoders import parse_encoder
from seal.errors import BackboneError, WeightsError

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BIOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
# normalisation and embedding size as the model cards / reference loaders give them
CARD = {
    "uni": (IMAGENET, 1024, 224),
    "uni2-h": (IMAGENET, 1536, 224),
    "conch-v1": (OPENAI, 512, 448),
    "conch-v1.5": (IMAGENET, 768, 448),
    "virchow": (IMAGENET, 2560, 224),
    "virchow2": (IMAGENET, 2560, 224),
    "h-optimus-0": (BIOPTIMUS, 1536, 224),
    "h-optimus-1": (BIOPTIMUS, 1536, 224),
    "h0-mini": (BIOPTIMUS, 1536, 224),
    "gigapath": (IMAGENET, 1536, 224),
    "phikon": (IMAGENET, 768, 224),
    "phikon-v2": (IMAGENET, 1024, 224),
    "ctranspath": (IMAGENET, 768, 224),
    "resnet50-imagenet": (IMAGENET, 1024, 224),
}
SMALL = {"embed_dim": 96, "depth": 2, "num_heads": 2}
# the reference loaders' timm construction (TRIDENT / SEAL), at reduced size
TIMM_REF: dict[str, tuple[str, dict[str, Any]]] = {
    "uni": ("vit_large_patch16_224", {"img_size": 32, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True}),
    "uni2-h": (
        "vit_giant_patch14_224",
        {"img_size": 28, "patch_size": 14, "init_values": 1e-5, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
         "mlp_layer": "swiglu", "act_layer": nn.SiLU, "reg_tokens": 8, "dynamic_img_size": True},
    ),
    "virchow": (
        "vit_huge_patch14_224",
        {"img_size": 28, "init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "", "mlp_layer": "swiglu", "act_layer": nn.SiLU},
    ),
    "virchow2": (
        "vit_huge_patch14_224",
        {"img_size": 28, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "",
         "mlp_layer": "swiglu", "act_layer": nn.SiLU},
    ),
    "h-optimus-0": ("vit_giant_patch14_reg4_dinov2", {"img_size": 28, "global_pool": "token", "init_values": 1e-5}),
    "h-optimus-1": ("vit_giant_patch14_reg4_dinov2", {"img_size": 28, "global_pool": "token", "init_values": 1e-5}),
    "h0-mini": ("vit_base_patch14_reg4_dinov2", {"img_size": 28, "mlp_layer": "swiglu", "act_layer": nn.SiLU, "global_pool": ""}),
    "gigapath": ("vit_giant_patch14_dinov2", {"img_size": 32, "patch_size": 16, "mlp_ratio": 5.33334}),
}
CLS_MEAN_SKIP = {"virchow": 1, "virchow2": 5, "h0-mini": 5}  # CLS (+ registers) left out of the patch mean


def _timm_ref(name: str, seed: int = 1) -> nn.Module:
    import timm
    from timm.layers import SwiGLUPacked

    arch, kw = TIMM_REF[name]
    kw = {**kw, **SMALL}
    if kw.get("mlp_layer") == "swiglu":
        kw["mlp_layer"] = SwiGLUPacked
    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, num_classes=0, **kw)
    for p in m.parameters():  # make layer scales, norms and biases non-trivial
        p.data.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _reduced(name: str) -> zoo.Preset:
    return zoo.PRESETS[name].reduced()


def _all_reduced() -> list[zoo.Preset]:
    return [p.reduced() for p in zoo.PRESETS.values()]


def _img(p: zoo.Preset, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, p.input_size, p.input_size, generator=torch.Generator().manual_seed(3))


def test_every_preset_has_card_facts_and_sources() -> None:
    assert set(CARD) <= set(zoo.PRESETS)
    for name, ((mean, std), dim, size) in CARD.items():
        p = zoo.PRESETS[name]
        assert (p.mean, p.std, p.dim, p.input_size) == (mean, std, dim, size), name
        assert p.sources and all(u.startswith("https://") for u in p.sources.values()), name
        assert p.data_config == {"input_size": [3, size, size], "mean": list(mean), "std": list(std)}


def test_parameter_counts_match_the_published_sizes() -> None:
    # published sizes: UNI ViT-L 0.3B, UNI2-h 0.68B, Virchow(2) 0.63B, H-optimus/GigaPath 1.1B, Phikon 86M
    counts = {n: zoo.param_count(n) / 1e6 for n in ("uni", "uni2-h", "virchow2", "h-optimus-0", "gigapath", "phikon", "ctranspath")}
    assert 300 < counts["uni"] < 306 and 678 < counts["uni2-h"] < 684 and 628 < counts["virchow2"] < 634
    assert 1100 < counts["h-optimus-0"] < 1140 and 1100 < counts["gigapath"] < 1140
    assert 85 < counts["phikon"] < 87 and 27 < counts["ctranspath"] < 29


@pytest.mark.parametrize("name", sorted(TIMM_REF))
def test_timm_layout_presets_match_the_reference_loader(name: str, tmp_path: Path) -> None:
    p = _reduced(name)
    ref = _timm_ref(name)
    f = tmp_path / "pytorch_model.bin"
    torch.save(ref.state_dict(), f)  # the published file: the timm model's own state dict
    model = zoo.build(p)
    load_preset_weights(model, p, tmp_path)  # a snapshot folder: the preset's file name is found
    x = _img(p)
    with torch.no_grad():
        got = model.eval()(x)
        if name in CLS_MEAN_SKIP:
            tok = ref.forward_features(x)
            want = torch.cat([tok[:, 0], tok[:, CLS_MEAN_SKIP[name] :].mean(1)], dim=-1)
            assert got.shape[1] == 2 * SMALL["embed_dim"] == p.dim
        else:
            want = ref(x)
            assert got.shape[1] == p.dim
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# transformers >= 5 names its ViT/Dinov2 modules differently from the published files
# (written with transformers 4): these are the published names.
_V4_VIT = [
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.attention\.([qkv])_proj\.", lambda m: f".attention.attention.{dict(q='query', k='key', v='value')[m.group(1)]}."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]


def _published_hf(sd: dict[str, torch.Tensor], rules: list[Any]) -> dict[str, torch.Tensor]:
    import re

    out = {}
    for k, v in sd.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v.contiguous()
    return out


def test_phikon_loads_transformers_vit_keys(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTModel

    cfg = ViTConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=2, intermediate_size=384, image_size=32, patch_size=16)
    torch.manual_seed(0)
    hf = ViTModel(cfg).eval()  # with its pooler, as owkin/phikon's file has
    published = _published_hf(hf.state_dict(), _V4_VIT)
    assert "encoder.layer.1.attention.attention.query.weight" in published and "pooler.dense.weight" in published
    snap = tmp_path / "models--owkin--phikon" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file(published, str(snap / "model.safetensors"))
    p = _reduced("phikon")
    x = _img(p)
    with torch.no_grad():
        want = hf(pixel_values=x).last_hidden_state[:, 0]
    model = zoo.build(p)
    load_preset_weights(model, p, tmp_path / "models--owkin--phikon")  # the HF cache folder itself
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), want, rtol=1e-4, atol=1e-5)
    # a file saved by transformers 5 (new module names) loads the same
    torch.save(hf.state_dict(), tmp_path / "v5.bin")
    model = zoo.build(p, seed=9)
    load_preset_weights(model, p, tmp_path / "v5.bin")
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), want, rtol=1e-4, atol=1e-5)


def test_phikon_v2_loads_transformers_dinov2_keys(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(hidden_size=96, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4, image_size=32, patch_size=16)
    torch.manual_seed(0)
    hf = Dinov2Model(cfg).eval()
    for n, prm in hf.named_parameters():
        if "lambda1" in n:
            prm.data.uniform_(0.5, 1.5)
    published = _published_hf(hf.state_dict(), _V4_VIT[1:3])
    assert "encoder.layer.1.layer_scale2.lambda1" in published and "encoder.layer.0.attention.attention.key.bias" in published
    torch.save(published, tmp_path / "pytorch_model.bin")
    p = _reduced("phikon-v2")
    model = zoo.build(p)
    load_preset_weights(model, p, tmp_path / "pytorch_model.bin")
    x = _img(p)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), hf(pixel_values=x).last_hidden_state[:, 0], rtol=1e-4, atol=1e-5)


def _pooler_ref(tokens: torch.Tensor, sd: dict[str, torch.Tensor], pre: str, heads: int) -> torch.Tensor:
    """CONCH's attentional pooler and ln_contrast written out by hand."""
    x = F.layer_norm(tokens, (tokens.shape[-1],), sd[f"{pre}attn_pool_contrast.ln_k.weight"], sd[f"{pre}attn_pool_contrast.ln_k.bias"])
    query = sd[f"{pre}attn_pool_contrast.query"]
    q = F.layer_norm(query, (query.shape[-1],), sd[f"{pre}attn_pool_contrast.ln_q.weight"], sd[f"{pre}attn_pool_contrast.ln_q.bias"])
    q = q @ sd[f"{pre}attn_pool_contrast.to_q.weight"].T
    k, v = (x @ sd[f"{pre}attn_pool_contrast.to_kv.weight"].T).chunk(2, dim=-1)
    b, n, d = k.shape
    dh = d // heads
    qh = q.reshape(1, -1, heads, dh).permute(0, 2, 1, 3)
    kh = k.reshape(b, n, heads, dh).permute(0, 2, 1, 3)
    vh = v.reshape(b, n, heads, dh).permute(0, 2, 1, 3)
    attn = torch.softmax((qh * dh**-0.5) @ kh.transpose(-1, -2), dim=-1)
    out = (attn @ vh).permute(0, 2, 1, 3).reshape(b, -1, d) @ sd[f"{pre}attn_pool_contrast.to_out.weight"].T
    return F.layer_norm(out[:, 0], (out.shape[-1],), sd[f"{pre}ln_contrast.weight"], sd[f"{pre}ln_contrast.bias"])


def _pooler_state(pre: str, d: int, ctx: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    r = lambda *s: torch.randn(*s, generator=g) * 0.2  # noqa: E731
    return {
        f"{pre}attn_pool_contrast.query": r(1, d),
        f"{pre}attn_pool_contrast.ln_q.weight": 1 + r(d),
        f"{pre}attn_pool_contrast.ln_q.bias": r(d),
        f"{pre}attn_pool_contrast.ln_k.weight": 1 + r(ctx),
        f"{pre}attn_pool_contrast.ln_k.bias": r(ctx),
        f"{pre}attn_pool_contrast.to_q.weight": r(d, d),
        f"{pre}attn_pool_contrast.to_kv.weight": r(2 * d, ctx),
        f"{pre}attn_pool_contrast.to_out.weight": r(d, d),
        f"{pre}ln_contrast.weight": 1 + r(d),
        f"{pre}ln_contrast.bias": r(d),
    }


def test_conch_v1_loads_the_coca_file_and_pools_like_conch(tmp_path: Path) -> None:
    import timm

    p = _reduced("conch-v1")
    torch.manual_seed(2)
    trunk = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, img_size=32, dynamic_img_size=True, **SMALL)
    g = torch.Generator().manual_seed(4)
    sd = {f"visual.trunk.{k}": v for k, v in trunk.state_dict().items()} | _pooler_state("visual.", 32, 96, g)
    # the rest of the CoCa file, which the image embedding does not use
    sd |= {"visual.proj_contrast": torch.randn(32, 32), "visual.attn_pool_caption.query": torch.randn(4, 32),
           "visual.ln_caption.weight": torch.ones(32), "text.token_embedding.weight": torch.randn(10, 8),
           "text_decoder.ln_final.weight": torch.ones(8), "logit_scale": torch.tensor(2.0)}
    torch.save(sd, tmp_path / "pytorch_model.bin")
    model = zoo.build(p)
    load_preset_weights(model, p, tmp_path / "pytorch_model.bin")
    x = _img(p)
    with torch.no_grad():
        want = _pooler_ref(trunk.eval().forward_features(x), sd, "visual.", heads=2)
        got = model.eval()(x)
    assert got.shape == (2, p.dim)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_conch_v15_interpolates_position_embeddings_as_the_reference(tmp_path: Path) -> None:
    import timm

    p = _reduced("conch-v1.5")  # checkpoint grid 2x2 (32 px), run at 64 px (4x4) like 224 -> 448
    torch.manual_seed(5)
    trunk = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, img_size=32, init_values=1.0, **SMALL)
    for prm in trunk.parameters():
        prm.data.add_(torch.randn_like(prm) * 0.05)
    sd = {f"trunk.{k}": v for k, v in trunk.state_dict().items()} | _pooler_state("", 32, 96, torch.Generator().manual_seed(6))
    torch.save(sd, tmp_path / "pytorch_model_vision.bin")
    model = zoo.build(p)
    load_preset_weights(model, p, tmp_path)
    # the reference's interpolate_pos_encoding for a 64 px input, by hand
    pos = sd["trunk.pos_embed"]
    patch = F.interpolate(pos[:, 1:].reshape(1, 2, 2, 96).permute(0, 3, 1, 2), scale_factor=(4.1 / 2, 4.1 / 2), mode="bicubic")
    want_pos = torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, 16, 96)], dim=1)
    torch.testing.assert_close(model.trunk.pos_embed.data, want_pos)
    ref = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, img_size=64, init_values=1.0, **SMALL)
    ref.load_state_dict({**trunk.state_dict(), "pos_embed": want_pos})
    x = _img(p)
    with torch.no_grad():
        want = _pooler_ref(ref.eval().forward_features(x), sd, "", heads=2)
        torch.testing.assert_close(model.eval()(x), want, rtol=1e-4, atol=1e-5)


def test_ctranspath_loads_the_timm_054_swin_layout(tmp_path: Path) -> None:
    p = _reduced("ctranspath")
    src = zoo.build(p, seed=7).eval()
    # the published layout: {"model": ...}, downsample at the end of a stage, persistent buffers
    old: dict[str, torch.Tensor] = {}
    for k, v in src.trunk.state_dict().items():
        m = k.split(".")
        if k.startswith("layers.") and m[2] == "downsample":
            k = ".".join(["layers", str(int(m[1]) - 1), *m[2:]])
        old[k] = v
    for k, v in src.trunk.named_buffers():
        if k.endswith("relative_position_index"):
            old[k] = v
    old["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 4, 4)
    assert "layers.0.downsample.reduction.weight" in old and "layers.3.downsample.reduction.weight" not in old
    torch.save({"model": old}, tmp_path / "CHIEF_CTransPath.pth")
    model = zoo.build(p, seed=99)
    load_preset_weights(model, p, tmp_path / "CHIEF_CTransPath.pth")
    x = _img(p)
    with torch.no_grad():
        got = model.eval()(x)
        torch.testing.assert_close(got, src(x))
    assert got.shape == (2, p.dim) and isinstance(model.trunk.patch_embed, zoo.ConvStem)


def test_resnet50_is_torchvision_truncated_after_layer3(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet50().eval()
    torch.save(tv.state_dict(), tmp_path / "resnet50-0676ba61.pth")  # torchvision's own file layout (with layer4, fc)
    p = zoo.PRESETS["resnet50-imagenet"]
    model = zoo.build(p)
    load_preset_weights(model, p, tmp_path / "resnet50-0676ba61.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        want = tv.layer3(tv.layer2(tv.layer1(h))).mean(dim=(2, 3))
        got = model.eval()(x)
    assert got.shape == (2, 1024)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_wrong_layout_names_file_preset_keys_and_suggests_the_right_preset(tmp_path: Path) -> None:
    f = tmp_path / "pytorch_model.bin"
    torch.save(_timm_ref("uni").state_dict(), f)
    p = _reduced("virchow2")
    with pytest.raises(WeightsError) as e:
        load_preset_weights(zoo.build(p), p, f, candidates=_all_reduced())
    msg = str(e.value)
    assert str(f) in msg and "virchow2" in msg
    assert "missing keys" in msg and "reg_token" in msg  # Virchow2's registers are not in a UNI file
    assert "shape mismatches" in msg and "use uni@" in msg


def test_truncated_or_foreign_files_get_clear_errors(tmp_path: Path) -> None:
    p = _reduced("uni")
    sd = _timm_ref("uni").state_dict()
    sd.pop("blocks.1.mlp.fc2.weight")
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(WeightsError, match=r"1 missing keys \(first: trunk\.blocks\.1\.mlp\.fc2\.weight\)"):
        load_preset_weights(zoo.build(p), p, tmp_path / "a.pth", candidates=_all_reduced())
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "b.pt")
    with pytest.raises(WeightsError, match="matches no preset"):
        load_preset_weights(zoo.build(p), p, tmp_path / "b.pt", candidates=_all_reduced())
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(WeightsError, match="not a weights file"):
        load_preset_weights(zoo.build(p), p, tmp_path / "notes.txt")
    with pytest.raises(WeightsError, match="not found"):
        load_preset_weights(zoo.build(p), p, tmp_path / "nothing.bin")


def test_seal_release_merges_lora_from_seals_checkpoint_layout(tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    p = _reduced("uni")
    ref = _timm_ref("uni")
    targets = ["blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    peft_model = get_peft_model(ref, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    for n, prm in peft_model.named_parameters():
        if "lora_B" in n:
            prm.data.normal_(0, 0.1)

    class PatchRecEncoder(nn.Module):  # SEAL's wrapper: the tuned encoder and training heads
        def __init__(self) -> None:
            super().__init__()
            self.encoder = peft_model
            self.decoder = nn.Linear(96, 5)

    torch.save(PatchRecEncoder().state_dict(), tmp_path / "seal_uni.pth")
    with pytest.raises(WeightsError, match="LoRA alpha/r"):
        load_seal_release(p, tmp_path / "seal_uni.pth")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    model, _ = load_seal_release(p, tmp_path / "seal_uni.pth")
    x = _img(p)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), peft_model.eval()(x), rtol=1e-4, atol=1e-5)
    spec = parse_encoder(f"seal-release:univ2@{tmp_path / 'seal_uni.pth'}")
    assert spec.preset == "uni2-h" and spec.release


def test_spec_syntax() -> None:
    s = parse_encoder("uni@/w/uni/pytorch_model.bin")
    assert (s.preset, s.weights, s.label) == ("uni", Path("/w/uni/pytorch_model.bin"), "uni@uni")
    assert parse_encoder("virchow2").weights is None and parse_encoder("virchow2").dim == 2560
    assert parse_encoder("timm:resnet18@/x/w.pth").preset is None
    with pytest.raises(BackboneError, match="seal models"):
        parse_encoder("unii@/x")


def test_kwargs_rebuild_from_json() -> None:
    rec = json.loads(json.dumps(zoo.recipe(_reduced("virchow2"))))
    a, b = zoo.build_from_recipe(rec, seed=3), zoo.build(_reduced("virchow2"), seed=3)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))
    with pytest.raises(BackboneError, match="cannot resolve"):
        zoo.build_from_recipe({**rec, "kwargs": {"mlp_layer": {"$ref": "timm.layers.NoSuchLayer"}}})


def test_registered_presets_need_only_a_frozen_entry() -> None:
    tiny = replace(_reduced("h0-mini"), name="h0-tiny")
    zoo.register(tiny)
    try:
        assert parse_encoder("h0-tiny").dim == 192
    finally:
        zoo.unregister("h0-tiny")
    assert "h0-tiny" not in zoo.PRESETS
