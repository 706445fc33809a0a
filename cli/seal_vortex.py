"""``seal vortex``: 3D expression volumes from 3D morphology plus 2D ST sections (VORTEX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import error_text, fail, handle_errors

app = typer.Typer(
    name="vortex",
    rich_markup_mode="markdown",
    help="VORTEX: 3D expression prediction from volumes and their serial ST sections.\n\nPretrain a 3D encoder on volume/section pairs, fine-tune on one volume's sections, predict expression through the whole volume.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: fine-tuning defaults (seal.vortex.config.FINETUNE_DEFAULTS; kept literal here so --help stays instant)
_FT: dict[str, Any] = {"epochs": 32, "tune": "all", "early_stop_fraction": 0.2, "patience": 8}

Catalog = Annotated[str, typer.Argument(help="Catalog folder holding volumes and linked sections.")]
Epochs = Annotated[int, typer.Option(min=0, help="Epochs (0 writes the untouched model, without a training step).")]
BatchSize = Annotated[int, typer.Option(help="Sub-volumes per step.")]
Lr = Annotated[float, typer.Option(help="AdamW learning rate (1e-4 for pretrained encoders; ~1e-3 for small random ones).")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay.")]
Warmup = Annotated[float, typer.Option(help="Warm-up fraction of the steps.")]
WClip = Annotated[float, typer.Option(help="Weight of the contrastive image/expression alignment.")]
WRecon = Annotated[float, typer.Option(help="Weight of the expression VAE reconstruction.")]
WPred = Annotated[float, typer.Option(help="Weight of the expression regression from the volume.")]
Temperature = Annotated[float, typer.Option(help="Contrastive temperature.")]
NoAugment = Annotated[bool, typer.Option("--no-augment", help="No flips/rotations/depth flip/jitter.")]
CachePairs = Annotated[bool, typer.Option("--cache-pairs", help="Keep sub-volumes in RAM after the first epoch (small runs).")]
Workers = Annotated[int, typer.Option(help="DataLoader workers.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")]
Seed = Annotated[int, typer.Option(help="Seed (runs are deterministic on CPU).")]
MaxSteps = Annotated[int | None, typer.Option(help="Cap steps per epoch (quick runs).")]
Resume = Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")]
Tune = Annotated[
    str,
    typer.Option(help="What fine-tuning trains: all (what the model's tuning mode leaves trainable), head (the expression head), last (its last layer)."),
]
EarlyStop = Annotated[
    float,
    typer.Option(help="Fraction of the section's spots held out (whole 200 um blocks) for early stopping; the best epoch (or the starting weights) is kept; 0 = off."),
]
Patience = Annotated[int, typer.Option(min=1, help="Epochs without a better held-out Pearson before stopping.")]


def _train_cfg(**kw: Any) -> Any:
    from seal.vortex import TrainConfig

    genes_file = kw.pop("genes_file", None)
    genes = None
    if genes_file is not None:
        if not genes_file.exists():
            fail(f"{genes_file}: gene list not found")
        genes = tuple(g.strip() for g in genes_file.read_text().splitlines() if g.strip())
    kw["augment"] = not kw.pop("no_augment", False)
    kw["smooth"] = not kw.pop("no_smoothing", False)
    kw["depth_flip"] = kw["augment"]
    try:
        return TrainConfig(genes=genes, **kw)
    except ValueError as exc:
        fail(error_text(exc))


def _blocks(v: str) -> int:
    if v == "all":
        return 0
    if not v.isdigit() or int(v) < 1:
        fail(f"--lora-blocks takes a number of final blocks (>= 1) or 'all', got {v!r}")
    return int(v)


@app.command()
def pretrain(
    catalog_dir: Catalog,
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    volumes: Annotated[list[str] | None, typer.Option("--volumes", help="Volumes to pretrain on (repeat; default: all).")] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="2D encoder applied slice by slice: a preset (uni@WEIGHTS, see `seal models`), a timm name or timm:NAME[@WEIGHTS]."),
    ] = "vit_base_patch16_224",
    weights: Annotated[Path | None, typer.Option(help="Local weights for --backbone.")] = None,
    seal_model: Annotated[
        Path | None, typer.Option(help="Start from a `seal fit` model directory's encoder (replaces --backbone).")
    ] = None,
    img_size: Annotated[int | None, typer.Option(help="Build the backbone at this input size (timm img_size; ViTs).")] = None,
    size_px: Annotated[
        int | None, typer.Option(help="Sub-volume planes resampled to this many px (default: backbone input size).")
    ] = None,
    size_um: Annotated[float, typer.Option(help="In-plane size of a sub-volume (um).")] = 112.0,
    depth_um: Annotated[float, typer.Option(help="Depth extent of a sub-volume (um).")] = 36.0,
    n_slices: Annotated[int, typer.Option(help="Planes per sub-volume (slab averages over depth).")] = 9,
    channel_rule: Annotated[str, typer.Option(help="1-2 channel volumes -> RGB: pseudo_he, learned or gray.")] = "pseudo_he",
    encoder3d: Annotated[
        str,
        typer.Option(
            "--encoder3d",
            help="slice: the 2D backbone per plane + depth aggregation; vit3d: the backbone's ViT over 3D patches "
            "(patch embedding inflated in depth); cnn3d: a small 3D CNN trained from scratch (CPU-scale; --tuning full).",
        ),
    ] = "slice",
    tubelet: Annotated[int, typer.Option(help="vit3d: planes per 3D patch (must divide --n-slices).")] = 3,
    cnn_width: Annotated[int, typer.Option(help="cnn3d: channels of the first stage (embedding = 8 x width).")] = 32,
    context_scale: Annotated[
        float,
        typer.Option(help="Multi-scale context: also read a sub-volume of this many times the field of view (in-plane and depth) around each point, at the same px and planes (coarser), fused with the model's own; 1 = off."),
    ] = 1.0,
    aggregation: Annotated[str, typer.Option(help="Depth aggregation: attention, transformer or mean.")] = "attention",
    transformer_layers: Annotated[int, typer.Option(help="Layers of the slice transformer.")] = 1,
    tuning: Annotated[str, typer.Option(help="Backbone tuning: lora, full or frozen.")] = "lora",
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha.")] = 8.0,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.15,
    lora_blocks: Annotated[str, typer.Option(help="Final blocks to adapt, or 'all'.")] = "1",
    epochs: Epochs = 10,
    batch_size: BatchSize = 32,
    lr: Lr = 1e-4,
    weight_decay: WeightDecay = 0.2,
    warmup: Warmup = 0.05,
    w_clip: WClip = 1.0,
    w_recon: WRecon = 1.0,
    w_pred: WPred = 1.0,
    temperature: Temperature = 0.05,
    n_genes: Annotated[int, typer.Option(help="Highly variable genes to model.")] = 2000,
    genes_file: Annotated[Path | None, typer.Option("--genes", help="File with one gene per line (instead of HVG).")] = None,
    no_smoothing: Annotated[bool, typer.Option("--no-smoothing", help="Skip Visium neighbour smoothing.")] = False,
    no_augment: NoAugment = False,
    val_fraction: Annotated[float, typer.Option(help="Fraction of volumes held out for the per-epoch probe.")] = 0.0,
    cache_pairs: CachePairs = False,
    workers: Workers = 0,
    device: Device = "auto",
    seed: Seed = 0,
    max_steps_per_epoch: MaxSteps = None,
    resume: Resume = False,
) -> None:
    """Pretrain VORTEX on the 3D pairs of all linked sections of many volumes."""
    with handle_errors():
        from seal.models import LoraSpec
        from seal.vortex import ModelConfig
        from seal.vortex import pretrain as run

        try:
            mcfg = ModelConfig(
                backbone=None if seal_model else backbone,
                weights=str(weights) if weights else None,
                seal_model=str(seal_model) if seal_model else None,
                create_kwargs={"img_size": img_size} if img_size else {},
                channel_rule=channel_rule,  # type: ignore[arg-type]
                aggregation=aggregation,  # type: ignore[arg-type]
                transformer_layers=transformer_layers,
                tuning=tuning,  # type: ignore[arg-type]
                lora=LoraSpec(lora_rank, lora_alpha, lora_dropout, _blocks(lora_blocks)),
                size_um=size_um,
                size_px=size_px,
                depth_um=depth_um,
                n_slices=n_slices,
                encoder3d=encoder3d,  # type: ignore[arg-type]
                tubelet=tubelet,
                cnn_width=cnn_width,
                context_scale=context_scale,
            )
        except ValueError as exc:
            fail(error_text(exc))
            raise
        tcfg = _train_cfg(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_fraction=warmup,
            w_clip=w_clip,
            w_recon=w_recon,
            w_pred=w_pred,
            temperature=temperature,
            n_genes=n_genes,
            genes_file=genes_file,
            no_smoothing=no_smoothing,
            no_augment=no_augment,
            val_fraction=val_fraction,
            cache_pairs=cache_pairs,
            num_workers=workers,
            device=device,
            seed=seed,
            max_steps_per_epoch=max_steps_per_epoch,
        )
        path = run(catalog_dir, mcfg, tcfg, out, volumes=volumes or None, resume=resume)
        typer.echo(f"wrote {path} (model.safetensors, config.json, genes.txt, loss_curve.png, ...)")


@app.command()
def finetune(
    catalog_dir: Catalog,
    model: Annotated[Path, typer.Option(help="A pretrained VORTEX model directory.")],
    volume: Annotated[str, typer.Option(help="The target volume.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    sections: Annotated[
        list[str] | None, typer.Option("--sections", help="Sections of the volume to train on (repeat; default: all linked).")
    ] = None,
    epochs: Epochs = _FT["epochs"],
    tune: Tune = _FT["tune"],
    early_stop_fraction: EarlyStop = _FT["early_stop_fraction"],
    patience: Patience = _FT["patience"],
    batch_size: BatchSize = 32,
    lr: Lr = 1e-4,
    weight_decay: WeightDecay = 0.2,
    warmup: Warmup = 0.05,
    w_clip: WClip = 1.0,
    w_recon: WRecon = 1.0,
    w_pred: WPred = 1.0,
    temperature: Temperature = 0.05,
    no_augment: NoAugment = False,
    cache_pairs: CachePairs = False,
    workers: Workers = 0,
    device: Device = "auto",
    seed: Seed = 0,
    max_steps_per_epoch: MaxSteps = None,
    resume: Resume = False,
) -> None:
    """Fine-tune a pretrained model on the 2D ST section(s) of one volume."""
    with handle_errors():
        from seal.vortex import finetune as run
        from seal.vortex import load_model

        base = load_model(model).train_cfg
        tcfg = _train_cfg(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_fraction=warmup,
            w_clip=w_clip,
            w_recon=w_recon,
            w_pred=w_pred,
            temperature=temperature,
            n_genes=base.n_genes,
            genes_file=None,
            no_smoothing=not base.smooth,
            no_augment=no_augment,
            cache_pairs=cache_pairs,
            num_workers=workers,
            device=device,
            seed=seed,
            max_steps_per_epoch=max_steps_per_epoch,
            tune=tune,
            early_stop_fraction=early_stop_fraction,
            patience=patience,
        )
        path = run(catalog_dir, model, volume, out, cfg=tcfg, sections=sections or None, resume=resume)
        typer.echo(f"wrote {path}")


@app.command()
def predict(
    catalog_dir: Catalog,
    model: Annotated[Path, typer.Option(help="A (fine-tuned) VORTEX model directory.")],
    volume: Annotated[str, typer.Option(help="The volume to predict through.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output OME-Zarr (e.g. PRED.zarr).")],
    genes: Annotated[list[str] | None, typer.Option("--genes", help="Genes to write (repeat; default: all the model's).")] = None,
    stride_um: Annotated[
        tuple[float, float] | None, typer.Option(help="Grid spacing XY Z in um (default: half the sub-volume).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Sub-volumes per forward pass.")] = 32,
    block_points: Annotated[
        tuple[int, int, int] | None, typer.Option(help="Grid points per block Z Y X (default: by memory).")
    ] = None,
    background: Annotated[
        str, typer.Option(help="Background intensity: auto, dark (fluorescence, microCT) or bright (H&E).")
    ] = "auto",
    threshold: Annotated[float | None, typer.Option(help="Tissue threshold 0-255 (default: Otsu).")] = None,
    min_tissue: Annotated[float, typer.Option(help="Tissue fraction of the centre plane for a point to be predicted.")] = 0.15,
    all_points: Annotated[bool, typer.Option("--all-points", help="Predict every grid point, tissue or not.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted prediction at OUT.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT.")] = False,
    pictures: Annotated[
        bool, typer.Option(help="Write orthogonal-slice, depth-montage PNGs and a flythrough GIF per gene.")
    ] = True,
    device: Device = "auto",
) -> None:
    """Predict expression on a 3D grid through the whole volume (streamed, resumable) into OME-Zarr."""
    with handle_errors():
        import catalog
        from seal.vortex.plots import render_prediction
        from seal.vortex.predict import PredictConfig, predict_catalog

        if background not in ("auto", "dark", "bright"):
            fail(f"--background must be auto, dark or bright, got {background!r}")
        cfg = PredictConfig(
            genes=tuple(genes) if genes else None,
            stride_um=stride_um,
            batch_size=batch_size,
            block_points=block_points,
            background=background,  # type: ignore[arg-type]
            threshold=threshold,
            min_tissue=min_tissue,
            all_points=all_points,
            device=device,
        )
        path = predict_catalog(catalog_dir, model, volume, out, cfg, resume=resume, overwrite=overwrite)
        typer.echo(f"wrote {path} (OME-Zarr: genes x z x y x, labels/tissue_mask)")
        if pictures:
            pics = out.with_name(out.stem + "_pictures")
            written = render_prediction(path, catalog.open(catalog_dir).volume(volume), pics, genes)
            typer.echo(f"wrote {len(written)} pictures under {pics}")


@app.command("eval")
def eval_(
    catalog_dir: Catalog,
    model: Annotated[Path, typer.Option(help="The pretrained VORTEX model directory.")],
    volume: Annotated[list[str], typer.Option(help="Volume(s) with >= 2 linked sections (repeat).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for results.json/.md/.png, predictions.npz and the fine-tuned models.")
    ],
    finetune_section: Annotated[str | None, typer.Option(help="Section to fine-tune on (default: the shallowest).")] = None,
    heldout: Annotated[list[str] | None, typer.Option(help="Held-out sections (repeat; default: all others).")] = None,
    encoder_2d: Annotated[
        str | None,
        typer.Option(help="2D baseline encoder spec: PRESET[@WEIGHTS], timm:NAME[@WEIGHTS] or a seal fit dir (default: the model's backbone, frozen)."),
    ] = None,
    n_components: Annotated[int, typer.Option(help="PCA components of the 2D ridge probe.")] = 256,
    epochs: Epochs = _FT["epochs"],
    tune: Tune = _FT["tune"],
    early_stop_fraction: EarlyStop = _FT["early_stop_fraction"],
    patience: Patience = _FT["patience"],
    batch_size: BatchSize = 32,
    lr: Lr = 1e-4,
    weight_decay: WeightDecay = 0.2,
    no_augment: NoAugment = False,
    cache_pairs: CachePairs = False,
    device: Device = "auto",
    seed: Seed = 0,
) -> None:
    """Serial-section protocol: fine-tune on one section, predict the others.

    Compares VORTEX with (a) no fine-tuning, (b) no pretraining, (c) 2D encoder + ridge on
    the nearest slice."""
    with handle_errors():
        import pandas as pd

        from seal.vortex import load_model
        from seal.vortex.evaluate import METHODS, SerialSectionConfig, serial_section_eval

        from ._common import print_table

        base = load_model(model).train_cfg
        tcfg = _train_cfg(
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            n_genes=base.n_genes,
            genes_file=None,
            no_smoothing=not base.smooth,
            no_augment=no_augment,
            cache_pairs=cache_pairs,
            device=device,
            seed=seed,
            tune=tune,
            early_stop_fraction=early_stop_fraction,
            patience=patience,
        )
        cfg = SerialSectionConfig(
            finetune_section=finetune_section,
            heldout=tuple(heldout) if heldout else None,
            train=tcfg,
            encoder_2d=encoder_2d,
            n_components=n_components,
            device=device,
        )
        res = serial_section_eval(catalog_dir, model, volume, out, cfg)
        rows = []
        for vid, v in res.summary["volumes"].items():
            for sec, h in v["heldout"].items():
                rows.append(
                    {
                        "volume": vid,
                        "held-out": sec,
                        "spots": h["n_spots"],
                        **{m: h["methods"][m]["pearson_mean"] for m in METHODS},
                    }
                )
        print_table(pd.DataFrame(rows), title="mean Pearson at held-out depths")
        typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
