"""``seal slide-embed``, ``seal slide-eval``, ``seal slide-export``, ``seal slide-import``:
slide-level features and multiple-instance evaluation on the catalog's slide table."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import fail, handle_errors, print_table, progress_bars

__all__ = ["register"]


class MilModel(str, Enum):
    abmil = "abmil"
    mean = "mean"
    both = "both"


class TaskType(str, Enum):
    auto = "auto"
    classification = "classification"
    regression = "regression"


def slide_embed(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder (with a slide table: hestkit add-slides).")],
    encoder: Annotated[str, typer.Option(help="timm:NAME, timm:NAME@WEIGHTS or a seal fit model directory.")],
    slides: Annotated[list[str] | None, typer.Option(help="Slide ids (default: every slide of the table).", show_default=False)] = None,
    mpp: Annotated[float, typer.Option(help="Tile resolution, micrometres per pixel.")] = 0.5,
    tile_px: Annotated[int, typer.Option(help="Tile side in pixels at --mpp.")] = 224,
    min_tissue: Annotated[float, typer.Option(help="Keep tiles with at least this share on the tissue mask.")] = 0.25,
    batch_size: Annotated[int, typer.Option(help="Tiles per model batch.")] = 64,
    workers: Annotated[int | None, typer.Option(help="Threads decoding slide blocks (default: cores, at most 8).")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Address of a running dask scheduler (tcp://HOST:8786).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    keep_tiles: Annotated[bool, typer.Option("--keep-tiles", help="Also store the tiles (zarr JPEG) for other encoders.")] = False,
) -> None:
    """Tile each slide on its tissue mask and store the encoder's tile features (resumable)."""
    with handle_errors():
        import pandas as pd

        from seal.slide_embed import SlideEmbedConfig, embed_slides

        cfg = SlideEmbedConfig(
            mpp=mpp, tile_px=tile_px, min_tissue=min_tissue, batch_size=batch_size, workers=workers,
            scheduler=scheduler, device=device, keep_tiles=keep_tiles,
        )
        with progress_bars() as progress:
            rep = embed_slides(catalog_dir, encoder, cfg, slides=slides, progress=progress)
        rows = [{"slide_id": s, "tiles": rep.n_tiles[s], "seconds": rep.seconds[s]} for s in rep.embedded]
        if rows:
            print_table(pd.DataFrame(rows), title=f"feature set {rep.feature_set}")
        typer.echo(
            f"{len(rep.embedded)} slide(s) embedded ({rep.tiles_per_second:.1f} tiles/s), {len(rep.skipped)} already stored; "
            f"feature set {rep.feature_set}"
        )


def slide_eval(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder with a slide table and slide features.")],
    task: Annotated[str, typer.Option(help="Label column of the slide table.")],
    encoder: Annotated[list[str], typer.Option(help="Encoder spec (as for slide-embed) or a stored feature set name; repeat to compare.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json, results.md, results.png, heatmaps/.")],
    model: Annotated[MilModel, typer.Option(help="abmil, mean (mean-pool linear probe) or both.")] = MilModel.both,
    folds: Annotated[int, typer.Option(help="Patient-level stratified folds.")] = 5,
    splits: Annotated[Path | None, typer.Option(help="Folder of splits_{k}.csv (train, val, test slide ids) instead of --folds.")] = None,
    task_type: Annotated[TaskType, typer.Option(help="auto: numeric with > 10 values is regression.")] = TaskType.auto,
    mpp: Annotated[float, typer.Option(help="Tiling of the features (as given to slide-embed).")] = 0.5,
    tile_px: Annotated[int, typer.Option(help="Tiling of the features (as given to slide-embed).")] = 224,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 5e-4,
    max_epochs: Annotated[int, typer.Option(help="Epoch limit (early stopping on the validation part).")] = 50,
    patience: Annotated[int, typer.Option(help="Epochs without validation improvement before stopping.")] = 10,
    min_epochs: Annotated[int, typer.Option(help="No early stop before this epoch (CLAM's stop_epoch).")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of folds and training.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ... (bf16 on CUDA)")] = "auto",
    heatmaps: Annotated[int, typer.Option(help="Attention heatmaps per encoder.")] = 4,
    threads: Annotated[int | None, typer.Option(help="CPU threads for training (1 suits small bags on shared machines).")] = None,
) -> None:
    """ABMIL and mean-pool probes on slide features: patient-level folds, one table comparing encoders."""
    with handle_errors():
        import torch

        from seal.mil import MilConfig
        from seal.slide_eval import run_slide_eval

        if splits is not None and not splits.is_dir():
            fail(f"--splits {splits}: not a folder of splits_{{k}}.csv files")
        dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        cfg = MilConfig(lr=lr, max_epochs=max_epochs, patience=patience, min_epochs=min_epochs, seed=seed, device=dev, threads=threads)
        models = ("abmil", "mean") if model == MilModel.both else (model.value,)
        res, paths = run_slide_eval(
            catalog_dir, task, encoder, out, models=models, folds=folds, splits=splits, task_type=task_type.value,
            mpp=mpp, tile_px=tile_px, cfg=cfg, n_heatmaps=heatmaps,
        )
        table = res.summary()
        keep = ["encoder", "model"] + [c for c in table.columns if c.split("_mean")[0].split("_std")[0] in ("auc", "balanced_accuracy", "pearson", "spearman")]
        print_table(table[keep], title=f"{task} ({res.task.kind}): {len(res.task.slide_ids)} slides, {res.folds} folds")
        typer.echo(f"wrote {paths['json']}, {paths['md']}, {paths['plot']} and {sum(1 for k in paths if k.startswith('heatmap'))} heatmap(s)")


def slide_export(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder.")],
    encoder: Annotated[str, typer.Option(help="Encoder spec or feature set name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="TRIDENT job folder to write into.")],
    slides: Annotated[list[str] | None, typer.Option(help="Slide ids (default: all with features).", show_default=False)] = None,
    mpp: Annotated[float, typer.Option(help="Tiling of the features.")] = 0.5,
    tile_px: Annotated[int, typer.Option(help="Tiling of the features.")] = 224,
) -> None:
    """Write slide features in TRIDENT's layout: OUT/{mag}x_{px}px_0px_overlap/features_{set}/{slide}.h5."""
    with handle_errors():
        import catalog
        from catalog.slide_features import export_trident
        from seal.slide_embed import resolve_feature_set

        cat = catalog.open(catalog_dir)
        name, _ = resolve_feature_set(cat, encoder, mpp, tile_px)
        dest = export_trident(cat, name, out, slides)
        typer.echo(f"wrote {len(list(dest.glob('*.h5')))} file(s) to {dest}")


def slide_import(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder with a slide table.")],
    folder: Annotated[Path, typer.Argument(help="TRIDENT features_{encoder}/ folder of {slide_id}.h5 files.")],
    name: Annotated[str, typer.Option(help="Feature set name to store them under (use it as --encoder in slide-eval).")],
    overwrite: Annotated[bool, typer.Option(help="Replace a feature set of that name.")] = False,
) -> None:
    """Import TRIDENT (or CLAM-style) tile features: each file's stem must be a slide id."""
    with handle_errors():
        import catalog
        from catalog.slide_features import import_trident

        got = import_trident(catalog.open(catalog_dir), folder, name, overwrite=overwrite)
        typer.echo(f"imported {len(got)} slide(s) as feature set {name}")


def register(app: typer.Typer) -> None:
    app.command("slide-embed")(slide_embed)
    app.command("slide-eval")(slide_eval)
    app.command("slide-export")(slide_export)
    app.command("slide-import")(slide_import)
