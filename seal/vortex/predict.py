"""Dense prediction through a whole volume into a multiscale OME-Zarr.

The grid: points at ``(k + 0.5) * stride`` um along z, y and x (``stride_um = (XY, Z)``;
default half the sub-volume's in-plane size and half its depth). Each grid point gets the
expression predicted from the sub-volume centred on it, so the output is an image whose
voxels are ``stride`` um apart and whose voxel centres are the grid points (the same
"centre at (index + 0.5) * voxel size" frame as the input volume).

Streaming: the grid is cut into blocks (the output chunks); each block's sub-volumes are
cut from one read of the volume region it covers (:func:`hestkit.volume.extract_subvolumes`)
and predicted in batches, written, and recorded in ``OUT/.vortex-progress.json``. Memory is
bounded by the block, never the volume. Finished blocks are recorded in the sidecar
``PRED.zarr.progress.json`` (removed when the run completes); an interrupted run resumes
at the blocks not recorded (same model, genes, grid). Pyramids are built at the end and
the root attribute ``vortex.complete`` set.

Output layout (OME-NGFF 0.5, zarr v3)::

    PRED.zarr/                    image, axes (c, z, y, x); c = genes (channel labels)
      0, 1, ...                   float32 log-normalised expression, levels 2x coarser in y, x
      labels/tissue_mask/0, ...   uint8 1 = tissue (image-label); 0 = background (not predicted)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hestkit.errors import Opt, fix
from hestkit.fixes import OVERWRITE

from ..train import _amp, resolve_device
from ._mask import Background, tissue_fraction, volume_threshold
from .data import SubvolumeTransform
from .errors import PredictionError
from .model import LoadedModel, load_model

__all__ = ["PredictConfig", "grid_shape", "predict_catalog", "predict_volume"]

_OUT = Opt("out", "PATH")
_RESUME = Opt("resume")


@dataclass(frozen=True)
class PredictConfig:
    """Settings of a dense prediction.

    ``stride_um``: (in-plane, depth) grid spacing; None = (size_um / 2, depth_um / 2) of
    the model's sub-volume. ``block_points``: grid points per block along (z, y, x)
    (None: 1 plane x as many as fit ``block_mb`` of sub-volumes, at most 32 x 32).
    ``background``: ``dark`` (fluorescence, microCT), ``bright`` (H&E), or ``auto``
    (bright for 3-channel volumes). ``threshold``: tissue intensity threshold (None: Otsu
    on the coarsest level). A grid point is tissue when >= ``min_tissue`` of its centre
    plane is tissue; only tissue points are predicted (``all_points`` predicts every point).
    """

    genes: tuple[str, ...] | None = None
    stride_um: tuple[float, float] | None = None
    batch_size: int = 32
    block_points: tuple[int, int, int] | None = None
    block_mb: float = 128.0
    background: Background = "auto"
    threshold: float | None = None
    min_tissue: float = 0.15
    all_points: bool = False
    device: str = "auto"


def grid_shape(shape_zyx: Sequence[int], voxel_um: Sequence[float], stride_zyx: Sequence[float]) -> tuple[int, int, int]:
    """Grid points along (z, y, x): ``ceil(extent / stride)`` (at least 1)."""
    return tuple(max(1, math.ceil(n * v / s - 1e-9)) for n, v, s in zip(shape_zyx, voxel_um, stride_zyx, strict=True))  # type: ignore[return-value]


def _model_key(loaded: LoadedModel) -> str:
    h = hashlib.sha1()
    with open(loaded.path / "model.safetensors", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def predict_volume(
    volume: Any,
    model: str | Path | LoadedModel,
    out: str | Path,
    cfg: PredictConfig | None = None,
    *,
    volume_name: str = "volume",
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_blocks: int | None = None,
) -> Path:
    """Predict expression on a 3D grid through ``volume`` (a :class:`hestkit.volume.VolumeLike`)
    and write ``out`` (see module doc). ``stop_after_blocks`` stops early (as an
    interruption would); calling again with ``resume=True`` finishes the job."""
    from hestkit.ngff import NgffVolumeWriter
    from hestkit.volume import extract_subvolumes

    from .context import context_spec
    from .train import pair_spec

    cfg = cfg or PredictConfig()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    loaded.check_channels(int(volume.channels), f"volume {volume_name!r}")
    genes = list(loaded.prep.genes)
    if cfg.genes:
        want = [g.upper() for g in cfg.genes]
        missing = [g for g in want if g not in genes]
        if missing:
            raise PredictionError(
                f"gene(s) {', '.join(missing)} are not predicted by the model {loaded.path} "
                f"(see {loaded.path / 'genes.txt'}); choose among its {len(genes)} genes"
            )
        cols = [genes.index(g) for g in want]
        genes = want
    else:
        cols = list(range(len(genes)))
    mcfg = loaded.model_cfg
    spec = pair_spec(mcfg, loaded.size_px)
    ctx = context_spec(mcfg, loaded.size_px)  # multi-scale context: a second, coarser read per block
    sxy, sz = cfg.stride_um or (mcfg.size_um / 2.0, mcfg.depth_um / 2.0)
    if sxy <= 0 or sz <= 0:
        raise PredictionError(f"stride_um must be two positive numbers (XY, Z), got {sxy} {sz}")
    stride = (float(sz), float(sxy), float(sxy))
    vox = tuple(float(v) for v in volume.voxel_size_um)
    gshape = grid_shape(volume.shape_zyx, vox, stride)
    per_sub = spec.n_slices * spec.size_px**2 * int(volume.channels) * (2 if ctx is not None else 1)
    if cfg.block_points:
        block = tuple(int(b) for b in cfg.block_points)
    else:
        side = int(max(1, min(32, math.isqrt(max(1, int(cfg.block_mb * 2**20 / per_sub))))))
        block = (1, side, side)
    background = cfg.background if cfg.background != "auto" else ("bright" if volume.channels == 3 else "dark")
    fill = 255 if background == "bright" else 0  # outside the volume: glass for H&E stacks, as the pairs are padded
    settings = {
        "model": str(loaded.path.resolve()),
        "model_key": _model_key(loaded),
        "volume": volume_name,
        "genes": genes,
        "stride_zyx_um": list(stride),
        "grid_zyx": list(gshape),
        "block_zyx": list(block),
        "spec": asdict(spec),
        "background": background,
        "min_tissue": cfg.min_tissue,
        "all_points": cfg.all_points,
    }
    if ctx is not None:
        settings["context_spec"] = asdict(ctx)
    out = Path(out)
    prog_path = progress_path(out)
    done: set[int] = set()
    append = False
    prog: dict[str, Any] | None = None
    if overwrite:
        prog_path.unlink(missing_ok=True)
    if out.exists():
        prog = json.loads(prog_path.read_text()) if prog_path.exists() else None
        if overwrite:
            shutil.rmtree(out)
        elif prog is None:
            if _finished_with(out, settings):
                return out
            raise PredictionError(
                f"{out} exists and is not an unfinished VORTEX prediction with these settings",
                fix=fix(f"choose another output ({_OUT}) or pass {OVERWRITE}", _OUT, OVERWRITE),
            )
        elif not resume:
            raise PredictionError(
                f"{out} holds an earlier prediction", fix=fix(f"pass {_RESUME} to continue it or {OVERWRITE} to start again", _RESUME, OVERWRITE)
            )
        elif prog["settings"] != settings:
            changed = [k for k in settings if prog["settings"].get(k) != settings[k]]
            raise PredictionError(
                f"{out} was started with other settings ({', '.join(changed)} differ)",
                fix=fix(f"rerun with the same model/genes/stride, or pass {OVERWRITE} to start again", OVERWRITE),
            )
        else:
            done = set(prog["done"])
            append = True
    threshold = cfg.threshold
    if threshold is None and not cfg.all_points:
        threshold = float(prog["threshold"]) if append and prog is not None else volume_threshold(volume)
    state: dict[str, Any] = {"settings": settings, "done": sorted(done), "threshold": threshold}
    attrs = {"vortex": {k: v for k, v in settings.items() if k != "model_key"} | {"units": "log1p(normalize_total 1e4)"}}
    w = NgffVolumeWriter(
        out,
        gshape,
        channels=len(genes),
        voxel_size_um=stride,
        dtype="float32",
        chunks_zyx=block,
        channel_names=genes,
        name=f"vortex expression of {volume_name}",
        attributes=attrs,
        min_side=4,
        mode="a" if append else "w",
    )
    mask_path = out / "labels" / "tissue_mask"
    if not append:
        import zarr

        root = zarr.open_group(str(out), mode="r+")
        labels = root.create_group("labels")
        labels.attrs["ome"] = {"version": "0.5", "labels": ["tissue_mask"]}
    m = NgffVolumeWriter(
        mask_path,
        gshape,
        channels=1,
        voxel_size_um=stride,
        dtype="uint8",
        chunks_zyx=block,
        channel_names=["tissue"],
        name="tissue_mask",
        min_side=4,
        mode="a" if append else "w",
    )
    if not append:
        ome = dict(m.group.attrs["ome"])
        ome.pop("omero", None)
        ome["image-label"] = {
            "version": "0.5",
            "colors": [{"label-value": 1, "rgba": [255, 255, 255, 96]}],
            "source": {"image": "../../"},
        }
        m.group.attrs["ome"] = ome
        _atomic_json(prog_path, state)

    device = resolve_device(cfg.device)
    net = loaded.model.to(device).eval()
    tf = SubvolumeTransform(loaded.size_px)
    blocks = [
        (z0, y0, x0)
        for z0 in range(0, gshape[0], block[0])
        for y0 in range(0, gshape[1], block[1])
        for x0 in range(0, gshape[2], block[2])
    ]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(blocks), initial=len(done), desc=f"predict {volume_name}", unit="block")
    n_new = 0
    for b, (z0, y0, x0) in enumerate(blocks):
        if b in done:
            continue
        if stop_after_blocks is not None and n_new >= stop_after_blocks:
            break
        z1, y1, x1 = min(z0 + block[0], gshape[0]), min(y0 + block[1], gshape[1]), min(x0 + block[2], gshape[2])
        kz, ky, kx = np.meshgrid(np.arange(z0, z1), np.arange(y0, y1), np.arange(x0, x1), indexing="ij")
        centres = (np.stack([kz.ravel(), ky.ravel(), kx.ravel()], axis=1) + 0.5) * np.asarray(stride)
        subs = extract_subvolumes(volume, centres, spec, fill=fill)
        if cfg.all_points:
            keep = np.ones(len(centres), dtype=bool)
        else:
            keep = tissue_fraction(subs[:, spec.centre_slice], float(threshold or 0.0), background) >= cfg.min_tissue  # type: ignore[arg-type]
        pred = np.zeros((len(centres), len(genes)), dtype=np.float32)
        idx = np.flatnonzero(keep)
        csubs = extract_subvolumes(volume, centres[idx], ctx, fill=fill) if ctx is not None and len(idx) else None
        with torch.no_grad():
            for s in range(0, len(idx), cfg.batch_size):
                part = idx[s : s + cfg.batch_size]
                if csubs is None:
                    x = torch.stack([tf(subs[i]) for i in part]).to(device)
                else:
                    x = torch.stack([tf(np.concatenate([subs[i], csubs[s + j]])) for j, i in enumerate(part)]).to(device)
                with _amp(device):
                    y = net.predict(x).float().cpu().numpy()
                pred[part] = y[:, cols]
        shape = (z1 - z0, y1 - y0, x1 - x0)
        w.write_block((z0, y0, x0), pred.reshape(*shape, len(genes)))
        m.write_block((z0, y0, x0), keep.astype(np.uint8).reshape(*shape, 1))
        done.add(b)
        n_new += 1
        state["done"] = sorted(done)
        _atomic_json(prog_path, state)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if len(done) == len(blocks):
        w.build_pyramid()
        m.build_pyramid()
        w.windows_from_data()  # display windows of the predicted values (float32), per gene
        w.group.attrs["vortex"] = {
            **w.group.attrs["vortex"],
            "model_key": settings["model_key"],
            "complete": True,
            "threshold": threshold,
        }
        prog_path.unlink(missing_ok=True)
    return out


def progress_path(out: str | Path) -> Path:
    """The sidecar file recording the finished blocks of an unfinished prediction."""
    p = Path(out)
    return p.with_name(p.name + ".progress.json")


def _finished_with(out: Path, settings: dict[str, Any]) -> bool:
    import zarr

    try:
        attrs: dict[str, Any] = dict(dict(zarr.open_group(str(out), mode="r").attrs).get("vortex", {}))  # type: ignore[arg-type]
    except (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        return False
    return bool(attrs.get("complete")) and all(attrs.get(k) == v for k, v in settings.items())


def predict_catalog(
    catalog_path: str | Path,
    model: str | Path,
    volume_id: str,
    out: str | Path,
    cfg: PredictConfig | None = None,
    **kwargs: Any,
) -> Path:
    """:func:`predict_volume` on a catalog volume."""
    import catalog

    from .train import _volume_ids

    cat = catalog.open(catalog_path)
    if volume_id not in _volume_ids(cat):
        raise PredictionError(f"{cat.path}: no volume {volume_id!r} in the catalog; ingest it with `hestkit ingest-volume` first")
    return predict_volume(cat.volume(volume_id), model, out, cfg, volume_name=volume_id, **kwargs)
