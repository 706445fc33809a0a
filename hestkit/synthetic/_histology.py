"""Histology-like synthetic tissue where expression shows through morphology, not colour.

Two cohort kinds, selected with ``make_visium(..., morphology=...)``; both render the whole
tissue (no spot disks) with per-patient stain variation (Beer-Lambert haematoxylin and eosin
with jittered stain vectors and intensities), and drive the genes non-linearly:

- ``"nuclei"``: nuclei on a jittered 12 um lattice. Programme 0 sets nuclear density,
  programme 1 nuclear size, programme 2 clustering (nuclei crowd towards the centres of 24 um
  blocks, and into some blocks more than others; mean density unchanged) and programme 3 elongation (aspect ratio 1 to
  2.3 at constant area, random orientation).
- ``"glands"``: glands on a jittered 56 um lattice in a stroma of strong eosin fibres.
  Programme 0 sets gland density, programme 1 gland size, programme 2 the thickness of the
  epithelial rim (nuclei along it), programme 3 elongation. The fibres (direction and spacing
  from a seeded stream function of their own) carry no expression: a nuisance.

The programmes are smooth seeded fields over the slide (micrometres), evaluated at any point,
so every window of the image and every spot see the same tissue. Gene ``g`` (see
:func:`histology_gene_design`) responds to its main programme through a sigmoid with its own
threshold, scaled by a second programme; the last genes are near-constant and lowly expressed
(like the many flat genes of a real panel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from ..errors import OptionError
from ._field import splitmix01

__all__ = [
    "HISTOLOGY_MORPHOLOGIES",
    "GlandTissue",
    "NucleiTissue",
    "SmoothField",
    "StainModel",
    "histology_counts",
    "histology_gene_design",
    "make_histology",
]

HISTOLOGY_MORPHOLOGIES = ("nuclei", "glands")
N_PROGRAMS = 4
FLAT_GENE_FRACTION = 0.15

NUCLEUS_CELL_UM = 12.0
NUCLEUS_RADIUS_UM = (1.7, 3.3)  # equivalent radius (constant area under elongation)
NUCLEUS_MAX_ASPECT = 2.3
CLUSTER_CELLS = 2
GLAND_CELL_UM = 56.0
GLAND_RADIUS_UM = (8.0, 20.0)
GLAND_RIM_UM = (3.0, 10.0)
GLAND_MAX_ASPECT = 1.6
FIBRE_PERIOD_UM = 9.0
GENE_DESIGN_SEED = 1818


def _hash01(i: NDArray[np.int64], j: NDArray[np.int64], seed: int, salt: int) -> NDArray[np.float64]:
    """Uniform [0, 1) per integer lattice cell ``(i, j)`` (splitmix64 of cell, seed, salt)."""
    with np.errstate(over="ignore"):
        h = (
            i.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            ^ j.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
            ^ np.uint64((seed * 1_000_003 + salt * 7919) & 0xFFFFFFFFFFFF)
        )
    return splitmix01(h)


@dataclass(frozen=True, eq=False)
class SmoothField:
    """``K`` smooth fields in [0, 1] over the slide plane (um): sums of Gaussian bumps,
    rescaled so that the 2nd-98th percentiles over reference points map to [0, 1]."""

    centres: NDArray[np.float64]  # (K, B, 2) bump centres (x, y) um
    scales: NDArray[np.float64]  # (K, B)
    weights: NDArray[np.float64]  # (K, B), 0 for unused bumps
    lo: NDArray[np.float64]  # (K,)
    hi: NDArray[np.float64]  # (K,)

    def raw(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        """Un-normalised fields at points (any equal shapes), shape ``(*x.shape, K)``."""
        out = np.zeros((*np.shape(x), self.centres.shape[0]), dtype=np.float64)
        for k in range(self.centres.shape[0]):
            for b in range(self.centres.shape[1]):
                if self.weights[k, b] == 0:
                    continue
                d2 = (x - self.centres[k, b, 0]) ** 2 + (y - self.centres[k, b, 1]) ** 2
                out[..., k] += self.weights[k, b] * np.exp(-0.5 * d2 / self.scales[k, b] ** 2)
        return out

    def __call__(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        out: NDArray[np.float64] = np.clip((self.raw(x, y) - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        return out

    @classmethod
    def random(cls, ref_um: NDArray[np.float64], n_fields: int, rng: np.random.Generator, max_bumps: int = 4) -> SmoothField:
        """Seeded fields over the box of the reference points ``(N, 2)`` (x, y) um."""
        lo_xy = ref_um.min(axis=0)
        span = np.maximum(np.ptp(ref_um, axis=0), 100.0)
        centres = np.zeros((n_fields, max_bumps, 2))
        scales = np.ones((n_fields, max_bumps))
        weights = np.zeros((n_fields, max_bumps))
        for k in range(n_fields):
            for b in range(int(rng.integers(2, max_bumps + 1))):
                centres[k, b] = lo_xy + rng.uniform(-0.1, 1.1, size=2) * span
                scales[k, b] = rng.uniform(0.15, 0.4) * float(span.mean())
                weights[k, b] = rng.uniform(0.5, 1.0)
        probe = cls(centres, scales, weights, np.zeros(n_fields), np.ones(n_fields))
        raw = probe.raw(ref_um[:, 0], ref_um[:, 1])
        lo, hi = np.percentile(raw, 2, axis=0), np.percentile(raw, 98, axis=0)
        return cls(centres, scales, weights, lo, np.where(hi > lo, hi, lo + 1.0))


@dataclass(frozen=True)
class StainModel:
    """Beer-Lambert H&E: ``rgb = 255 exp(-(h od_h + e od_e))`` plus a background tint;
    drawn per patient (sample) by :meth:`random`."""

    od_h: tuple[float, float, float] = (1.43, 1.54, 0.64)
    od_e: tuple[float, float, float] = (0.1, 1.3, 0.45)
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def random(cls, rng: np.random.Generator) -> StainModel:
        base = cls()
        h = np.asarray(base.od_h) * rng.uniform(0.75, 1.25) * rng.uniform(0.85, 1.15, size=3)
        e = np.asarray(base.od_e) * rng.uniform(0.7, 1.3) * rng.uniform(0.85, 1.15, size=3)
        tint = rng.uniform(-0.03, 0.03, size=3)
        return cls(
            (float(h[0]), float(h[1]), float(h[2])),
            (float(e[0]), float(e[1]), float(e[2])),
            (float(tint[0]), float(tint[1]), float(tint[2])),
        )

    def rgb(self, h: NDArray[np.float64], e: NDArray[np.float64]) -> NDArray[np.float64]:
        """``(..., 3)`` float RGB from haematoxylin and eosin densities of the same shape."""
        od = h[..., None] * np.asarray(self.od_h) + e[..., None] * np.asarray(self.od_e) + np.asarray(self.tint)
        out: NDArray[np.float64] = 250.0 * np.exp(-od)
        return out


def _pixel_noise(x_um: NDArray[np.float64], y_um: NDArray[np.float64], seed: int, salt: int) -> NDArray[np.float64]:
    """Per-0.5-um-cell noise in [-0.5, 0.5) on the grid ``y x x``."""
    i = np.floor(x_um / 0.5).astype(np.int64)[None, :]
    j = np.floor(y_um / 0.5).astype(np.int64)[:, None]
    return _hash01(np.broadcast_to(i, (len(y_um), len(x_um))), np.broadcast_to(j, (len(y_um), len(x_um))), seed, salt) - 0.5


def _cells(x_um: NDArray[np.float64], y_um: NDArray[np.float64], cell: float) -> tuple[NDArray[np.int64], ...]:
    """Lattice cells of a grid: per-column and per-row cell index, and the cell ranges."""
    ci = np.floor(x_um / cell).astype(np.int64)
    cj = np.floor(y_um / cell).astype(np.int64)
    ui = np.arange(ci.min(), ci.max() + 1, dtype=np.int64)
    uj = np.arange(cj.min(), cj.max() + 1, dtype=np.int64)
    return ci - ui[0], cj - uj[0], ui, uj


@dataclass(frozen=True, eq=False)
class NucleiTissue:
    """The ``"nuclei"`` morphology (see the module docstring)."""

    programs: SmoothField
    stain: StainModel
    seed: int

    def cell_parameters(self, ui: NDArray[np.int64], uj: NDArray[np.int64]) -> dict[str, NDArray[np.float64]]:
        """Nucleus of each lattice cell ``uj x ui``: presence, centre, axes, angle."""
        c = NUCLEUS_CELL_UM
        ii, jj = np.meshgrid(ui, uj)
        a = self.programs(((ii + 0.5) * c).astype(np.float64), ((jj + 0.5) * c).astype(np.float64))
        block = _hash01(np.floor_divide(ii, CLUSTER_CELLS), np.floor_divide(jj, CLUSTER_CELLS), self.seed, 1) < 0.5
        density = 0.12 + 0.8 * a[..., 0]
        p = density * (1.0 + 0.7 * a[..., 2] * np.where(block, 1.0, -1.0))
        present = _hash01(ii, jj, self.seed, 2) < p
        r = NUCLEUS_RADIUS_UM[0] + (NUCLEUS_RADIUS_UM[1] - NUCLEUS_RADIUS_UM[0]) * a[..., 1]
        aspect = 1.0 + (NUCLEUS_MAX_ASPECT - 1.0) * a[..., 3]
        major, minor = r * np.sqrt(aspect), r / np.sqrt(aspect)
        cx = (ii + _hash01(ii, jj, self.seed, 3)) * c  # anywhere in the cell: nuclei may overlap neighbours
        cy = (jj + _hash01(ii, jj, self.seed, 4)) * c
        # clustering: nuclei pulled towards the centre of their block of CLUSTER_CELLS^2 cells
        bc = CLUSTER_CELLS * c
        bx = (np.floor_divide(ii, CLUSTER_CELLS) + 0.5) * bc
        by = (np.floor_divide(jj, CLUSTER_CELLS) + 0.5) * bc
        pull = 1.0 - 0.6 * a[..., 2]
        cx, cy = bx + (cx - bx) * pull, by + (cy - by) * pull
        angle = math.pi * _hash01(ii, jj, self.seed, 5)
        dark = 0.85 + 0.3 * _hash01(ii, jj, self.seed, 6)
        return {"present": present.astype(np.float64), "cx": cx, "cy": cy, "major": major, "minor": minor, "angle": angle, "dark": dark}

    def render(self, x_um: NDArray[np.float64], y_um: NDArray[np.float64]) -> NDArray[np.float64]:
        """RGB float ``(len(y), len(x), 3)`` at pixel centres ``x_um`` (columns), ``y_um`` (rows)."""
        ci, cj, ui, uj = _cells(x_um, y_um, NUCLEUS_CELL_UM)
        par = self.cell_parameters(np.arange(ui[0] - 1, ui[-1] + 2), np.arange(uj[0] - 1, uj[-1] + 2))
        nucleus = np.zeros((len(y_um), len(x_um)), dtype=bool)
        rho2 = np.full((len(y_um), len(x_um)), 2.0)
        dark = np.ones((len(y_um), len(x_um)))
        for oj in (0, 1, 2):  # the pixel's cell and its 8 neighbours (index 1 = own cell)
            for oi in (0, 1, 2):
                pick = {k: v[cj[:, None] + oj, ci[None, :] + oi] for k, v in par.items()}
                dx = x_um[None, :] - pick["cx"]
                dy = y_um[:, None] - pick["cy"]
                ca, sa = np.cos(pick["angle"]), np.sin(pick["angle"])
                u = (dx * ca + dy * sa) / pick["major"]
                v = (-dx * sa + dy * ca) / pick["minor"]
                r2 = u * u + v * v
                hit = (r2 < 1.0) & (pick["present"] > 0) & (r2 < rho2)
                rho2 = np.where(hit, r2, rho2)
                dark = np.where(hit, pick["dark"], dark)
                nucleus |= hit
        noise = _pixel_noise(x_um, y_um, self.seed, 7)
        h = 0.06 + 0.04 * noise
        e = 0.42 + 0.08 * noise
        chrom = dark * (0.8 + 0.25 * np.minimum(rho2, 1.0)) + 0.25 * noise
        h = np.where(nucleus, chrom, h)
        e = np.where(nucleus, 0.15, e)
        return self.stain.rgb(h, e)


@dataclass(frozen=True, eq=False)
class GlandTissue:
    """The ``"glands"`` morphology (see the module docstring)."""

    programs: SmoothField
    fibres: SmoothField  # (2 fields, used raw as a stream-function perturbation)
    fibre_angle: float
    stain: StainModel
    seed: int

    def cell_parameters(self, ui: NDArray[np.int64], uj: NDArray[np.int64]) -> dict[str, NDArray[np.float64]]:
        """Gland of each lattice cell ``uj x ui``: presence, centre, radius, rim, aspect, angle."""
        c = GLAND_CELL_UM
        ii, jj = np.meshgrid(ui, uj)
        a = self.programs(((ii + 0.5) * c).astype(np.float64), ((jj + 0.5) * c).astype(np.float64))
        present = _hash01(ii, jj, self.seed, 21) < 0.12 + 0.83 * a[..., 0]
        r = GLAND_RADIUS_UM[0] + (GLAND_RADIUS_UM[1] - GLAND_RADIUS_UM[0]) * a[..., 1]
        rim = GLAND_RIM_UM[0] + (GLAND_RIM_UM[1] - GLAND_RIM_UM[0]) * a[..., 2]
        aspect = 1.0 + (GLAND_MAX_ASPECT - 1.0) * a[..., 3]
        margin = GLAND_RADIUS_UM[1] * math.sqrt(GLAND_MAX_ASPECT) + 0.5
        cx = ii * c + margin + _hash01(ii, jj, self.seed, 22) * (c - 2 * margin)
        cy = jj * c + margin + _hash01(ii, jj, self.seed, 23) * (c - 2 * margin)
        angle = math.pi * _hash01(ii, jj, self.seed, 24)
        return {"present": present.astype(np.float64), "cx": cx, "cy": cy, "r": r, "rim": np.minimum(rim, 0.7 * r), "aspect": aspect, "angle": angle}

    def fibre_phase(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        """The fibres' stream function over ``FIBRE_PERIOD_UM``: bands are its level sets."""
        raw = self.fibres.raw(x, y)
        scale = self.fibres.scales[:, 0].mean()
        psi = x * math.cos(self.fibre_angle) + y * math.sin(self.fibre_angle) + 0.9 * scale * (raw[..., 0] - raw[..., 1])
        out: NDArray[np.float64] = psi / FIBRE_PERIOD_UM
        return out

    def render(self, x_um: NDArray[np.float64], y_um: NDArray[np.float64]) -> NDArray[np.float64]:
        """RGB float ``(len(y), len(x), 3)`` at pixel centres ``x_um`` (columns), ``y_um`` (rows)."""
        ci, cj, ui, uj = _cells(x_um, y_um, GLAND_CELL_UM)
        par = self.cell_parameters(ui, uj)
        pick = {k: v[cj[:, None], ci[None, :]] for k, v in par.items()}
        gx, gy = np.meshgrid(x_um, y_um)
        dx, dy = gx - pick["cx"], gy - pick["cy"]
        ca, sa = np.cos(pick["angle"]), np.sin(pick["angle"])
        sq = np.sqrt(pick["aspect"])
        u = (dx * ca + dy * sa) / sq
        v = (-dx * sa + dy * ca) * sq
        rho = np.sqrt(u * u + v * v)
        present = pick["present"] > 0
        lumen = present & (rho < pick["r"] - pick["rim"])
        epi = present & ~lumen & (rho < pick["r"])
        # rim nuclei: one per angular bin, centred in the rim
        mid = pick["r"] - 0.5 * pick["rim"]
        n_bins = np.maximum(6, np.floor(2 * math.pi * mid / 5.5))
        theta = np.arctan2(v, u) + math.pi
        k = np.floor(theta / (2 * math.pi) * n_bins)
        tk = (k + 0.5) * 2 * math.pi / n_bins - math.pi
        nx, ny = mid * np.cos(tk), mid * np.sin(tk)
        nr = np.minimum(2.4, 0.45 * pick["rim"])
        rim_nucleus = epi & ((u - nx) ** 2 + (v - ny) ** 2 < nr**2)
        noise = _pixel_noise(x_um, y_um, self.seed, 25)
        band = 0.5 + 0.5 * np.sin(2 * math.pi * self.fibre_phase(gx, gy))
        fibre = band**3
        h = 0.04 + 0.08 * fibre + 0.03 * noise
        e = 0.2 + 0.8 * fibre + 0.06 * noise
        h = np.where(epi, 0.22 + 0.05 * noise, h)
        e = np.where(epi, 0.45 + 0.05 * noise, e)
        h = np.where(rim_nucleus, 1.0 + 0.2 * noise, h)
        e = np.where(rim_nucleus, 0.15, e)
        h = np.where(lumen, 0.01, h)
        e = np.where(lumen, 0.03 + 0.02 * noise, e)
        return self.stain.rgb(h, e)


def histology_gene_design(n_genes: int, rng: np.random.Generator) -> dict[str, NDArray[np.float64]]:
    """How each gene responds to the programmes: ``main`` programme (contiguous blocks over the
    informative genes), ``second`` programme, sigmoid ``threshold`` and ``slope``, the
    exponent of the second programme's scaling ``mix`` (0 = none) and ``flat`` (near-constant,
    lowly expressed genes, the last ``FLAT_GENE_FRACTION``)."""
    if n_genes < 2 * N_PROGRAMS:
        raise OptionError(f"need at least {2 * N_PROGRAMS} genes, got {n_genes}")
    n_flat = round(FLAT_GENE_FRACTION * n_genes)
    n_inf = n_genes - n_flat
    main = (np.arange(n_genes) * N_PROGRAMS) // max(n_inf, 1)
    main[n_inf:] = -1
    second = (main + rng.integers(1, N_PROGRAMS, size=n_genes)) % N_PROGRAMS
    return {
        "main": main.astype(np.float64),
        "second": second.astype(np.float64),
        "threshold": rng.uniform(0.25, 0.75, size=n_genes),
        "slope": rng.uniform(6.0, 14.0, size=n_genes) * rng.choice([-1.0, 1.0], size=n_genes, p=[0.25, 0.75]),
        "mix": rng.choice([0.0, 1.0, 2.0], size=n_genes),
        "flat": (main < 0).astype(np.float64),
        "base": rng.lognormal(np.log(3.0), 0.5, size=n_genes),
    }


def histology_counts(
    activity: NDArray[np.float64],
    in_tissue: NDArray[np.bool_],
    design: dict[str, NDArray[np.float64]],
    rng: np.random.Generator,
    *,
    dispersion: float = 6.0,
) -> sp.csr_matrix:
    """Negative-binomial counts ``(N, G)`` int32 CSR. Informative gene ``g``: mean
    ``lib * base_g * (0.08 + 6 sigmoid(slope_g (a_main - threshold_g)) * (0.3 + 0.7 a_second)^mix_g)``;
    flat genes: ``lib * 0.03``; off-tissue spots keep 5 % of it."""
    main = design["main"].astype(np.int64)
    second = design["second"].astype(np.int64)
    a_main = activity[:, np.maximum(main, 0)]
    a_sec = activity[:, second]
    resp = 1.0 / (1.0 + np.exp(-design["slope"] * (a_main - design["threshold"])))
    drive = 0.08 + 6.0 * resp * (0.3 + 0.7 * a_sec) ** design["mix"]
    mu_gene = design["base"] * drive
    mu_gene = np.where(design["flat"] > 0, 0.03, mu_gene)
    lib = rng.lognormal(0.0, 0.2, size=activity.shape[0]) * np.where(in_tissue, 1.0, 0.05)
    mu = lib[:, None] * mu_gene
    lam = rng.gamma(shape=dispersion, scale=mu / dispersion)
    counts = sp.csr_matrix(rng.poisson(lam).astype(np.int32))
    counts.sort_indices()
    return counts


def make_histology(
    kind: str, centres_um: NDArray[np.float64], in_tissue: NDArray[np.bool_], n_genes: int, rng: np.random.Generator, seed: int
) -> tuple[NucleiTissue | GlandTissue, NDArray[np.float64], sp.csr_matrix]:
    """The tissue model, the programme activity of each spot ``(N, K)`` and its counts, for
    spot centres in slide micrometres (level-0 pixel centres times the pixel size)."""
    if kind not in HISTOLOGY_MORPHOLOGIES:
        raise OptionError(f"histology morphology must be one of {HISTOLOGY_MORPHOLOGIES}, got {kind!r}")
    ref = centres_um[in_tissue] if in_tissue.sum() >= 4 else centres_um
    programs = SmoothField.random(ref, N_PROGRAMS, rng)
    stain = StainModel.random(rng)
    tissue: NucleiTissue | GlandTissue
    if kind == "nuclei":
        tissue = NucleiTissue(programs, stain, seed)
    else:
        fibres = SmoothField.random(ref, 2, np.random.default_rng([seed, 99]))  # own stream: no tie to expression
        angle = float(np.random.default_rng([seed, 98]).uniform(0, math.pi))
        tissue = GlandTissue(programs, fibres, angle, stain, seed)
    activity = programs(centres_um[:, 0], centres_um[:, 1])
    design = histology_gene_design(n_genes, np.random.default_rng([GENE_DESIGN_SEED, n_genes]))  # shared by all samples
    return tissue, activity, histology_counts(activity, in_tissue, design, rng)
