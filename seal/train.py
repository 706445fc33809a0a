"""``seal fit``: LoRA finetuning of a timm encoder on catalog pairs with SEAL's objective."""

from __future__ import annotations

import copy
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from ._summary import FitSummary, clip_at_chance, probe_retrieval
from .data import PROBE_MODES, ExpressionPrep, PatchTransform, SealDataset, apply_preprocessing, fit_preprocessing, probe_split
from .encoders import backbone_recipe, build_backbone
from .errors import ConfigError, SelectionError
from .losses import seal_objective
from .models import LoraSpec, SealModel, wrap_lora

__all__ = ["FitConfig", "fit", "resolve_device", "select_view"]


@dataclass(frozen=True)
class FitConfig:
    """Every setting of a ``seal fit`` run (saved with the model)."""

    backbone: str
    weights: str | None = None
    global_pool: str | None = None
    epochs: int = 10
    batch_size: int = 384
    lr: float = 1e-4
    weight_decay: float = 0.2
    warmup_fraction: float = 0.05
    grad_accum: int = 1
    lora: LoraSpec = field(default_factory=LoraSpec)
    temperature: float = 0.05
    centre_embeddings: bool = True
    w_clip: float = 1.0
    w_recon: float = 1.0
    w_pred: float = 1.0
    kl_weight: float = 1e-4
    n_genes: int = 2000
    genes: tuple[str, ...] | None = None
    min_gene_fraction: float = 0.1
    min_gene_std: float = 0.05
    std_floor: float = 0.1
    centre_heads: bool = True
    head_lr_scale: float = 1.0
    smooth: bool = True
    seed: int = 0
    num_workers: int = 2
    balance_organs: bool = False
    val_fraction: float = 0.2
    probe: str = "auto"
    probe_min_patients: int = 5
    device: str = "auto"
    max_steps_per_epoch: int | None = None
    organ: tuple[str, ...] | None = None
    technology: tuple[str, ...] | None = None
    species: tuple[str, ...] | None = None
    samples: tuple[str, ...] | None = None
    exclude_samples: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.probe not in PROBE_MODES:
            raise ConfigError(f"probe must be one of {', '.join(PROBE_MODES)}, got {self.probe!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lora"] = asdict(self.lora)
        return d


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def select_view(cat: Any, cfg: Any) -> Any:
    """The pairs a config selects (organ, technology, species, samples minus exclusions)."""
    view = cat.pairs(
        organ=list(cfg.organ) if cfg.organ else None,
        technology=list(cfg.technology) if cfg.technology else None,
        species=list(cfg.species) if cfg.species else None,
        sample_ids=list(cfg.samples) if cfg.samples else None,
    )
    if cfg.exclude_samples:
        keep = ~view.obs["sample_id"].isin(list(cfg.exclude_samples)).to_numpy()
        view = view.subset(np.flatnonzero(keep))
    if len(view) == 0:
        raise SelectionError(f"{cat.uri}: the selection holds no pairs; check the filters against `hestkit ls {cat.uri}`")
    return view


def _schedule(total: int, warmup: int) -> Any:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return f


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def _save_checkpoint(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, epoch: int, step: int, config: dict[str, Any]
) -> None:
    """The trainable weights, optimizer and schedule after ``epoch``, written atomically."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "trainable": _trainable_state(model),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch,
            "step": step,
            "config": config,
        },
        tmp,
    )
    os.replace(tmp, path)


def _resume_checkpoint(
    path: Path, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, config: dict[str, Any]
) -> tuple[int, int]:
    """Load ``path`` (written by :func:`_save_checkpoint`) into the model, optimizer and
    schedule; ``(first epoch to run, step)``, or ``(0, 0)`` with a warning when absent."""
    if not path.exists():
        warnings.warn(f"{path} not found: starting from scratch", stacklevel=3)
        return 0, 0
    ck = torch.load(path, map_location="cpu", weights_only=False)
    if ck.get("config") != config:
        warnings.warn(f"{path}: resuming with settings that differ from the checkpoint's", stacklevel=3)
    model.load_state_dict(ck["trainable"], strict=False)
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    return int(ck["epoch"]) + 1, int(ck["step"])


def _centre_outputs(model: SealModel, mean: np.ndarray, std: np.ndarray) -> None:
    """Start the image head and the VAE decoder at the training mean, with output weights
    scaled to the genes' spread: the first steps' regression losses are then about 1 per
    gene (standardised), not hundreds, and do not drown the contrastive term."""
    for lin in (model.head.net[-1], model.vae.decoder[-1]):
        assert isinstance(lin, nn.Linear)
        with torch.no_grad():
            lin.bias.copy_(torch.from_numpy(mean))
            lin.weight.mul_(torch.from_numpy(std)[:, None] * 0.1)


def _pearson_mean(pred: np.ndarray, true: np.ndarray) -> float:
    p = pred - pred.mean(0)
    t = true - true.mean(0)
    den = np.sqrt((p**2).sum(0) * (t**2).sum(0))
    r = np.where(den > 0, (p * t).sum(0) / np.where(den > 0, den, 1), np.nan)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


class _Trainer:
    def __init__(self, cfg: FitConfig, out: Path, device: torch.device, rank: int, world: int) -> None:
        self.cfg, self.out, self.device, self.rank, self.world = cfg, out, device, rank, world
        self.log_path = out / "train_log.jsonl"

    def log(self, rec: dict[str, Any]) -> None:
        if self.rank == 0:
            with open(self.log_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")


def _amp(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _losses(
    model: SealModel, img: torch.Tensor, expr: torch.Tensor, cfg: FitConfig, mean: torch.Tensor, std: torch.Tensor
) -> dict[str, torch.Tensor]:
    return seal_objective(model.embed_image(img), expr, model.vae, model.head, mean, std, cfg)


class _Objective(nn.Module):
    """The training loss as a module, so that DDP sees one forward per step."""

    def __init__(self, model: SealModel, cfg: FitConfig, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, img: torch.Tensor, expr: torch.Tensor) -> dict[str, torch.Tensor]:
        return _losses(self.model, img, expr, self.cfg, self.mean, self.std)  # type: ignore[arg-type]


@torch.no_grad()
def _probe(
    model: SealModel, loader: DataLoader[Any], device: torch.device, cfg: FitConfig, mean: torch.Tensor, std: torch.Tensor
) -> dict[str, float]:
    model.eval()
    preds, trues, losses, img_emb, expr_emb = [], [], [], [], []
    for img, expr in loader:
        img, expr = img.to(device), expr.to(device)
        with _amp(device):
            parts = _losses(model, img, expr, cfg, mean, std) if len(img) > 1 else None
            emb = model.embed_image(img)
            pred = model.head(emb)
            mu = model.embed_expression(expr)
        if parts is not None:
            losses.append(float(parts["loss"]))
        preds.append(pred.float().cpu().numpy())
        trues.append(expr.float().cpu().numpy())
        img_emb.append(emb.float().cpu().numpy())
        expr_emb.append(mu.float().cpu().numpy())
    model.train()
    if not preds:
        return {}
    return {
        "val_loss": float(np.mean(losses)) if losses else float("nan"),
        "val_pearson": _pearson_mean(np.concatenate(preds), np.concatenate(trues)),
        **probe_retrieval(np.concatenate(img_emb), np.concatenate(expr_emb), centre=cfg.centre_embeddings),
    }


def fit(
    catalog_path: str | Path,
    cfg: FitConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> Path:
    """Train SEAL on the pairs of a catalog; writes the model directory ``out``.

    ``resume`` continues from ``out/checkpoint.pt`` (written after every epoch).
    ``stop_after`` ends this call after that many epochs (the schedule still spans
    ``cfg.epochs``; a later ``resume`` carries on), e.g. for jobs with a time limit.
    """
    import torch.distributed as dist

    import catalog

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(cfg.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    if not resume and rank == 0:
        for name in ("train_log.jsonl", "checkpoint.pt"):
            (out / name).unlink(missing_ok=True)
    tr = _Trainer(cfg, out, device, rank, world)

    cat = catalog.open(catalog_path)
    view = select_view(cat, cfg)
    split = probe_split(view.obs, cfg.val_fraction, cfg.seed, mode=cfg.probe, min_patients=cfg.probe_min_patients)
    train_idx, val_idx, level = split.train, split.val, split.level
    train_view = view.subset(train_idx)
    val_view = view.subset(val_idx) if len(val_idx) else None
    prep, train_vals = fit_preprocessing(
        train_view,
        n_genes=cfg.n_genes,
        genes=cfg.genes,
        smooth=cfg.smooth,
        min_fraction=cfg.min_gene_fraction,
        min_std=cfg.min_gene_std,
        std_floor=cfg.std_floor,
    )
    val_vals = apply_preprocessing(val_view, prep) if val_view is not None else None

    backbone, dcfg, dim, _ = build_backbone(cfg.backbone, cfg.weights, global_pool=cfg.global_pool, seed=cfg.seed)
    torch.manual_seed(cfg.seed)
    encoder = wrap_lora(backbone, cfg.lora)
    model = SealModel(encoder, len(prep.genes), dim)
    if cfg.centre_heads:
        _centre_outputs(model, np.asarray(prep.mean, dtype=np.float32), np.asarray(prep.std, dtype=np.float32))
    model = model.to(device)
    mean = torch.tensor(prep.mean, device=device)
    std = torch.tensor(prep.std, device=device)

    train_ds = SealDataset(train_view, train_vals, PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"], augment=True))
    bs = min(cfg.batch_size, len(train_ds))
    if bs < 2:
        raise SelectionError(f"the training split holds {len(train_ds)} pair(s); contrastive training needs at least 2")
    steps_per_epoch = len(train_ds) // (bs * world)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    steps_per_epoch = max(1, steps_per_epoch)
    total_updates = max(1, cfg.epochs * steps_per_epoch // cfg.grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    enc_params = [p for p in model.encoder.parameters() if p.requires_grad]
    enc_ids = {id(p) for p in enc_params}
    head_params = [p for p in params if id(p) not in enc_ids]
    opt = torch.optim.AdamW(
        [{"params": enc_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.lr * cfg.head_lr_scale}],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(total_updates, int(cfg.warmup_fraction * total_updates)))
    objective: nn.Module = _Objective(model, cfg, mean, std).to(device)
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)

    start_epoch, step = _resume_checkpoint(ckpt_path, model, opt, sched, cfg.to_dict()) if resume else (0, 0)

    val_loader = None
    if val_view is not None and val_vals is not None and len(val_view) > 0:
        val_ds = SealDataset(val_view, val_vals, PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"], augment=False))
        val_loader = DataLoader(val_ds, batch_size=min(bs, 256), num_workers=cfg.num_workers, shuffle=False)

    obs_train = train_view.obs
    last_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    for epoch in range(start_epoch, last_epoch):
        torch.manual_seed(cfg.seed * 1000 + epoch)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        sampler: Any
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, seed=cfg.seed, drop_last=True)
            sampler.set_epoch(epoch)
        elif cfg.balance_organs:
            counts = obs_train["organ"].map(obs_train["organ"].value_counts()).to_numpy(dtype=float)
            sampler = WeightedRandomSampler((1.0 / counts).tolist(), num_samples=len(train_ds), replacement=True, generator=g)
        else:
            sampler = RandomSampler(train_ds, generator=g)
        loader = DataLoader(
            train_ds,
            batch_size=bs,
            sampler=sampler,
            num_workers=cfg.num_workers,
            drop_last=True,
            generator=g,
            persistent_workers=False,
            pin_memory=device.type == "cuda",
        )
        bar = None
        if progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=True)
        t_last = time.perf_counter()
        model.train()
        clip_values: list[float] = []
        for i, (img, expr) in enumerate(loader):
            if i >= steps_per_epoch:
                break
            img = img.to(device, non_blocking=True)
            expr = expr.to(device, non_blocking=True)
            with _amp(device):
                parts = objective(img, expr)
            (parts["loss"] / cfg.grad_accum).backward()
            if (i + 1) % cfg.grad_accum == 0:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            now = time.perf_counter()
            rate = len(img) * world / max(now - t_last, 1e-9)
            t_last = now
            rec = {"epoch": epoch, "step": step, "lr": opt.param_groups[0]["lr"], "pairs_per_s": rate}
            rec.update({k: float(v.detach()) for k, v in parts.items()})
            clip_values.append(rec["clip"])
            tr.log(rec)
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", pairs_s=f"{rate:.0f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        ep_rec: dict[str, Any] = {"epoch": epoch, "step": step, "split": level}
        if clip_values:
            ep_rec["clip_epoch"] = float(np.mean(clip_values[-max(1, len(clip_values) // 3) :]))
        if val_loader is not None and rank == 0:
            ep_rec.update(_probe(model, val_loader, device, cfg, mean, std))
        if epoch == 0 and clip_values and clip_at_chance(ep_rec["clip_epoch"], bs * world, clip_values[0]) and rank == 0:
            ep_rec["clip_at_chance"] = True
            warnings.warn(
                f"after the first epoch the contrastive term is {ep_rec['clip_epoch']:.3f}, still not below chance "
                f"(ln({bs * world}) = {math.log(bs * world):.3f}): images and expression are not being aligned; "
                "check the learning rate, the LoRA blocks and the gene selection (see docs/seal.md)",
                stacklevel=2,
            )
        tr.log(ep_rec)
        if rank == 0:
            _save_checkpoint(ckpt_path, model, opt, sched, epoch, step, cfg.to_dict())
    if rank == 0 and last_epoch == cfg.epochs:
        _save_model(out, model, cfg, prep, dcfg, dim)
        FitSummary.from_log(out / "train_log.jsonl", split, len(train_idx), len(prep.genes), bs * world).write(out / "summary.json")
    if world > 1:
        dist.destroy_process_group()
    return out


def _save_model(out: Path, model: SealModel, cfg: FitConfig, prep: ExpressionPrep, dcfg: dict[str, Any], dim: int) -> None:
    from safetensors.torch import save_file

    from hestkit import __version__

    from ._plots import plot_loss_curve

    enc: Any = model.encoder
    enc.save_pretrained(str(out / "adapter"))
    merged = copy.deepcopy(enc).merge_and_unload()
    save_file({k: v.detach().cpu().contiguous() for k, v in merged.state_dict().items()}, str(out / "encoder.safetensors"))
    create_kwargs = {"global_pool": cfg.global_pool} if cfg.global_pool else {}
    (out / "encoder.json").write_text(
        json.dumps({**backbone_recipe(cfg.backbone), "create_kwargs": create_kwargs, "data_config": dcfg, "dim": dim}, indent=1)
    )
    heads = {f"vae.{k}": v for k, v in model.vae.state_dict().items()} | {
        f"head.{k}": v for k, v in model.head.state_dict().items()
    }
    save_file({k: v.detach().cpu().contiguous() for k, v in heads.items()}, str(out / "expression.safetensors"))
    (out / "preprocess.json").write_text(json.dumps(prep.to_dict()))
    (out / "genes.txt").write_text("\n".join(prep.genes) + "\n")
    (out / "config.json").write_text(
        json.dumps({"fit": cfg.to_dict(), "hestkit_version": __version__, "n_genes": len(prep.genes), "dim": dim}, indent=1)
    )
    plot_loss_curve(out / "train_log.jsonl", out / "loss_curve.png")
