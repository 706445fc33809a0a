"""The model zoo: named presets of the pathology foundation models people use.

One declarative :class:`Preset` per model says how to build its architecture (a timm
name and the exact keyword arguments of the published checkpoint), which files the
checkpoint comes in and how their keys map onto the built model (``layout``), the input
size and normalisation, the output rule (the pooled/CLS embedding, CLS concatenated with
the mean of the patch tokens, or CONCH's attentional pooler), the embedding size and the
modules SEAL puts LoRA on. Every fact carries its source (model card or reference loader);
``docs/models.md`` lists them.

Weights only come from a local file or folder the user names; nothing is downloaded.
Loading is strict: a key that is missing or unexpected, or a shape that differs, raises
:class:`~seal.errors.WeightsError` naming the file, the preset, the first differing keys and
the presets whose layout the file does match.

Keyword arguments are kept JSON-serialisable so that ``encoder.json`` can rebuild a model:
a class is written ``{"$ref": "timm.layers.SwiGLUPacked"}`` (with extra keys bound as
``functools.partial`` arguments, e.g. ``{"$ref": "torch.nn.LayerNorm", "eps": 1e-12}``).
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .errors import BackboneError

__all__ = [
    "IMAGENET",
    "PRESETS",
    "AttentionalPooler",
    "ConvStem",
    "PoolSpec",
    "Preset",
    "ZooEncoder",
    "build",
    "build_from_recipe",
    "expected_shapes",
    "get_preset",
    "param_count",
    "recipe",
    "register",
    "resolve_kwargs",
    "unregister",
]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
BIOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))

_SWIGLU = {"$ref": "timm.layers.SwiGLUPacked"}
_SILU = {"$ref": "torch.nn.SiLU"}
_VIT_LORA = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

TRIDENT = "https://github.com/mahmoodlab/TRIDENT/blob/main/trident/patch_encoder_models/load.py"
SEAL_FACTORY = "https://github.com/mahmoodlab/SEAL/blob/main/seal/models/encoder_factory.py"
SEAL_LOADER = "https://github.com/mahmoodlab/SEAL/blob/main/seal/models/load_model.py"
HEST_CONCH15 = "https://github.com/mahmoodlab/HEST/blob/main/src/hest/bench/cpath_model_zoo/conchv1_5/conchv1_5.py"
CONCH_TOWER = "https://github.com/mahmoodlab/CONCH/blob/main/conch/open_clip_custom/coca_model.py"
CONCH_VISUAL = "https://github.com/mahmoodlab/CONCH/blob/main/conch/open_clip_custom/vision_tower.py"
CONCH_CFG = "https://github.com/mahmoodlab/CONCH/blob/main/conch/open_clip_custom/model_configs/conch_ViT-B-16.json"


@dataclass(frozen=True)
class PoolSpec:
    """CONCH's attentional pooler: ``n_queries`` learned queries of width ``d_model``
    attend (``heads`` heads, no biases) over the trunk's tokens of width ``context_dim``;
    query 0 goes through a final LayerNorm (``ln_contrast``)."""

    d_model: int
    context_dim: int
    heads: int = 8
    n_queries: int = 1


@dataclass(frozen=True)
class Preset:
    """One published model: architecture, checkpoint layout, preprocessing and output.

    ``output``: ``pooled`` (the timm model's own pooled output: CLS token for ViTs with
    ``global_pool="token"``, the spatial mean for CNN/Swin), ``cls+mean`` (CLS token
    concatenated with the mean of the patch tokens, register tokens excluded) or
    ``attn_pool`` (CONCH's attentional pooler over all tokens, then LayerNorm).
    ``layout``: the key layout of the published file (see :mod:`seal._zoo_layouts`).
    ``truncate``: trunk children replaced by identity (ResNet50 cut after layer3).
    """

    name: str
    title: str
    timm_name: str
    kwargs: Mapping[str, Any]
    dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str = "pooled"
    layout: str = "timm"
    files: tuple[str, ...] = ("pytorch_model.bin", "model.safetensors")
    pool: PoolSpec | None = None
    truncate: tuple[str, ...] = ()
    lora_modules: tuple[str, ...] = _VIT_LORA
    checkpoint_grid: int | None = None
    hf_repo: str = ""
    sources: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""
    reduced_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def reduced(self) -> Preset:
        """The same architecture and key layout at a depth/width small enough for tests."""
        kw = {**self.kwargs, **self.reduced_kwargs}
        pool = self.pool
        dim = self.dim
        if pool is not None:
            pool = PoolSpec(d_model=32, context_dim=int(kw["embed_dim"]), heads=2, n_queries=pool.n_queries)
            dim = 32
        elif self.layout == "swin_v054":
            dim = int(kw["embed_dim"]) * 8
        elif "embed_dim" in self.reduced_kwargs:
            dim = int(kw["embed_dim"]) * (2 if self.output == "cls+mean" else 1)
        grid = 2 if self.checkpoint_grid is not None else None
        return replace(self, kwargs=kw, pool=pool, dim=dim, input_size=int(kw.get("img_size", self.input_size)), checkpoint_grid=grid)

    @property
    def data_config(self) -> dict[str, Any]:
        return {"input_size": [3, self.input_size, self.input_size], "mean": list(self.mean), "std": list(self.std)}


_VIT_SMALL = {"embed_dim": 96, "depth": 2, "num_heads": 2}


def _p(**kw: Any) -> Preset:
    return Preset(**kw)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        _p(
            name="uni",
            title="UNI (ViT-L/16, MahmoodLab)",
            timm_name="vit_large_patch16_224",
            kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5, "dynamic_img_size": True},
            dim=1024,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            files=("pytorch_model.bin",),
            hf_repo="MahmoodLab/UNI",
            sources={"architecture, file, normalisation": TRIDENT, "model card": "https://huggingface.co/MahmoodLab/UNI"},
            reduced_kwargs={**_VIT_SMALL, "img_size": 32},
        ),
        _p(
            name="uni2-h",
            title="UNI2-h (ViT-H/14, 8 registers, SwiGLU, MahmoodLab)",
            timm_name="vit_giant_patch14_224",
            kwargs={
                "img_size": 224,
                "patch_size": 14,
                "depth": 24,
                "num_heads": 24,
                "init_values": 1e-5,
                "embed_dim": 1536,
                "mlp_ratio": 2.66667 * 2,
                "no_embed_class": True,
                "mlp_layer": _SWIGLU,
                "act_layer": _SILU,
                "reg_tokens": 8,
                "dynamic_img_size": True,
            },
            dim=1536,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            files=("pytorch_model.bin",),
            hf_repo="MahmoodLab/UNI2-h",
            sources={"architecture, file, normalisation": TRIDENT, "model card": "https://huggingface.co/MahmoodLab/UNI2-h"},
            reduced_kwargs={**_VIT_SMALL, "img_size": 28},
        ),
        _p(
            name="conch-v1",
            title="CONCH v1 vision trunk (ViT-B/16 @448 + attentional pooler, MahmoodLab)",
            timm_name="vit_base_patch16_224",
            kwargs={"img_size": 448, "patch_size": 16, "dynamic_img_size": True, "global_pool": ""},
            dim=512,
            input_size=448,
            mean=OPENAI_CLIP[0],
            std=OPENAI_CLIP[1],
            output="attn_pool",
            layout="conch_v1",
            pool=PoolSpec(d_model=512, context_dim=768, heads=8, n_queries=1),
            files=("pytorch_model.bin",),
            hf_repo="MahmoodLab/conch",
            sources={
                "trunk (timm VisionTransformer, 448 px, patch 16)": CONCH_TOWER,
                "attentional pooler, ln_contrast, forward_no_head": CONCH_VISUAL,
                "embed_dim 512, 8 pooler heads, 1 query": CONCH_CFG,
                "output encode_image(proj_contrast=False, normalize=False)": TRIDENT,
                "normalisation (OpenAI CLIP mean/std)": "https://github.com/mahmoodlab/CONCH/blob/main/conch/open_clip_custom/constants.py",
            },
            notes="the file is the whole CoCa model: text tower, decoder, proj_contrast and the caption pooler are not used by the image embedding and are skipped by name",
            reduced_kwargs={**_VIT_SMALL, "img_size": 32},
        ),
        _p(
            name="conch-v1.5",
            title="CONCH v1.5 vision tower (ViT-L/16 @448 + attentional pooler, MahmoodLab/TITAN)",
            timm_name="vit_large_patch16_224",
            kwargs={"img_size": 448, "patch_size": 16, "init_values": 1.0, "global_pool": ""},
            dim=768,
            input_size=448,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            output="attn_pool",
            layout="conch_v15",
            pool=PoolSpec(d_model=768, context_dim=1024, heads=8, n_queries=1),
            checkpoint_grid=14,
            files=("pytorch_model_vision.bin",),
            hf_repo="MahmoodLab/conchv1_5",
            sources={"architecture, pooler, 448 px, pos-embed interpolation, normalisation": HEST_CONCH15, "file name": TRIDENT},
            notes="the checkpoint's 14x14 position embedding is interpolated once at load to the 28x28 grid exactly as the reference does at every forward (bicubic, scale factor (28+0.1)/14)",
            reduced_kwargs={**_VIT_SMALL, "img_size": 64},
        ),
        _p(
            name="virchow",
            title="Virchow (ViT-H/14, SwiGLU, Paige)",
            timm_name="vit_huge_patch14_224",
            kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "mlp_ratio": 5.3375,
                "global_pool": "",
                "dynamic_img_size": True,
                "mlp_layer": _SWIGLU,
                "act_layer": _SILU,
            },
            dim=2560,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            output="cls+mean",
            files=("pytorch_model.bin", "model.safetensors"),
            hf_repo="paige-ai/Virchow",
            sources={"architecture, output rule, normalisation": TRIDENT, "model card": "https://huggingface.co/paige-ai/Virchow"},
            reduced_kwargs={**_VIT_SMALL, "img_size": 28},
        ),
        _p(
            name="virchow2",
            title="Virchow2 (ViT-H/14, 4 registers, SwiGLU, Paige)",
            timm_name="vit_huge_patch14_224",
            kwargs={
                "img_size": 224,
                "init_values": 1e-5,
                "reg_tokens": 4,
                "mlp_ratio": 5.3375,
                "global_pool": "",
                "dynamic_img_size": True,
                "mlp_layer": _SWIGLU,
                "act_layer": _SILU,
            },
            dim=2560,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            output="cls+mean",
            files=("pytorch_model.bin", "model.safetensors"),
            hf_repo="paige-ai/Virchow2",
            sources={
                "architecture, output rule (CLS + mean of tokens 5:), normalisation": TRIDENT,
                "model card": "https://huggingface.co/paige-ai/Virchow2",
            },
            reduced_kwargs={**_VIT_SMALL, "img_size": 28},
        ),
        _p(
            name="h-optimus-0",
            title="H-optimus-0 (ViT-g/14, 4 registers, Bioptimus)",
            timm_name="vit_giant_patch14_reg4_dinov2",
            kwargs={"img_size": 224, "global_pool": "token", "init_values": 1e-5, "dynamic_img_size": True},
            dim=1536,
            input_size=224,
            mean=BIOPTIMUS[0],
            std=BIOPTIMUS[1],
            files=("pytorch_model.bin", "model.safetensors"),
            hf_repo="bioptimus/H-optimus-0",
            sources={"architecture, normalisation": TRIDENT, "model card": "https://huggingface.co/bioptimus/H-optimus-0"},
            reduced_kwargs={**_VIT_SMALL, "img_size": 28},
        ),
        _p(
            name="h-optimus-1",
            title="H-optimus-1 (ViT-g/14, 4 registers, Bioptimus)",
            timm_name="vit_giant_patch14_reg4_dinov2",
            kwargs={"img_size": 224, "global_pool": "token", "init_values": 1e-5, "dynamic_img_size": True},
            dim=1536,
            input_size=224,
            mean=BIOPTIMUS[0],
            std=BIOPTIMUS[1],
            files=("pytorch_model.bin", "model.safetensors"),
            hf_repo="bioptimus/H-optimus-1",
            sources={"architecture, normalisation": TRIDENT, "model card": "https://huggingface.co/bioptimus/H-optimus-1"},
            reduced_kwargs={**_VIT_SMALL, "img_size": 28},
        ),
        _p(
            name="h0-mini",
            title="H0-mini (ViT-B/14, 4 registers, SwiGLU, distilled from H-optimus-0, Bioptimus)",
            timm_name="vit_base_patch14_reg4_dinov2",
            kwargs={"img_size": 224, "mlp_layer": _SWIGLU, "act_layer": _SILU, "dynamic_img_size": True, "global_pool": ""},
            dim=1536,
            input_size=224,
            mean=BIOPTIMUS[0],
            std=BIOPTIMUS[1],
            output="cls+mean",
            files=("model.safetensors", "pytorch_model.bin"),
            hf_repo="bioptimus/H0-mini",
            sources={
                "architecture (timm kwargs), output rule CLS + mean of patch tokens": SEAL_FACTORY,
                "cls_token alternative": TRIDENT,
                "model card": "https://huggingface.co/bioptimus/H0-mini",
            },
            notes="the MLP width is the timm default of vit_base_patch14_reg4_dinov2 (ratio 4, packed SwiGLU) as the reference loaders build it from the hub config; use h0-mini with the CLS half ([:768]) for TRIDENT's cls_token variant",
            reduced_kwargs={**_VIT_SMALL, "img_size": 28},
        ),
        _p(
            name="gigapath",
            title="Prov-GigaPath tile encoder (ViT-g/16, SwiGLU, Microsoft/Providence)",
            timm_name="vit_giant_patch14_dinov2",
            kwargs={
                "img_size": 224,
                "in_chans": 3,
                "patch_size": 16,
                "embed_dim": 1536,
                "depth": 40,
                "num_heads": 24,
                "mlp_ratio": 5.33334,
                "dynamic_img_size": True,
            },
            dim=1536,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            files=("pytorch_model.bin",),
            hf_repo="prov-gigapath/prov-gigapath",
            sources={
                "architecture, normalisation": TRIDENT,
                "SwiGLUPacked/SiLU/init_values from the timm architecture": "https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/vision_transformer.py",
                "model card": "https://huggingface.co/prov-gigapath/prov-gigapath",
            },
            reduced_kwargs={**_VIT_SMALL, "img_size": 32},
        ),
        _p(
            name="phikon",
            title="Phikon (ViT-B/16 iBOT, Owkin; Hugging Face ViT keys)",
            timm_name="vit_base_patch16_224",
            kwargs={"img_size": 224, "norm_layer": {"$ref": "torch.nn.LayerNorm", "eps": 1e-12}},
            dim=768,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            layout="hf_vit",
            files=("model.safetensors", "pytorch_model.bin"),
            hf_repo="owkin/phikon",
            sources={
                "ViTModel, CLS of last_hidden_state, normalisation": TRIDENT,
                "model card": "https://huggingface.co/owkin/phikon",
                "HF ViT (layer_norm_eps 1e-12, exact GELU)": "https://github.com/huggingface/transformers/blob/main/src/transformers/models/vit/modeling_vit.py",
            },
            notes="transformers' ViT keys are remapped onto timm's (query/key/value concatenated into qkv); the pooler is not used",
            reduced_kwargs={**_VIT_SMALL, "img_size": 32},
        ),
        _p(
            name="phikon-v2",
            title="Phikon-v2 (ViT-L/16 DINOv2, Owkin; Hugging Face Dinov2 keys)",
            timm_name="vit_large_patch16_224",
            kwargs={"img_size": 224, "init_values": 1e-5},
            dim=1024,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            layout="hf_dinov2",
            files=("model.safetensors", "pytorch_model.bin"),
            hf_repo="owkin/phikon-v2",
            sources={
                "AutoModel, CLS of last_hidden_state, normalisation": TRIDENT,
                "model card": "https://huggingface.co/owkin/phikon-v2",
                "HF Dinov2 (layer scale, layer_norm_eps 1e-6)": "https://github.com/huggingface/transformers/blob/main/src/transformers/models/dinov2/modeling_dinov2.py",
            },
            notes="transformers' Dinov2 keys are remapped onto timm's ViT; mask_token (masked pretraining only) is not used",
            reduced_kwargs={**_VIT_SMALL, "img_size": 32},
        ),
        _p(
            name="ctranspath",
            title="CTransPath (Swin-T with convolutional stem)",
            timm_name="swin_tiny_patch4_window7_224",
            kwargs={"embed_layer": {"$ref": "seal.zoo.ConvStem"}},
            dim=768,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            layout="swin_v054",
            files=("CHIEF_CTransPath.pth", "ctranspath.pth"),
            hf_repo="MahmoodLab/hest-bench (fm_v1/ctranspath)",
            lora_modules=_VIT_LORA,
            sources={
                "architecture (Swin-T + ConvStem, head removed), file, attn_mask keys, normalisation": TRIDENT,
                "old (timm 0.5.4) Swin key layout": "https://github.com/huggingface/pytorch-image-models/blob/main/timm/models/swin_transformer.py",
            },
            notes="the file uses timm 0.5.4's Swin layout (downsample at the end of a stage, persistent attn_mask/relative_position_index buffers); rebuilding needs the ConvStem class (seal.zoo.ConvStem, 25 lines of torch)",
            reduced_kwargs={"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 2, 4), "window_size": 2, "img_size": 64},
        ),
        _p(
            name="resnet50-imagenet",
            title="ResNet50 ImageNet (torchvision weights), truncated after layer3",
            timm_name="resnet50",
            kwargs={},
            dim=1024,
            input_size=224,
            mean=IMAGENET[0],
            std=IMAGENET[1],
            layout="torchvision_resnet",
            truncate=("layer4",),
            files=("pytorch_model.bin", "model.safetensors", "resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
            hf_repo="timm/resnet50.tv_in1k",
            lora_modules=("conv1", "conv2", "conv3"),
            sources={"truncation after layer3 + average pooling (features_only, out_indices=[3]), normalisation": TRIDENT},
            notes="layer4 and fc weights in the file are not used (the model ends at layer3)",
        ),
    ]
}


def register(preset: Preset) -> None:
    """Add (or replace) a preset, e.g. a fine-tuned variant or a reduced test model;
    its name then works in every encoder spec (``NAME@WEIGHTS``)."""
    PRESETS[preset.name] = preset


def unregister(name: str) -> None:
    PRESETS.pop(name, None)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise BackboneError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} (see `seal models`)") from None


def _ref(path: str) -> Any:
    mod, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise BackboneError(f"cannot resolve {path!r} in model kwargs: {exc}") from exc


def resolve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-form kwargs -> ``timm.create_model`` kwargs (``{"$ref": ...}`` -> class or partial;
    lists -> tuples)."""
    out: dict[str, Any] = {}
    for k, v in kwargs.items():
        if isinstance(v, Mapping) and "$ref" in v:
            obj = _ref(str(v["$ref"]))
            extra = {kk: vv for kk, vv in v.items() if kk != "$ref"}
            out[k] = functools.partial(obj, **extra) if extra else obj
        elif isinstance(v, list):
            out[k] = tuple(v)
        else:
            out[k] = v
    return out


class ConvStem(nn.Module):
    """CTransPath's patch embedding: two stride-2 3x3 conv-BN-ReLU, then a 1x1 conv to
    ``embed_dim`` (stride 4 in all), output NHWC as timm's Swin expects."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: Any = None,
        **_: Any,
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        ps = patch_size if isinstance(patch_size, int) else patch_size[0]
        if ps != 4 or embed_dim % 8:
            raise BackboneError(f"ConvStem needs patch size 4 and embed_dim divisible by 8 (got {ps}, {embed_dim})")
        self.img_size = size
        self.patch_size = (4, 4)
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers: list[nn.Module] = []
        cin, cout = in_chans, embed_dim // 8
        for _i in range(2):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin, cout = cout, cout * 2
        layers.append(nn.Conv2d(cin, embed_dim, 1))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def set_input_size(self, img_size: Any = None, **_: Any) -> None:
        if img_size is not None:
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            self.img_size = size
            self.grid_size = (size[0] // 4, size[1] // 4)
            self.num_patches = self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.norm(self.proj(x).permute(0, 2, 3, 1))
        return out


class AttentionalPooler(nn.Module):
    """CONCH's attentional pooler (``to_q``/``to_kv``/``to_out`` without bias, LayerNorms on
    queries and keys); returns ``(B, n_queries, d_model)``."""

    def __init__(self, spec: PoolSpec) -> None:
        super().__init__()
        self.heads = spec.heads
        self.query = nn.Parameter(torch.randn(spec.n_queries, spec.d_model))
        head = spec.d_model // spec.heads
        self.scale = head**-0.5
        inner = head * spec.heads
        self.ln_k = nn.LayerNorm(spec.context_dim)
        self.ln_q = nn.LayerNorm(spec.d_model)
        self.to_q = nn.Linear(spec.d_model, inner, bias=False)
        self.to_kv = nn.Linear(spec.context_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, spec.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.heads
        kv = self.ln_k(x)
        q = self.to_q(self.ln_q(self.query)).expand(b, -1, -1)
        k, v = self.to_kv(kv).chunk(2, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], h, -1).transpose(1, 2)

        qh, kh, vh = split(q), split(k), split(v)
        sim = (qh * self.scale) @ kh.transpose(-1, -2)
        attn = (sim - sim.amax(dim=-1, keepdim=True).detach()).softmax(dim=-1)
        out = (attn @ vh).transpose(1, 2).reshape(b, q.shape[1], -1)
        res: torch.Tensor = self.to_out(out)
        return res


class ZooEncoder(nn.Module):
    """A preset's trunk (a timm model) and its output rule: image batch -> ``(B, dim)``."""

    def __init__(self, trunk: nn.Module, output: str, dim: int, pool: PoolSpec | None = None) -> None:
        super().__init__()
        if output not in ("pooled", "cls+mean", "attn_pool"):
            raise BackboneError(f"unknown output rule {output!r}")
        self.trunk = trunk
        self.output = output
        self.num_features = dim
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 1))
        self.lora_modules: tuple[str, ...] = ()
        self.data_config: dict[str, Any] = {}
        if output == "attn_pool":
            if pool is None:
                raise BackboneError("the attn_pool output rule needs a PoolSpec")
            self.attn_pool_contrast = AttentionalPooler(pool)
            self.ln_contrast = nn.LayerNorm(pool.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "pooled":
            out: torch.Tensor = self.trunk(x)
            return out
        tokens: torch.Tensor = self.trunk.forward_features(x)  # type: ignore[operator]
        if self.output == "cls+mean":
            return torch.cat([tokens[:, 0], tokens[:, self.num_prefix_tokens :].mean(1)], dim=-1)
        pooled: torch.Tensor = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled


def recipe(preset: Preset) -> dict[str, Any]:
    """What ``encoder.json`` stores to rebuild the encoder without hestkit."""
    return {
        "preset": preset.name,
        "timm_name": preset.timm_name,
        "kwargs": _jsonable(preset.kwargs),
        "output": preset.output,
        "dim": preset.dim,
        "pool": None if preset.pool is None else vars(preset.pool).copy(),
        "truncate": list(preset.truncate),
        "lora_modules": list(preset.lora_modules),
        "data_config": preset.data_config,
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def build_from_recipe(rec: Mapping[str, Any], *, seed: int = 0, skip_init: bool = False) -> ZooEncoder:
    """A randomly initialised (seeded) encoder from a :func:`recipe` dict. ``skip_init``
    leaves timm's weight initialisation out where the architecture allows it (shapes only)."""
    import timm

    kwargs = resolve_kwargs(rec["kwargs"])
    kwargs.update(pretrained=False, num_classes=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        extra: dict[str, Any] = {"weight_init": "skip"} if skip_init else {}
        try:
            trunk = timm.create_model(str(rec["timm_name"]), **kwargs, **extra)
        except TypeError:
            trunk = timm.create_model(str(rec["timm_name"]), **kwargs)
        for name in rec.get("truncate", []):
            setattr(trunk, name, nn.Identity())
        pool = PoolSpec(**rec["pool"]) if rec.get("pool") else None
        enc = ZooEncoder(trunk, str(rec["output"]), int(rec["dim"]), pool)
    enc.lora_modules = tuple(rec.get("lora_modules", ()))
    enc.data_config = dict(rec["data_config"])
    return enc


def build(preset: Preset | str, *, seed: int = 0) -> ZooEncoder:
    """The preset's architecture, randomly initialised (seeded); load weights with
    :func:`seal._zoo_layouts.load_preset_weights`."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return build_from_recipe(recipe(p), seed=seed)


@functools.lru_cache(maxsize=64)
def _meta_state(rec_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = build_from_recipe(json.loads(rec_json), skip_init=True)
    return tuple((k, tuple(v.shape)) for k, v in model.state_dict().items())


def expected_shapes(p: Preset) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the built model's state dict (built on the meta device: instant)."""
    return dict(_meta_state(json.dumps(recipe(p), sort_keys=True)))


def param_count(p: Preset | str) -> int:
    """Parameters of the preset's encoder (meta-device construction, no memory used)."""
    pr = get_preset(p) if isinstance(p, str) else p
    with torch.device("meta"):
        model = build_from_recipe(recipe(pr), skip_init=True)
    return sum(t.numel() for t in model.parameters())


def iter_presets() -> Iterator[Preset]:
    yield from PRESETS.values()
