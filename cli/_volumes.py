"""``hestkit ingest-volume`` and ``hestkit link-section``: 3D volumes in the catalog."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ._common import fail, handle_errors, print_table, progress_bars, warn

__all__ = ["VOLUME_SUMMARY_COLUMNS", "Modality", "print_volumes", "register"]

VOLUME_SUMMARY_COLUMNS = [
    "volume_id",
    "modality",
    "organ",
    "patient",
    "shape_zyx",
    "voxel_size_um",
    "channels",
    "n_levels",
    "n_sections",
]
SECTION_SUMMARY_COLUMNS = ["sample_id", "volume_id", "z_um", "affine_source", "residual_max_um", "n_spots_inside"]


class Modality(str, Enum):
    microct = "microct"
    otls = "otls"
    he_stack = "he-stack"


def print_volumes(cat_path: str | Path) -> bool:
    """Print the volume and section tables of a catalog; False when it has no volumes."""
    import catalog

    cat = catalog.open(cat_path)
    vols = cat.volumes()
    if vols.empty:
        return False
    print_table(vols[[c for c in VOLUME_SUMMARY_COLUMNS if c in vols.columns]], title=f"{cat_path}: {len(vols)} volumes")
    secs = cat.sections()
    if not secs.empty:
        print_table(secs[[c for c in SECTION_SUMMARY_COLUMNS if c in secs.columns]], title=f"{len(secs)} linked sections")
    return True


def ingest_volume(
    path: Annotated[
        Path,
        typer.Argument(
            help="3D TIFF / OME-TIFF stack, OME-Zarr image folder, folder of 2D slice images (sorted by name), "
            "or a section-stack CSV (--modality he-stack).",
            show_default=False,
        ),
    ],
    catalog_dir: Annotated[Path, typer.Option("--catalog", "-c", help="Catalog folder (created if missing).")],
    volume_id: Annotated[str, typer.Option("--volume-id", help="Id of the volume in the catalog.")],
    voxel_size_um: Annotated[
        tuple[float, float, float] | None,
        typer.Option(
            "--voxel-size-um", help="Voxel size Z Y X in micrometres (overrides the file's; required when it has none)."
        ),
    ] = None,
    modality: Annotated[
        Modality, typer.Option(help="microct (1 channel), otls (light-sheet, any channels), he-stack (RGB).")
    ] = Modality.microct,
    organ: Annotated[str | None, typer.Option(help="Organ, e.g. Prostate.")] = None,
    species: Annotated[str | None, typer.Option(help="Species, e.g. 'Homo sapiens'.")] = None,
    patient: Annotated[str | None, typer.Option(help="Patient id.")] = None,
    intensity_range: Annotated[
        tuple[float, float] | None,
        typer.Option("--intensity-range", help="LOW HIGH mapped to 0..255 for non-8-bit inputs (default: 0.1-99.9 percentiles)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a volume with this id.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Store a 3D volume in the catalog as a chunked OME-Zarr multiscale image.

    Written block by block; it lands whole or not at all."""
    with handle_errors():
        import catalog

        cat = catalog.create(catalog_dir)
        with progress_bars(not quiet) as prog:
            res = cat.ingest_volume(
                path,
                volume_id,
                voxel_size_um,
                modality=modality.value,
                organ=organ,
                species=species,
                patient=patient,
                intensity_range=intensity_range,
                overwrite=overwrite,
                progress=prog,
            )
        for w in res.warnings:
            warn(w)
        z, y, x = res.shape_zyx
        vz, vy, vx = res.voxel_size_um
        typer.echo(
            f"ingested volume {res.volume_id}: {z} x {y} x {x} voxels (z, y, x) of {vz:g} x {vy:g} x {vx:g} um, "
            f"{res.channels} channel(s), {res.n_levels} level(s), {res.seconds:.1f} s"
        )


def link_section(
    catalog_dir: Annotated[Path, typer.Argument(help="Catalog folder.")],
    sample_id: Annotated[str, typer.Argument(help="Sample id of the 2D ST section (see hestkit ls).")],
    volume: Annotated[str, typer.Option("--volume", help="Volume id.")],
    z_um: Annotated[float | None, typer.Option("--z-um", help="Depth of the section plane in the volume frame (um).")] = None,
    auto: Annotated[
        bool,
        typer.Option(
            "--auto", help="Find the depth and the in-plane affine by registering the section's H&E to the volume's planes."
        ),
    ] = False,
    z_range_um: Annotated[
        tuple[float, float] | None, typer.Option("--z-range-um", help="With --auto: depths to search, A B (um).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of the placement (plane, section, overlay; depth profile with --auto).")] = None,
    affine: Annotated[
        Path | None, typer.Option(help="3x3 matrix file: section level-0 px (x, y, 1) -> volume um (x, y, 1).")
    ] = None,
    landmarks: Annotated[
        Path | None, typer.Option(help="CSV with columns x_px,y_px,x_um,y_um (>= 3 pairs; least-squares affine).")
    ] = None,
    max_residual_um: Annotated[
        float | None, typer.Option("--max-residual-um", help="Refuse the link when a landmark residual exceeds this.")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing link of this sample.")] = False,
) -> None:
    """Record where an ingested 2D ST sample lies in a volume: plane depth and in-plane affine."""
    with handle_errors():
        import catalog

        if auto:
            if affine is not None or landmarks is not None or z_um is not None:
                fail("--auto finds the depth and the affine: give none of --z-um, --affine, --landmarks with it")
        else:
            if (affine is None) == (landmarks is None):
                fail("give exactly one of --affine FILE or --landmarks FILE (or --auto to find the placement)")
            if z_um is None:
                fail("give the section plane's depth with --z-um (or --auto to find it)")
        cat = catalog.open(catalog_dir)
        link = cat.link_section(
            sample_id,
            volume,
            z_um,
            affine=affine,
            landmarks=landmarks,
            auto=auto,
            z_range_um=z_range_um,
            overwrite=overwrite,
            max_residual_um=max_residual_um,
        )
        if auto:
            fit = link.auto_fit or {}
            typer.echo(
                f"automatic placement: z = {link.z_um:.1f} um, rotation {fit['rotation_deg']:.1f} deg, scale "
                f"{fit['scale']:.3f}, NCC {fit['score']:.3f}, confidence {fit['confidence']:.2f}"
            )
        if plot is not None:
            cat.plot_section_link(sample_id).savefig(plot, dpi=110)
            typer.echo(f"wrote {plot}")
        for w in link.warnings:
            warn(w)
        if len(link.residuals_um):
            import pandas as pd

            print_table(
                pd.DataFrame({"landmark" if not auto else "grid cell": range(len(link.residuals_um)), "residual_um": link.residuals_um}),
                title=f"{'landmark' if not auto else 'local (3 x 3 grid)'} residuals (rms {float((link.residuals_um**2).mean() ** 0.5):.3g} um, max {float(link.residuals_um.max()):.3g} um)",
            )
        typer.echo(
            f"linked {sample_id} to volume {volume} at z = {link.z_um:g} um: {link.n_spots_inside} of {link.n_spots} spots inside the volume"
        )


def register(app: typer.Typer) -> None:
    app.command("ingest-volume")(ingest_volume)
    app.command("link-section")(link_section)
