"""Encoder specs (``timm:NAME[@WEIGHTS]`` or a ``seal fit`` model directory), and image
embeddings of catalog pairs, cached in the catalog by model identity."""

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

__all__ = ["EncoderSpec", "embed_view", "parse_encoder"]


def _file_hash(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class EncoderSpec:
    """An encoder to evaluate or embed with: a timm name (random init, or local weights)
    or a SEAL model directory."""

    label: str
    backbone: str
    weights: Path | None = None
    model_dir: Path | None = None

    @property
    def key(self) -> str:
        """Identity of the weights: same key, same embeddings."""
        if self.model_dir is not None:
            ident = f"seal|{self.backbone}|{_file_hash(self.model_dir / 'encoder.safetensors')}"
        elif self.weights is not None:
            ident = f"timm|{self.backbone}|{_file_hash(self.weights)}"
        else:
            ident = f"timm|{self.backbone}|random-seed0"
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.backbone)[:60]
        return f"{safe}-{hashlib.sha1(ident.encode()).hexdigest()[:12]}"

    def load(self, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
        if self.model_dir is not None:
            info = read_encoder_info(self.model_dir)
            return load_encoder(self.model_dir, device), info["data_config"]
        model = create_backbone(self.backbone, weights=self.weights, seed=0)
        return model.to(device).eval(), data_config(model)


def parse_encoder(spec: str) -> EncoderSpec:
    """``timm:NAME``, ``timm:NAME@/path/weights.safetensors`` or a model directory."""
    if spec.startswith("timm:"):
        body = spec[5:]
        name, _, weights = body.partition("@")
        if not name:
            raise BackboneError(f"encoder spec {spec!r}: expected timm:NAME or timm:NAME@WEIGHTS")
        w = Path(weights) if weights else None
        label = name if w is None else f"{name}@{w.stem}"
        return EncoderSpec(label, name, w)
    p = Path(spec)
    if is_model_dir(p):
        info = read_encoder_info(p)
        return EncoderSpec(f"seal:{p.name}", info["backbone"], model_dir=p)
    raise BackboneError(
        f"encoder spec {spec!r} is neither timm:NAME[@WEIGHTS] nor a `seal fit` model directory "
        "(a folder with encoder.safetensors and encoder.json)"
    )


@torch.no_grad()
def _compute(
    model: nn.Module, view: Any, dcfg: dict[str, Any], device: torch.device, batch_size: int, num_workers: int
) -> np.ndarray:
    ds = SealDataset(view, np.zeros((len(view), 1), np.float32), PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"]))
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=False)
    out = []
    for img, _ in loader:
        with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False):
            out.append(model(img.to(device)).float().cpu().numpy())
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
    """Image embeddings of every pair of ``view`` (rows in view order), computed per sample
    and cached in the catalog under the encoder's key."""
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
    model: nn.Module | None = None
    dcfg: dict[str, Any] = {}
    joinids = view.obs["soma_joinid"].to_numpy()
    result: np.ndarray | None = None
    for sid in view.obs["sample_id"].unique():
        got = store.get(sid) if store is not None else None
        if got is None:
            if model is None:
                model, dcfg = spec.load(device)
            sview = (
                cat.pairs(sample_ids=[sid])
                if store is not None
                else view.subset(np.flatnonzero((view.obs["sample_id"] == sid).to_numpy()))
            )
            emb = _compute(model, sview, dcfg, device, batch_size, num_workers)
            got = (sview.obs["soma_joinid"].to_numpy(), emb)
            if store is not None:
                store.put(sid, *got)
        j, e = got
        if result is None:
            result = np.zeros((len(view), e.shape[1]), np.float32)
        rows = np.flatnonzero((view.obs["sample_id"] == sid).to_numpy())
        pos = {int(x): k for k, x in enumerate(j)}
        result[rows] = e[[pos[int(x)] for x in joinids[rows]]]
    return result if result is not None else np.zeros((0, 0), np.float32)
