"""Reading published checkpoints and mapping their keys onto the zoo's encoders.

Layouts (``Preset.layout``):

``timm``               the timm model's own keys (UNI, UNI2-h, Virchow(2), H-optimus, H0-mini, GigaPath)
``conch_v1``           CONCH's CoCa: ``visual.trunk.*`` (a timm ViT), ``visual.attn_pool_contrast.*``,
                       ``visual.ln_contrast.*``; text tower, decoder and caption pooler are skipped
``conch_v15``          CONCH v1.5's vision tower: ``trunk.*``, ``attn_pool_contrast.*``, ``ln_contrast.*``
``hf_vit``             transformers' ``ViTModel`` (Phikon)
``hf_dinov2``          transformers' ``Dinov2Model`` (Phikon-v2)
``swin_v054``          timm 0.5.4's Swin with CTransPath's stem (``{"model": state_dict}``)
``torchvision_resnet`` torchvision / timm ResNet50 (layer4 and fc unused)

A leading ``module.``/``model.``/``encoder.`` shared by every key is removed first.
Keys a layout skips are named by pattern here, never dropped silently by shape or luck.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import WeightsError
from .zoo import PRESETS, Preset, expected_shapes

__all__ = ["SEAL_BACKBONES", "load_preset_weights", "load_seal_release", "read_checkpoint", "remap", "resolve_weights_path"]

_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_PREFIXES = ("module.", "model.", "encoder.", "base_model.model.")

# keys each layout knows and does not use (regexes on the file's keys after prefix removal)
_SKIP: dict[str, tuple[str, ...]] = {
    "timm": (r"^head\.", r"^head_dist\.", r"^fc_norm\.(weight|bias)$"),
    "conch_v1": (
        r"^text\.",
        r"^text_decoder\.",
        r"^logit_scale$",
        r"^(visual\.)?proj_contrast$",
        r"^(visual\.)?attn_pool_caption\.",
        r"^(visual\.)?ln_caption\.",
        r"^(visual\.)?head\.",
    ),
    "conch_v15": (),
    "hf_vit": (r"^pooler\.", r"^classifier\."),
    "hf_dinov2": (r"^embeddings\.mask_token$", r"^classifier\."),
    "swin_v054": (r"attn_mask$", r"relative_position_index$", r"^head\."),
    "torchvision_resnet": (r"^layer4\.", r"^fc\."),
}

# SEAL's own encoder names (mahmoodlab/SEAL seal/models/load_model.py) -> presets
SEAL_BACKBONES = {
    "uni": "uni",
    "univ2": "uni2-h",
    "conch": "conch-v1",
    "virchow": "virchow",
    "virchow2": "virchow2",
    "hoptimus1": "h-optimus-1",
    "gigapath": "gigapath",
    "h0mini": "h0-mini",
    "phikon2": "phikon-v2",
}


def resolve_weights_path(path: str | Path, preset: Preset | None = None) -> list[Path]:
    """The file(s) to read for ``path``: a file, or a folder (a Hugging Face snapshot, or the
    ``models--ORG--NAME`` cache folder holding ``snapshots/``) where the preset's file names,
    then a sharded index, then a single weights file are looked for."""
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsError(f"{p}: weights not found; give a local file (.safetensors .bin .pth .pt) or a Hugging Face snapshot folder")
    if p.is_file():
        if not p.name.endswith(_SUFFIXES):
            raise WeightsError(f"{p}: not a weights file (expected {', '.join(_SUFFIXES)})")
        return [p]
    snaps = p / "snapshots"
    if snaps.is_dir():
        found = sorted((d for d in snaps.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
        if not found:
            raise WeightsError(f"{p}: the Hugging Face cache folder has no snapshot in {snaps}")
        p = found[-1]
    names = list(preset.files) if preset is not None else []
    for name in [*names, "model.safetensors", "pytorch_model.bin"]:
        if (p / name).is_file():
            return [p / name]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (p / index).is_file():
            weight_map = json.loads((p / index).read_text()).get("weight_map", {})
            shards = sorted({p / str(v) for v in weight_map.values()})
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise WeightsError(f"{p / index}: shards {', '.join(missing[:3])} are missing from {p}")
            return shards
    candidates = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(_SUFFIXES))
    if len(candidates) == 1:
        return candidates
    want = f"one of {', '.join(names)}" if names else "a weights file"
    found_s = ", ".join(f.name for f in candidates) or "no weights files"
    raise WeightsError(f"{p}: expected {want} in the folder; found {found_s}. Name the file itself.")


def _load_one(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return obj


def read_checkpoint(path: str | Path, preset: Preset | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    """``(tensors, other entries, file)``: the state dict (unwrapped from ``state_dict``/
    ``model``/``module`` containers, common prefixes removed), whatever non-tensor entries
    the file holds (e.g. a training config), and the file read (first shard)."""
    files = resolve_weights_path(path, preset)
    raw: dict[str, Any] = {}
    for f in files:
        raw.update(_load_one(f))
    extra: dict[str, Any] = {}
    for key in ("state_dict", "model", "module"):
        inner = raw.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            extra = {k: v for k, v in raw.items() if k != key}
            raw = inner
            break
    sd = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    extra.update({str(k): v for k, v in raw.items() if not isinstance(v, torch.Tensor)})
    if not sd:
        raise WeightsError(f"{files[0]}: holds no tensors")
    return _strip_common_prefixes(sd), extra, files[0]


def _strip_common_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for pre in _PREFIXES:
            if all(k.startswith(pre) for k in sd):
                sd = {k[len(pre) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _qkv(sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor], src: str, dst: str, names: Sequence[str]) -> None:
    for kind in ("weight", "bias"):
        parts = [sd.get(f"{src}.{n}.{kind}") for n in names]
        if all(t is not None for t in parts):
            out[f"{dst}.{kind}"] = torch.cat([t for t in parts if t is not None], dim=0)


# transformers 5 renamed the ViT/Dinov2 modules; files saved by it are read too (published
# checkpoints use the older names, which the rules below expect)
_HF5_TO_4 = [
    (r"^layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
]
_HF5_VIT_MLP = [(r"^(encoder\.layer\.\d+)\.mlp\.fc1\.", r"\1.intermediate.dense."), (r"^(encoder\.layer\.\d+)\.mlp\.fc2\.", r"\1.output.dense.")]


def _hf(sd: dict[str, torch.Tensor], rules: list[tuple[str, str]], qkv_src: str, v5: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename transformers ViT/Dinov2 keys to timm's; query/key/value become one qkv."""
    if any(".q_proj." in k for k in sd):
        renamed = {}
        for k, v in sd.items():
            for pat, rep in v5:
                k = re.sub(pat, rep, k)
            renamed[k] = v
        sd = renamed
    out: dict[str, torch.Tensor] = {}
    layers = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    consumed: set[str] = set()
    for i in layers:
        src = f"encoder.layer.{i}.{qkv_src}"
        _qkv(sd, out, src, f"blocks.{i}.attn.qkv", ("query", "key", "value"))
        consumed |= {f"{src}.{n}.{kind}" for n in ("query", "key", "value") for kind in ("weight", "bias")}
    for k, v in sd.items():
        if k in consumed:
            continue
        new = k
        for pat, rep in rules:
            new = re.sub(pat, rep, new)
        out[new] = v
    return out


_HF_COMMON = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^layernorm\.", "norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
]
_HF_VIT = [
    *_HF_COMMON,
    (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
]
_HF_DINOV2 = [
    *_HF_COMMON,
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.mlp\.fc([12])\.", r"blocks.\1.mlp.fc\2."),
]


def dino_interpolate_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """CONCH v1.5's position-embedding interpolation (DINO's): patch positions resized by
    bicubic interpolation with scale factor ``(grid + 0.1) / old_grid``; CLS kept."""
    n_old = pos.shape[1] - 1
    old = int(math.sqrt(n_old))
    if old * old != n_old:
        raise WeightsError(f"position embedding of {n_old} patches is not a square grid")
    if old == grid:
        return pos
    dim = pos.shape[-1]
    g = grid + 0.1
    patch = F.interpolate(
        pos[:, 1:].reshape(1, old, old, dim).permute(0, 3, 1, 2).float(),
        scale_factor=(g / old, g / old),
        mode="bicubic",
    )
    patch = patch.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos.dtype)
    return torch.cat([pos[:, :1], patch], dim=1)


def remap(preset: Preset, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's state dict (prefixes already removed) in the keys of ``build(preset)``;
    keys the layout knows and does not use are dropped (see ``_SKIP``)."""
    skip = [re.compile(p) for p in _SKIP.get(preset.layout, ())]
    sd = {k: v for k, v in sd.items() if not any(s.search(k) for s in skip)}
    lay = preset.layout
    trunk: dict[str, torch.Tensor]
    out: dict[str, torch.Tensor] = {}
    if lay in ("timm", "torchvision_resnet"):
        trunk = sd
    elif lay == "hf_vit":
        trunk = _hf({re.sub(r"^vit\.", "", k): v for k, v in sd.items()}, _HF_VIT, "attention.attention", _HF5_TO_4 + _HF5_VIT_MLP)
    elif lay == "hf_dinov2":
        trunk = _hf(sd, _HF_DINOV2, "attention.attention", _HF5_TO_4)
    elif lay == "swin_v054":
        trunk = {re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k): v for k, v in sd.items()}
    elif lay in ("conch_v1", "conch_v15"):
        trunk = {}
        for k, v in sd.items():
            k2 = k[len("visual.") :] if k.startswith("visual.") else k
            if k2.startswith("trunk."):
                trunk[k2[len("trunk.") :]] = v
            else:
                out[k2] = v
        if lay == "conch_v15" and "pos_embed" in trunk and preset.checkpoint_grid is not None:
            grid = int(preset.input_size) // int(preset.kwargs.get("patch_size", 16))
            trunk["pos_embed"] = dino_interpolate_pos_embed(trunk["pos_embed"], grid)
    else:
        raise WeightsError(f"preset {preset.name}: unknown layout {lay!r}")
    out.update({f"trunk.{k}": v for k, v in trunk.items()})
    return out


def _diff(sd: dict[str, torch.Tensor], want: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k} {tuple(sd[k].shape)} in the file vs {want[k]}" for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    return missing, unexpected, shapes


def _matching(sd: dict[str, torch.Tensor], candidates: Sequence[Preset]) -> tuple[list[str], list[str]]:
    """Presets the file fits exactly, and presets whose key names (not sizes) it has."""
    exact: list[str] = []
    names: list[str] = []
    for c in candidates:
        try:
            m, u, s = _diff(remap(c, dict(sd)), expected_shapes(c))
        except (WeightsError, RuntimeError, ValueError, KeyError):  # a layout that cannot read these keys is no match
            continue
        if not m and not u:
            (names if s else exact).append(c.name)
    return exact, names


def _first(keys: Sequence[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")


def load_preset_weights(
    model: nn.Module,
    preset: Preset,
    path: str | Path,
    *,
    candidates: Sequence[Preset] | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Load a local checkpoint in the preset's published layout into ``model`` (built by
    :func:`seal.zoo.build`), strictly. ``candidates``: the presets to suggest from when the
    file does not fit (default: all). ``state`` skips reading (already-read tensors)."""
    if state is None:
        state, _, file = read_checkpoint(path, preset)
    else:
        file = Path(path)
    sd = remap(preset, state)
    missing, unexpected, shapes = _diff(sd, expected_shapes(preset))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {_first(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (first: {_first(shapes, 2)})")
        pool = [c for c in (candidates if candidates is not None else list(PRESETS.values())) if c.name != preset.name]
        exact, names = _matching(state, pool)
        if exact:
            hint = f" The file matches the layout of preset {' / '.join(exact)}: use {exact[0]}@{file}."
        elif names:
            hint = f" The file has the key names of preset {' / '.join(names)} but other sizes (a different model size)."
        else:
            hint = (
                " It matches no preset's layout; for another timm architecture use timm:NAME@FILE, "
                "for a `seal fit` model give its directory."
            )
        raise WeightsError(f"{file}: does not fit preset {preset.name} ({preset.layout} layout): " + "; ".join(parts) + "." + hint)
    model.load_state_dict(sd, strict=True)
    return file


def _lora_scale(extra: dict[str, Any], file: Path) -> float | None:
    """alpha / r of a SEAL training run: from the checkpoint's own config entry, or an
    ``adapter_config.json`` / ``config.json`` beside the file."""
    cfgs: list[Any] = [extra.get(k) for k in ("conf", "config", "hyper_parameters", "args")]
    for name in ("adapter_config.json", "config.json"):
        f = file.parent / name
        if f.is_file():
            try:
                cfgs.append(json.loads(f.read_text()))
            except json.JSONDecodeError as exc:
                raise WeightsError(f"{f}: not valid JSON ({exc})") from exc
    for c in cfgs:
        if not isinstance(c, dict):
            continue
        lora = c.get("lora", c)
        if isinstance(lora, dict) and "r" in lora and "lora_alpha" in lora:
            return float(lora["lora_alpha"]) / float(lora["r"])
    return None


def _merge_lora(sd: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    a_keys = {k for k in sd if re.search(r"\.lora_A(\.[^.]+)?\.weight$", k)}
    for k, v in sd.items():
        if ".lora_" in k or k.endswith(".lora_magnitude_vector"):
            continue
        out[k.replace(".base_layer.", ".")] = v
    for ak in a_keys:
        base = re.sub(r"\.lora_A(\.[^.]+)?\.weight$", "", ak)
        bk = ak.replace(".lora_A", ".lora_B")
        if bk not in sd or f"{base}.weight" not in out:
            raise WeightsError(f"LoRA pair incomplete for {base}: need {ak}, {bk} and {base}.base_layer.weight")
        w = out[f"{base}.weight"]
        delta = (sd[bk].float() @ sd[ak].float()) * scale
        out[f"{base}.weight"] = (w.float() + delta.reshape(w.shape)).to(w.dtype)
    return out


def load_seal_release(preset: Preset, path: str | Path, *, candidates: Sequence[Preset] | None = None) -> tuple[nn.Module, Path]:
    """A checkpoint released by mahmoodlab/SEAL for ``preset``: its ``PatchRecEncoder``
    state (``encoder.`` = the backbone, PEFT-wrapped when LoRA was used; ``decoder.``,
    ``projection_head.``, ``organ_emb.`` are training heads) with LoRA merged."""
    from .zoo import build

    state, extra, file = read_checkpoint(path, preset)
    state = {k: v for k, v in state.items() if not re.match(r"^(decoder|projection_head|organ_emb)\.", k)}
    state = _strip_common_prefixes(state)
    if any(k.startswith("adapter.") for k in state):
        raise WeightsError(f"{file}: a SEAL adapter (bottleneck) checkpoint; only LoRA or fully tuned encoders load as encoders")
    if any(".lora_" in k for k in state):
        scale = _lora_scale(extra, file)
        if scale is None:
            raise WeightsError(
                f"{file}: holds LoRA weights but no LoRA alpha/r to merge them with; put SEAL's adapter_config.json "
                '(or a config.json with {"lora": {"r": R, "lora_alpha": A}}) next to the file'
            )
        state = _merge_lora(state, scale)
    state = _strip_common_prefixes(state)
    model = build(preset)
    load_preset_weights(model, preset, file, candidates=candidates, state=state)
    return model, file
