"""``seal eval-hest``: HEST-Benchmark on its released data layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import handle_errors, print_table

__all__ = ["eval_hest"]


def eval_hest(
    bench_dir: Annotated[Path, typer.Argument(help="HEST-Benchmark data folder (one sub-folder per task), or one task folder.")],
    encoder: Annotated[
        list[str],
        typer.Option(help="Encoder spec: timm:NAME, timm:NAME@WEIGHTS, a seal fit model directory, or a zoo preset; repeat to compare."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json, results.md, details.json and the embedding cache.")],
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help="Tasks to run (default: every task folder).")] = None,
    probe: Annotated[str, typer.Option(help="ridge (HEST's published table), random-forest or xgboost.")] = "ridge",
    latent_dim: Annotated[int, typer.Option(help="PCA components before the probe (HEST: 256; 0 = no PCA).")] = 256,
    seed: Annotated[int, typer.Option(help="HEST's seed (PCA and probe random_state; HEST default 1).")] = 1,
    batch_size: Annotated[int, typer.Option(help="Patches per embedding batch.")] = 128,
    workers: Annotated[int, typer.Option(help="DataLoader workers reading and normalising patches.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    jobs: Annotated[int, typer.Option(help="Parallel jobs of the random-forest probe.")] = 1,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not reuse or store embeddings under OUT/embeddings.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """HEST-Benchmark exactly as HEST runs it (PCA-256 + ridge by default).

    One row per encoder, one column per task."""
    with handle_errors():
        import pandas as pd

        from seal.encoders import parse_encoder
        from seal.hest_bench import HestBenchConfig, run_hest_bench

        specs = [parse_encoder(e) for e in encoder]
        cfg = HestBenchConfig(
            tasks=tuple(tasks) if tasks else None,
            probe=probe,  # type: ignore[arg-type]  # checked by run_hest_bench
            latent_dim=latent_dim,
            seed=seed,
            batch_size=batch_size,
            num_workers=workers,
            device=device,
            cache=not no_cache,
            progress=not quiet,
            n_jobs=jobs,
        )
        res = run_hest_bench(bench_dir, specs, out, cfg)
        rows = []
        for label, e in res["encoders"].items():
            row: dict[str, object] = {"encoder": label}
            row.update({t: v["pearson_mean"] for t, v in e["tasks"].items()})
            row["average"] = e["mean"]
            rows.append(row)
        print_table(pd.DataFrame(rows), title=f"HEST-Benchmark, {res['probe']} probe (mean Pearson r)")
        typer.echo(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'details.json'}")
