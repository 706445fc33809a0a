"""Embeddings of the patches of HEST patch files (``img``/``barcode`` in an ``.h5``).

Batches are contiguous slices of ``img`` read and normalised by DataLoader workers (one
h5py handle per worker), so reading and the model overlap. The transform is HEST's eval
transform for a patch already at the model's input size (``ToTensor`` then
``Normalize(mean, std)``); a patch of another size is resized (bilinear, antialiased)
first, as :class:`seal.data.PatchTransform` does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import EvalError

__all__ = ["PatchBatches", "embed_patch_file", "file_fingerprint", "load_cached", "save_cached"]


def _normalise(imgs: NDArray[np.uint8], size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).float().div_(255.0)
    if size > 0 and (x.shape[-1] != size or x.shape[-2] != size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - mean) / std


class PatchBatches(Dataset[torch.Tensor]):
    """Item ``i``: patches ``[i * batch_size, (i + 1) * batch_size)`` of ``path``, as a
    normalised float tensor (B, 3, S, S)."""

    def __init__(self, path: Path, batch_size: int, dcfg: dict[str, Any]) -> None:
        import h5py

        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.size = int(dcfg["input_size"][-1])
        self.mean = torch.tensor(dcfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(dcfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
        with h5py.File(self.path, "r") as f:
            if "img" not in f:
                raise EvalError(f"{self.path}: datasets {sorted(f.keys())}; expected 'img' (N, H, W, 3) uint8 (HEST patch file).")
            shape = f["img"].shape
            dtype = f["img"].dtype
        if len(shape) != 4 or shape[3] != 3 or dtype != np.uint8:
            raise EvalError(f"{self.path}: 'img' is {dtype} {shape}; expected uint8 (N, H, W, 3) RGB patches.")
        self.n = int(shape[0])
        self._f: Any = None

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __getitem__(self, i: int) -> torch.Tensor:
        import h5py

        if self._f is None:  # opened lazily: one handle per DataLoader worker
            self._f = h5py.File(self.path, "r")
        a = self._f["img"][i * self.batch_size : (i + 1) * self.batch_size]
        return _normalise(a, self.size, self.mean, self.std)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_f"] = None
        return state


@torch.no_grad()
def embed_patch_file(
    model: nn.Module,
    dcfg: dict[str, Any],
    path: Path,
    device: torch.device,
    *,
    batch_size: int = 128,
    num_workers: int = 1,
    progress: Any = None,
) -> NDArray[np.float32]:
    """Embeddings (N x d, float32) of every patch of ``path``, in file order. bf16 autocast
    on CUDA, fp32 on CPU. ``progress`` (a tqdm bar) is advanced by patches."""
    ds = PatchBatches(path, batch_size, dcfg)
    loader = DataLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    out: list[NDArray[np.float32]] = []
    for x in loader:
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
        with ctx:
            y = model(x.to(device, non_blocking=True))
        if isinstance(y, (tuple, list)):
            raise EvalError(f"the encoder returned a {type(y).__name__}; expected one (batch x dim) tensor per batch.")
        out.append(y.float().reshape(len(x), -1).cpu().numpy())
        if progress is not None:
            progress.update(len(x))
    if not out:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def file_fingerprint(path: Path) -> str:
    """Identity of a patch file for the embedding cache: resolved path, size and mtime."""
    st = Path(path).stat()
    return hashlib.sha1(f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def load_cached(path: Path, fingerprint: str, barcodes: Sequence[str]) -> NDArray[np.float32] | None:
    """Cached embeddings of a patch file, when the cache entry matches the file and its barcodes."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            emb = np.asarray(z["embeddings"], dtype=np.float32)
            bcs = [str(b) for b in z["barcodes"]]
    except (OSError, ValueError, KeyError):
        return None
    if meta.get("fingerprint") != fingerprint or bcs != list(barcodes) or len(emb) != len(bcs):
        return None
    return emb


def save_cached(path: Path, fingerprint: str, barcodes: Sequence[str], emb: NDArray[np.float32], info: dict[str, Any]) -> None:
    """Write a cache entry atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    meta = json.dumps({"fingerprint": fingerprint, **info})
    np.savez(tmp, embeddings=emb, barcodes=np.asarray(list(barcodes), dtype=str), meta=np.asarray(meta))
    tmp.replace(path)
