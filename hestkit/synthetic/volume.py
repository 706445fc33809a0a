"""Seeded synthetic 3D cohorts: morphology volumes (3D TIFF) plus Visium sections cut at
chosen depths, with the true expression of every point known.

Per volume, under ``root/{volume_id}/``:

- ``volume.ome.tif``: OME-TIFF stack, axes ZYX (``microct``, uint8 grayscale) or ZCYX
  (``otls``, nuclear + cytoplasmic channels), ``PhysicalSizeZ/Y/X`` in micrometres,
  written plane by plane;
- ``sections/{sample_id}/``: a Space Ranger 2 ``outs`` folder (10x HDF5 matrix,
  ``spatial/tissue_positions.csv``, scale factors, hires/lowres PNGs) and its full-resolution
  H&E (pyramidal TIFF) rendered from the same tissue at depth ``z_um``, so ``hestkit
  ingest`` reads it like any Visium run;
- ``sections/{sample_id}/section_to_volume_affine.csv``: the 3x3 matrix (comma-separated
  rows) mapping the section's level-0 pixel ``(x, y, 1)`` (continuous, pixel ``i`` spans
  ``[i, i + 1)``) to the volume's in-plane micrometres ``(x_um, y_um, 1)``;
- ``sections/{sample_id}/landmarks.csv``: ``x_px,y_px,x_um,y_um`` pairs of the same map
  (optionally jittered by ``landmark_noise_um``).

Spot counts are negative-binomial around ``library x`` the mean of
:meth:`TissueField.true_expression` over the spot disk at the section depth.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import tifffile
from numpy.typing import NDArray

from ..errors import OptionError
from ..geometry import Affine
from ._expression import gene_table
from ._field import TissueField, block_variation, make_field
from ._grid import VISIUM_FIDUCIAL_DIAMETER_UM, VISIUM_SPOT_DIAMETER_UM, random_barcodes, visium_grid
from ._tenx import write_10x_h5, write_scalefactors, write_tissue_positions
from ._tiff import write_flat_image, write_pyramidal_tiff

__all__ = [
    "SyntheticSection",
    "SyntheticVolume",
    "SyntheticVolumeCohort",
    "make_large_volume",
    "make_volume",
    "make_volume_cohort",
]

Modality = Literal["microct", "otls"]


@dataclass(frozen=True, eq=False)
class SyntheticSection:
    """One Visium section cut from a synthetic volume, and its truth."""

    sample_id: str
    path: Path
    image_path: Path
    z_um: float
    affine: Affine  # section level-0 px (x, y) -> volume in-plane um (x, y)
    affine_path: Path
    landmarks_path: Path
    barcodes: list[str]
    in_tissue: NDArray[np.bool_]
    centres_px: NDArray[np.float64]  # (N, 2) x, y level-0 px, as written (integers)
    centres_um_zyx: NDArray[np.float64]  # (N, 3) spot centres in the volume frame
    counts: sp.csr_matrix  # all spots x genes (off-tissue rows are ambient)
    genes: list[str]
    pixel_size_um: float


@dataclass(frozen=True, eq=False)
class SyntheticVolume:
    """One synthetic volume: its file, geometry, sections and the tissue behind them."""

    volume_id: str
    path: Path
    modality: str
    shape_zyx: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]
    channels: int
    sections: tuple[SyntheticSection, ...]
    tissue: TissueField
    organ: str
    patient: str
    genes: list[str]

    def true_expression(self, points_um_zyx: NDArray[np.float64]) -> NDArray[np.float64]:
        """Expected counts per spot (library 1), ``(N, G)``, at volume-frame points."""
        return self.tissue.true_expression(points_um_zyx)

    def render(self, points_um_zyx: NDArray[np.float64]) -> NDArray[np.uint8]:
        """The volume's voxel values at points, ``(N, C)`` (before file rounding: exact)."""
        return self.tissue.render(points_um_zyx, self.modality)

    def voxel_centres_um(self, index_zyx: NDArray[np.int64]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = (np.asarray(index_zyx, dtype=np.float64) + 0.5) * np.asarray(self.voxel_size_um)
        return out


@dataclass(frozen=True, eq=False)
class SyntheticVolumeCohort:
    root: Path
    volumes: list[SyntheticVolume] = field(default_factory=list)

    @property
    def genes(self) -> list[str]:
        return self.volumes[0].genes if self.volumes else []


def _render_volume_tiff(
    path: Path, tissue: TissueField, shape_zyx: tuple[int, int, int], voxel_um: tuple[float, float, float], modality: str
) -> int:
    nz, ny, nx = shape_zyx
    vz, vy, vx = voxel_um
    ys = (np.arange(ny) + 0.5) * vy
    xs = (np.arange(nx) + 0.5) * vx
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    channels = 1 if modality == "microct" else 2

    def planes():  # type: ignore[no-untyped-def]
        for k in range(nz):
            pts = np.stack([np.full(gy.size, (k + 0.5) * vz), gy.ravel(), gx.ravel()], axis=1)
            img = tissue.render(pts, modality).reshape(ny, nx, channels)
            for c in range(channels):
                yield img[..., c]

    axes = "ZYX" if channels == 1 else "ZCYX"
    shape = (nz, ny, nx) if channels == 1 else (nz, channels, ny, nx)
    md = {
        "axes": axes,
        "PhysicalSizeZ": vz,
        "PhysicalSizeZUnit": "µm",
        "PhysicalSizeY": vy,
        "PhysicalSizeYUnit": "µm",
        "PhysicalSizeX": vx,
        "PhysicalSizeXUnit": "µm",
    }
    if channels == 2:
        md["Channel"] = {"Name": ["nuclear", "cytoplasm"]}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(planes(), shape=shape, dtype=np.uint8, metadata=md, photometric="minisblack", compression="zlib")
    return channels


def _disk_offsets(radius_um: float, n_rings: int = 2) -> NDArray[np.float64]:
    pts = [(0.0, 0.0)]
    for r in range(1, n_rings + 1):
        rr = radius_um * r / n_rings
        n = 6 * r
        for k in range(n):
            t = 2 * math.pi * k / n
            pts.append((rr * math.cos(t), rr * math.sin(t)))
    return np.asarray(pts)


def _write_section(
    out: Path,
    *,
    sample_id: str,
    tissue: TissueField,
    z_um: float,
    pixel_size_um: float,
    rotation_deg: float,
    genes: list[str],
    gene_ids: list[str],
    rng: np.random.Generator,
    landmark_noise_um: float,
) -> SyntheticSection:
    _ez, ey, ex = tissue.extent_um
    pitch_row = 50.0 * math.sqrt(3.0)
    n_cols = int(ex // 100.0) + 2
    n_rows = int(ey // pitch_row) + 2
    origin = (300.0, 280.0)
    grid = visium_grid(n_rows, n_cols, pixel_size_um, origin)
    c_px = grid.centres_px.mean(axis=0)
    th = math.radians(rotation_deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]) * pixel_size_um
    c_vol = np.array([ex / 2.0, ey / 2.0])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c_vol - rot @ c_px
    aff = Affine.from_array(m)
    xy_um = aff.apply(grid.centres_px)
    centres_zyx = np.stack([np.full(len(xy_um), z_um), xy_um[:, 1], xy_um[:, 0]], axis=1)
    in_tissue = tissue.in_tissue(centres_zyx)
    # expected counts: mean over the spot disk of the pointwise truth
    offs = _disk_offsets(VISIUM_SPOT_DIAMETER_UM / 2.0)
    mu = np.zeros((len(xy_um), tissue.n_genes))
    for dx, dy in offs:
        pts = centres_zyx + np.array([0.0, dy, dx])
        mu += tissue.true_expression(pts)
    mu /= len(offs)
    lib = rng.lognormal(0.0, 0.2, size=len(xy_um))
    ambient = 0.05 * tissue.gene_base[None, :] * 0.5
    mean = np.where(in_tissue[:, None], lib[:, None] * mu, lib[:, None] * ambient)
    lam = rng.gamma(4.0, mean / 4.0)
    counts = sp.csr_matrix(rng.poisson(lam).astype(np.int32))
    barcodes = random_barcodes(len(xy_um), rng)
    spatial = out / "spatial"
    spatial.mkdir(parents=True, exist_ok=True)
    keep = in_tissue
    write_10x_h5(
        out / "filtered_feature_bc_matrix.h5",
        counts[np.flatnonzero(keep)],
        [b for b, k in zip(barcodes, keep, strict=True) if k],
        gene_ids,
        genes,
        "Homo sapiens",
    )
    write_tissue_positions(
        spatial / "tissue_positions.csv",
        barcodes=barcodes,
        in_tissue=in_tissue,
        array_row=grid.array_row,
        array_col=grid.array_col,
        centres_px=grid.centres_px,
        header=True,
    )

    def render(ds: float, y0: int, x0: int, h: int, w: int) -> NDArray[np.uint8]:
        yy = (np.arange(y0, y0 + h) + 0.5) * ds
        xx = (np.arange(x0, x0 + w) + 0.5) * ds
        gy, gx = np.meshgrid(yy, xx, indexing="ij")
        xy = aff.apply(np.stack([gx.ravel(), gy.ravel()], axis=1))
        pts = np.stack([np.full(len(xy), z_um), xy[:, 1], xy[:, 0]], axis=1)
        return tissue.render(pts, "he").reshape(h, w, 3)

    longest = max(grid.height, grid.width)
    hires, lowres = min(0.25, 2000 / longest), min(0.08, 600 / longest)
    write_scalefactors(
        spatial / "scalefactors_json.json",
        hires=hires,
        lowres=lowres,
        spot_diameter_px=VISIUM_SPOT_DIAMETER_UM / pixel_size_um,
        fiducial_diameter_px=VISIUM_FIDUCIAL_DIAMETER_UM / pixel_size_um,
    )
    for name, scale in (("tissue_hires_image.png", hires), ("tissue_lowres_image.png", lowres)):
        h, w = max(1, round(grid.height * scale)), max(1, round(grid.width * scale))
        write_flat_image(spatial / name, render(1.0 / scale, 0, 0, h, w))
    image_path = out / "tissue_fullres.tif"
    write_pyramidal_tiff(image_path, height=grid.height, width=grid.width, render=render, pixel_size_um=pixel_size_um)
    affine_path = out / "section_to_volume_affine.csv"
    affine_path.write_text("\n".join(",".join(f"{v:.10g}" for v in row) for row in m) + "\n", encoding="ascii")
    lm_px = np.array(
        [
            [0.1 * grid.width, 0.1 * grid.height],
            [0.9 * grid.width, 0.12 * grid.height],
            [0.5 * grid.width, 0.5 * grid.height],
            [0.15 * grid.width, 0.85 * grid.height],
            [0.88 * grid.width, 0.9 * grid.height],
            [0.3 * grid.width, 0.6 * grid.height],
        ]
    )
    lm_um = aff.apply(lm_px) + rng.normal(0.0, landmark_noise_um, size=(len(lm_px), 2)) * (landmark_noise_um > 0)
    lines = ["x_px,y_px,x_um,y_um"] + [f"{a:.4f},{b:.4f},{c:.4f},{d:.4f}" for (a, b), (c, d) in zip(lm_px, lm_um, strict=True)]
    landmarks_path = out / "landmarks.csv"
    landmarks_path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return SyntheticSection(
        sample_id=sample_id,
        path=out,
        image_path=image_path,
        z_um=float(z_um),
        affine=aff,
        affine_path=affine_path,
        landmarks_path=landmarks_path,
        barcodes=barcodes,
        in_tissue=in_tissue,
        centres_px=grid.centres_px.copy(),
        centres_um_zyx=centres_zyx,
        counts=counts,
        genes=list(genes),
        pixel_size_um=pixel_size_um,
    )


def make_volume(
    out_dir: str | Path,
    *,
    volume_id: str,
    seed: int = 0,
    shape_zyx: tuple[int, int, int] = (40, 400, 400),
    voxel_size_um: tuple[float, float, float] = (2.0, 2.0, 2.0),
    section_depths_um: Sequence[float] | None = None,
    modality: Modality = "microct",
    n_genes: int = 40,
    section_pixel_size_um: float = 0.5,
    rotation_deg: float | None = None,
    landmark_noise_um: float = 0.0,
    organ: str = "Prostate",
    patient: str | None = None,
    gene_seed: int = 1234,
    rule_shift: float = 0.0,
    stain_shift: float = 0.0,
) -> SyntheticVolume:
    """One volume (OME-TIFF) and its Visium sections (see the module docstring).

    ``section_depths_um`` default: a quarter, half and three quarters of the depth.
    ``rotation_deg`` (default: seeded, within +-10 degrees) rotates each section in-plane.
    Gene bases depend on ``gene_seed`` only, so volumes of a cohort share one
    morphology-to-expression rule, unless ``rule_shift`` > 0 changes it for this block
    (each gene driven partly by a seeded mix of programmes, with its own gain) and
    ``stain_shift`` > 0 its stain/intensity (see
    :func:`hestkit.synthetic._field.block_variation`; both seeded by ``seed``, 0 = none).
    """
    if modality not in ("microct", "otls"):
        raise OptionError(f"modality must be 'microct' or 'otls', got {modality!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(gene_seed).lognormal(np.log(2.5), 0.5, size=n_genes)
    extent = tuple(float(s * v) for s, v in zip(shape_zyx, voxel_size_um, strict=True))
    tissue = make_field(extent, base, rng, seed)  # type: ignore[arg-type]
    if rule_shift or stain_shift:  # its own generator: the tissue and sections are the unshifted block's
        mix, gain, stain = block_variation(n_genes, rule_shift, stain_shift, seed)
        tissue = dataclasses.replace(tissue, gene_mix=mix, gene_base=tissue.gene_base * gain, stain=stain)
    gene_ids, genes = gene_table(n_genes, "Homo sapiens")
    vpath = out / "volume.ome.tif"
    channels = _render_volume_tiff(vpath, tissue, shape_zyx, voxel_size_um, modality)
    depths = list(section_depths_um) if section_depths_um is not None else [extent[0] * f for f in (0.25, 0.5, 0.75)]
    sections = []
    for i, z in enumerate(depths):
        sid = f"{volume_id}_s{i}"
        rot = float(rng.uniform(-10.0, 10.0)) if rotation_deg is None else float(rotation_deg)
        sections.append(
            _write_section(
                out / "sections" / sid,
                sample_id=sid,
                tissue=tissue,
                z_um=float(z),
                pixel_size_um=section_pixel_size_um,
                rotation_deg=rot,
                genes=genes,
                gene_ids=gene_ids,
                rng=rng,
                landmark_noise_um=landmark_noise_um,
            )
        )
    return SyntheticVolume(
        volume_id=volume_id,
        path=vpath,
        modality=modality,
        shape_zyx=tuple(int(s) for s in shape_zyx),  # type: ignore[arg-type]
        voxel_size_um=tuple(float(v) for v in voxel_size_um),  # type: ignore[arg-type]
        channels=channels,
        sections=tuple(sections),
        tissue=tissue,
        organ=organ,
        patient=patient if patient is not None else f"P{seed}",
        genes=genes,
    )


def make_volume_cohort(
    root: str | Path,
    *,
    seed: int = 0,
    n_volumes: int = 2,
    shape_zyx: tuple[int, int, int] = (40, 400, 400),
    voxel_size_um: tuple[float, float, float] = (2.0, 2.0, 2.0),
    section_depths_um: Sequence[float] | None = None,
    modality: Modality = "microct",
    n_genes: int = 40,
    section_pixel_size_um: float = 0.5,
    landmark_noise_um: float = 0.0,
    organ: str = "Prostate",
    rule_shift: float = 0.0,
    stain_shift: float = 0.0,
) -> SyntheticVolumeCohort:
    """``n_volumes`` volumes ``vol{i}`` (one patient each) sharing genes, each with Visium
    sections at ``section_depths_um``. By default they share the morphology-to-expression
    rule and the stain; ``rule_shift`` (0-1) and ``stain_shift`` (>= 0) give every block
    its own seeded change of both, as patients differ (see :func:`make_volume`)."""
    root = Path(root)
    vols = [
        make_volume(
            root / f"vol{i}",
            volume_id=f"vol{i}",
            seed=seed * 1000 + i,
            shape_zyx=shape_zyx,
            voxel_size_um=voxel_size_um,
            section_depths_um=section_depths_um,
            modality=modality,
            n_genes=n_genes,
            section_pixel_size_um=section_pixel_size_um,
            landmark_noise_um=landmark_noise_um,
            organ=organ,
            patient=f"P{i}",
            gene_seed=1234 + seed,
            rule_shift=rule_shift,
            stain_shift=stain_shift,
        )
        for i in range(n_volumes)
    ]
    return SyntheticVolumeCohort(root, vols)


def make_large_volume(
    path: str | Path,
    *,
    shape_zyx: tuple[int, int, int] = (200, 2000, 2000),
    voxel_size_um: tuple[float, float, float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    modality: Modality = "microct",
    tile_zyx: tuple[int, int, int] = (40, 256, 256),
    fmt: Literal["ome-tiff", "ome-zarr"] = "ome-tiff",
) -> Path:
    """A large volume for throughput and memory benchmarks, written plane by plane (OME-TIFF)
    or block by block (OME-Zarr) with flat memory.

    One tile of a seeded tissue (no background) is rendered and mirrored across the volume
    (alternate tiles flipped, so there are no seams): realistic texture at any size in
    seconds, but the expression truth of :func:`make_volume` does not apply to it.
    """
    if modality not in ("microct", "otls"):
        raise OptionError(f"modality must be 'microct' or 'otls', got {modality!r}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tz, ty, tx = (min(t, s) for t, s in zip(tile_zyx, shape_zyx, strict=True))
    ext = (tz * voxel_size_um[0], ty * voxel_size_um[1], tx * voxel_size_um[2])
    tissue = make_field(ext, np.ones(8), rng, seed)
    tissue = TissueField(
        ext,
        tissue.centres,
        tissue.scales,
        tissue.weights,
        tissue.lo,
        tissue.hi,
        tissue.gene_base,
        (ext[1] / 2, ext[2] / 2, 1e9, 1e9, 0.0, 0.0),
        seed,
    )
    gy, gx = np.meshgrid((np.arange(ty) + 0.5) * voxel_size_um[1], (np.arange(tx) + 0.5) * voxel_size_um[2], indexing="ij")
    channels = 1 if modality == "microct" else 2
    tile = np.empty((tz, ty, tx, channels), np.uint8)
    for k in range(tz):
        pts = np.stack([np.full(gy.size, (k + 0.5) * voxel_size_um[0]), gy.ravel(), gx.ravel()], axis=1)
        tile[k] = tissue.render(pts, modality).reshape(ty, tx, channels)
    flips = {
        (fz, fy, fx): tile[:: (-1 if fz else 1), :: (-1 if fy else 1), :: (-1 if fx else 1)]
        for fz in (0, 1)
        for fy in (0, 1)
        for fx in (0, 1)
    }
    nz, ny, nx = shape_zyx

    def block(z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.uint8]:
        outb = np.empty((z1 - z0, y1 - y0, x1 - x0, channels), np.uint8)
        for zb in range(z0 // tz, (z1 - 1) // tz + 1):
            for yb in range(y0 // ty, (y1 - 1) // ty + 1):
                for xb in range(x0 // tx, (x1 - 1) // tx + 1):
                    t = flips[(zb % 2, yb % 2, xb % 2)]
                    a0, a1 = max(z0, zb * tz), min(z1, (zb + 1) * tz)
                    b0, b1 = max(y0, yb * ty), min(y1, (yb + 1) * ty)
                    c0, c1 = max(x0, xb * tx), min(x1, (xb + 1) * tx)
                    outb[a0 - z0 : a1 - z0, b0 - y0 : b1 - y0, c0 - x0 : c1 - x0] = t[
                        a0 - zb * tz : a1 - zb * tz, b0 - yb * ty : b1 - yb * ty, c0 - xb * tx : c1 - xb * tx
                    ]
        return outb

    if fmt == "ome-zarr":
        from ..ngff import NgffVolumeWriter

        w = NgffVolumeWriter(out, shape_zyx, channels=channels, voxel_size_um=voxel_size_um, name=out.stem)
        cz = w.chunks_zyx[0]
        for z0 in range(0, nz, cz):
            for y0 in range(0, ny, 1024):
                w.write_block((z0, y0, 0), block(z0, min(z0 + cz, nz), y0, min(y0 + 1024, ny), 0, nx))
        w.build_pyramid()
        return out
    if fmt != "ome-tiff":
        raise OptionError(f"fmt must be 'ome-tiff' or 'ome-zarr', got {fmt!r}")

    def planes():  # type: ignore[no-untyped-def]
        for k in range(nz):
            img = block(k, k + 1, 0, ny, 0, nx)[0]
            for c in range(channels):
                yield img[..., c]

    vz, vy, vx = voxel_size_um
    md = {"axes": "ZYX" if channels == 1 else "ZCYX", "PhysicalSizeZ": vz, "PhysicalSizeY": vy, "PhysicalSizeX": vx}
    shape = (nz, ny, nx) if channels == 1 else (nz, channels, ny, nx)
    with tifffile.TiffWriter(out, ome=True, bigtiff=nz * ny * nx * channels > 2**31) as tw:
        tw.write(
            planes(), shape=shape, dtype=np.uint8, metadata=md, photometric="minisblack", compression="zlib", rowsperstrip=64
        )
    return out
