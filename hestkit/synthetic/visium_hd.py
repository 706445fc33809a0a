"""Synthetic 10x Visium HD (Space Ranger ``binned_outputs/``) samples in the real formats.

Grid: bin ``(r, c)`` (``array_row``, ``array_col``) of the finest size has its centre at
``origin + R(rotation) @ ((-c if flip_cols else c) * bin_px, r * bin_px)`` in level-0
pixels, like a real run where ``array_col`` runs opposite to image x and the grid is
rotated by about 0.9 degrees. Coarser bins (e.g. 8 and 16 um) are exact sums of the
finest bins and sit at the centre of the square of finest bins they cover.

Image: glass and a tissue blob (the same model as :mod:`.visium`), plus one filled square
per DEFAULT pseudo-spot (blocks of ``k = round(56 / bin_um)`` finest bins, tiled from
array index 0, rotated and flipped with the grid) that the Visium HD reader keeps (an
in-tissue bin and nonzero counts). Each square covers the FULL block and has the flat
colour :func:`~hestkit.synthetic.spot_colour` of the block's pooled filtered counts, so
a patch centred on a pseudo-spot shows its colour.

Expression: the smooth programs of :mod:`._expression` evaluated on the bin centres,
then binomially thinned so that a 2 um bin holds a handful of counts (sparse, as in real
runs) while a 56 um pseudo-spot spans the colour range.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

from ..errors import OptionError
from ..geometry import Affine
from ._expression import gene_table, program_activity, simulate_counts, spot_colours
from ._grid import tissue_blob
from ._scene import Scene
from ._tenx import write_10x_h5
from ._tiff import write_pyramidal_tiff

__all__ = ["DEFAULT_SPOT_UM", "ExpectedPseudoSpot", "SyntheticVisiumHD", "make_visium_hd"]

#: Side of the default pseudo-spot, as in :mod:`hestkit.readers.visium_hd`.
DEFAULT_SPOT_UM = 56.0
IMAGE_MARGIN_UM = 90.0
#: Expected counts of one default pseudo-spot per unit of the expression model's mean.
_COUNTS_PER_BLOCK = 1.0


@dataclass(frozen=True)
class ExpectedPseudoSpot:
    """What a reader must produce for one block: computed straight from the bins."""

    block_row: int
    block_col: int
    counts: NDArray[np.int64]
    centre_px: tuple[float, float]
    n_bins: int
    complete: bool
    bins_mean_px: tuple[float, float]


@dataclass(frozen=True, eq=False)
class SyntheticVisiumHD:
    """Truth of a synthetic Visium HD sample.

    Attributes:
        path: the Space Ranger-like output folder (holds ``binned_outputs/``).
        image_path: the full-resolution pyramidal TIFF (pixel size embedded).
        bins: one row per finest bin of the grid (in and off tissue): ``barcode``,
            ``array_row``, ``array_col``, ``x_px``, ``y_px`` (centre, level-0 px) and
            ``in_tissue`` (bool). The filtered matrix holds only the in-tissue bins.
        counts: ``(n bins, n genes)`` int32 CSR raw counts of every bin (rows of ``bins``).
        genes, gene_ids: gene symbols and ids.
        pixel_size_um: level-0 pixel size; bin_um: finest bin size; sizes: bin sizes written.
        affine: the true grid map from bin indices ``(array_col, array_row)`` to ``(x, y)`` px.
        image_shape: level-0 ``(height, width)``.
        block_colours: ``{(block_row, block_col): (3,) uint8}`` of the painted default blocks.
    """

    path: Path
    image_path: Path
    bins: pd.DataFrame
    counts: sp.csr_matrix
    genes: list[str]
    gene_ids: list[str]
    pixel_size_um: float
    bin_um: float
    sizes: tuple[int, ...]
    rotation_deg: float
    flip_cols: bool
    affine: Affine
    image_shape: tuple[int, int]
    block_colours: dict[tuple[int, int], NDArray[np.uint8]] = field(repr=False)
    scene: Scene = field(repr=False)

    @property
    def default_k(self) -> int:
        return round(DEFAULT_SPOT_UM / self.bin_um)

    def bin_px(self, col: float, row: float) -> tuple[float, float]:
        """Level-0 ``(x, y)`` of the point ``(col, row)`` in bin-index units (true grid)."""
        m = self.affine.to_array()
        return (
            float(m[0, 0] * col + m[0, 1] * row + m[0, 2]),
            float(m[1, 0] * col + m[1, 1] * row + m[1, 2]),
        )

    def expected_pseudo_spots(self, spot_size_um: float = DEFAULT_SPOT_UM) -> dict[tuple[int, int], ExpectedPseudoSpot]:
        """Pseudo-spots of side ``spot_size_um`` computed with a plain loop over the in-tissue
        bins (independent of the reader): counts summed bin by bin; the centre is the mid
        point of the two outer corners of the full ``k x k`` block. Blocks whose pooled
        counts are all zero are left out, as the reader leaves them out."""
        k = round(spot_size_um / self.bin_um)
        members: dict[tuple[int, int], list[int]] = {}
        rows = self.bins["array_row"].to_numpy()
        cols = self.bins["array_col"].to_numpy()
        tissue = self.bins["in_tissue"].to_numpy()
        for i in range(len(rows)):
            if tissue[i]:
                members.setdefault((int(rows[i]) // k, int(cols[i]) // k), []).append(i)
        dense = self.counts.toarray().astype(np.int64)
        xs, ys = self.bins["x_px"].to_numpy(), self.bins["y_px"].to_numpy()
        out: dict[tuple[int, int], ExpectedPseudoSpot] = {}
        for (br, bc), idx in sorted(members.items()):
            total = np.zeros(dense.shape[1], dtype=np.int64)
            for i in idx:
                total += dense[i]
            if not total.any():
                continue
            a = self.bin_px(bc * k - 0.5, br * k - 0.5)
            b = self.bin_px(bc * k + k - 0.5, br * k + k - 0.5)
            out[(br, bc)] = ExpectedPseudoSpot(
                block_row=br,
                block_col=bc,
                counts=total,
                centre_px=((a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0),
                n_bins=len(idx),
                complete=len(idx) == k * k,
                bins_mean_px=(float(np.mean(xs[idx])), float(np.mean(ys[idx]))),
            )
        return out

    def render(self, downsample: float, y0: int, x0: int, h: int, w: int) -> NDArray[np.uint8]:
        """A window of the level with ``downsample`` (before JPEG), as written to the TIFF."""
        out = self.scene.render(downsample, y0, x0, h, w)
        if h <= 0 or w <= 0 or not self.block_colours:
            return out
        k = self.default_k
        xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * downsample
        ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * downsample
        inv = self.affine.inverse().to_array()
        gx, gy = np.meshgrid(xs, ys)
        col = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
        row = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
        bc = np.floor((col + 0.5) / k).astype(np.int64)
        br = np.floor((row + 0.5) / k).astype(np.int64)
        for (r, c), colour in self.block_colours.items():
            mask = (br == r) & (bc == c)
            if mask.any():
                out[mask] = colour
        return out


def _grid_affine(bin_px: float, rotation_deg: float, flip_cols: bool, origin: tuple[float, float]) -> Affine:
    t = math.radians(rotation_deg)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    lin = rot @ np.diag([(-1.0 if flip_cols else 1.0) * bin_px, bin_px])
    return Affine.from_array(np.hstack([lin, np.array(origin, dtype=float)[:, None]]))


def _write_positions(
    path: Path,
    barcodes: list[str],
    in_tissue: NDArray[np.bool_],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    px: NDArray[np.float64],
) -> None:
    table = pa.table(
        {
            "barcode": pa.array(barcodes, type=pa.string()),
            "in_tissue": pa.array(in_tissue.astype(np.int32), type=pa.int32()),
            "array_row": pa.array(rows.astype(np.int32), type=pa.int32()),
            "array_col": pa.array(cols.astype(np.int32), type=pa.int32()),
            "pxl_row_in_fullres": pa.array(px[:, 1].astype(np.float64), type=pa.float64()),
            "pxl_col_in_fullres": pa.array(px[:, 0].astype(np.float64), type=pa.float64()),
        }
    )
    pq.write_table(table, path)


def make_visium_hd(
    out_dir: str | Path,
    *,
    n_rows: int = 112,
    n_cols: int = 112,
    bin_um: float = 2.0,
    pixel_size_um: float = 0.5,
    rotation_deg: float = 0.9,
    flip_cols: bool = True,
    n_genes: int = 40,
    seed: int = 0,
    sizes: Sequence[int] = (2, 8, 16),
    image_name: str = "tissue_fullres.tif",
    in_tissue_fraction: float = 0.8,
    species: str = "Mus musculus",
) -> SyntheticVisiumHD:
    """Write a Space Ranger-like Visium HD output folder plus its full-resolution H&E.

    Files under ``out_dir``: ``binned_outputs/square_{size:03d}um/`` for each of
    ``sizes`` (micrometres, multiples of ``bin_um``) with ``filtered_feature_bc_matrix.h5``
    (in-tissue bins only, rows in a seeded shuffled order), ``spatial/tissue_positions.parquet``
    (every bin; Space Ranger's column types) and ``spatial/scalefactors_json.json``
    (``microns_per_pixel``, ``bin_size_um``, ``spot_diameter_fullres``, ``tissue_hires_scalef``,
    ``tissue_lowres_scalef``); and ``<image_name>``, a pyramidal JPEG TIFF with the pixel
    size embedded. ``n_rows`` x ``n_cols`` is the grid of ``bin_um`` bins. A coarse bin is in
    tissue when any of its fine bins is. Everything is a function of ``seed`` and the arguments.
    """
    if n_rows < 1 or n_cols < 1:
        raise OptionError(f"grid must be non-empty, got {n_rows}x{n_cols}")
    if not (bin_um > 0 and pixel_size_um > 0):
        raise OptionError("bin_um and pixel_size_um must be positive")
    factors = []
    for s in sizes:
        f = s / bin_um
        if abs(f - round(f)) > 1e-9 or round(f) < 1:
            raise OptionError(f"bin size {s} um is not a whole multiple of bin_um={bin_um}")
        factors.append(round(f))
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    bin_px = bin_um / pixel_size_um
    margin = IMAGE_MARGIN_UM / pixel_size_um

    # Grid: place the origin so that every bin lies at least `margin` from the image edges.
    probe = _grid_affine(bin_px, rotation_deg, flip_cols, (0.0, 0.0))
    corners = probe.apply(np.array([[-0.5, -0.5], [n_cols - 0.5, -0.5], [-0.5, n_rows - 0.5], [n_cols - 0.5, n_rows - 0.5]]))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    affine = _grid_affine(bin_px, rotation_deg, flip_cols, (float(margin - lo[0]), float(margin - lo[1])))
    width = math.ceil(float(hi[0] - lo[0]) + 2 * margin)
    height = math.ceil(float(hi[1] - lo[1]) + 2 * margin)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), n_cols)
    cols = np.tile(np.arange(n_cols, dtype=np.int64), n_rows)
    centres_px = affine.apply(np.column_stack([cols, rows]))
    centres_um = np.column_stack([cols, rows]).astype(np.float64) * bin_um

    # Tissue and expression on the finest bins.
    blob, in_tissue = tissue_blob(centres_px, in_tissue_fraction, rng)
    activity = program_activity(centres_um, rng)
    model = simulate_counts(activity, in_tissue, n_genes, rng)
    k_default = round(DEFAULT_SPOT_UM / bin_um)
    thin = min(1.0, _COUNTS_PER_BLOCK / (k_default * k_default))
    counts = sp.csr_matrix(rng.binomial(model.toarray(), thin).astype(np.int32))
    counts.sort_indices()
    gene_ids, genes = gene_table(n_genes, species)
    barcodes = [f"s_{round(bin_um):03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]

    # Write each bin size.
    for size, f in zip(sizes, factors, strict=True):
        nr, nc = -(-n_rows // f), -(-n_cols // f)
        coarse = (rows // f) * nc + cols // f
        n_coarse = nr * nc
        pool = sp.csr_matrix((np.ones(rows.size, dtype=np.int32), (coarse, np.arange(rows.size))), shape=(n_coarse, rows.size))
        tissue_c = (pool @ in_tissue.astype(np.int32)) > 0
        counts_c = sp.csr_matrix(pool @ sp.diags(in_tissue.astype(np.int32), dtype=np.int32) @ counts, dtype=np.int32)
        counts_c.sort_indices()
        r_c = np.repeat(np.arange(nr, dtype=np.int64), nc)
        c_c = np.tile(np.arange(nc, dtype=np.int64), nr)
        half = (f - 1) / 2.0
        px_c = affine.apply(np.column_stack([c_c * f + half, r_c * f + half]))
        bcs = [f"s_{size:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(r_c.tolist(), c_c.tolist(), strict=True)]
        folder = out / "binned_outputs" / f"square_{size:03d}um"
        (folder / "spatial").mkdir(parents=True, exist_ok=True)
        _write_positions(folder / "spatial" / "tissue_positions.parquet", bcs, tissue_c, r_c, c_c, px_c)
        keep = np.flatnonzero(tissue_c)
        keep = keep[rng.permutation(keep.size)]
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts_c[keep], [bcs[i] for i in keep], gene_ids, genes, species)
        longest = max(height, width)
        scalef = {
            "spot_diameter_fullres": size / pixel_size_um,
            "bin_size_um": float(size),
            "microns_per_pixel": pixel_size_um,
            "regist_target_img_scalef": min(1.0, 2000 / longest),
            "tissue_lowres_scalef": min(1.0, 600 / longest),
            "fiducial_diameter_fullres": 1.0,
            "tissue_hires_scalef": min(1.0, 2000 / longest),
        }
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalef, indent=4) + "\n", encoding="ascii")

    # Image: background scene without disks, plus one square per kept default block.
    k = k_default
    nrb, ncb = -(-n_rows // k), -(-n_cols // k)
    block = (rows // k) * ncb + cols // k
    pool_d = sp.csr_matrix((np.ones(rows.size, dtype=np.int32), (block, np.arange(rows.size))), shape=(nrb * ncb, rows.size))
    pooled = sp.csr_matrix(pool_d @ sp.diags(in_tissue.astype(np.int32), dtype=np.int32) @ counts)
    has_tissue = (pool_d @ in_tissue.astype(np.int32)) > 0
    totals = np.asarray(pooled.sum(axis=1)).ravel()
    colours = spot_colours(pooled)
    painted = np.flatnonzero(has_tissue & (totals > 0)).tolist()
    block_colours = {(int(i // ncb), int(i % ncb)): colours[i].copy() for i in painted}
    scene = Scene(
        height=height,
        width=width,
        centres_px=np.zeros((0, 2)),
        radius_px=0.0,
        colours=np.zeros((0, 3), dtype=np.uint8),
        painted=np.zeros(0, dtype=bool),
        blob=blob,
        seed=int(rng.integers(0, 2**31 - 1)),
    )
    bins = pd.DataFrame(
        {
            "barcode": barcodes,
            "array_row": rows,
            "array_col": cols,
            "x_px": centres_px[:, 0],
            "y_px": centres_px[:, 1],
            "in_tissue": in_tissue,
        }
    )
    truth = SyntheticVisiumHD(
        path=out,
        image_path=out / image_name,
        bins=bins,
        counts=counts,
        genes=genes,
        gene_ids=gene_ids,
        pixel_size_um=float(pixel_size_um),
        bin_um=float(bin_um),
        sizes=tuple(int(s) for s in sizes),
        rotation_deg=float(rotation_deg),
        flip_cols=flip_cols,
        affine=affine,
        image_shape=(height, width),
        block_colours=block_colours,
        scene=scene,
    )
    write_pyramidal_tiff(truth.image_path, height=height, width=width, render=truth.render, pixel_size_um=pixel_size_um)
    return truth
