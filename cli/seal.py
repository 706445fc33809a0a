"""The ``seal`` command: LoRA finetuning of pathology encoders on catalog pairs, embedding and evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from . import _seal_slides
from ._common import fail, handle_errors, print_table, root_callback
from ._hest_bench import eval_hest
from ._zoo import models as models_cmd
from .seal_vortex import app as vortex_app

app = typer.Typer(
    name="seal",
    rich_markup_mode="markdown",
    help="SEAL: ST-guided parameter-efficient (LoRA) finetuning of vision encoders on catalog pairs; HEST-Benchmark evaluation.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


app.callback()(root_callback("seal"))
app.add_typer(vortex_app, name="vortex")
app.command("models")(models_cmd)
app.command("eval-hest")(eval_hest)
_seal_slides.register(app)

Filter = Annotated[list[str] | None, typer.Option(show_default=False)]


def _t(v: list[str] | None) -> tuple[str, ...] | None:
    return tuple(v) if v else None


def _blocks(v: str) -> int:
    if v == "all":
        return 0
    try:
        n = int(v)
    except ValueError:
        fail(f"--lora-blocks takes a number of final blocks or 'all', got {v!r}")
        raise
    if n < 1:
        fail(f"--lora-blocks must be >= 1 (or 'all'), got {n}")
    return n


@app.command()
def fit(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3:// URI (from hestkit ingest).")],
    backbone: Annotated[
        str,
        typer.Option(help="Encoder spec: a preset (see `seal models`) or a timm name (timm:NAME), each optionally followed by [@WEIGHTS]."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    weights: Annotated[Path | None, typer.Option(help="Local weights (file or HF snapshot folder), instead of BACKBONE@WEIGHTS.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Pairs per step (per process).")] = 384,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (1e-4 suits pretrained encoders).")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.2,
    warmup: Annotated[float, typer.Option(help="Warm-up fraction of the steps.")] = 0.05,
    grad_accum: Annotated[int, typer.Option(help="Gradient accumulation steps.")] = 1,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="LoRA alpha.")] = 8.0,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.15,
    lora_blocks: Annotated[str, typer.Option(help="Final blocks to adapt, or 'all'.")] = "1",
    temperature: Annotated[float, typer.Option(help="Contrastive temperature.")] = 0.05,
    w_clip: Annotated[float, typer.Option(help="Weight of the contrastive term.")] = 1.0,
    w_recon: Annotated[float, typer.Option(help="Weight of expression reconstruction.")] = 1.0,
    w_pred: Annotated[float, typer.Option(help="Weight of expression prediction from the image.")] = 1.0,
    n_genes: Annotated[int, typer.Option(help="Highly variable genes to model.")] = 2000,
    genes_file: Annotated[Path | None, typer.Option("--genes", help="File with one gene per line (instead of HVG).")] = None,
    no_smoothing: Annotated[bool, typer.Option("--no-smoothing", help="Skip Visium neighbour smoothing.")] = False,
    balance_organs: Annotated[bool, typer.Option(help="Sample organs equally often.")] = False,
    val_fraction: Annotated[float, typer.Option(help="Fraction held out for the in-training probe (patients or spots).")] = 0.2,
    probe: Annotated[str, typer.Option(help="Probe hold-out: auto (patients from --probe-min-patients on, else a band of spots per sample), patients, spots, off.")] = "auto",
    probe_min_patients: Annotated[int, typer.Option(help="Fewest patients for a patient-level probe under --probe auto.")] = 5,
    min_gene_fraction: Annotated[float, typer.Option(help="Genes must be detected in this fraction of the training pairs.")] = 0.1,
    min_gene_std: Annotated[float, typer.Option(help="Genes must have at least this std (log-normalised) to be chosen.")] = 0.05,
    std_floor: Annotated[float, typer.Option(help="Floor of the per-gene std used to standardise the regression terms.")] = 0.1,
    head_lr_scale: Annotated[float, typer.Option(help="Learning rate of the VAE and image head, relative to --lr.")] = 1.0,
    workers: Annotated[int, typer.Option(help="DataLoader workers.")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed (runs are deterministic on CPU).")] = 0,
    max_steps_per_epoch: Annotated[int | None, typer.Option(help="Cap steps per epoch (quick runs).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt.")] = False,
    organ: Filter = None,
    technology: Filter = None,
    species: Filter = None,
    samples: Filter = None,
    exclude_samples: Filter = None,
) -> None:
    """Finetune BACKBONE with LoRA on the catalog's pairs (SEAL objective); writes a model directory."""
    with handle_errors():
        from seal.data import PROBE_MODES
        from seal.models import LoraSpec
        from seal.train import FitConfig
        from seal.train import fit as run_fit

        if probe not in PROBE_MODES:
            fail(f"--probe {probe!r}: expected one of {', '.join(PROBE_MODES)}")
        genes = None
        if genes_file is not None:
            if not genes_file.exists():
                fail(f"{genes_file}: gene list not found")
            genes = tuple(g.strip() for g in genes_file.read_text().splitlines() if g.strip())
        cfg = FitConfig(
            backbone=backbone,
            weights=str(weights) if weights else None,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            warmup_fraction=warmup,
            grad_accum=grad_accum,
            lora=LoraSpec(lora_rank, lora_alpha, lora_dropout, _blocks(lora_blocks)),
            temperature=temperature,
            w_clip=w_clip,
            w_recon=w_recon,
            w_pred=w_pred,
            n_genes=n_genes,
            genes=genes,
            smooth=not no_smoothing,
            seed=seed,
            num_workers=workers,
            balance_organs=balance_organs,
            val_fraction=val_fraction,
            probe=probe,
            probe_min_patients=probe_min_patients,
            min_gene_fraction=min_gene_fraction,
            min_gene_std=min_gene_std,
            std_floor=std_floor,
            head_lr_scale=head_lr_scale,
            device=device,
            max_steps_per_epoch=max_steps_per_epoch,
            organ=_t(organ),
            technology=_t(technology),
            species=_t(species),
            samples=_t(samples),
            exclude_samples=_t(exclude_samples),
        )
        path = run_fit(catalog_dir, cfg, out, resume=resume)
        typer.echo(f"wrote {path} (encoder.safetensors, adapter/, genes.txt, loss_curve.png, summary.json, ...)")
        if (path / "summary.json").exists():
            from seal._summary import FitSummary

            for line in FitSummary.read(path / "summary.json").lines():
                typer.echo(line)


@app.command()
def embed(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3:// URI.")],
    encoder: Annotated[
        str | None,
        typer.Option(help="Encoder spec: PRESET[@WEIGHTS], timm:NAME[@WEIGHTS], seal-release:BACKBONE@FILE or a seal fit dir."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write embeddings, sample_id, barcode to this .npz.")] = None,
    model: Annotated[Path | None, typer.Option(help="A seal fit model directory (same as --encoder DIR).")] = None,
    backbone: Annotated[str | None, typer.Option(help="A timm model name (same as --encoder timm:NAME).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights for --backbone.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader workers (decode patches while the model runs).")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not reuse or store embeddings in the catalog.")] = False,
    organ: Filter = None,
    technology: Filter = None,
    species: Filter = None,
    samples: Filter = None,
) -> None:
    """Compute image embeddings of the selected pairs and store them in the catalog (reused later)."""
    with handle_errors():
        import catalog
        from seal.benchmark import EvalConfig
        from seal.encoders import embed_view, parse_encoder
        from seal.train import resolve_device, select_view

        given = [x for x in (encoder, model, backbone) if x is not None]
        if len(given) != 1:
            fail("give exactly one of --encoder SPEC, --model DIR or --backbone NAME")
        if encoder is not None:
            spec = parse_encoder(encoder)
        elif model is not None:
            spec = parse_encoder(str(model))
        else:
            spec = parse_encoder(f"timm:{backbone}" + (f"@{weights}" if weights else ""))
        if out is not None and out.suffix != ".npz":
            fail(f"--out {out}: expected a .npz file name")
        cat = catalog.open(catalog_dir)
        view = select_view(cat, EvalConfig(organ=_t(organ), technology=_t(technology), species=_t(species), samples=_t(samples)))
        emb = embed_view(
            cat, view, spec, device=resolve_device(device), batch_size=batch_size, num_workers=workers, cache=not no_cache
        )
        where = "computed" if no_cache or getattr(cat, "remote", False) else f"stored under {cat.path / 'embeddings' / spec.key}"
        typer.echo(f"{spec.label}: {emb.shape[0]} pairs x {emb.shape[1]} dims {where}")
        if out is not None:
            from ._zoo import write_npz

            write_npz(out, emb, view)
            typer.echo(f"wrote {out} (embeddings, sample_id, barcode)")


@app.command("eval")
def eval_(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3:// URI.")],
    encoder: Annotated[
        list[str],
        typer.Option(help="PRESET[@WEIGHTS], timm:NAME[@WEIGHTS], seal-release:BACKBONE@FILE or a seal fit dir; repeat to compare."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json, results.md, results.png.")],
    n_genes: Annotated[int, typer.Option(help="Top highly variable genes to predict.")] = 50,
    n_components: Annotated[int, typer.Option(help="PCA components before the ridge.")] = 256,
    batch_size: Annotated[int, typer.Option(help="Batch size for embedding.")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader workers.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not reuse or store embeddings in the catalog.")] = False,
    genes_file: Annotated[
        Path | None, typer.Option("--genes", help="Genes to predict (var_50genes.json or one per line) instead of HVG.")
    ] = None,
    splits: Annotated[
        Path | None, typer.Option(help="Folder of HEST-style train_K.csv/test_K.csv (sample_id): those splits, HEST's probe.")
    ] = None,
    organ: Filter = None,
    technology: Filter = None,
    species: Filter = None,
    samples: Filter = None,
    exclude_samples: Filter = None,
) -> None:
    """HEST-Benchmark protocol and gene-to-image retrieval.

    Patient-level folds or --splits, PCA + ridge, Pearson."""
    with handle_errors():
        import pandas as pd

        from seal._hest_layout import read_genes_file
        from seal.benchmark import EvalConfig, evaluate_catalog
        from seal.encoders import parse_encoder

        specs = [parse_encoder(e) for e in encoder]
        cfg = EvalConfig(
            genes=read_genes_file(genes_file) if genes_file is not None else None,
            splits=str(splits) if splits is not None else None,
            organ=_t(organ),
            technology=_t(technology),
            species=_t(species),
            samples=_t(samples),
            exclude_samples=_t(exclude_samples),
            n_genes=n_genes,
            n_components=n_components,
            batch_size=batch_size,
            num_workers=workers,
            device=device,
            cache=not no_cache,
        )
        res = evaluate_catalog(catalog_dir, specs, out, cfg)
        rows = []
        for label, r in res["encoders"].items():
            row = {"encoder": label, "pearson_mean": r["pearson_mean"], "pearson_std": r["pearson_std"]}
            for k in ("recall_at_1", "recall_at_10", "chance_recall_at_10", "median_rank"):
                if k in r:
                    row[k] = r[k]
            rows.append(row)
        print_table(pd.DataFrame(rows), title=f"{res['n_pairs']} pairs, {len(res['genes'])} genes, folds by {res['split_level']}")
        typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
