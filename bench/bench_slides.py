"""Slide-level path on a synthetic cohort, in one run.

``speed``: tiles/s of ``seal slide-embed`` (blocks of the best pyramid level decoded once
through dask threads, tiles resampled from them, the encoder in batches) against a
TRIDENT-style loop over the same tiles (one OpenSlide ``read_region`` per tile at the best
level, a resize to the tile size, then the same encoder in the same batches). Tissue masks
are computed before both timings (the same cached mask serves both), so only reading,
resampling and the model are timed. Prints both rates and their ratio.

``eval``: ``seal slide-eval`` (ABMIL and mean pooling, 5 patient-level folds, ``--seeds``
fold seeds) on the small-region label ``label`` and the continuous score ``score``, for
each ``--encoder`` (default: the ``texture`` baseline and random-init ``timm:test_resnet``).

    .venv/bin/python bench/bench_slides.py speed --cohort /tmp/cohort --n-slides 8 --size 4096
    .venv/bin/python bench/bench_slides.py eval --cohort /tmp/cohort --n-slides 120 --size 2048 --seed 1 \
        --tile-px 64 --mpp 0.5 --min-tissue 0.75 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def _cohort(root: Path, n: int, size: int, seed: int = 0) -> Path:
    from catalog.slides import add_slides
    from hestkit.synthetic.slides import make_slide_cohort

    cat = root / "cat"
    if not (root / "raw" / "slides.csv").exists():
        t = time.perf_counter()
        make_slide_cohort(root / "raw", n_slides=n, size_px=size, seed=seed)
        print(f"cohort: {n} slides of {size} px in {time.perf_counter() - t:.0f} s")
    add_slides(cat, root / "raw" / "slides.csv")
    return cat


def _trident_loop(cat_dir: Path, name: str, encoder: str, mpp: float, tile_px: int, batch: int) -> tuple[int, float]:
    import cv2
    import openslide
    import torch

    import catalog
    from catalog.slide_features import SlideFeatureStore
    from seal.data import PatchTransform
    from seal.encoders import parse_encoder

    cat = catalog.open(cat_dir)
    store = SlideFeatureStore(cat, name)
    model, dcfg = parse_encoder(encoder).load(torch.device("cpu"))
    tf = PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"])
    n = 0
    t0 = time.perf_counter()
    for sid in store.slides():
        m = cat.slide_manifest(sid)
        coords = store.get(sid).coords
        side = tile_px * mpp / float(m["mpp"])
        osl = openslide.OpenSlide(m["path"])
        level = osl.get_best_level_for_downsample(side / tile_px + 1e-6)
        ds = osl.level_downsamples[level]
        size = round(side / ds)
        imgs = []
        for x, y in coords:
            rgb = np.asarray(osl.read_region((int(x), int(y)), level, (size, size)).convert("RGB"))
            imgs.append(cv2.resize(rgb, (tile_px, tile_px), interpolation=cv2.INTER_AREA))
            if len(imgs) == batch:
                with torch.no_grad():
                    model(torch.stack([tf(i) for i in imgs]))
                n += len(imgs)
                imgs = []
        if imgs:
            with torch.no_grad():
                model(torch.stack([tf(i) for i in imgs]))
            n += len(imgs)
        osl.close()
    return n, time.perf_counter() - t0


def _read_only(cat_dir: Path, name: str, mpp: float, tile_px: int, workers: int) -> tuple[float, float, int]:
    """Tiles/s of reading + resampling alone (no model): the block path through dask, and
    one read_region per tile, over the same tiles."""
    import cv2
    import openslide

    import catalog
    from catalog.slide_features import SlideFeatureStore
    from hestkit.patches import PairSpec, plan_patches
    from hestkit.slide import open_slide
    from seal.slide_embed import _client, _tile_blocks

    cat = catalog.open(cat_dir)
    store = SlideFeatureStore(cat, name)
    jobs = []
    for sid in store.slides():
        m = cat.slide_manifest(sid)
        side = tile_px * mpp / float(m["mpp"])
        jobs.append((m, store.get(sid).coords.astype(float), side))
    client, cluster = _client(workers, None)
    n = 0
    t0 = time.perf_counter()
    for m, tl, side in jobs:
        spec = PairSpec(tile_px, mpp)
        centres = tl + side / 2
        with open_slide(m["path"]) as slide:
            plan = plan_patches(slide, centres, float(m["mpp"]), spec, block_px=2048, slot_align=1)
        for _, tiles in _tile_blocks(client, m["path"], plan, centres, spec, 2 * workers):
            n += len(tiles)
    ours = n / (time.perf_counter() - t0)
    client.close()
    if cluster is not None:
        cluster.close()
    n2 = 0
    t0 = time.perf_counter()
    for m, tl, side in jobs:
        osl = openslide.OpenSlide(m["path"])
        level = osl.get_best_level_for_downsample(side / tile_px + 1e-6)
        size = round(side / osl.level_downsamples[level])
        for x, y in tl:
            rgb = np.asarray(osl.read_region((int(x), int(y)), level, (size, size)).convert("RGB"))
            cv2.resize(rgb, (tile_px, tile_px), interpolation=cv2.INTER_AREA)
            n2 += 1
        osl.close()
    return ours, n2 / (time.perf_counter() - t0), n


def speed(args: argparse.Namespace) -> dict[str, object]:
    import catalog
    from catalog.slides import slide_manifests
    from seal.slide_embed import SlideEmbedConfig, embed_slides, slide_tissue_mask

    cat_dir = _cohort(Path(args.cohort), args.n_slides, args.size, args.seed)
    cat = catalog.open(cat_dir)
    t = time.perf_counter()
    for m in slide_manifests(cat.layout)[: args.limit or None]:
        slide_tissue_mask(cat, m)
    seg = time.perf_counter() - t
    cfg = SlideEmbedConfig(mpp=args.mpp, tile_px=args.tile_px, workers=args.workers, device="cpu", batch_size=args.batch)
    t = time.perf_counter()
    ids = [m["slide_id"] for m in slide_manifests(cat.layout)][: args.limit or None]
    rep = embed_slides(cat_dir, args.encoder, cfg, slides=ids)
    ours_s = time.perf_counter() - t
    n_ours = sum(rep.n_tiles.values())
    read_ours, read_tr, _ = _read_only(cat_dir, rep.feature_set, args.mpp, args.tile_px, args.workers)
    if args.read_only:
        out: dict[str, object] = {"tiles": n_ours, "read_hestkit_tiles_per_s": read_ours, "read_trident_tiles_per_s": read_tr, "read_ratio": read_ours / read_tr}
        print(json.dumps(out, indent=1))
        return out
    n_tr, tr_s = _trident_loop(cat_dir, rep.feature_set, args.encoder, args.mpp, args.tile_px, args.batch)
    out = {
        "slides": len(rep.embedded),
        "tiles": n_ours,
        "segmentation_s": seg,
        "hestkit_tiles_per_s": n_ours / ours_s,
        "trident_loop_tiles_per_s": n_tr / tr_s,
        "ratio": (n_ours / ours_s) / (n_tr / tr_s),
        "read_hestkit_tiles_per_s": read_ours,
        "read_trident_tiles_per_s": read_tr,
        "read_ratio": read_ours / read_tr,
        "encoder": args.encoder,
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
    }
    print(json.dumps(out, indent=1))
    return out


def evaluate(args: argparse.Namespace) -> dict[str, object]:
    """Every encoder on both labels, ``--seeds`` fold seeds x 5 patient-level folds; prints
    and writes (``eval.json`` in the cohort folder) mean +- std over all folds of all seeds."""
    import pandas as pd

    from seal.mil import MilConfig
    from seal.slide_embed import SlideEmbedConfig, embed_slides
    from seal.slide_eval import run_slide_eval

    root = Path(args.cohort)
    cat_dir = _cohort(root, args.n_slides, args.size, args.seed)
    encoders = args.encoder or ["texture", "timm:test_resnet"]
    for enc in encoders:
        t = time.perf_counter()
        rep = embed_slides(
            cat_dir, enc, SlideEmbedConfig(mpp=args.mpp, tile_px=args.tile_px, min_tissue=args.min_tissue, workers=args.workers, device="cpu", keep_tiles=True)
        )
        print(f"{enc}: {sum(rep.n_tiles.values())} tiles embedded in {time.perf_counter() - t:.0f} s ({len(rep.skipped)} slides stored before)")
    rows = []
    for task in ("label", "score"):
        for seed in range(args.seeds):
            cfg = MilConfig(lr=1e-3, max_epochs=args.max_epochs, patience=10, min_epochs=args.min_epochs, threads=1, seed=seed)
            res, _ = run_slide_eval(
                cat_dir, task, encoders, root / f"eval{args.tag}_{task}_seed{seed}", folds=5, mpp=args.mpp, tile_px=args.tile_px, cfg=cfg,
            )
            for fs, models in res.per_fold.items():
                for model, folds in models.items():
                    for k, m in enumerate(folds):
                        rows.append({"task": task, "encoder": res.labels.get(fs, fs), "model": model, "seed": seed, "fold": k, **m})
            print(res.summary().to_string(), flush=True)
    df = pd.DataFrame(rows)
    metric = {"label": "auc", "score": "pearson"}
    out: dict[str, object] = {
        "cohort": f"make_slide_cohort(n_slides={args.n_slides}, size_px={args.size}, seed={args.seed})",
        "tiling": f"{args.tile_px} px at {args.mpp} um/px, min tissue {args.min_tissue}",
        "seeds": args.seeds,
        "mil": f"lr 1e-3, max_epochs {args.max_epochs}, patience 10, min_epochs {args.min_epochs}",
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "results": [],
    }
    for key, g in df.groupby(["task", "encoder", "model"], sort=False):
        task, enc, model = (str(k) for k in key)
        v = g[metric[task]].to_numpy(dtype=float)
        per_seed = g.groupby("seed")[metric[task]].mean().round(3).tolist()
        extra = {"balanced_accuracy_mean": float(np.nanmean(g["balanced_accuracy"]))} if task == "label" else {}
        out["results"].append(  # type: ignore[attr-defined]
            {"task": task, "encoder": enc, "model": model, "metric": metric[task], "mean": float(np.nanmean(v)), "std": float(np.nanstd(v)),
             "per_seed_means": per_seed, "n_folds": len(v), **extra}
        )
        print(f"{task:6s} {enc:14s} {model:6s} {metric[task]} {np.nanmean(v):.3f} +- {np.nanstd(v):.3f} (per seed {per_seed})")
    (root / f"eval{args.tag}.json").write_text(json.dumps(out, indent=1))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("what", choices=["speed", "eval"])
    p.add_argument("--cohort", default="/tmp/hestkit_slide_cohort")
    p.add_argument("--n-slides", type=int, default=8)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--encoder", action="append", help="speed: one encoder (default timm:test_resnet); eval: repeat (default texture and timm:test_resnet)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed")
    p.add_argument("--seeds", type=int, default=3, help="eval: fold/training seeds")
    p.add_argument("--min-tissue", type=float, default=0.25)
    p.add_argument("--max-epochs", type=int, default=40)
    p.add_argument("--min-epochs", type=int, default=20, help="eval: MIL warm-up (0: weights chosen from epoch 1, the behaviour before)")
    p.add_argument("--tag", default="", help="eval: suffix of the output folders and eval{tag}.json")
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--tile-px", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="speed: embed only the first N slides")
    p.add_argument("--read-only", action="store_true", help="speed: after embedding, time reading alone (no model) both ways")
    args = p.parse_args()
    if args.what == "speed":
        args.encoder = (args.encoder or ["timm:test_resnet"])[0]
        speed(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
