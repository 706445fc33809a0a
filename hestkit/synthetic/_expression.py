"""Seeded expression model and the expression-to-colour map of the synthetic scene.

A few latent programs vary smoothly over the array (sums of random Gaussian bumps),
so neighbouring spots correlate. Program ``k`` drives a contiguous, disjoint block of
genes (:func:`gene_programs`); counts are negative-binomial (Gamma-Poisson) around a
program-dependent mean. Programs 0, 1, 2 set the red, green and blue of each spot's
disk (:func:`spot_colour`).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from ..errors import OptionError

N_PROGRAMS = 4
COLOUR_MIN = 30
COLOUR_MAX = 200
COLOUR_SATURATION = 25.0
"""Mean count per gene of a colour block at which a channel reaches ``COLOUR_MAX``."""

_HUMAN_SYMBOLS = [
    "ACTB",
    "GAPDH",
    "EPCAM",
    "KRT8",
    "KRT18",
    "KRT19",
    "CDH1",
    "ESR1",
    "PGR",
    "ERBB2",
    "MKI67",
    "TOP2A",
    "VIM",
    "COL1A1",
    "COL1A2",
    "COL3A1",
    "FN1",
    "SPARC",
    "ACTA2",
    "TAGLN",
    "MYH11",
    "DCN",
    "LUM",
    "POSTN",
    "PTPRC",
    "CD3E",
    "CD4",
    "CD8A",
    "MS4A1",
    "CD68",
    "CD163",
    "LYZ",
    "HLA-DRA",
    "CXCL13",
    "IGKC",
    "JCHAIN",
    "PECAM1",
    "VWF",
    "CLDN5",
    "KDR",
    "SPON2",
    "FOXA1",
    "MSMB",
    "KLK3",
    "AR",
    "NKX3-1",
    "SCGB2A2",
    "MUC1",
    "TFF1",
    "TFF3",
    "AGR2",
    "S100A8",
    "S100A9",
    "MGP",
    "APOE",
    "APOD",
    "SFRP2",
    "MMP2",
    "MMP11",
    "CTSK",
    "FABP4",
    "ADIPOQ",
    "PLIN1",
    "MT-CO1",
]


def gene_programs(n_genes: int, n_programs: int = N_PROGRAMS) -> NDArray[np.int64]:
    """Program index of each gene: contiguous blocks ``[k n / K, (k + 1) n / K)``."""
    if n_genes < n_programs:
        raise OptionError(f"need at least {n_programs} genes, got {n_genes}")
    out: NDArray[np.int64] = (np.arange(n_genes, dtype=np.int64) * n_programs) // n_genes
    return out


def gene_table(n_genes: int, species: str) -> tuple[list[str], list[str]]:
    """Deterministic ``(ids, symbols)``: real symbols first, then ``GENE0065``... .

    Mouse (``Mus musculus``) gets title-case symbols and ``ENSMUSG`` ids. The table
    depends only on ``n_genes`` and the species, so samples share their genes.
    """
    mouse = species.strip().lower() in ("mus musculus", "mouse")
    symbols: list[str] = []
    for i in range(n_genes):
        sym = _HUMAN_SYMBOLS[i] if i < len(_HUMAN_SYMBOLS) else f"GENE{i + 1:04d}"
        if mouse:
            sym = "mt-Co1" if sym == "MT-CO1" else sym[:1] + sym[1:].lower()
        symbols.append(sym)
    prefix = "ENSMUSG" if mouse else "ENSG"
    ids = [f"{prefix}{100000 + 17 * i:011d}" for i in range(n_genes)]
    return ids, symbols


def program_activity(
    centres_um: NDArray[np.float64],
    rng: np.random.Generator,
    n_programs: int = N_PROGRAMS,
) -> NDArray[np.float64]:
    """Smooth spatial activity in [0, 1] of each program at each spot, ``(N, K)``."""
    lo = centres_um.min(axis=0)
    span = np.maximum(np.ptp(centres_um, axis=0), 100.0)
    out = np.empty((centres_um.shape[0], n_programs), dtype=np.float64)
    for k in range(n_programs):
        n_bumps = int(rng.integers(2, 5))
        field = np.zeros(centres_um.shape[0], dtype=np.float64)
        for _ in range(n_bumps):
            centre = lo + rng.uniform(-0.1, 1.1, size=2) * span
            scale = rng.uniform(0.15, 0.45) * float(span.mean())
            d2 = ((centres_um - centre) ** 2).sum(axis=1)
            field += rng.uniform(0.5, 1.0) * np.exp(-0.5 * d2 / scale**2)
        f_lo, f_hi = float(field.min()), float(field.max())
        out[:, k] = (field - f_lo) / (f_hi - f_lo) if f_hi > f_lo else 0.5
    return out


def simulate_counts(
    activity: NDArray[np.float64],
    in_tissue: NDArray[np.bool_],
    n_genes: int,
    rng: np.random.Generator,
    *,
    dispersion: float = 4.0,
    off_tissue_scale: float = 0.05,
) -> sp.csr_matrix:
    """Integer counts ``(N spots, n_genes)`` int32 CSR from program activities.

    The mean of gene ``g`` (program ``k``) at spot ``i`` is
    ``lib_i * base_g * (0.1 + 6 a_ik^1.5)``; spots off tissue keep only a small
    ambient fraction of it.
    """
    n_spots, n_programs = activity.shape
    programs = gene_programs(n_genes, n_programs)
    base = np.asarray(rng.lognormal(mean=np.log(2.5), sigma=0.5, size=n_genes))
    lib_raw = np.asarray(rng.lognormal(mean=0.0, sigma=0.2, size=n_spots))
    library = np.where(in_tissue, lib_raw, lib_raw * off_tissue_scale)
    drive = 0.1 + 6.0 * activity[:, programs] ** 1.5
    mu = library[:, None] * base[None, :] * drive
    lam = rng.gamma(shape=dispersion, scale=mu / dispersion)
    dense = rng.poisson(lam).astype(np.int32)
    counts = sp.csr_matrix(dense, dtype=np.int32)
    counts.sort_indices()
    return counts


def spot_colour(
    counts_row: NDArray[np.integer] | NDArray[np.floating],
) -> NDArray[np.uint8]:
    """Flat disk colour ``(r, g, b)`` uint8 of a spot, a function of its counts only.

    Channel ``c`` is ``log1p`` of the mean count over the genes of program ``c``
    (blocks from :func:`gene_programs` on ``len(counts_row)``), mapped linearly from
    ``[0, log1p(COLOUR_SATURATION)]`` to ``[COLOUR_MIN, COLOUR_MAX]`` and clipped.
    """
    row = np.asarray(counts_row, dtype=np.float64).ravel()
    out: NDArray[np.uint8] = spot_colours(row[None, :])[0]
    return out


def spot_colours(
    counts: NDArray[np.integer] | NDArray[np.floating] | sp.spmatrix,
) -> NDArray[np.uint8]:
    """:func:`spot_colour` of every row of a dense or sparse counts matrix, ``(N, 3)``."""
    mat = sp.csr_matrix(counts, dtype=np.float64) if sp.issparse(counts) else None
    n_genes = int(mat.shape[1]) if mat is not None else int(np.asarray(counts).shape[1])
    programs = gene_programs(n_genes)
    channels = []
    for c in range(3):
        cols = np.flatnonzero(programs == c)
        if mat is not None:
            block_sum = np.asarray(mat[:, cols].sum(axis=1)).ravel()
        else:
            block_sum = np.asarray(counts, dtype=np.float64)[:, cols].sum(axis=1)
        channels.append(np.log1p(block_sum / cols.size))
    level = np.stack(channels, axis=1) / np.log1p(COLOUR_SATURATION)
    value = COLOUR_MIN + (COLOUR_MAX - COLOUR_MIN) * np.clip(level, 0.0, 1.0)
    out: NDArray[np.uint8] = np.rint(value).astype(np.uint8)
    return out


def stripe_periods_um(
    counts: NDArray[np.integer] | NDArray[np.floating] | sp.spmatrix,
    *,
    finest_um: float = 5.0,
    coarsest_um: float = 20.0,
) -> NDArray[np.float64]:
    """Stripe period (um) of each spot for the "texture" morphology: program 3 (the one
    the disk colour does not show) sets it, from ``coarsest_um`` (silent) down to
    ``finest_um`` (saturated), on the same log1p scale as the colours."""
    mat = sp.csr_matrix(counts, dtype=np.float64)
    programs = gene_programs(int(mat.shape[1]))
    cols = np.flatnonzero(programs == 3)
    level = np.log1p(np.asarray(mat[:, cols].sum(axis=1)).ravel() / max(cols.size, 1)) / np.log1p(COLOUR_SATURATION)
    out: NDArray[np.float64] = coarsest_um + (finest_um - coarsest_um) * np.clip(level, 0.0, 1.0)
    return out


def program_levels(
    counts: NDArray[np.integer] | NDArray[np.floating] | sp.spmatrix,
) -> NDArray[np.float64]:
    """``(N, N_PROGRAMS)`` level in ``[0, 1]`` of each program at each spot: ``log1p`` of the
    mean count over the program's genes on the colour scale (saturating at
    ``COLOUR_SATURATION``)."""
    mat = sp.csr_matrix(counts, dtype=np.float64)
    programs = gene_programs(int(mat.shape[1]))
    out = np.empty((mat.shape[0], N_PROGRAMS), dtype=np.float64)
    for k in range(N_PROGRAMS):
        cols = np.flatnonzero(programs == k)
        mean = np.asarray(mat[:, cols].sum(axis=1)).ravel() / max(cols.size, 1)
        out[:, k] = np.clip(np.log1p(mean) / np.log1p(COLOUR_SATURATION), 0.0, 1.0)
    return out


PLAID_STAIN_RGB = (150, 95, 165)
"""Mean disk colour of the "plaid" morphology (a haematoxylin-like purple)."""
PLAID_STAIN_JITTER = 30


def plaid_parameters(
    counts: NDArray[np.integer] | NDArray[np.floating] | sp.spmatrix,
    rng: np.random.Generator,
    *,
    finest_um: float = 6.0,
    coarsest_um: float = 24.0,
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """Disk colours and texture of the "plaid" morphology, where the image shows expression
    only through texture.

    Returns ``(colours, pattern)``. ``colours`` ``(N, 3)`` is a random stain colour per spot
    (``PLAID_STAIN_RGB`` +- ``PLAID_STAIN_JITTER``, independent of expression). ``pattern``
    ``(N, 5)`` holds, per spot, two perpendicular gratings: period of the first (um,
    program 0: ``coarsest_um`` silent to ``finest_um`` saturated), its orientation (radians,
    program 1: 0 to pi/2), the contrast of both (program 2: 0.15 to 0.75), the period of the
    second (um, program 3) and a random phase.
    """
    level = program_levels(counts)
    n = level.shape[0]
    jitter = rng.integers(-PLAID_STAIN_JITTER, PLAID_STAIN_JITTER + 1, size=(n, 3))
    colours = np.clip(np.asarray(PLAID_STAIN_RGB)[None, :] + jitter, 0, 255).astype(np.uint8)
    pattern = np.empty((n, 5), dtype=np.float64)
    pattern[:, 0] = coarsest_um + (finest_um - coarsest_um) * level[:, 0]
    pattern[:, 1] = 0.5 * np.pi * level[:, 1]
    pattern[:, 2] = 0.15 + 0.6 * level[:, 2]
    pattern[:, 3] = coarsest_um + (finest_um - coarsest_um) * level[:, 3]
    pattern[:, 4] = rng.uniform(0.0, 2.0 * np.pi, size=n)
    return colours, pattern
