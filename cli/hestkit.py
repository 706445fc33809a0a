"""The ``hestkit`` command: ingest cohorts into a catalog, list, query and plot it."""


from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import _common, _data, _maintenance, _slides, _tissue, _volumes
from ._common import cli_text, fail, handle_errors, print_json, print_table, progress_bars, root_callback, warn

app = typer.Typer(
    name="hestkit",
    rich_markup_mode="markdown",  # paragraphs reflow to the terminal; [..] is shown, not eaten as style
    help="Spatial transcriptomics + H&E: ingest cohorts into a catalog of spot-patch pairs, query and plot it.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


app.callback()(root_callback("hestkit"))


def _technology(value: str) -> str:
    """``--technology``: ``auto`` or any registered reader's name (built-in or plug-in)."""
    from hestkit.readers import reader_names

    names = reader_names()
    if value != "auto" and value not in names:
        import difflib

        close = difflib.get_close_matches(value, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise typer.BadParameter(f"no reader named {value!r}{hint}; choose auto or one of: {', '.join(names)}")
    return value


#: Columns of the sample tables printed by ``ingest``/``demo`` and ``ls``.
SUMMARY_COLUMNS = [
    "sample_id",
    "technology",
    "organ",
    "species",
    "patient",
    "n_pairs",
    "n_dropped_outside_image",
    "n_dropped_edge",
    "n_dropped_not_in_tissue",
    "n_genes",
    "pixel_size_um",
    "pixel_size_source",
    "source_pixel_size_um",
    "upsampling_factor",
]


def _main_summary(cat_path: str) -> None:
    import catalog

    cat = catalog.open(cat_path)
    df = cat.samples()
    cols = SUMMARY_COLUMNS
    print_table(
        df[[c for c in cols if c in df.columns]],
        title=f"{cat_path}: {len(df)} samples, {int(df['n_pairs'].sum()) if len(df) else 0} pairs",
    )


@app.command()
def ingest(
    paths: Annotated[
        list[Path], typer.Argument(help="Sample folders (Space Ranger outs/, HEST-1k root, ...).", show_default=False)
    ],
    catalog_dir: Annotated[
        str, typer.Option("--catalog", "-c", help="Catalog folder or s3://bucket/prefix (created if missing).")
    ],
    image: Annotated[
        Path | None,
        typer.Option(help="Full-resolution H&E image (TIFF, OME-TIFF, SVS, NDPI, PNG, ...); Xenium: 'morphology' = DAPI/stains."),
    ] = None,
    organ: Annotated[str | None, typer.Option(help="Organ of the sample(s), e.g. Breast.")] = None,
    species: Annotated[str | None, typer.Option(help="Species, e.g. 'Homo sapiens'.")] = None,
    patient: Annotated[str | None, typer.Option(help="Patient id (used for patient-level splits).")] = None,
    sample_id: Annotated[str | None, typer.Option("--sample-id", help="Sample id (default: the folder name).")] = None,
    technology: Annotated[
        str,
        typer.Option(
            callback=_technology,
            help="Reader: auto (ask each reader) or a reader's name: visium, visium-hd, xenium, st, hest, spatialdata, "
            "anndata, or an installed plug-in's.",
        ),
    ] = "auto",
    ids: Annotated[list[str] | None, typer.Option("--ids", help="HEST-1k ids to ingest (default: all under the root).")] = None,
    alignment: Annotated[
        Path | None, typer.Option(help="Xenium: *imagealignment.csv (3x3, H&E px -> morphology px) or a keypoints CSV.")
    ] = None,
    spot_size_um: Annotated[
        str | None,
        typer.Option(
            "--spot-size-um",
            help="Xenium/Visium HD: side of the square pseudo-spots in um (default: 55 for Xenium, 56 for Visium HD); "
            "Xenium: 'cell' = one pair per cell.",
        ),
    ] = None,
    pixel_size_um: Annotated[
        float | None, typer.Option("--pixel-size-um", help="Override the level-0 pixel size (um/px).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Threads of the local dask cluster (default: cores, at most 8).")] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing dask.distributed scheduler, e.g. tcp://host:8786.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace samples already in the catalog.")] = False,
    allow_non_integer: Annotated[
        bool,
        typer.Option(
            "--allow-non-integer",
            help="Keep fractional (non-negative, finite) counts, e.g. normalised data; recorded in the manifest.",
        ),
    ] = False,
    dashboard: Annotated[
        str | None,
        typer.Option(help="Serve the dask dashboard of the local cluster at this address, e.g. 127.0.0.1:8787 (default: none)."),
    ] = None,
    patch_size: Annotated[int, typer.Option(help="Patch side in px (new catalogs only).")] = 224,
    patch_um_per_px: Annotated[float, typer.Option(help="Patch resolution in um/px (new catalogs only).")] = 0.5,
    jpeg_quality: Annotated[int, typer.Option(help="JPEG quality of stored patches (new catalogs only).")] = 90,
    allow_upsampling: Annotated[
        bool, typer.Option("--allow-upsampling", help="Accept patches upsampled more than 4x from the image (recorded).")
    ] = False,
    edge: Annotated[
        _data.EdgeRule,
        typer.Option(help="Spots whose patch crosses the image edge: fill (keep, pad with background) or drop."),
    ] = _data.EdgeRule.fill,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Read samples, align spots to the slide, cut patches and commit them to the catalog.

    Each sample lands whole or not at all; re-running the same command resumes with the
    samples not yet in.
    """
    with handle_errors():
        import catalog
        from hestkit.patches import PairSpec
        from hestkit.sample import ReadOptions

        spot_um, cells = _data.parse_spot_size(spot_size_um)
        spec = PairSpec(patch_size, patch_um_per_px, jpeg_quality)
        opts = ReadOptions(
            image=image,
            sample_id=sample_id,
            organ=organ,
            species=species,
            patient=patient,
            pixel_size_um=pixel_size_um,
            ids=tuple(ids) if ids else None,
            alignment=alignment,
            spot_size_um=spot_um,
            cells=cells,
            allow_upsampling=allow_upsampling,
            edge=edge.value,
            allow_non_integer=allow_non_integer,
        )
        cat = catalog.create(catalog_dir, spec)  # after the options are checked: a bad option creates nothing
        with progress_bars(not quiet) as prog:
            report = cat.ingest(
                paths,
                technology=technology,
                options=opts,
                overwrite=overwrite,
                workers=workers,
                scheduler=scheduler,
                progress=prog,
                dashboard=dashboard,
            )
        for r in report.results:
            for w in r.warnings:
                warn(w)
            if r.status == "skipped":
                typer.echo(f"{r.sample_id}: {cli_text(r.message, r.options)}")
        done = report.ingested
        if done:
            import pandas as pd

            df = pd.DataFrame(
                [
                    {
                        "sample_id": r.sample_id,
                        "pairs": r.n_pairs,
                        "dropped (outside image)": r.n_dropped_outside,
                        "dropped (edge)": r.n_dropped_edge,
                        "edge patches": r.n_edge_patches,
                        "upsampled": f"{r.upsampling_factor:.1f}x",
                        "um/px": r.pixel_size_um,
                        "pixel size from": r.pixel_size_source,
                        "seconds": round(r.seconds, 1),
                    }
                    for r in done
                ]
            )
            print_table(df, title=f"ingested {len(done)} sample(s) into {catalog_dir}")
        for r in report.failed:
            typer.secho(f"failed: {r.sample_id}:\n{cli_text(r.message, r.options)}", fg=typer.colors.RED, err=True)
        if report.failed:
            fail(
                f"{len(report.failed)} sample(s) failed; the catalog holds only complete samples. Fix the inputs and re-run the same command to resume."
            )


@app.command("ls")
def ls(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
    all_columns: Annotated[bool, typer.Option("--all", help="Show every column.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print every column of samples, volumes and slides as JSON.")] = False,
) -> None:
    """List the samples of a catalog, and its volumes and linked sections."""
    with handle_errors():
        import catalog

        cat = catalog.open(catalog_dir)
        df = cat.samples()
        if as_json:
            print_json(
                {
                    "catalog": str(catalog_dir),
                    "samples": df.to_dict(orient="records"),
                    "volumes": cat.volumes().to_dict(orient="records"),
                    "slides": cat.slides().to_dict(orient="records"),
                }
            )
            return
        if df.empty and cat.volumes().empty and cat.slides().empty:
            typer.echo(f"{catalog_dir}: empty catalog")
            return
        if not df.empty:
            if not all_columns:
                df = df[[c for c in (*SUMMARY_COLUMNS, "ingested_at") if c in df.columns]]
            print_table(df, title=f"{catalog_dir}: {len(df)} samples")
        _volumes.print_volumes(catalog_dir)
        _slides.print_slides(catalog_dir)


@app.command()
def reindex(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
) -> None:
    """Write the gene-list indexes that queries use to find each sample's genes.

    Catalogs from hestkit versions before these indexes existed lack them; queries then
    read gene names. Safe while others read or ingest."""
    with handle_errors():
        import catalog

        cat = catalog.open(catalog_dir)
        with progress_bars() as bars:
            n = cat.index_gene_lists(progress=bars)
        typer.echo(f"{catalog_dir}: wrote {n} gene-list index(es)" if n else f"{catalog_dir}: every gene list is indexed")


@app.command()
def compact(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
) -> None:
    """Merge the catalog's TileDB fragments into one per array, for faster queries.

    A commit writes one fragment per array; compact after a large ingest. Run it when no
    job reads the catalog; ingests wait."""
    with handle_errors():
        import time

        import catalog

        cat = catalog.open(catalog_dir)
        t0 = time.perf_counter()
        with progress_bars() as bars:
            done = cat.compact(progress=bars)
        typer.echo(f"{catalog_dir}: compacted {', '.join(done)} in {time.perf_counter() - t0:.0f} s")


@app.command()
def query(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
    organ: Annotated[list[str] | None, typer.Option(help="Organ(s) to keep.")] = None,
    technology: Annotated[list[str] | None, typer.Option(help="Technology(ies): visium, visium-hd, xenium, st.")] = None,
    species: Annotated[list[str] | None, typer.Option(help="Species to keep.")] = None,
    sample: Annotated[list[str] | None, typer.Option("--sample", help="Sample id(s) to keep.")] = None,
    patient: Annotated[list[str] | None, typer.Option(help="Patient(s) to keep.")] = None,
    gene: Annotated[list[str] | None, typer.Option(help="Gene(s) to keep in the export (default all).")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the selection (expression + obs) as .h5ad; '-' writes it to stdout as tab-separated text "
            "(obs_name, obs columns, one column per gene; empty = gene not measured) and the summary to stderr.",
        ),
    ] = None,
    min_tissue_fraction: Annotated[
        float | None, typer.Option("--min-tissue-fraction", help="Keep pairs whose patch is at least this share on tissue.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON (pairs per sample, genes).")] = False,
) -> None:
    """Count the pairs a selection holds, by sample, organ and technology.

    With --out - the pairs go to stdout as TSV and everything else to stderr."""
    with handle_errors():
        import catalog

        from . import _query_out

        to_stdout = out is not None and str(out) == _query_out.STDOUT
        if out is not None and not to_stdout and out.suffix != ".h5ad":
            fail(f"{out}: --out writes AnnData; give a path ending in .h5ad (or - for TSV on stdout)")
        cat = catalog.open(catalog_dir)
        view = cat.pairs(
            organ=organ,
            technology=technology,
            species=species,
            sample_ids=sample,
            patients=patient,
            genes=gene,
            min_tissue_fraction=min_tissue_fraction,
        )
        _data.warn_unmeasured_genes(view, named=gene is not None)
        keys = ["sample_id", "organ", "technology", "species", "patient"]
        df = (
            view.obs.groupby(keys, dropna=False, observed=True).size().rename("pairs").reset_index()
            if len(view)
            else None
        )
        if to_stdout and _common.QUIET:
            pass  # -q: stdout carries the pairs, stderr only errors
        elif as_json:
            print_json(
                {
                    "n_pairs": len(view),
                    "n_genes": len(view.genes),
                    "genes": list(view.genes) if gene is not None else None,
                    "by_sample": [] if df is None else df.to_dict(orient="records"),
                },
                err=to_stdout,
            )
        elif df is None:
            held = sorted({str(t) for t in cat.samples().get("technology", [])})
            typer.echo(f"no pairs match this selection (the catalog's technologies: {', '.join(held) or 'none'})", err=to_stdout)
        else:
            print_table(df, title=f"{len(view)} pairs, {len(view.genes)} genes", err=to_stdout)
        if to_stdout:
            n = _query_out.write_stdout(view)
            if not _common.QUIET:
                typer.echo(f"wrote {n} pairs x {len(view.genes)} genes to stdout (TSV)", err=True)
        elif out is not None:
            _data.quietly(view.to_anndata).write_h5ad(out)
            typer.echo(f"wrote {out} ({len(view)} pairs x {len(view.genes)} genes)", err=as_json)


@app.command()
def plot(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
    sample_id: Annotated[str, typer.Argument(help="Sample id (see hestkit ls).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")],
    gene: Annotated[str | None, typer.Option(help="Colour by this gene (default: total counts).")] = None,
    tissue: Annotated[bool, typer.Option("--tissue/--no-tissue", help="Draw the tissue mask's outline.")] = True,
) -> None:
    """Plot a sample's spots over its slide thumbnail (and its tissue outline)."""
    with handle_errors():
        import catalog
        from catalog.plot import plot_sample

        path = plot_sample(catalog.open(catalog_dir), sample_id, out, gene=gene, tissue=tissue)
        typer.echo(f"wrote {path}")


class ExportFormat(str, Enum):
    anndata = "anndata"
    hest = "hest"
    spatialdata = "spatialdata"


@app.command()
def export(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
    sample_id: Annotated[str, typer.Argument(help="Sample id (see hestkit ls).")],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", "-f", help="anndata: one .h5ad; hest: the HEST-1k layout; spatialdata: a .zarr store."),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The .h5ad file (anndata), a folder (hest) or a .zarr store (spatialdata).")
    ],
) -> None:
    """Export one sample as AnnData, the HEST-1k layout or SpatialData.

    AnnData: obsm['spatial'] centres, uns['spatial'] scanpy-style. HEST-1k: wsis/, st/,
    metadata/, patches/{id}.h5 with top-left coords. SpatialData: a .zarr store."""
    with handle_errors():
        import catalog
        from catalog.export import export_sample

        path = export_sample(catalog.open(catalog_dir), sample_id, fmt.value, out)
        typer.echo(f"wrote {path}")


@app.command()
def demo(
    out: Annotated[Path, typer.Argument(help="Folder for the demo cohort and its catalog.")] = Path("demo"),
    workers: Annotated[int | None, typer.Option(help="Threads of the local dask cluster.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic cohort.")] = 0,
) -> None:
    """Generate, ingest and plot a small synthetic cohort.

    The cohort has Space Ranger 1.x/2.x and HEST-1k layouts; the command ingests it,
    prints the catalog and writes a spatial plot."""
    with handle_errors():
        import shutil

        import catalog
        from catalog.plot import plot_sample
        from hestkit.sample import ReadOptions
        from hestkit.synthetic import make_demo_cohort

        cohort_dir, cat_dir = out / "cohort", out / "catalog"
        if cat_dir.exists():
            shutil.rmtree(cat_dir)
        typer.echo(f"generating a synthetic cohort in {cohort_dir} ...")
        entries = make_demo_cohort(cohort_dir, seed=seed)
        cat = catalog.create(cat_dir)
        with progress_bars(True) as prog:
            for e in entries:
                opts = ReadOptions(
                    image=e.image,
                    sample_id=e.sample_id if e.kind != "hest" else None,
                    organ=e.organ if e.kind != "hest" else None,
                    species=e.species if e.kind != "hest" else None,
                    patient=e.patient if e.kind != "hest" else None,
                    ids=(e.sample_id,) if e.kind == "hest" else None,
                )
                rep = cat.ingest([e.path], options=opts, workers=workers, progress=prog)
                if rep.failed:
                    fail(cli_text(rep.failed[0].message, rep.failed[0].options))
        _main_summary(str(cat_dir))
        first = cat.samples()["sample_id"].iloc[0]
        png = plot_sample(cat, first, out / f"{first}_spatial.png")
        view = cat.pairs()
        patch, expr = view[0]
        typer.echo(
            f"pairs: {len(view)}; view[0] -> patch {patch.shape} {patch.dtype}, expression {expr.shape} over {len(view.genes)} genes"
        )
        typer.echo(f"spatial plot: {png}")
        typer.echo(f"catalog: {cat_dir}  (try: hestkit query {cat_dir} --organ Breast)")


_volumes.register(app)
_maintenance.register(app)
_data.register(app)
_slides.register(app)
_tissue.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
