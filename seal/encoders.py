"""Encoder specs, and image embeddings of catalog pairs, cached in the catalog by model identity.

One spec syntax everywhere (``seal fit --backbone``, ``seal embed``, ``seal eval``,
``seal vortex --backbone`` and the Python API):

``PRESET`` / ``PRESET@WEIGHTS``      a model-zoo preset (``seal models``), random init or local weights
``timm:NAME`` / ``timm:NAME@WEIGHTS`` any timm architecture (``num_classes=0``)
``seal-release:BACKBONE@FILE``       a SEAL-tuned encoder released by mahmoodlab/SEAL
``DIR``                              a ``seal fit`` model directory
``texture``                          fixed colour/texture features, no weights (:mod:`seal.texture_encoder`)

:func:`parse_encoder` turns a spec into an :class:`EncoderSpec`; ``spec.open(device)``
gives the model, its data config (input size, mean, std) and embedding size.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import PatchTransform, SealDataset
from .errors import BackboneError
from .io import is_model_dir, load_encoder, read_encoder_info
from .models import create_backbone, data_config

__all__ = ["EncoderSpec", "LoadedEncoder", "backbone_recipe", "build_backbone", "embed_view", "parse_encoder"]


def _file_hash(path: Path) -> str:
    h = hashlib.sha1()
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class LoadedEncoder:
    """An encoder ready to embed: the module (eval mode, on its device), its data config
    (``input_size``, ``mean``, ``std``) and its embedding size."""

    model: nn.Module
    data_config: dict[str, Any]
    dim: int
    label: str


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder to evaluate or embed with: a zoo preset, a timm name, a SEAL release
    (each random init or local weights) or a SEAL model directory."""

    label: str
    backbone: str
    weights: Path | None = None
    model_dir: Path | None = None
    preset: str | None = None
    release: bool = False
    #: a fixed, weight-free feature extractor (``texture``)
    handcrafted: bool = False

    @property
    def key(self) -> str:
        """Identity of the weights: same key, same embeddings."""
        kind = "release" if self.release else "preset" if self.preset else "timm"
        if self.handcrafted:
            from .texture_encoder import TEXTURE_VERSION

            ident = f"handcrafted|{self.backbone}|v{TEXTURE_VERSION}"
        elif self.model_dir is not None:
            ident = f"seal|{self.backbone}|{_file_hash(self.model_dir / 'encoder.safetensors')}"
        elif self.weights is not None:
            ident = f"{kind}|{self.backbone}|{_file_hash(self.weights)}"
        else:
            ident = f"{kind}|{self.backbone}|random-seed0"
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.backbone)[:60]
        return f"{safe}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"

    @property
    def dim(self) -> int:
        """Embedding size, known without loading weights."""
        if self.handcrafted:
            from .texture_encoder import feature_names

            return len(feature_names())
        if self.model_dir is not None:
            return int(read_encoder_info(self.model_dir)["dim"])
        if self.preset is not None:
            from .zoo import get_preset

            return get_preset(self.preset).dim
        with torch.device("meta"):
            m = create_backbone(self.backbone)
        return int(m.num_features)  # type: ignore[arg-type]

    def open(self, device: torch.device | str = "cpu") -> LoadedEncoder:
        """Build and load the encoder (eval mode, on ``device``)."""
        model, dcfg = self.load(torch.device(device))
        return LoadedEncoder(model, dcfg, int(getattr(model, "num_features", 0) or self.dim), self.label)

    def load(self, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
        if self.handcrafted:
            from .texture_encoder import TEXTURE_DATA_CONFIG, TextureEncoder

            return TextureEncoder().to(device).eval(), dict(TEXTURE_DATA_CONFIG)
        if self.model_dir is not None:
            info = read_encoder_info(self.model_dir)
            return load_encoder(self.model_dir, device), info["data_config"]
        if self.preset is not None:
            from . import zoo
            from ._zoo_layouts import load_preset_weights, load_seal_release

            p = zoo.get_preset(self.preset)
            if self.release:
                if self.weights is None:
                    raise BackboneError(f"{self.label}: a seal-release spec needs @FILE")
                model, _ = load_seal_release(p, self.weights)
            else:
                model = zoo.build(p, seed=0)
                if self.weights is not None:
                    load_preset_weights(model, p, self.weights)
            return model.to(device).eval(), p.data_config
        model = create_backbone(self.backbone, weights=self.weights, seed=0)
        return model.to(device).eval(), data_config(model)


def _split(body: str) -> tuple[str, Path | None]:
    name, _, weights = body.partition("@")
    return name, (Path(weights).expanduser() if weights else None)


def parse_encoder(spec: str) -> EncoderSpec:
    """``PRESET[@WEIGHTS]``, ``timm:NAME[@WEIGHTS]``, ``seal-release:BACKBONE@FILE`` or a
    ``seal fit`` model directory (see the module docstring)."""
    from . import zoo
    from ._zoo_layouts import SEAL_BACKBONES

    if spec == "texture" or spec.startswith("texture@"):
        if spec != "texture":
            raise BackboneError(f"encoder spec {spec!r}: texture is a fixed feature extractor with no weights; write just `texture`")
        return EncoderSpec("texture", "texture", handcrafted=True)
    if spec.startswith("timm:"):
        name, w = _split(spec[5:])
        if not name:
            raise BackboneError(f"encoder spec {spec!r}: expected timm:NAME or timm:NAME@WEIGHTS")
        label = name if w is None else f"{name}@{w.stem}"
        return EncoderSpec(label, name, w)
    if spec.startswith("seal-release:"):
        name, w = _split(spec[len("seal-release:") :])
        preset = SEAL_BACKBONES.get(name, name)
        if preset not in zoo.PRESETS or w is None:
            raise BackboneError(
                f"encoder spec {spec!r}: expected seal-release:BACKBONE@FILE with BACKBONE one of "
                f"{', '.join(sorted(set(SEAL_BACKBONES) | set(SEAL_BACKBONES.values())))}"
            )
        return EncoderSpec(f"seal-release:{preset}@{w.stem}", preset, w, preset=preset, release=True)
    name, w = _split(spec)
    if name in zoo.PRESETS:
        label = name if w is None else f"{name}@{w.parent.name if w.is_dir() or w.name in zoo.PRESETS[name].files else w.stem}"
        return EncoderSpec(label, name, w, preset=name)
    p = Path(spec).expanduser()
    if is_model_dir(p):
        info = read_encoder_info(p)
        return EncoderSpec(f"seal:{p.name}", info["backbone"], model_dir=p)
    if p.exists():
        raise BackboneError(
            f"encoder spec {spec!r}: {p} is not a `seal fit` model directory (no encoder.safetensors + encoder.json); "
            f"for weights name the architecture: PRESET@{p} (presets: {', '.join(zoo.PRESETS)}) or timm:NAME@{p}"
        )
    raise BackboneError(
        f"encoder spec {spec!r} is not PRESET[@WEIGHTS] (presets: {', '.join(zoo.PRESETS)}; see `seal models`), "
        "timm:NAME[@WEIGHTS], seal-release:BACKBONE@FILE, a `seal fit` model directory or texture"
    )


def backbone_recipe(backbone: str) -> dict[str, Any]:
    """``{"backbone": NAME, "recipe": ...}`` for ``encoder.json``: a timm name as timm knows
    it (recipe None), or the spec and the zoo recipe that rebuilds a preset's encoder."""
    from . import zoo

    if backbone.startswith("timm:"):
        return {"backbone": _split(backbone[5:])[0], "recipe": None}
    if is_model_dir(backbone):
        info = read_encoder_info(backbone)
        return {"backbone": info["backbone"], "recipe": info.get("recipe")}
    name, _ = _split(backbone)
    if backbone.startswith("seal-release:"):
        from ._zoo_layouts import SEAL_BACKBONES

        name = _split(backbone[len("seal-release:") :])[0]
        name = SEAL_BACKBONES.get(name, name)
    if name in zoo.PRESETS:
        return {"backbone": name, "recipe": zoo.recipe(zoo.PRESETS[name])}
    return {"backbone": name, "recipe": None}


def build_backbone(
    backbone: str, weights: str | Path | None = None, *, global_pool: str | None = None, seed: int = 0
) -> tuple[nn.Module, dict[str, Any], int, dict[str, Any] | None]:
    """The encoder ``seal fit`` / VORTEX train: ``(module, data config, dim, recipe)``.

    ``backbone`` is a spec (preset, ``timm:NAME``, a bare timm name as before, a SEAL
    release or a model directory); ``weights`` may give the weights separately. ``recipe``
    (:func:`seal.zoo.recipe`) is None for plain timm models (rebuilt from their name)."""
    from . import zoo
    from ._zoo_layouts import load_preset_weights, load_seal_release

    if backbone == "texture":
        raise BackboneError(
            "texture is a fixed feature extractor (no weights to tune): it can embed and be evaluated "
            "(encoder='texture' of the embedding, slide-embedding and evaluation functions) but not be "
            "fine-tuned; tune a timm or zoo backbone instead"
        )
    name, w = _split(backbone[5:] if backbone.startswith("timm:") else backbone)
    wpath = Path(weights).expanduser() if weights else w
    if not backbone.startswith("timm:") and (backbone.startswith("seal-release:") or name in zoo.PRESETS or is_model_dir(backbone)):
        if global_pool is not None:
            raise BackboneError(f"global_pool={global_pool!r} applies to timm backbones; {backbone} has its own output rule (see `seal models`)")
        spec = parse_encoder(backbone if weights is None or w is not None else f"{backbone}@{weights}")
        if spec.model_dir is not None:
            info = read_encoder_info(spec.model_dir)
            model = load_encoder(spec.model_dir, "cpu").train()
            rec = info.get("recipe")
            return model, dict(info["data_config"]), int(info["dim"]), rec
        p = zoo.get_preset(str(spec.preset))
        if spec.release:
            model, _ = load_seal_release(p, spec.weights or "")
        else:
            model = zoo.build(p, seed=seed)
            if spec.weights is not None:
                load_preset_weights(model, p, spec.weights)
        return model, p.data_config, p.dim, zoo.recipe(p)
    model = create_backbone(name, weights=wpath, global_pool=global_pool, seed=seed)
    return model, data_config(model), int(model.num_features), None  # type: ignore[arg-type]


@torch.no_grad()
def _compute(
    model: nn.Module, view: Any, dcfg: dict[str, Any], device: torch.device, batch_size: int, num_workers: int
) -> np.ndarray:
    """Embeddings of every pair of ``view``: patches decoded and normalised by ``num_workers``
    DataLoader processes while the model runs on the previous batch."""
    ds = SealDataset(view, np.zeros((len(view), 1), np.float32), PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"]))
    loader = DataLoader(
        ds, batch_size=batch_size, num_workers=num_workers, shuffle=False, pin_memory=device.type == "cuda"
    )
    out = []
    for img, _ in loader:
        with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False):
            out.append(model(img.to(device, non_blocking=True)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_view(
    cat: Any,
    view: Any,
    spec: EncoderSpec,
    *,
    device: torch.device,
    batch_size: int = 64,
    num_workers: int = 0,
    cache: bool = True,
) -> np.ndarray:
    """Image embeddings of every pair of ``view`` (rows in view order), cached per sample in
    the catalog under the encoder's key. The samples not cached yet are embedded in one
    pass (one DataLoader, so worker start-up is paid once)."""
    from catalog.embeddings import EmbeddingStore

    if cache and getattr(cat, "remote", False):
        warnings.warn(f"{cat.uri}: no embedding cache on object storage; computing embeddings in memory", stacklevel=2)
        cache = False
    store = (
        EmbeddingStore(
            cat,
            spec.key,
            {
                "label": spec.label,
                "backbone": spec.backbone,
                "weights": str(spec.weights or spec.model_dir or "random init (seed 0)"),
            },
        )
        if cache
        else None
    )
    sids = view.obs["sample_id"].astype(str)
    joinids = view.obs["soma_joinid"].to_numpy()
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    missing: list[str] = []
    for sid in sids.unique():
        got = store.get(sid) if store is not None else None
        if got is None:
            missing.append(str(sid))
        else:
            found[str(sid)] = got
    if missing:
        model, dcfg = spec.load(device)
        mview = (
            cat.pairs(sample_ids=missing)  # whole samples, so that the cache is complete
            if store is not None
            else view.subset(np.flatnonzero(sids.isin(missing).to_numpy()))
        )
        emb = _compute(model, mview, dcfg, device, batch_size, num_workers)
        msids = mview.obs["sample_id"].astype(str).to_numpy()
        mjoin = mview.obs["soma_joinid"].to_numpy()
        for sid in missing:
            rows = np.flatnonzero(msids == sid)
            found[sid] = (mjoin[rows], emb[rows])
            if store is not None:
                store.put(sid, *found[sid])
    result: np.ndarray | None = None
    for sid, (j, e) in found.items():
        if result is None:
            result = np.zeros((len(view), e.shape[1]), np.float32)
        rows = np.flatnonzero((sids == sid).to_numpy())
        pos = {int(x): k for k, x in enumerate(j)}
        result[rows] = e[[pos[int(x)] for x in joinids[rows]]]
    return result if result is not None else np.zeros((0, 0), np.float32)
