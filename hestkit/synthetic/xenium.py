"""Synthetic 10x Xenium bundles with a registered post-Xenium H&E, in the real file formats.

The Xenium frame (micrometres) holds a ``width_um x height_um`` rectangle of tissue.
It is cut into squares of side ``S_paint`` tiling the frame from its origin (the
pseudo-spots of :mod:`hestkit.readers.xenium`); each square gets a seeded expression
profile, and its kept transcripts (qv >= 20, not controls) are scattered uniformly
inside it. Low-quality (qv < 20) gene transcripts and control-probe transcripts are
mixed in everywhere; they must be dropped by a reader.

The H&E is a rotated, scaled and translated view of that frame: a point ``u`` (um)
lies at H&E pixel ``R(rotation) u / he_pixel_size_um + translation``. Every non-empty
square is painted whole (as a rotated square, rasterised per pixel by inverse
mapping; squares cut by the tissue edge too, so every pseudo-spot centre shows its
colour) in the flat colour :func:`~hestkit.synthetic.spot_colour` of its kept counts;
the rest of the tissue rectangle is pink, outside it is glass. The 10x ``*_he_imagealignment.csv``
written beside it maps H&E pixels to morphology pixels (``um / pixel_size``), the 10x
direction; a Xenium Explorer keypoints CSV (noisy) can be written too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import tifffile
from numpy.typing import NDArray

from ..errors import OptionError
from ..geometry import Affine
from ._expression import gene_programs, gene_table, program_activity, spot_colours
from ._scene import GLASS_NOISE, GLASS_RGB, TISSUE_NOISE, TISSUE_RGB, _hash_noise
from ._tenx import write_10x_h5
from ._tiff import write_pyramidal_tiff

__all__ = ["SyntheticXenium", "XeniumScene", "expected_pooled_counts", "make_xenium"]

#: Name prefixes of control features, as listed in REFERENCE (kept separate from the reader on purpose).
_CONTROL_PREFIXES = (
    "NegControlProbe_",
    "NegControlCodeword_",
    "UnassignedCodeword_",
    "BLANK_",
    "DeprecatedCodeword_",
    "Intergenic_Region_",
)

#: Control features written per layout, with their XOA >= 2 ``codeword_category``.
#: ``SyntheticControl_0001`` matches no prefix: only ``is_gene == False`` drops it.
_CONTROLS: dict[str, list[tuple[str, str]]] = {
    "1": [
        ("NegControlProbe_00001", "negative_control_probe"),
        ("NegControlProbe_00002", "negative_control_probe"),
        ("NegControlCodeword_0500", "negative_control_codeword"),
        ("BLANK_0001", "unassigned_codeword"),
        ("BLANK_0002", "unassigned_codeword"),
    ],
    "2": [
        ("NegControlProbe_00001", "negative_control_probe"),
        ("NegControlCodeword_0500", "negative_control_codeword"),
        ("UnassignedCodeword_0001", "unassigned_codeword"),
        ("DeprecatedCodeword_0001", "deprecated_codeword"),
        ("Intergenic_Region_1", "genomic_control_probe"),
        ("SyntheticControl_0001", "negative_control_probe"),
    ],
}


def expected_pooled_counts(transcripts: pd.DataFrame, spot_size_um: float, *, min_qv: float = 20.0) -> pd.DataFrame:
    """Pooled kept counts computed directly with pandas (an independent reference).

    Keeps ``qv >= min_qv``, drops control-name prefixes and ``is_gene == False`` (when
    that column exists), bins ``(x_location, y_location)`` into squares of side
    ``spot_size_um`` from the origin. Returns a frame indexed by ``(i, j)`` (sorted),
    one column per kept gene (sorted names), only non-empty squares.
    """
    names = transcripts["feature_name"].map(lambda v: v.decode() if isinstance(v, bytes) else str(v))
    keep = (transcripts["qv"].astype(float) >= min_qv) & ~names.str.startswith(_CONTROL_PREFIXES)
    if "is_gene" in transcripts.columns:
        keep &= transcripts["is_gene"].astype(bool)
    sub = transcripts[keep]
    s = float(spot_size_um)
    frame = pd.DataFrame(
        {
            "i": np.floor(sub["x_location"].to_numpy(dtype=np.float64) / s).astype(np.int64),
            "j": np.floor(sub["y_location"].to_numpy(dtype=np.float64) / s).astype(np.int64),
            "gene": names[keep].to_numpy(),
        }
    )
    table = frame.groupby(["i", "j", "gene"]).size().unstack("gene", fill_value=0)
    return table.reindex(sorted(table.columns), axis=1).sort_index().astype(np.int64)


@dataclass(frozen=True, eq=False)
class XeniumScene:
    """Renders any window of the synthetic H&E (pixel centres sampled, as in :class:`Scene`)."""

    height: int
    width: int
    he_to_um: Affine
    spot_size_um: float
    width_um: float
    height_um: float
    colour_grid: NDArray[np.uint8]  # (nJ, nI, 3)
    painted: NDArray[np.bool_]  # (nJ, nI)
    seed: int

    def render(self, downsample: float, y0: int, x0: int, h: int, w: int) -> NDArray[np.uint8]:
        """Window ``(h, w, 3)`` uint8, top-left ``(y0, x0)``, of the level with ``downsample``."""
        ds = float(downsample)
        if h <= 0 or w <= 0:
            return np.zeros((max(h, 0), max(w, 0), 3), dtype=np.uint8)
        xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * ds
        ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * ds
        a = self.he_to_um.to_array()
        ux = a[0, 0] * xs[None, :] + a[0, 1] * ys[:, None] + a[0, 2]
        uy = a[1, 0] * xs[None, :] + a[1, 1] * ys[:, None] + a[1, 2]
        tissue = (ux >= 0) & (ux < self.width_um) & (uy >= 0) & (uy < self.height_um)
        n_j, n_i = self.painted.shape
        ci = np.clip(np.floor(ux / self.spot_size_um).astype(np.int64), 0, n_i - 1)
        cj = np.clip(np.floor(uy / self.spot_size_um).astype(np.int64), 0, n_j - 1)
        n_i_um, n_j_um = n_i * self.spot_size_um, n_j * self.spot_size_um
        paint = (ux >= 0) & (ux < n_i_um) & (uy >= 0) & (uy < n_j_um) & self.painted[cj, ci]
        noise = _hash_noise(np.floor(xs).astype(np.int64), np.floor(ys).astype(np.int64), self.seed, TISSUE_NOISE)
        glass = np.clip(noise, -GLASS_NOISE, GLASS_NOISE)
        out = np.empty((h, w, 3), dtype=np.uint8)
        for c in range(3):
            out[..., c] = np.where(tissue, noise + TISSUE_RGB[c], glass + GLASS_RGB[c]).astype(np.uint8)
        out[paint] = self.colour_grid[cj[paint], ci[paint]]
        return out


@dataclass(frozen=True, eq=False)
class SyntheticXenium:
    """The truth behind one synthetic Xenium bundle.

    Attributes:
        path: the bundle folder (``experiment.xenium``, ``transcripts.parquet``, ...).
        image_path: the H&E pyramidal TIFF; ``alignment_path`` its 10x matrix CSV,
            ``keypoints_path`` the keypoints CSV (or None).
        xoa: ``"1"`` (binary names, ``BLANK_*``) or ``"2"`` (strings, ``is_gene`` ...).
        transcripts: every transcript written, names as ``str``, plus a ``kept`` flag.
        genes, gene_ids: the gene panel, in panel order (order of ``cell_feature_matrix.h5``).
        he_to_morph: H&E px -> morphology px (the CSV's matrix); ``um_to_he``: um -> H&E px.
        morph_pixel_size_um, he_pixel_size_um: pixel sizes (um/px).
        image_shape: level-0 ``(height, width)`` of the H&E.
        paint_spot_size_um: side of the painted squares (S_paint).
        paint_i, paint_j: the non-empty painted squares; ``paint_counts`` their kept
            counts (panel order), ``colours`` their flat colours.
        keypoints: the keypoints table written (or None).
    """

    path: Path
    image_path: Path
    alignment_path: Path
    keypoints_path: Path | None
    xoa: str
    transcripts: pd.DataFrame = field(repr=False)
    genes: list[str]
    gene_ids: list[str]
    he_to_morph: Affine
    um_to_he: Affine
    morph_pixel_size_um: float
    he_pixel_size_um: float
    image_shape: tuple[int, int]
    width_um: float
    height_um: float
    paint_spot_size_um: float
    paint_i: NDArray[np.int64]
    paint_j: NDArray[np.int64]
    paint_counts: sp.csr_matrix = field(repr=False)
    colours: NDArray[np.uint8] = field(repr=False)
    keypoints: pd.DataFrame | None = field(repr=False)
    scene: XeniumScene = field(repr=False)

    def expected_counts(self, spot_size_um: float, *, min_qv: float = 20.0) -> pd.DataFrame:
        """:func:`expected_pooled_counts` of this bundle's transcripts."""
        return expected_pooled_counts(self.transcripts, spot_size_um, min_qv=min_qv)

    def centre_px(self, i: int, j: int, spot_size_um: float | None = None) -> NDArray[np.float64]:
        """H&E pixel ``(x, y)`` of the centre of square ``(i, j)`` of side ``spot_size_um``."""
        s = self.paint_spot_size_um if spot_size_um is None else spot_size_um
        out: NDArray[np.float64] = self.um_to_he.apply([[(i + 0.5) * s, (j + 0.5) * s]])[0]
        return out

    def colour(self, i: int, j: int) -> NDArray[np.uint8]:
        """Flat colour of painted square ``(i, j)`` (side ``S_paint``)."""
        hit = np.flatnonzero((self.paint_i == i) & (self.paint_j == j))
        if hit.size == 0:
            raise KeyError(f"square ({i}, {j}) is empty (not painted)")
        out: NDArray[np.uint8] = self.colours[int(hit[0])].copy()
        return out

    def render(self, downsample: float, y0: int, x0: int, h: int, w: int) -> NDArray[np.uint8]:
        """JPEG-free rendering of a window of the H&E."""
        return self.scene.render(downsample, y0, x0, h, w)


def _cell_id(k: NDArray[np.int64]) -> list[str]:
    """XOA >= 1.3-style cell ids: 8 hex digits written with the letters a-p, then ``-1``."""
    return ["".join(chr(ord("a") + int(h, 16)) for h in f"{int(v):08x}") + "-1" for v in k]


def _affines(
    width_um: float, height_um: float, he_px: float, morph_px: float, rotation_deg: float,
    translation: tuple[float, float] | None, margin_um: float,
) -> tuple[Affine, Affine, int, int]:  # fmt: skip
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) / he_px
    corners = np.array([[0, 0], [width_um, 0], [0, height_um], [width_um, height_um]], dtype=float) @ rot.T
    margin = margin_um / he_px
    t = np.asarray(translation, dtype=float) if translation is not None else margin - corners.min(axis=0)
    um_to_he = Affine.from_array(np.hstack([rot, t[:, None]]))
    hi = (corners + t).max(axis=0) + margin
    he_to_morph = Affine.scale(1.0 / morph_px) @ um_to_he.inverse()
    return um_to_he, he_to_morph, max(64, math.ceil(hi[0])), max(64, math.ceil(hi[1]))


def _uniform_in(rng: np.random.Generator, lo: NDArray[np.float64], hi: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = lo + (hi - lo) * rng.random(lo.shape)
    return out


def make_xenium(
    out_dir: str | Path,
    *,
    width_um: float = 800.0,
    height_um: float = 700.0,
    S_paint: float = 55.0,
    pixel_size_um_morph: float = 0.2125,
    he_pixel_size_um: float = 0.5,
    rotation_deg: float = 30.0,
    translation: tuple[float, float] | None = None,
    margin_um: float = 80.0,
    xoa: Literal["1", "2"] = "2",
    n_genes: int = 30,
    transcripts_per_cell: float = 150.0,
    empty_fraction: float = 0.05,
    low_qv_fraction: float = 0.15,
    control_fraction: float = 0.05,
    unassigned_fraction: float = 0.1,
    row_group_size: int = 5000,
    keypoints: bool = True,
    n_keypoints: int = 6,
    keypoint_noise_px: float = 1.0,
    cell_matrix: bool = True,
    embed_pixel_size: bool = True,
    he_dir: str | Path | None = None,
    prefix: str = "synthetic",
    seed: int = 0,
) -> SyntheticXenium:
    """Write a Xenium-like bundle under ``out_dir`` and its registered H&E.

    Bundle files: ``experiment.xenium`` (``pixel_size``, ``analysis_sw_version``
    ``xenium-1.9.1.0`` / ``xenium-2.0.0.10``), ``transcripts.parquet`` (row groups of
    ``row_group_size``; XOA 1: binary ``feature_name``/``cell_id``/``fov_name``; XOA 2:
    strings plus ``codeword_index``, ``codeword_category``, ``is_gene``,
    ``nucleus_distance``), ``cells.parquet``, ``cell_feature_matrix.h5`` (when
    ``cell_matrix``) and a tiny placeholder morphology OME-TIFF
    (``morphology_focus.ome.tif`` / ``morphology_focus/morphology_focus_0000.ome.tif``).
    In ``he_dir`` (default ``out_dir``): ``{prefix}_he_image.tif`` (pyramidal, pixel size
    embedded when ``embed_pixel_size``), ``{prefix}_he_imagealignment.csv`` and, when
    ``keypoints``, ``{prefix}_he_keypoints.csv``.

    ``translation`` is the H&E pixel of the Xenium origin (default: tissue ``margin_um``
    inside the image). Everything is a function of ``seed`` and the arguments.
    """
    if xoa not in ("1", "2"):
        raise OptionError(f"xoa must be '1' or '2', got {xoa!r}")
    if not (S_paint > 0 and width_um > 0 and height_um > 0 and he_pixel_size_um > 0 and pixel_size_um_morph > 0):
        raise OptionError("sizes must be positive")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hdir = out if he_dir is None else Path(he_dir)
    hdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    s = float(S_paint)

    # -- squares and their expression ------------------------------------------
    n_i, n_j = math.ceil(width_um / s), math.ceil(height_um / s)
    jj, ii = np.divmod(np.arange(n_i * n_j, dtype=np.int64), n_i)
    x_lo, y_lo = ii * s, jj * s
    x_hi, y_hi = np.minimum(x_lo + s, width_um), np.minimum(y_lo + s, height_um)
    area = (x_hi - x_lo) * (y_hi - y_lo) / (s * s)
    centres = np.column_stack([(x_lo + x_hi) / 2, (y_lo + y_hi) / 2])
    activity = program_activity(centres, rng)
    programs = gene_programs(n_genes)
    base = rng.lognormal(mean=0.0, sigma=0.5, size=n_genes)
    mu = base[None, :] * (0.1 + 6.0 * activity[:, programs] ** 1.5)
    mu *= transcripts_per_cell / float(mu.sum(axis=1).mean())
    empty = (rng.random(n_i * n_j) < empty_fraction) | (area < 0.1)
    mu *= np.where(empty, 0.0, area)[:, None]
    counts = rng.poisson(rng.gamma(4.0, mu / 4.0)).astype(np.int64)  # (cells, genes)
    gene_ids, genes = gene_table(n_genes, "Homo sapiens")
    controls = _CONTROLS[xoa]

    # -- transcripts --------------------------------------------------------------
    pad = 0.01 * s
    flat = counts.ravel()
    cell_k = np.repeat(np.arange(flat.size, dtype=np.int64) // n_genes, flat)
    gene_k = np.repeat(np.arange(flat.size, dtype=np.int64) % n_genes, flat)
    n_kept = cell_k.size
    kx = _uniform_in(rng, x_lo[cell_k] + pad, x_hi[cell_k] - pad)
    ky = _uniform_in(rng, y_lo[cell_k] + pad, y_hi[cell_k] - pad)
    kqv = rng.uniform(20.0, 40.0, n_kept)
    kqv[rng.random(n_kept) < 0.05] = 20.0  # the threshold itself is kept
    n_low = round(low_qv_fraction * n_kept)
    n_ctl = max(len(controls), round(control_fraction * n_kept))
    n_extra = n_low + n_ctl
    ex = rng.uniform(0.0, width_um, n_extra)
    ey = rng.uniform(0.0, height_um, n_extra)
    lqv = rng.uniform(0.0, 19.9, n_low)
    lqv[rng.random(n_low) < 0.1] = 19.99
    cqv = np.where(rng.random(n_ctl) < 0.8, rng.uniform(20.0, 40.0, n_ctl), rng.uniform(0.0, 20.0, n_ctl))
    ctl_k = np.concatenate([np.arange(len(controls)), rng.integers(0, len(controls), n_ctl - len(controls))])
    feature_code = np.concatenate([gene_k, rng.integers(0, n_genes, n_low), n_genes + ctl_k])
    all_names = genes + [c[0] for c in controls]
    categories = ["predesigned_gene"] * n_genes + [c[1] for c in controls]
    x = np.concatenate([kx, ex]).astype(np.float32)
    y = np.concatenate([ky, ey]).astype(np.float32)
    qv = np.concatenate([kqv, lqv, cqv]).astype(np.float32)
    kept = np.zeros(x.size, dtype=bool)
    kept[:n_kept] = True
    order = rng.permutation(x.size)
    x, y, qv, feature_code, kept = x[order], y[order], qv[order], feature_code[order], kept[order]
    n = x.size
    sq = np.clip(np.floor(y.astype(np.float64) / s).astype(np.int64), 0, n_j - 1) * n_i + np.clip(
        np.floor(x.astype(np.float64) / s).astype(np.int64), 0, n_i - 1
    )
    assigned = (rng.random(n) >= unassigned_fraction) & ~empty[sq]
    cell_names = np.array(_cell_id(np.arange(n_i * n_j, dtype=np.int64)), dtype=object)
    cell_id = np.where(assigned, cell_names[sq], "UNASSIGNED")
    names_arr = np.array(all_names, dtype=object)[feature_code]
    is_gene = feature_code < n_genes
    truth = pd.DataFrame(
        {
            "transcript_id": (np.uint64(281474976710656) + np.arange(n, dtype=np.uint64)),
            "cell_id": cell_id,
            "overlaps_nucleus": rng.integers(0, 2, n).astype(np.uint8),
            "feature_name": names_arr,
            "x_location": x,
            "y_location": y,
            "z_location": rng.uniform(10.0, 30.0, n).astype(np.float32),
            "qv": qv,
        }
    )
    fov = np.array(["A1", "A2", "B1", "B2"], dtype=object)[rng.integers(0, 4, n)]
    cols: dict[str, pa.Array] = {}
    for c in truth.columns:
        if c in ("cell_id", "feature_name"):
            values = truth[c].tolist()
            cols[c] = pa.array([v.encode() for v in values], pa.binary()) if xoa == "1" else pa.array(values, pa.string())
        else:
            cols[c] = pa.array(truth[c].to_numpy())
    if xoa == "1":
        cols["fov_name"] = pa.array([v.encode() for v in fov], pa.binary())
    else:
        cols["fov_name"] = pa.array(list(fov), pa.string())
        cols["nucleus_distance"] = pa.array(rng.uniform(0.0, 5.0, n).astype(np.float32))
        cols["codeword_index"] = pa.array(feature_code.astype(np.int32))
        cols["codeword_category"] = pa.array([categories[k] for k in feature_code], pa.string())
        cols["is_gene"] = pa.array(is_gene)
        truth["is_gene"] = is_gene
    pq.write_table(pa.table(cols), out / "transcripts.parquet", row_group_size=row_group_size)
    truth["kept"] = kept

    # -- cells, cell-feature matrix, experiment.xenium, morphology placeholder -----
    present = np.flatnonzero(~empty & (counts.sum(axis=1) > 0))
    sel = kept & assigned
    per_cell = np.bincount(sq[sel] * n_genes + feature_code[sel], minlength=n_i * n_j * n_genes)
    per_cell = per_cell.reshape(n_i * n_j, n_genes)[present]
    cells = pd.DataFrame(
        {
            "cell_id": cell_names[present].astype(str),
            "x_centroid": centres[present, 0],
            "y_centroid": centres[present, 1],
            "transcript_counts": per_cell.sum(axis=1).astype(np.int64),
            "control_probe_counts": np.zeros(present.size, dtype=np.int64),
            "total_counts": per_cell.sum(axis=1).astype(np.int64),
            "cell_area": area[present] * s * s,
            "nucleus_area": area[present] * s * s * 0.3,
        }
    )
    cells.to_parquet(out / "cells.parquet", index=False)
    if cell_matrix:
        write_10x_h5(
            out / "cell_feature_matrix.h5",
            sp.csr_matrix(per_cell),
            cells["cell_id"].tolist(),
            gene_ids,
            genes,
            "Homo sapiens",
        )
    experiment = {
        "major_version": 5 if xoa == "2" else 4,
        "run_name": "synthetic",
        "region_name": prefix,
        "panel_name": "synthetic panel",
        "panel_num_targets_predesigned": n_genes,
        "pixel_size": pixel_size_um_morph,
        "analysis_sw_version": "xenium-2.0.0.10" if xoa == "2" else "xenium-1.9.1.0",
        "num_cells": int(present.size),
        "transcripts_per_cell": int(np.median(per_cell.sum(axis=1))) if present.size else 0,
    }
    (out / "experiment.xenium").write_text(json.dumps(experiment, indent=2))
    morph = out / "morphology_focus.ome.tif" if xoa == "1" else out / "morphology_focus" / "morphology_focus_0000.ome.tif"
    morph.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        morph,
        rng.integers(0, 255, (32, 32)).astype(np.uint16),
        metadata={"axes": "YX", "PhysicalSizeX": pixel_size_um_morph, "PhysicalSizeY": pixel_size_um_morph},
    )

    # -- H&E, alignment, keypoints -------------------------------------------------
    um_to_he, he_to_morph, width_px, height_px = _affines(
        n_i * s, n_j * s, he_pixel_size_um, pixel_size_um_morph, rotation_deg, translation, margin_um
    )
    paint_counts = sp.csr_matrix(counts[present], dtype=np.int32)
    colours = spot_colours(paint_counts)
    grid = np.zeros((n_j, n_i, 3), dtype=np.uint8)
    painted = np.zeros((n_j, n_i), dtype=bool)
    grid[jj[present], ii[present]] = colours
    painted[jj[present], ii[present]] = True
    scene = XeniumScene(
        height=height_px,
        width=width_px,
        he_to_um=um_to_he.inverse(),
        spot_size_um=s,
        width_um=float(width_um),
        height_um=float(height_um),
        colour_grid=grid,
        painted=painted,
        seed=int(rng.integers(0, 2**31 - 1)),
    )
    image_path = hdir / f"{prefix}_he_image.tif"
    write_pyramidal_tiff(
        image_path,
        height=height_px,
        width=width_px,
        render=scene.render,
        pixel_size_um=he_pixel_size_um if embed_pixel_size else None,
    )
    alignment_path = hdir / f"{prefix}_he_imagealignment.csv"
    m = he_to_morph.to_array()
    alignment_path.write_text("".join(",".join(f"{v:.12g}" for v in row) + "\n" for row in m))
    kp_path: Path | None = None
    kp: pd.DataFrame | None = None
    if keypoints:
        he_pts = np.column_stack([rng.uniform(0.1, 0.9, n_keypoints) * width_px, rng.uniform(0.1, 0.9, n_keypoints) * height_px])
        fixed = he_to_morph.apply(he_pts) + rng.normal(0.0, keypoint_noise_px, (n_keypoints, 2))
        kp = pd.DataFrame({"fixedX": fixed[:, 0], "fixedY": fixed[:, 1], "alignmentX": he_pts[:, 0], "alignmentY": he_pts[:, 1]})
        kp_path = hdir / f"{prefix}_he_keypoints.csv"
        kp.to_csv(kp_path, index=False)

    return SyntheticXenium(
        path=out,
        image_path=image_path,
        alignment_path=alignment_path,
        keypoints_path=kp_path,
        xoa=xoa,
        transcripts=truth,
        genes=list(genes),
        gene_ids=list(gene_ids),
        he_to_morph=he_to_morph,
        um_to_he=um_to_he,
        morph_pixel_size_um=float(pixel_size_um_morph),
        he_pixel_size_um=float(he_pixel_size_um),
        image_shape=(height_px, width_px),
        width_um=float(width_um),
        height_um=float(height_um),
        paint_spot_size_um=s,
        paint_i=ii[present].copy(),
        paint_j=jj[present].copy(),
        paint_counts=paint_counts,
        colours=colours,
        keypoints=kp,
        scene=scene,
    )
