"""`seal eval-hest` embedding throughput (patches/s) against a plain loop over the same files.

Writes a HEST-Benchmark-shaped folder (224 px patches at 0.5 um/px, as the released data)
with `make_hest_bench`, then, for each encoder, times in one process:

* plain: for each patch file, read `img` in slices of --batch-size, convert and
  normalise, run the model (no DataLoader, nothing overlapped);
* pipeline: the embedding step of `seal eval-hest` (`seal.hest_bench.run_hest_bench`,
  no cache) with --workers 0, 1 and 2, from its own timing in details.json;
* the input pipeline alone (patch slices read and normalised by the DataLoader, no
  model): when it is far above the model's rate, the model is the bottleneck.

Model loading is excluded from both. The probe is not timed (it is the same code path
whatever the input pipeline). Usage:

    .venv/bin/python bench/bench_hest_bench.py --encoder timm:test_vit --encoder timm:resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import torch

from hestkit.synthetic import make_hest_bench
from seal.encoders import parse_encoder
from seal.hest_bench import HestBenchConfig, run_hest_bench


@torch.no_grad()
def plain_loop(files: list[Path], model: torch.nn.Module, dcfg: dict, batch: int) -> float:
    size = int(dcfg["input_size"][-1])
    mean = torch.tensor(dcfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(dcfg["std"]).view(1, 3, 1, 1)
    n = 0
    t0 = time.perf_counter()
    for p in files:
        with h5py.File(p, "r") as f:
            for s in range(0, f["img"].shape[0], batch):
                x = torch.from_numpy(f["img"][s : s + batch]).permute(0, 3, 1, 2).float() / 255.0
                if x.shape[-1] != size:
                    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
                model((x - mean) / std)
                n += len(x)
    return n / (time.perf_counter() - t0)


def loader_only(files: list[Path], dcfg: dict, batch: int, workers: int) -> float:
    """The input pipeline of eval-hest alone (h5 slices -> normalised tensors), no model."""
    from torch.utils.data import DataLoader

    from seal._hest_embed import PatchBatches

    n = 0
    t0 = time.perf_counter()
    for p in files:
        ds = PatchBatches(p, batch, dcfg)
        for x in DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None):
            n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", action="append", default=None)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--spots", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, action="append", default=None)
    args = ap.parse_args()
    encoders = args.encoder or ["timm:test_vit", "timm:resnet18"]
    workers = args.workers or [0, 1, 2]
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        bench = make_hest_bench(Path(tmp) / "bench", tasks={"T": args.samples}, n_spots=args.spots, patch_px=224, seed=0)
        files = sorted((bench.root / "T" / "patches").glob("*.h5"))
        n = sum(h5py.File(p, "r")["img"].shape[0] for p in files)
        print(f"{n} patches of 224 px in {len(files)} files; torch threads {torch.get_num_threads()}; "
              f"{os.cpu_count()} cores; {platform.processor() or platform.machine()}")
        for enc in encoders:
            spec = parse_encoder(enc)
            model, dcfg = spec.load(torch.device("cpu"))
            plain_loop(files[:1], model, dcfg, args.batch_size)  # warm-up
            plain = plain_loop(files, model, dcfg, args.batch_size)
            row = [f"{enc}: plain loop {plain:.1f} patches/s"]
            row += [f"input pipeline alone, workers={w}: {loader_only(files, dcfg, args.batch_size, w):.0f} patches/s" for w in workers]
            for w in workers:
                out = Path(tmp) / f"out-{spec.key}-{w}"
                cfg = HestBenchConfig(device="cpu", batch_size=args.batch_size, num_workers=w, cache=False, progress=False)
                run_hest_bench(bench.root, [spec], out, cfg)
                d = json.loads((out / "details.json").read_text())["embedding"][spec.label]
                pps = d["patches_per_second"]
                row.append(f"eval-hest workers={w} {pps:.1f} patches/s ({pps / plain:.2f}x)")
            print("; ".join(row), flush=True)


if __name__ == "__main__":
    main()
