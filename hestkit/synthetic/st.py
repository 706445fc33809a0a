"""Synthetic legacy Spatial Transcriptomics samples (counts table + ST Spot Detector file + H&E).

The array (see :mod:`hestkit.readers.st`): spots of 100 um diameter, either the "1k"
square grid (every integer ``x``, ``y``; 200 um between consecutive integers) or the
"2k" checkerboard (only ``x + y`` even; 100 um between consecutive integers, so the
nearest, diagonal, neighbours are 141 um apart).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import OptionError
from ._expression import gene_table, program_activity, simulate_counts, spot_colours
from ._grid import IMAGE_MARGIN_UM, tissue_blob
from ._scene import Scene
from ._tiff import write_flat_image, write_pyramidal_tiff
from ._truth import SyntheticSample

__all__ = ["ST_SPOT_DIAMETER_UM", "make_st"]

ST_SPOT_DIAMETER_UM = 100.0
_PITCH_UM = {"1k": 200.0, "2k": 100.0}
#: Offset (um) of array position (0, 0) beyond the image margin; non-round on purpose.
_OFFSET_UM = (13.7, 21.3)
_JITTER = 0.08


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def make_st(
    out_dir: str | Path,
    *,
    layout: Literal["1k", "2k"] = "1k",
    n_x: int = 12,
    n_y: int = 12,
    n_genes: int = 40,
    pixel_size_um: float = 1.0,
    seed: int = 0,
    stem: str = "ST1",
    image_format: Literal["jpg", "tif"] = "tif",
    with_offtissue: bool = True,
    detector: Literal["selection", "all", "alignment"] = "selection",
    in_tissue_fraction: float = 0.7,
    species: str = "Homo sapiens",
    organ: str = "",
) -> SyntheticSample:
    """Write one legacy ST sample into ``out_dir`` (created if needed).

    Files:

    - ``{stem}.tsv``: counts, spots x genes, tab-separated, empty first header cell,
      ``XxY`` row ids, rows sorted by id string. With ``with_offtissue`` it lists every
      array spot (off tissue too, with low ambient counts) plus two ids that the spot
      detector never saw (``0x0`` and ``{n_x + 2}x{n_y + 2}``), as real tables do;
      otherwise only the spots under tissue.
    - the spot detector file, pixel columns with 2 decimals: ``detector="selection"``
      writes ``spot_data-selection-{stem}.tsv`` (spots under tissue only, header
      ``x y new_x new_y pixel_x pixel_y``); ``"all"`` writes ``spot_data-all-{stem}.tsv``
      and ``"alignment"`` ``alignment_table_{stem}.tsv``, both with every spot and a
      ``selected`` column (1 = under tissue). ``new_x``/``new_y`` are ``x``/``y`` plus a
      seeded jitter below 0.1, and the spot really is at ``(new_x, new_y) * pitch`` um.
    - the H&E: ``{stem}.tif`` (pyramidal JPEG TIFF, no pixel size embedded) or a flat
      ``{stem}.jpg`` (no DPI). Spots under tissue are flat-coloured 100 um disks
      centred exactly at the written ``(pixel_x, pixel_y)``.

    Truth arrays run over the array's spots in detector order (``x`` major, then
    ``y``); barcodes are ``XxY``, ``array_col`` = ``x``, ``array_row`` = ``y``,
    ``centres_px`` equal the written pixel columns and ``gene_ids`` = ``genes`` (the
    table carries one name per gene). Everything is a function of ``seed`` and the
    arguments.
    """
    if layout not in _PITCH_UM:
        raise OptionError(f"layout must be '1k' or '2k', got {layout!r}")
    if image_format not in ("jpg", "tif"):
        raise OptionError(f"image_format must be 'jpg' or 'tif', got {image_format!r}")
    if detector not in ("selection", "all", "alignment"):
        raise OptionError(f"detector must be 'selection', 'all' or 'alignment', got {detector!r}")
    if n_x < 2 or n_y < 2:
        raise OptionError(f"the array needs at least 2 x 2 positions, got {n_x} x {n_y}")
    if not pixel_size_um > 0:
        raise OptionError(f"pixel_size_um must be positive, got {pixel_size_um}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pitch = _PITCH_UM[layout]

    pos = [(x, y) for x in range(1, n_x + 1) for y in range(1, n_y + 1) if layout == "1k" or (x + y) % 2 == 0]
    xs = np.array([p[0] for p in pos], dtype=np.int64)
    ys = np.array([p[1] for p in pos], dtype=np.int64)
    n = xs.size
    new_x_s = [_fmt(v) for v in xs + rng.uniform(-_JITTER, _JITTER, n)]
    new_y_s = [_fmt(v) for v in ys + rng.uniform(-_JITTER, _JITTER, n)]
    new_x = np.array([float(s) for s in new_x_s])
    new_y = np.array([float(s) for s in new_y_s])
    centres_um = np.stack([new_x * pitch, new_y * pitch], axis=1)
    origin_um = np.array([IMAGE_MARGIN_UM + _OFFSET_UM[0] - pitch, IMAGE_MARGIN_UM + _OFFSET_UM[1] - pitch])
    raw_px = (centres_um + origin_um) / pixel_size_um
    px_s = [(_fmt(a), _fmt(b)) for a, b in raw_px]
    centres_px = np.array([[float(a), float(b)] for a, b in px_s])
    margin_px = (IMAGE_MARGIN_UM + max(_OFFSET_UM)) / pixel_size_um
    width = math.ceil(float(centres_px[:, 0].max()) + margin_px) + 1
    height = math.ceil(float(centres_px[:, 1].max()) + margin_px) + 1

    blob, in_tissue = tissue_blob(centres_px, in_tissue_fraction, rng)
    activity = program_activity(centres_um, rng)
    counts = simulate_counts(activity, in_tissue, n_genes, rng)
    _ids, genes = gene_table(n_genes, species)
    colours = spot_colours(counts)
    scene = Scene(
        height=height,
        width=width,
        centres_px=centres_px,
        radius_px=ST_SPOT_DIAMETER_UM / 2.0 / pixel_size_um,
        colours=colours,
        painted=in_tissue,
        blob=blob,
        seed=int(rng.integers(0, 2**31 - 1)),
    )
    barcodes = [f"{x}x{y}" for x, y in zip(xs.tolist(), ys.tolist(), strict=True)]

    # counts table
    dense = counts.toarray()
    keep = np.ones(n, dtype=bool) if with_offtissue else in_tissue
    ids = [b for b, k in zip(barcodes, keep, strict=True) if k]
    rows = dense[keep]
    if with_offtissue:
        ids += ["0x0", f"{n_x + 2}x{n_y + 2}"]
        rows = np.vstack([rows, rng.poisson(0.2, size=(2, n_genes)).astype(rows.dtype)])
    table = pd.DataFrame(rows, index=pd.Index(ids), columns=genes)
    table = table.loc[sorted(ids)]
    table.to_csv(out / f"{stem}.tsv", sep="\t", lineterminator="\n")

    # spot detector file
    name = {"selection": f"spot_data-selection-{stem}.tsv", "all": f"spot_data-all-{stem}.tsv"}.get(
        detector, f"alignment_table_{stem}.tsv"
    )
    header = "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y" + ("" if detector == "selection" else "\tselected")
    lines = [header]
    for i in range(n):
        if detector == "selection" and not in_tissue[i]:
            continue
        cells = [str(xs[i]), str(ys[i]), new_x_s[i], new_y_s[i], px_s[i][0], px_s[i][1]]
        if detector != "selection":
            cells.append(str(int(in_tissue[i])))
        lines.append("\t".join(cells))
    (out / name).write_text("\n".join(lines) + "\n", encoding="ascii")

    # H&E
    image_path = out / f"{stem}.{image_format}"
    if image_format == "tif":
        write_pyramidal_tiff(image_path, height=height, width=width, render=scene.render, pixel_size_um=None)
    else:
        write_flat_image(image_path, scene.render(1.0, 0, 0, height, width))

    return SyntheticSample(
        path=out,
        image_path=image_path,
        sample_id=stem,
        layout=f"st-{layout}",
        barcodes=barcodes,
        in_tissue=in_tissue,
        array_row=ys,
        array_col=xs,
        centres_px=centres_px,
        centres_um=centres_um,
        counts=sp.csr_matrix(counts),
        genes=list(genes),
        gene_ids=list(genes),
        pixel_size_um=float(pixel_size_um),
        pixel_size_embedded=False,
        spot_diameter_um=ST_SPOT_DIAMETER_UM,
        image_shape=(height, width),
        species=species,
        organ=organ,
        colours=colours,
        scene=scene,
    )
