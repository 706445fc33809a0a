"""SEAL training throughput: pairs/s, peak memory, model FLOP utilisation, and whether the
data pipeline keeps up with the model.

For each backbone (random init, LoRA as `seal fit` sets it up, the expression VAE and the
image head), it times full training steps (forward, the three losses, backward, AdamW) on
batches already on the device, so the figure is the model's own speed; FLOPs per step are
counted once with torch's FlopCounterMode, and MFU = FLOPs/s over --peak-tflops. With
--catalog it also times the real input pipeline alone (catalog pair view -> JPEG decode ->
augmentation -> DataLoader with --workers) and the two together: the loader keeps the
accelerator busy when its pairs/s is above the model's.

On a GPU (bf16 autocast, as `seal fit` uses there):
    .venv/bin/python bench/bench_seal_throughput.py --backbone vit_base_patch16_224 \
        --backbone vit_large_patch16_224 --batch-size 256 --catalog demo/catalog --workers 16
Zoo presets work too (random weights), e.g. LoRA on UNI: --backbone uni --batch-size 128.
A quick check of the script on the CPU:
    .venv/bin/python bench/bench_seal_throughput.py --backbone test_vit --batch-size 8 --steps 3
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from seal.encoders import build_backbone
from seal.models import LoraSpec, SealModel, data_config, wrap_lora
from seal.train import FitConfig, _amp, _Objective, resolve_device


def _step(
    objective: torch.nn.Module, opt: torch.optim.Optimizer, img: torch.Tensor, expr: torch.Tensor, dev: torch.device
) -> None:
    with _amp(dev):
        parts = objective(img, expr)
    parts["loss"].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench_model(name: str, args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    backbone, dcfg, dim, _ = build_backbone(name)  # a timm name or a zoo preset (e.g. uni), random init
    size = dcfg["input_size"]
    torch.manual_seed(0)
    model = SealModel(wrap_lora(backbone, LoraSpec(blocks=args.lora_blocks)), args.n_genes, dim).to(dev)
    cfg = FitConfig(backbone=name)
    mean = torch.zeros(args.n_genes, device=dev)
    std = torch.ones(args.n_genes, device=dev)
    objective = _Objective(model, cfg, mean, std).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    img = torch.randn(args.batch_size, *size, device=dev)
    expr = torch.randn(args.batch_size, args.n_genes, device=dev)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        _step(objective, opt, img, expr, dev)
    flops = float(fc.get_total_flops())
    for _ in range(args.warmup):
        _step(objective, opt, img, expr, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    _sync(dev)
    t = time.perf_counter()
    for _ in range(args.steps):
        _step(objective, opt, img, expr, dev)
    _sync(dev)
    dt = (time.perf_counter() - t) / args.steps
    out: dict[str, Any] = {
        "backbone": name,
        "trainable": sum(p.numel() for p in params),
        "pairs_per_s": args.batch_size / dt,
        "tflop_per_step": flops / 1e12,
        "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan"),
    }
    out["mfu"] = flops / dt / (args.peak_tflops * 1e12) if args.peak_tflops else float("nan")
    if args.catalog:
        out |= bench_loader(args, backbone, objective, opt, dev)
    return out


def bench_loader(
    args: argparse.Namespace, backbone: torch.nn.Module, objective: torch.nn.Module, opt: torch.optim.Optimizer, dev: torch.device
) -> dict[str, float]:
    import catalog
    from seal.data import PatchTransform, SealDataset, fit_preprocessing

    view = catalog.open(args.catalog).pairs()
    _, values = fit_preprocessing(view, n_genes=args.n_genes)
    dcfg = data_config(backbone)
    ds = SealDataset(view, values, PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"], augment=True))
    n_batches = args.steps + args.warmup
    g = torch.Generator().manual_seed(0)
    sampler = RandomSampler(ds, replacement=True, num_samples=n_batches * args.batch_size, generator=g)

    def loader() -> DataLoader[Any]:
        return DataLoader(
            ds,
            batch_size=args.batch_size,
            sampler=sampler,
            num_workers=args.workers,
            pin_memory=dev.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if args.workers else None,
        )

    def timed(train: bool) -> float:
        n, t = 0, 0.0
        for i, (img, expr) in enumerate(loader()):
            if i == args.warmup:
                _sync(dev)
                t = time.perf_counter()
            img = img.to(dev, non_blocking=True)
            expr = expr.to(dev, non_blocking=True)
            if expr.shape[1] != args.n_genes:  # fewer genes in the catalog than asked
                expr = torch.nn.functional.pad(expr, (0, args.n_genes - expr.shape[1]))
            if train:
                _step(objective, opt, img, expr, dev)
            if i >= args.warmup:
                n += len(img)
        _sync(dev)
        return n / (time.perf_counter() - t)

    return {"loader_pairs_per_s": timed(False), "end_to_end_pairs_per_s": timed(True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", action="append", help="timm model name (repeatable)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--n-genes", type=int, default=2000)
    ap.add_argument("--lora-blocks", type=int, default=1, help="0 = all")
    ap.add_argument("--catalog", help="also time the real input pipeline from this catalog")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak dense bf16 TFLOP/s for MFU (H100/H200 SXM: 989); default: none on CPU",
    )
    args = ap.parse_args()
    dev = resolve_device(args.device)
    if args.peak_tflops is None and dev.type == "cuda":
        args.peak_tflops = 989.0
    machine = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({os.cpu_count()} cores, {platform.machine()})"
    print(
        f"machine: {machine}; torch {torch.__version__}; batch {args.batch_size}; {'bf16 autocast' if dev.type == 'cuda' else 'fp32'}"
    )
    cols = ["backbone", "trainable", "pairs_per_s", "tflop_per_step", "peak_mem_gib", "mfu"]
    if args.catalog:
        cols += ["loader_pairs_per_s", "end_to_end_pairs_per_s"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name in args.backbone or ["vit_base_patch16_224", "vit_large_patch16_224"]:
        r = bench_model(name, args, dev)
        cells = [f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
