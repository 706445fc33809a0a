"""Embedding throughput of `seal embed` against a plain loop over the same pairs, in one run.

For each encoder spec (default: the small `resnet50-imagenet` preset, random weights), it
times on the same pairs of one catalog:

* ``model only``:  the encoder on batches already decoded and normalised (upper bound);
* ``plain loop``:  what a script would do: for each pair, read the patch, normalise it,
                   stack a batch, run the model; one process;
* ``seal embed``:  :func:`seal.encoders.embed_view` (no cache), i.e. ``seal embed
                   --no-cache``: DataLoader workers decode and normalise while the model runs.

and checks both give the same embeddings. pairs/s are pairs over wall time, after one
warm-up batch. With ``--catalog`` it uses that catalog; otherwise it builds a synthetic
Visium catalog (``--samples`` x ``--grid``^2 spots) in a temporary folder.

CPU (the figures in docs/benchmarks.md):
    .venv/bin/python bench/bench_zoo_embed.py --encoder resnet50-imagenet --workers 2 --batch-size 32
GPU, bf16 (the issue's device check; needs a lent GPU):
    .venv/bin/python bench/bench_zoo_embed.py --device cuda --encoder uni --encoder virchow2 \
        --encoder h-optimus-0 --batch-size 256 --workers 16 --samples 8 --grid 40
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _synthetic_catalog(root: Path, samples: int, grid: int) -> Path:
    import catalog
    from hestkit.sample import ReadOptions
    from hestkit.synthetic import make_visium

    cat = catalog.create(root / "cat")
    for i in range(samples):
        make_visium(root / f"s{i}", n_rows=grid, n_cols=grid, pixel_size_um=1.0, seed=500 + i)
        rep = cat.ingest([root / f"s{i}"], options=ReadOptions(sample_id=f"s{i}", patient=f"P{i}"), workers=1)
        if rep.failed:
            raise SystemExit(f"synthetic ingest failed: {rep.failed}")
    return root / "cat"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _amp(dev: torch.device) -> Any:
    return torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def plain_loop(model: torch.nn.Module, view: Any, dcfg: dict[str, Any], dev: torch.device, bs: int) -> np.ndarray:
    from seal.data import PatchTransform

    tf = PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"])
    out, batch = [], []
    for i in range(len(view)):
        batch.append(tf(view.patch(i)))
        if len(batch) == bs or i == len(view) - 1:
            with _amp(dev):
                out.append(model(torch.stack(batch).to(dev)).float().cpu().numpy())
            batch = []
    return np.concatenate(out)


@torch.no_grad()
def model_only(model: torch.nn.Module, n: int, size: int, dev: torch.device, bs: int) -> float:
    x = torch.randn(bs, 3, size, size, device=dev)
    with _amp(dev):
        model(x)
    _sync(dev)
    t = time.perf_counter()
    done = 0
    while done < n:
        with _amp(dev):
            model(x)
        done += bs
    _sync(dev)
    return done / (time.perf_counter() - t)


def bench(spec_s: str, cat: Any, view: Any, args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    from seal.encoders import embed_view, parse_encoder

    spec = parse_encoder(spec_s)
    enc = spec.open(dev)
    size = int(enc.data_config["input_size"][-1])
    row: dict[str, Any] = {"encoder": spec.label, "dim": enc.dim, "input": size, "pairs": len(view)}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    row["model_only"] = model_only(enc.model, len(view), size, dev, args.batch_size)
    plain_loop(enc.model, view.subset(np.arange(min(len(view), args.batch_size))), enc.data_config, dev, args.batch_size)  # warm-up
    t = time.perf_counter()
    ref = plain_loop(enc.model, view, enc.data_config, dev, args.batch_size)
    _sync(dev)
    row["plain_loop"] = len(view) / (time.perf_counter() - t)
    t = time.perf_counter()
    got = embed_view(cat, view, spec, device=dev, batch_size=args.batch_size, num_workers=args.workers, cache=False)
    _sync(dev)
    row["seal_embed"] = len(view) / (time.perf_counter() - t)
    row["ratio_embed_over_loop"] = row["seal_embed"] / row["plain_loop"]
    row["max_abs_diff"] = float(np.abs(got - ref).max())
    if dev.type == "cuda":
        row["peak_mem_GiB"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", action="append", help="encoder spec (repeat); default resnet50-imagenet")
    ap.add_argument("--catalog", help="catalog to read (default: a synthetic one)")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--grid", type=int, default=12, help="synthetic Visium grid side (spots per sample = grid^2)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import catalog

    dev = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.catalog) if args.catalog else _synthetic_catalog(Path(tmp), args.samples, args.grid)
        cat = catalog.open(path)
        view = cat.pairs()
        print(
            f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {dev}"
            + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
        )
        print(f"# {len(view)} pairs from {path if args.catalog else 'a synthetic catalog'}; batch {args.batch_size}, {args.workers} workers")
        cols = ["encoder", "dim", "input", "pairs", "model_only", "plain_loop", "seal_embed", "ratio_embed_over_loop", "max_abs_diff"]
        if dev.type == "cuda":
            cols.append("peak_mem_GiB")
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for s in args.encoder or ["resnet50-imagenet"]:
            r = bench(s, cat, view, args, dev)
            print("| " + " | ".join(f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |", flush=True)


if __name__ == "__main__":
    main()
