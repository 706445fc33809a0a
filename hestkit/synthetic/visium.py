"""Synthetic 10x Visium (Space Ranger ``outs/``) samples in the real file formats."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import OptionError
from ._build import build_visium_sample
from ._grid import VISIUM_FIDUCIAL_DIAMETER_UM, VISIUM_SPOT_DIAMETER_UM
from ._tenx import write_10x_h5, write_mex, write_scalefactors, write_tissue_positions
from ._tiff import write_flat_image, write_pyramidal_tiff
from ._truth import SyntheticSample

__all__ = ["make_visium"]

HIRES_MAX_SIDE = 2000
LOWRES_MAX_SIDE = 600


def make_visium(
    out_dir: str | Path,
    *,
    layout: Literal["spaceranger1", "spaceranger2"] = "spaceranger2",
    n_rows: int = 16,
    n_cols: int = 16,
    n_genes: int = 60,
    pixel_size_um: float = 0.5,
    embed_pixel_size: bool = True,
    matrix: Literal["h5", "mex"] = "h5",
    image_name: str = "tissue_fullres.tif",
    seed: int = 0,
    origin_px: tuple[float, float] = (300.0, 280.0),
    in_tissue_fraction: float = 0.85,
    species: str = "Homo sapiens",
    organ: str = "",
    sample_id: str | None = None,
    morphology: Literal["colour", "texture", "plaid", "nuclei", "glands"] = "colour",
) -> SyntheticSample:
    """Write a Space Ranger-like ``outs`` folder plus its full-resolution H&E.

    Files under ``out_dir``:

    - ``filtered_feature_bc_matrix.h5`` (10x HDF5 v3) or the MEX folder
      ``filtered_feature_bc_matrix/``; in-tissue barcodes only.
    - ``spatial/tissue_positions.csv`` (header; ``spaceranger2``) or
      ``spatial/tissue_positions_list.csv`` (no header; ``spaceranger1``), all spots.
    - ``spatial/scalefactors_json.json``, ``spatial/tissue_hires_image.png``,
      ``spatial/tissue_lowres_image.png``.
    - ``<image_name>``: pyramidal JPEG TIFF; pixel size as resolution tags only when
      ``embed_pixel_size``.

    ``n_cols`` is the number of spots per row (``array_col`` = 0, 2, 4, ... on even
    rows, 1, 3, 5, ... on odd rows). ``origin_px`` is the level-0 pixel ``(x, y)`` of
    array position (0, 0). ``species`` sets gene naming and the genome tag; ``organ``
    and ``sample_id`` (default: the folder name) only go into the returned truth.
    ``morphology="texture"`` adds vertical stripes inside each disk whose period is set by
    program 3, which the disk colour does not show (see :func:`stripe_periods_um`): the
    image then carries expression that a frozen encoder does not pass on linearly.
    ``morphology="plaid"`` shows expression only through texture: each disk gets a random
    stain colour and two perpendicular gratings whose period, orientation, contrast and
    second period follow programs 0-3 (see :func:`plaid_parameters`).
    ``morphology="nuclei"`` and ``"glands"`` render the whole tissue as H&E-like histology
    (no spot disks, per-patient stain) whose nuclei (density, size, clustering, elongation)
    or glands (density, size, epithelial rim, elongation; in a stroma of expression-free
    fibres) follow four smooth programmes that drive the genes non-linearly; see
    :mod:`hestkit.synthetic._histology`.
    Everything is a function of ``seed`` and the arguments.
    """
    if layout not in ("spaceranger1", "spaceranger2"):
        raise OptionError(f"layout must be 'spaceranger1' or 'spaceranger2', got {layout!r}")
    if matrix not in ("h5", "mex"):
        raise OptionError(f"matrix must be 'h5' or 'mex', got {matrix!r}")
    out = Path(out_dir)
    spatial = out / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    built = build_visium_sample(
        n_rows=n_rows,
        n_cols=n_cols,
        n_genes=n_genes,
        pixel_size_um=pixel_size_um,
        origin_px=origin_px,
        in_tissue_fraction=in_tissue_fraction,
        species=species,
        seed=seed,
        morphology=morphology,
    )
    grid = built.grid
    keep = built.in_tissue
    kept_barcodes = [b for b, k in zip(built.barcodes, keep, strict=True) if k]
    kept_counts = built.counts[keep]
    if matrix == "h5":
        write_10x_h5(
            out / "filtered_feature_bc_matrix.h5",
            kept_counts,
            kept_barcodes,
            built.gene_ids,
            built.genes,
            species,
        )
    else:
        write_mex(
            out / "filtered_feature_bc_matrix",
            kept_counts,
            kept_barcodes,
            built.gene_ids,
            built.genes,
        )

    positions = "tissue_positions.csv" if layout == "spaceranger2" else "tissue_positions_list.csv"
    write_tissue_positions(
        spatial / positions,
        barcodes=built.barcodes,
        in_tissue=built.in_tissue,
        array_row=grid.array_row,
        array_col=grid.array_col,
        centres_px=grid.centres_px,
        header=layout == "spaceranger2",
    )

    longest = max(grid.height, grid.width)
    hires = min(1.0, HIRES_MAX_SIDE / longest)
    lowres = min(1.0, LOWRES_MAX_SIDE / longest)
    write_scalefactors(
        spatial / "scalefactors_json.json",
        hires=hires,
        lowres=lowres,
        spot_diameter_px=VISIUM_SPOT_DIAMETER_UM / pixel_size_um,
        fiducial_diameter_px=VISIUM_FIDUCIAL_DIAMETER_UM / pixel_size_um,
    )
    write_flat_image(spatial / "tissue_hires_image.png", built.scene.render_scaled(hires))
    write_flat_image(spatial / "tissue_lowres_image.png", built.scene.render_scaled(lowres))

    image_path = out / image_name
    write_pyramidal_tiff(
        image_path,
        height=grid.height,
        width=grid.width,
        render=built.scene.render,
        pixel_size_um=pixel_size_um if embed_pixel_size else None,
    )
    return built.truth(
        path=out,
        image_path=image_path,
        sample_id=sample_id if sample_id is not None else out.name,
        layout=layout,
        pixel_size_embedded=embed_pixel_size,
        organ=organ,
    )
