"""VORTEX benchmarks.

``eval``: the serial-section protocol at full bench size. A seeded synthetic cohort of
``--volumes`` microCT-like volumes (80 x 1000 x 1000 um at 2 um voxels, Visium sections at
20, 40 and 60 um); VORTEX pretrained on the first ``--pretrain`` volumes, every other volume
a target: fine-tune on its 20 um section, predict the 40 and 60 um sections; VORTEX vs
(a) no fine-tuning, (b) no pretraining, (c) frozen 2D encoder + ridge on the nearest slice.
Mean Pearson over genes per held-out section against the measured spots (protocol) and
against the generator's true expression at the same spot centres.

Fine-tuning uses the library's defaults (``finetune_config``) unless ``--finetune-epochs`` fixes
the epochs; ``--data DIR`` makes the cohort once and reuses it across runs (encoders, context);
``--rule-shift`` / ``--stain-shift`` give every block its own expression rule and stain;
``--context-scale 2`` adds the multi-scale context.

``finetune``: on a cohort whose blocks have their own rule and stain (``--rule-shift 0.7
--stain-shift 0.5``), the pretrained model alone against fine-tuning on the target's 20 um
section with several settings (epochs; everything or the head only; early stopping on held-out
spots), scored against the truth at the held-out depths: the measurements behind the
fine-tuning defaults.

``throughput``: dense prediction (``predict_volume``: blocks of grid points, one read per
block) on CPU through synthetic OME-Zarr volumes of two sizes, each in a fresh process:
sub-volumes/s, volume voxels/s and the process's peak RSS (VmHWM), with its high-water mark
after imports and model loading (torch alone is ~0.8 GB) for reference. Peer: the same grid
predicted with one ``extract_subvolume`` read per grid point (how a per-spot pair reader
would do it), on the smaller volume, in the same run (ratio).

    .venv/bin/python bench/bench_vortex.py eval --out /tmp/vortex_eval
    .venv/bin/python bench/bench_vortex.py finetune --out /tmp/vortex_ft --seed 0
    .venv/bin/python bench/bench_vortex.py throughput --out /tmp/vortex_tp --shapes 100x1000x1000 200x2000x2000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, torch threads 1"


def _log_norm(mu: Any) -> Any:
    import numpy as np

    tot = mu.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(mu, tot, out=np.zeros_like(mu), where=tot > 0) * 1e4)


def _cohort(args: argparse.Namespace, where: Path) -> tuple[Any, Path]:
    """The seeded cohort, ingested and linked in a catalog under ``where``; reused when
    ``where`` already holds it (``--data``: one cohort for several encoder runs)."""
    import pickle

    import catalog
    from hestkit.sample import ReadOptions
    from hestkit.synthetic.volume import make_volume_cohort

    key = {"seed": args.seed, "volumes": args.volumes, "rule_shift": args.rule_shift, "stain_shift": args.stain_shift}
    done = where / "cohort.pkl"
    if done.exists():
        with open(done, "rb") as fh:
            saved = pickle.load(fh)
        if saved["key"] != key:
            raise SystemExit(f"{where} holds a cohort of {saved['key']}, not {key}: choose another --data")
        return saved["cohort"], where / "cat"
    where.mkdir(parents=True, exist_ok=True)
    coh = make_volume_cohort(
        where / "raw",
        seed=args.seed,
        n_volumes=args.volumes,
        shape_zyx=(40, 500, 500),
        voxel_size_um=(2.0, 2.0, 2.0),
        n_genes=40,
        section_pixel_size_um=1.0,
        **({"rule_shift": args.rule_shift, "stain_shift": args.stain_shift} if args.rule_shift or args.stain_shift else {}),
    )
    cat = catalog.create(where / "cat")
    for v in coh.volumes:
        cat.ingest_volume(v.path, v.volume_id, modality=v.modality, organ=v.organ, patient=v.patient)
        for s in v.sections:
            cat.ingest(
                [s.path],
                options=ReadOptions(sample_id=s.sample_id, organ=v.organ, patient=v.patient, species="Homo sapiens"),
                workers=1,
            )
            cat.link_section(s.sample_id, v.volume_id, s.z_um, affine=s.affine_path)
    with open(done, "wb") as fh:
        pickle.dump({"key": key, "cohort": coh}, fh)
    return coh, where / "cat"


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from seal.evaluate import pearson_per_gene
    from seal.vortex import TrainConfig, pretrain
    from seal.vortex.config import finetune_config
    from seal.vortex.evaluate import METHODS, SerialSectionConfig, serial_section_eval

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    coh, cat_dir = _cohort(args, Path(args.data) if args.data else out)
    t_data = time.perf_counter() - t0
    enc = args.encoder3d
    mcfg = _model_cfg(enc, args.context_scale)
    tcfg = TrainConfig(
        epochs=args.pretrain_epochs,
        batch_size=16,
        lr=1e-3,
        weight_decay=0.05,
        n_genes=40,
        device="cpu",
        cache_pairs=True,
        seed=args.seed,
    )
    pre_vols = [v.volume_id for v in coh.volumes[: args.pretrain]]
    targets = [v.volume_id for v in coh.volumes[args.pretrain :]]
    t0 = time.perf_counter()
    pretrain(cat_dir, mcfg, tcfg, out / "pretrained", volumes=pre_vols, progress=False)
    t_pre = time.perf_counter() - t0
    # fine-tuning: the library's defaults (epochs, what is tuned, early stopping) unless --finetune-epochs is given
    ft = finetune_config(tcfg, **({"epochs": args.finetune_epochs, "early_stop_fraction": 0.0} if args.finetune_epochs else {}))
    t0 = time.perf_counter()
    res = serial_section_eval(
        cat_dir,
        out / "pretrained",
        targets,
        out / "eval",
        SerialSectionConfig(train=ft, device="cpu", encoder_2d="timm:test_vit" if enc == "cnn3d" else None),
        progress=False,
    )
    t_eval = time.perf_counter() - t0
    truth_rows = []
    genes = res.summary["genes"]
    for v in coh.volumes[args.pretrain :]:
        col = {g.upper(): i for i, g in enumerate(v.genes)}
        for sec, obs in res.obs[v.volume_id].items():
            truth = _log_norm(v.true_expression(obs[["z_um", "y_um", "x_um"]].to_numpy(dtype=float)))[:, [col[g] for g in genes]]
            row = {"volume": v.volume_id, "section": sec, "n_spots": len(obs)}
            for m in METHODS:
                row[m] = float(np.nanmean(pearson_per_gene(truth, res.predictions[v.volume_id][sec][m])))
            truth_rows.append(row)
    report = {
        "machine": _machine(),
        "command": " ".join(sys.argv),
        "seconds": {"data": t_data, "pretrain": t_pre, "eval": t_eval},
        "pretrain_volumes": pre_vols,
        "measured": res.summary["mean_pearson"],
        "measured_spearman": res.summary["mean_spearman"],
        "truth_rows": truth_rows,
        "truth_mean": {m: float(np.mean([r[m] for r in truth_rows])) for m in METHODS},
    }
    (out / "bench_eval.json").write_text(json.dumps(report, indent=1))
    print((out / "eval" / "results.md").read_text())
    print(json.dumps({k: report[k] for k in ("seconds", "truth_mean", "measured")}, indent=1))
    return report


def _model_cfg(enc: str, context_scale: float = 1.0) -> Any:
    from seal.vortex import ModelConfig

    ctx: dict[str, Any] = {"context_scale": context_scale} if context_scale != 1.0 else {}
    if enc == "cnn3d":
        return ModelConfig(backbone=None, encoder3d="cnn3d", size_px=48, tuning="full", n_slices=9, depth_um=36.0, **ctx)
    return ModelConfig(
        backbone="test_vit",
        create_kwargs={"img_size": 48},
        tuning="full",
        n_slices=9,
        depth_um=36.0,
        encoder3d=enc,  # type: ignore[arg-type]
        tubelet=3,
        **ctx,
    )


def _finetune_variants(max_epochs: int) -> dict[str, dict[str, Any]]:
    """Fine-tuning settings compared on shifted targets (name -> TrainConfig overrides)."""
    v: dict[str, dict[str, Any]] = {}
    for e in (4, 8, 16, max_epochs):
        v[f"all, {e} ep"] = {"epochs": e, "tune": "all", "early_stop_fraction": 0.0}
    for e in (8, max_epochs):
        v[f"head, {e} ep"] = {"epochs": e, "tune": "head", "early_stop_fraction": 0.0}
    for tune in ("all", "head"):
        for p in (4, 6, 8):
            v[f"{tune}, <= {max_epochs} ep, early stop p{p}"] = {
                "epochs": max_epochs, "tune": tune, "early_stop_fraction": 0.2, "patience": p
            }
    return v


def run_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Pretrained-only vs fine-tuned (several settings) on targets whose rule and stain differ."""
    import numpy as np
    import torch

    import catalog
    from seal.data import apply_preprocessing
    from seal.evaluate import pearson_per_gene
    from seal.vortex import TrainConfig, finetune, load_model, pretrain
    from seal.vortex.train import pair_spec, predict_pairs, volume_view

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    coh, cat_dir = _cohort(args, Path(args.data) if args.data else out)
    t_data = time.perf_counter() - t0
    mcfg = _model_cfg(args.encoder3d, args.context_scale)
    tcfg = TrainConfig(
        epochs=args.pretrain_epochs, batch_size=16, lr=1e-3, weight_decay=0.05, n_genes=40, device="cpu", cache_pairs=True, seed=args.seed
    )
    pre_vols = [v.volume_id for v in coh.volumes[: args.pretrain]]
    t0 = time.perf_counter()
    pre_dir = pretrain(cat_dir, mcfg, tcfg, out / "pretrained", volumes=pre_vols, progress=False)
    t_pre = time.perf_counter() - t0
    pre = load_model(pre_dir)
    cat = catalog.open(cat_dir)
    spec = pair_spec(pre.model_cfg, pre.size_px)
    genes = list(pre.prep.genes)
    variants = {"pretrained only": None, **_finetune_variants(args.max_epochs)}
    if args.variants:
        variants = {k: v for k, v in variants.items() if k == "pretrained only" or any(w in k for w in args.variants)}
    rows: list[dict[str, Any]] = []
    for v in coh.volumes[args.pretrain :]:
        col = {g.upper(): i for i, g in enumerate(v.genes)}
        secs = [s.sample_id for s in v.sections]
        held = {}
        for sec in secs[1:]:
            view = volume_view(cat, spec, volumes=[v.volume_id], sections=[sec])
            truth = _log_norm(v.true_expression(view.obs[["z_um", "y_um", "x_um"]].to_numpy(dtype=float)))[:, [col[g] for g in genes]]
            held[sec] = (view, truth, apply_preprocessing(view, pre.prep))
        for name, over in variants.items():
            t0 = time.perf_counter()
            model, note = pre, {}
            if over is not None:
                d = finetune(
                    cat_dir, pre_dir, v.volume_id, out / "ft" / v.volume_id / name.replace(" ", "_").replace(",", ""),
                    cfg=dataclasses.replace(tcfg, **over), sections=[secs[0]], progress=False,
                )
                model = load_model(d)
                log = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()]
                ep = [r for r in log if "loss" not in r]
                note = {"epochs_run": len(ep), "best_epoch": ep[-1].get("best_epoch", len(ep) - 1) + 1 if ep else 0}
            t_ft = time.perf_counter() - t0
            for sec, (view, truth, measured) in held.items():
                pred = predict_pairs(model.model, view, model.size_px, batch_size=32, device="cpu")
                rows.append(
                    {
                        "variant": name,
                        "volume": v.volume_id,
                        "section": sec,
                        "z_um": float(view.obs["z_um"].iloc[0]),
                        "truth": float(np.nanmean(pearson_per_gene(truth, pred))),
                        "measured": float(np.nanmean(pearson_per_gene(measured, pred))),
                        "seconds": t_ft,
                        **note,
                    }
                )
            print(json.dumps(rows[-1]), flush=True)
    mean = {
        n: {k: float(np.mean([r[k] for r in rows if r["variant"] == n])) for k in ("truth", "measured", "seconds")}
        for n in variants
    }
    report = {
        "machine": _machine(),
        "command": " ".join(sys.argv),
        "seconds": {"data": t_data, "pretrain": t_pre},
        "rows": rows,
        "mean": mean,
    }
    (out / "bench_finetune.json").write_text(json.dumps(report, indent=1))
    print("| fine-tuning | " + " | ".join(f"{v.volume_id} {s.sample_id}" for v in coh.volumes[args.pretrain :] for s in v.sections[1:]) + " | mean truth | mean measured |")
    for n in variants:
        cells = [f"{r['truth']:.3f}" for r in rows if r["variant"] == n]
        print(f"| {n} | " + " | ".join(cells) + f" | {mean[n]['truth']:.3f} | {mean[n]['measured']:.3f} |")
    return report


_CHILD = r"""
import json, sys, time, resource
import numpy as np, torch
torch.set_num_threads(1)
from hestkit.volume_readers import NgffVolume
from hestkit.volume import extract_subvolume
from seal.vortex import load_model
from seal.vortex.predict import PredictConfig, predict_volume, grid_shape
from seal.vortex.data import SubvolumeTransform
vol_path, model_dir, out, mode, sxy, sz = sys.argv[1:7]
vol = NgffVolume(vol_path)
cfg = PredictConfig(stride_um=(float(sxy), float(sz)), all_points=True, device="cpu", batch_size=64)
lm = load_model(model_dir)
g = grid_shape(vol.shape_zyx, vol.voxel_size_um, (float(sz), float(sxy), float(sxy)))
n = int(np.prod(g))
with open("/proc/self/status") as fh:
    base = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
t = time.perf_counter()
if mode == "block":
    predict_volume(vol, lm, out, cfg, progress=False, overwrite=True)
else:  # peer: one read per grid point
    from seal.vortex.train import pair_spec
    spec = pair_spec(lm.model_cfg, lm.size_px)
    tf = SubvolumeTransform(lm.size_px)
    kz, ky, kx = np.meshgrid(*(np.arange(s) for s in g), indexing="ij")
    centres = (np.stack([kz.ravel(), ky.ravel(), kx.ravel()], 1) + 0.5) * np.array([float(sz), float(sxy), float(sxy)])
    with torch.no_grad():
        for s in range(0, n, 64):
            x = torch.stack([tf(extract_subvolume(vol, tuple(c), spec)) for c in centres[s:s + 64]])
            lm.model.predict(x)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
try:
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
nz, ny, nx = vol.shape_zyx
print(json.dumps({"mode": mode, "seconds": dt, "grid": list(g), "subvolumes": n, "subvolumes_per_s": n / dt,
                  "voxels": nz * ny * nx, "voxels_per_s": nz * ny * nx / dt, "peak_rss_mib": rss,
                  "rss_before_predict_mib": base}))
"""


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    from hestkit.synthetic.volume import make_large_volume
    from seal.data import ExpressionPrep
    from seal.vortex import ModelConfig, build_model
    from seal.vortex.model import save_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # a model of the eval bench's architecture (weights do not change the throughput)
    mcfg = ModelConfig(backbone="test_vit", create_kwargs={"img_size": 48}, tuning="full", n_slices=9, depth_um=36.0)
    genes = tuple(f"GENE{i}" for i in range(40))
    model, px = build_model(mcfg, len(genes), 1)
    meta = {
        "stage": "bench",
        "model": mcfg.to_dict(),
        "train": {"epochs": 1},
        "channels": 1,
        "size_px": px,
        "dim": model.encoder.dim,
        "n_genes": len(genes),
        "backbone_name": model.backbone_name,
        "backbone_kwargs": model.backbone_kwargs,
    }
    from seal.vortex.config import TrainConfig

    meta["train"] = TrainConfig(epochs=1).to_dict()
    save_model(out / "model", model, ExpressionPrep(genes, (0.0,) * 40, (1.0,) * 40, False), meta)
    rows = []
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for shape in args.shapes:
        z, y, x = (int(v) for v in shape.split("x"))
        vp = out / f"vol_{shape}.ome.zarr"
        if not vp.exists():
            t = time.perf_counter()
            make_large_volume(vp, shape_zyx=(z, y, x), voxel_size_um=(2.0, 2.0, 2.0), fmt="ome-zarr")
            print(f"wrote {vp} in {time.perf_counter() - t:.0f} s", flush=True)
        modes = ["block"] + (["per-point"] if shape == args.shapes[0] else [])
        for mode in modes:
            r = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    str(vp),
                    str(out / "model"),
                    str(out / f"pred_{shape}.zarr"),
                    mode,
                    str(args.stride_xy),
                    str(args.stride_z),
                ],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
            if r.returncode:
                raise RuntimeError(r.stderr[-3000:])
            rec = json.loads(r.stdout.strip().splitlines()[-1])
            rec["shape_zyx"] = shape
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    block_small = next(r for r in rows if r["mode"] == "block" and r["shape_zyx"] == args.shapes[0])
    peer = next((r for r in rows if r["mode"] == "per-point"), None)
    report = {
        "machine": _machine(),
        "command": " ".join(sys.argv),
        "stride_um_xy_z": [args.stride_xy, args.stride_z],
        "model": "test_vit at 48 px, 9 planes over 36 um (eval bench architecture), fp32 CPU, 1 torch thread",
        "rows": rows,
        "block_vs_per_point_speedup": block_small["subvolumes_per_s"] / peer["subvolumes_per_s"] if peer else None,
        "rss_ratio_big_vs_small": rows[-1]["peak_rss_mib"] / block_small["peak_rss_mib"] if len(args.shapes) > 1 else None,
        "voxels_ratio_big_vs_small": rows[-1]["voxels"] / block_small["voxels"] if len(args.shapes) > 1 else None,
    }
    (out / "bench_throughput.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    e = sub.add_parser("eval")
    e.add_argument("--out", required=True)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--volumes", type=int, default=4)
    e.add_argument("--pretrain", type=int, default=2)
    e.add_argument("--pretrain-epochs", type=int, default=15)
    e.add_argument("--finetune-epochs", type=int, default=None, help="fixed epochs, no early stopping (default: the library's fine-tuning defaults)")
    e.add_argument("--encoder3d", choices=["slice", "vit3d", "cnn3d"], default="slice")
    e.add_argument("--data", default=None, help="cohort + catalog folder shared between runs (made once)")
    e.add_argument("--context-scale", type=float, default=1.0, help="multi-scale context (1: off)")
    e.add_argument("--rule-shift", type=float, default=0.0, help="per-block change of the expression rule (0: shared)")
    e.add_argument("--stain-shift", type=float, default=0.0, help="per-block stain/intensity change (0: none)")
    f = sub.add_parser("finetune", help="pretrained-only vs fine-tuned on targets with their own rule and stain")
    f.add_argument("--out", required=True)
    f.add_argument("--data", default=None)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--volumes", type=int, default=4)
    f.add_argument("--pretrain", type=int, default=2)
    f.add_argument("--pretrain-epochs", type=int, default=8)
    f.add_argument("--max-epochs", type=int, default=32)
    f.add_argument("--rule-shift", type=float, default=0.7)
    f.add_argument("--stain-shift", type=float, default=0.5)
    f.add_argument("--encoder3d", choices=["slice", "vit3d", "cnn3d"], default="slice")
    f.add_argument("--context-scale", type=float, default=1.0)
    f.add_argument("--variants", nargs="*", default=None, help="only the variants whose name contains one of these")
    t = sub.add_parser("throughput")
    t.add_argument("--out", required=True)
    t.add_argument("--shapes", nargs="+", default=["100x1000x1000", "200x2000x2000"])
    t.add_argument("--stride-xy", type=float, default=112.0)
    t.add_argument("--stride-z", type=float, default=36.0)
    args = ap.parse_args()
    {"eval": run_eval, "finetune": run_finetune, "throughput": run_throughput}[args.part](args)


if __name__ == "__main__":
    main()
