"""VORTEX training: ``pretrain`` on the linked sections of many volumes, ``finetune`` on one
volume's section(s). SEAL's machinery: AdamW, warm-up + cosine schedule, bf16 autocast on
CUDA (fp32 on CPU), seeded runs (deterministic on CPU), a checkpoint after every epoch
(``resume=True`` continues), a JSONL log and a loss curve. Several processes (``torchrun``:
``WORLD_SIZE`` > 1) train one model with DistributedDataParallel (NCCL on GPUs, gloo on CPU):
each rank reads its share of the pairs, rank 0 logs, checkpoints and writes the model."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from hestkit.errors import Opt, fix

from ..data import ExpressionPrep, apply_preprocessing, fit_preprocessing
from ..errors import SelectionError
from ..losses import seal_objective
from ..train import _amp, _pearson_mean, _resume_checkpoint, _save_checkpoint, _schedule, resolve_device
from .config import ModelConfig, TrainConfig, finetune_config
from .context import ContextPairView, context_spec
from .data import PairSource, SubvolumeTransform, VolumeDataset
from .errors import SectionError, VortexConfigError
from .model import VortexModel, build_model, load_model, save_model

__all__ = ["finetune", "model_view", "pair_spec", "predict_pairs", "pretrain", "train_model", "volume_view"]

logger = logging.getLogger(__name__)

_SMOOTH_COLUMNS = ("sample_id", "array_row", "array_col", "technology")

_VOLUMES = Opt("volumes", "[ID]", cli="ID")


def pair_spec(cfg: ModelConfig, size_px: int) -> Any:
    """The :class:`hestkit.volume.VolumePairSpec` a model reads its sub-volumes with."""
    from hestkit.volume import VolumePairSpec

    return VolumePairSpec(size_um=cfg.size_um, size_px=int(size_px), depth_um=cfg.depth_um, n_slices=cfg.n_slices)


def volume_view(
    cat: Any, spec: Any, *, volumes: Sequence[str] | None = None, sections: Sequence[str] | None = None, context: Any = None
) -> Any:
    """The 3D pairs of the linked sections of ``volumes`` (all when None), optionally only
    ``sections``; with a ``context`` spec, each pair also carries its context planes
    (:class:`seal.vortex.context.ContextPairView`)."""
    known = set(_volume_ids(cat))
    if volumes:
        unknown = [v for v in volumes if v not in known]
        if unknown:
            raise SelectionError(
                f"{cat.path}: no volume {', '.join(map(repr, unknown))} in the catalog (it holds {', '.join(sorted(known)) or 'none'}); "
                "ingest it with `hestkit ingest-volume` first"
            )
    view = cat.volume_pairs(
        volume_ids=list(volumes) if volumes else None, sample_ids=list(sections) if sections else None, spec=spec
    )
    if len(view) == 0:
        where = f"volume(s) {', '.join(volumes)}" if volumes else "the catalog"
        raise SelectionError(
            f"{cat.path}: {where} has no linked section with spots inside the volume"
            + (f" among sections {', '.join(sections)}" if sections else "")
            + "; link sections with `hestkit link-section`"
        )
    if sections:
        found = set(view.obs["sample_id"].astype(str))
        missing = [s for s in sections if s not in found]
        if missing:
            raise SectionError(f"section(s) {', '.join(missing)} are not linked to volume(s) {', '.join(volumes or [])}")
    return view if context is None else ContextPairView(view, context)


def model_view(
    cat: Any, cfg: ModelConfig, size_px: int, *, volumes: Sequence[str] | None = None, sections: Sequence[str] | None = None
) -> Any:
    """The pairs as a model of ``cfg`` reads them (its sub-volume, and its context if any)."""
    return volume_view(cat, pair_spec(cfg, size_px), volumes=volumes, sections=sections, context=context_spec(cfg, size_px))


def _volume_ids(cat: Any) -> list[str]:
    vols = cat.volumes()
    if hasattr(vols, "columns"):
        col = "volume_id" if "volume_id" in vols.columns else vols.columns[0]
        return [str(v) for v in vols[col]]
    return [str(v) for v in vols]


def _channels_of(cat: Any, volume_ids: Sequence[str]) -> int:
    chans = {v: int(cat.volume(v).channels) for v in volume_ids}
    if len(set(chans.values())) > 1:
        raise SelectionError(
            "the selected volumes differ in channel count ("
            + ", ".join(f"{v}: {c}" for v, c in chans.items())
            + "); pretrain one model per modality",
            fix=fix(f"select volumes of one modality ({_VOLUMES})", _VOLUMES),
        )
    return next(iter(chans.values()))


def _smooth_ok(source: PairSource, smooth: bool) -> bool:
    if smooth and not all(c in source.obs.columns for c in _SMOOTH_COLUMNS):
        warnings.warn("the pairs carry no Visium array coordinates: neighbour smoothing is skipped", stacklevel=3)
        return False
    return smooth


def _losses(
    model: VortexModel, x: torch.Tensor, expr: torch.Tensor, cfg: TrainConfig, mean: torch.Tensor, std: torch.Tensor
) -> dict[str, torch.Tensor]:
    return seal_objective(model.embed_volume(x), expr, model.vae, model.head, mean, std, cfg)


class _Objective(torch.nn.Module):
    """The training objective as one module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: VortexModel, cfg: TrainConfig, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model, self.cfg = model, cfg
        self.mean, self.std = mean, std  # expression standardisation (constants, not buffers)

    def forward(self, x: torch.Tensor, expr: torch.Tensor) -> dict[str, torch.Tensor]:
        return _losses(self.model, x, expr, self.cfg, self.mean, self.std)


def _distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """(rank, world size, device, whether this call started the process group)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world <= 1:
        return 0, 1, device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return rank, world, device, False
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device, True


@torch.no_grad()
def predict_pairs(
    model: VortexModel,
    source: PairSource,
    size_px: int,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Expression predicted for every pair of ``source`` (n_pairs x model genes)."""
    dev = torch.device(device)
    model.eval().to(dev)
    ds = VolumeDataset(source, np.zeros((len(source), 1), dtype=np.float32), SubvolumeTransform(size_px))
    out = []
    it: Any = DataLoader(ds, batch_size=batch_size, shuffle=False)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="predict pairs", unit="batch")
    for x, _ in it:
        with _amp(dev):
            out.append(model.predict(x.to(dev)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_genes), dtype=np.float32)


def train_model(
    model: VortexModel,
    size_px: int,
    source: PairSource,
    values: np.ndarray,
    prep: ExpressionPrep,
    cfg: TrainConfig,
    out: str | Path,
    meta: dict[str, Any],
    *,
    val: tuple[PairSource, np.ndarray] | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train ``model`` on ``source`` (expression ``values``, preprocessed by ``prep``) and
    write the model directory ``out``. ``stop_after`` ends the call after that many epochs
    (the schedule still spans ``cfg.epochs``; ``resume`` carries on)."""
    from .._plots import plot_loss_curve

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    log_path = out / "train_log.jsonl"
    rank, world, device, owns_group = _distributed(resolve_device(cfg.device))
    if not resume and rank == 0:
        for p in (log_path, ckpt_path):
            p.unlink(missing_ok=True)
    model.to(device).train()
    mean = torch.tensor(prep.mean, device=device, dtype=torch.float32)
    std = torch.tensor(prep.std, device=device, dtype=torch.float32)
    ds = VolumeDataset(
        source, values, SubvolumeTransform(size_px, augment=cfg.augment, depth_flip=cfg.depth_flip, groups=model.input_groups), cache=cfg.cache_pairs
    )
    bs = min(cfg.batch_size, len(ds))
    if bs < 2:
        raise SelectionError(f"the training pairs number {len(ds)}; contrastive training needs at least 2")
    steps = max(1, len(ds) // (bs * world))
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    total = max(1, cfg.epochs * steps)
    if cfg.tune != "all":  # only the image head (or its last layer) learns; the encoder and the VAE stay as loaded
        last_layer = f"head.net.{len(model.head.net) - 1}."
        for name, par in model.named_parameters():
            par.requires_grad_(name.startswith("head." if cfg.tune == "head" else last_layer))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total, int(cfg.warmup_fraction * total)))
    start, step = _resume_checkpoint(ckpt_path, model, opt, sched, cfg.to_dict()) if resume else (0, 0)
    objective: torch.nn.Module = _Objective(model, cfg, mean, std).to(device)
    if world > 1:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None
        )

    last = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    stopper = _EarlyStop(out / "best_state.pt", cfg.patience, log_path if resume else None, rank == 0) if _early(cfg, val) else None
    if rank == 0:
        log_path.touch()
        if stopper is not None and start == 0 and val is not None:  # the starting weights are a candidate too
            score = _pearson_mean(predict_pairs(model, val[0], size_px, batch_size=bs, device=device), val[1])
            with open(log_path, "a") as log:
                log.write(json.dumps({"epoch": -1, "step": 0, "val_pearson": score, **stopper.update(model, -1, score)}) + "\n")
            model.train()
    if cfg.epochs == 0:
        logger.info("epochs=0: writing the untouched model to %s without a training step", out)
    for epoch in range(start, last):
        torch.manual_seed(cfg.seed * 1000 + epoch)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        sampler: Any = RandomSampler(ds, generator=g)
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, seed=cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=cfg.num_workers, drop_last=True, generator=g)
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False)
        t_last = time.perf_counter()
        model.train()
        if cfg.tune != "all":
            model.encoder.eval()
            model.vae.eval()
        with open(log_path if rank == 0 else os.devnull, "a") as log:
            for i, (x, expr) in enumerate(loader):
                if i >= steps:
                    break
                x, expr = x.to(device), expr.to(device)
                with _amp(device):
                    parts = objective(x, expr)
                parts["loss"].backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                now = time.perf_counter()
                rec: dict[str, Any] = {
                    "epoch": epoch,
                    "step": step,
                    "lr": opt.param_groups[0]["lr"],
                    "pairs_per_s": len(x) * world / max(now - t_last, 1e-9),
                }
                t_last = now
                rec.update({k: float(v.detach()) for k, v in parts.items()})
                log.write(json.dumps(rec) + "\n")
                if bar is not None:
                    bar.set_postfix(loss=f"{rec['loss']:.3f}")
                    bar.update(1)
            if bar is not None:
                bar.close()
            ep: dict[str, Any] = {"epoch": epoch, "step": step}
            if val is not None and len(val[0]) > 1 and rank == 0:
                pred = predict_pairs(model, val[0], size_px, batch_size=bs, device=device)
                ep["val_pearson"] = _pearson_mean(pred, val[1])
                model.train()
                if stopper is not None:
                    ep.update(stopper.update(model, epoch, ep["val_pearson"]))
            log.write(json.dumps(ep) + "\n")
        if rank == 0:
            _save_checkpoint(ckpt_path, model, opt, sched, epoch, step, cfg.to_dict())
        if stopper is not None and _agree(stopper.stop, world, device):
            last = cfg.epochs  # finished: the model directory is written with the best epoch's weights
            break
    if stopper is not None and rank == 0:
        stopper.restore(model)
    if owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()
    if last == cfg.epochs and rank == 0:
        from hestkit import __version__

        meta = {
            **meta,
            "train": cfg.to_dict(),
            "size_px": int(size_px),
            "channels": model.channels,
            "dim": model.encoder.dim,
            "n_genes": len(prep.genes),
            "n_pairs": len(ds),
            "backbone_name": model.backbone_name,
            "backbone_kwargs": model.backbone_kwargs,
            "hestkit_version": __version__,
        }
        save_model(out, model.cpu().eval(), prep, meta)
        plot_loss_curve(log_path, out / "loss_curve.png")
    return out


def _early(cfg: TrainConfig, val: tuple[PairSource, np.ndarray] | None) -> bool:
    return cfg.early_stop_fraction > 0 and val is not None and len(val[0]) > 1


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """Rank 0's decision, shared with every rank (only rank 0 scores the held-out spots)."""
    if world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item() > 0.5)


class _EarlyStop:
    """Keeps the weights of the epoch with the best held-out Pearson (``path``, so a resumed
    run keeps them too) and says when ``patience`` epochs have passed without improving."""

    def __init__(self, path: Path, patience: int, resumed_log: Path | None, owner: bool) -> None:
        self.path, self.patience = path, patience
        self.best, self.best_epoch, self.stop = -float("inf"), -1, False
        if not owner:  # other ranks only hear rank 0's decision
            return
        if resumed_log is not None and resumed_log.exists() and path.exists():
            for line in resumed_log.read_text().splitlines():
                rec = json.loads(line)
                v = rec.get("val_pearson")
                if "loss" not in rec and v is not None and np.isfinite(v) and v > self.best:
                    self.best, self.best_epoch = float(v), int(rec["epoch"])
        elif path.exists():
            path.unlink()

    def update(self, model: VortexModel, epoch: int, score: float) -> dict[str, Any]:
        if np.isfinite(score) and score > self.best:
            self.best, self.best_epoch = float(score), epoch
            torch.save({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, self.path)
        self.stop = epoch - self.best_epoch >= self.patience
        return {"best_epoch": self.best_epoch, "early_stop": self.stop}

    def restore(self, model: VortexModel) -> None:
        if self.path.exists():
            model.load_state_dict(torch.load(self.path, map_location="cpu", weights_only=True))
            self.path.unlink()
            logger.info("early stopping: kept epoch %d of this run (0: the starting weights; held-out Pearson %.3f)", self.best_epoch + 1, self.best)


def _spot_holdout(view: Any, cfg: TrainConfig) -> tuple[Any, tuple[Any, np.ndarray] | None, np.ndarray]:
    """(training view, held-out (view, rows) or None, training rows) for early stopping."""
    from .data import spatial_holdout

    tr, va = spatial_holdout(view.obs, cfg.early_stop_fraction, cfg.holdout_block_um, cfg.seed)
    if len(va) < 2:
        return view, None, tr
    return view.subset(tr), (view.subset(va), va), tr


def _split_by_volume(obs: Any, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    vols = obs["volume_id"].astype(str).to_numpy()
    uniq = np.array(sorted(set(vols)))
    n_val = round(len(uniq) * fraction) if fraction > 0 and len(uniq) > 1 else 0
    n_val = min(max(n_val, 1 if fraction > 0 and len(uniq) > 1 else 0), len(uniq) - 1) if len(uniq) > 1 else 0
    held = set(np.random.default_rng(seed).permutation(uniq)[:n_val])
    is_val = np.isin(vols, list(held))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def pretrain(
    catalog_path: str | Path,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: str | Path,
    *,
    volumes: Sequence[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Pretrain on the 3D pairs of every linked section of ``volumes`` (all volumes when None).
    ``cfg.val_fraction`` of the volumes are held out for the per-epoch probe."""
    import catalog

    cat = catalog.open(catalog_path)
    vols = list(volumes) if volumes else _volume_ids(cat)
    channels = _channels_of(cat, vols)
    torch.manual_seed(cfg.seed)
    _, size_px = build_model(model_cfg, 1, channels, load_weights=False, seed=cfg.seed)  # input size only
    view = model_view(cat, model_cfg, size_px, volumes=vols)
    tr, va = _split_by_volume(view.obs, cfg.val_fraction, cfg.seed)
    train_view = view.subset(tr)
    prep, values = fit_preprocessing(train_view, n_genes=cfg.n_genes, genes=cfg.genes, smooth=_smooth_ok(train_view, cfg.smooth))
    model, size_px = build_model(model_cfg, len(prep.genes), channels, load_weights=True, seed=cfg.seed)
    val = None
    if cfg.early_stop_fraction > 0 and not len(va):
        warnings.warn(
            "pretraining stops early on the held-out volumes (val_fraction); none are held out, so all epochs are trained",
            stacklevel=2,
        )
    if len(va):
        val_view = view.subset(va)
        val = (val_view, apply_preprocessing(val_view, prep))
    meta = {
        "stage": "pretrain",
        "model": model_cfg.to_dict(),
        "volumes": sorted(set(train_view.obs["volume_id"].astype(str))),
        "validation_volumes": sorted(set(view.obs["volume_id"].astype(str).to_numpy()[va])) if len(va) else [],
        "sections": sorted(set(train_view.obs["sample_id"].astype(str))),
        "parent": None,
    }
    return train_model(
        model, size_px, train_view, values, prep, cfg, out, meta, val=val, resume=resume, progress=progress, stop_after=stop_after
    )


def finetune(
    catalog_path: str | Path,
    model_dir: str | Path | None,
    volume_id: str,
    out: str | Path,
    *,
    cfg: TrainConfig | None = None,
    sections: Sequence[str] | None = None,
    model_cfg: ModelConfig | None = None,
    prep: ExpressionPrep | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Finetune a pretrained model directory on the section(s) of one volume (all its linked
    sections, or ``sections``). The genes and their normalisation stay the pretrained
    model's. Without ``cfg``: the pretraining run's settings with the fine-tuning defaults
    (:func:`seal.vortex.config.finetune_config`: up to 32 epochs, early stopping on held-out
    spots of the section). With ``model_dir=None`` a new model of ``model_cfg`` is trained from its
    backbone initialisation on the same pairs (the "no pretraining" baseline); the genes
    are then ``prep``'s, or chosen on these sections."""
    import catalog

    cat = catalog.open(catalog_path)
    channels = int(cat.volume(volume_id).channels) if volume_id in _volume_ids(cat) else None
    if channels is None:
        raise SelectionError(f"{cat.path}: no volume {volume_id!r} in the catalog; ingest it with `hestkit ingest-volume` first")
    parent: str | None = None
    if model_dir is not None:
        loaded = load_model(model_dir)
        loaded.check_channels(channels, f"volume {volume_id!r}")
        model, size_px, prep, mcfg = loaded.model, loaded.size_px, loaded.prep, loaded.model_cfg
        cfg = cfg or finetune_config(loaded.train_cfg)
        parent = str(Path(model_dir).resolve())
        view = model_view(cat, mcfg, size_px, volumes=[volume_id], sections=sections)
        values = apply_preprocessing(view, prep)
        stage = "finetune"
    else:
        if model_cfg is None or cfg is None:
            raise VortexConfigError("training without a pretrained model needs model_cfg and cfg")
        mcfg = model_cfg
        _, size_px = build_model(mcfg, 1, channels, load_weights=False, seed=cfg.seed)
        view = model_view(cat, mcfg, size_px, volumes=[volume_id], sections=sections)
        if prep is None:
            prep, values = fit_preprocessing(view, n_genes=cfg.n_genes, genes=cfg.genes, smooth=_smooth_ok(view, cfg.smooth))
        else:
            values = apply_preprocessing(view, prep)
        model, size_px = build_model(mcfg, len(prep.genes), channels, load_weights=True, seed=cfg.seed)
        stage = "scratch"
    meta: dict[str, Any] = {
        "stage": stage,
        "model": mcfg.to_dict(),
        "volumes": [volume_id],
        "sections": sorted(set(view.obs["sample_id"].astype(str))),
        "parent": parent,
    }
    val = None
    if cfg.early_stop_fraction > 0:
        view, held, tr = _spot_holdout(view, cfg)
        if held is None:
            warnings.warn(f"{len(tr)} spots are too few to hold some out: fine-tuning without early stopping", stacklevel=2)
        else:
            val = (held[0], values[held[1]])
            values = values[tr]
            meta["early_stop_spots"] = len(held[1])
    return train_model(model, size_px, view, values, prep, cfg, out, meta, val=val, resume=resume, progress=progress)
