"""A seeded 3D tissue: smooth expression programmes and the morphology they render.

Everything is a pure function of points in the volume frame (z, y, x micrometres), so a
voxel of the volume and a pixel of a section cut through it at any depth see the same
tissue. Four programmes (smooth sums of anisotropic 3D Gaussian bumps, scaled to [0, 1])
drive disjoint gene blocks (as in the 2D generators) and the morphology:

- programme 0: nuclei density (spheres of 2.5-3.5 um radius on a jittered 9 um lattice),
- programme 1: lumens (empty spheres of 8-18 um radius on a jittered 56 um lattice),
- programme 2: stroma (cytoplasm) brightness,
- programme 3: texture period (oblique fibre-like bands, 24 um when silent, 8 um saturated).

Rendered as microCT-like grayscale (``microct``: one channel), as a two-channel light-sheet
analog (``otls``: nuclear and cytoplasmic stains), and as RGB H&E (sections).

Blocks can differ the way patients do (:func:`block_variation`): ``gene_mix`` changes the
morphology-to-expression rule (gene ``g`` follows a mix of programmes instead of its own
one, with its own gain), ``stain`` the block's stain/intensity (gain, offset and gamma of
the volume's intensities; the gain scales the H&E optical densities too). Without them
(the defaults) every block of a cohort follows one rule and one stain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import OptionError
from ._expression import N_PROGRAMS, gene_programs

__all__ = ["TissueField", "block_variation", "make_field"]

NUCLEUS_CELL_UM = 9.0
NUCLEUS_RADIUS_UM = (2.5, 3.5)
LUMEN_CELL_UM = 56.0
LUMEN_RADIUS_UM = (8.0, 18.0)
TEXTURE_PERIOD_UM = (24.0, 8.0)


def _hash01(cells: NDArray[np.int64], seed: int, salt: int) -> NDArray[np.float64]:
    """Uniform [0, 1) per integer lattice cell ``(N, 3)`` (splitmix64 of the cell, seed, salt)."""
    with np.errstate(over="ignore"):
        c = cells.astype(np.uint64)
        h = (
            c[:, 0] * np.uint64(0x9E3779B97F4A7C15)
            ^ c[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)
            ^ c[:, 2] * np.uint64(0x165667B19E3779F9)
            ^ np.uint64((seed * 1_000_003 + salt * 7919) & 0xFFFFFFFFFFFF)
        )
    return splitmix01(h)


def splitmix01(h: NDArray[np.uint64]) -> NDArray[np.float64]:
    """The splitmix64 finaliser of mixed 64-bit keys, as uniform [0, 1) floats (53 bits)."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    out: NDArray[np.float64] = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out


@dataclass(frozen=True, eq=False)
class TissueField:
    """The seeded tissue of one volume (see the module docstring)."""

    extent_um: tuple[float, float, float]
    centres: NDArray[np.float64]  # (K, B, 3) bump centres (z, y, x) um
    scales: NDArray[np.float64]  # (K, B, 3) bump sigmas um
    weights: NDArray[np.float64]  # (K, B), 0 for unused bumps
    lo: NDArray[np.float64]  # (K,)
    hi: NDArray[np.float64]  # (K,)
    gene_base: NDArray[np.float64]  # (G,) mean count of each gene at unit drive
    tissue: tuple[float, float, float, float, float, float]  # cy, cx, ay, ax, wobble, phase
    seed: int
    gene_mix: NDArray[np.float64] | None = None  # (G, K) programme weights per gene; None: its own programme
    stain: tuple[float, float, float] = (1.0, 0.0, 1.0)  # intensity gain, offset, gamma of this block

    @property
    def n_genes(self) -> int:
        return int(self.gene_base.shape[0])

    def _raw(self, p: NDArray[np.float64]) -> NDArray[np.float64]:
        out = np.zeros((p.shape[0], self.centres.shape[0]), dtype=np.float64)
        for k in range(self.centres.shape[0]):
            for b in range(self.centres.shape[1]):
                if self.weights[k, b] == 0:
                    continue
                d = (p - self.centres[k, b]) / self.scales[k, b]
                out[:, k] += self.weights[k, b] * np.exp(-0.5 * (d * d).sum(axis=1))
        return out

    def activity(self, points_um_zyx: NDArray[np.float64]) -> NDArray[np.float64]:
        """Programme activities in [0, 1], ``(N, K)``."""
        p = np.asarray(points_um_zyx, dtype=np.float64).reshape(-1, 3)
        out: NDArray[np.float64] = np.clip((self._raw(p) - self.lo) / (self.hi - self.lo), 0.0, 1.0)
        return out

    def in_tissue(self, points_um_zyx: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Inside the tissue: a wobbly elliptic cylinder along z, within the volume."""
        p = np.asarray(points_um_zyx, dtype=np.float64).reshape(-1, 3)
        cy, cx, ay, ax, wob, ph = self.tissue
        u, v = (p[:, 2] - cx) / ax, (p[:, 1] - cy) / ay
        theta = np.arctan2(v, u)
        rho = np.sqrt(u * u + v * v) / (1.0 + wob * np.sin(3.0 * theta + ph))
        ez, ey, ex = self.extent_um
        inside = (p[:, 0] >= 0) & (p[:, 0] < ez) & (p[:, 1] >= 0) & (p[:, 1] < ey) & (p[:, 2] >= 0) & (p[:, 2] < ex)
        out: NDArray[np.bool_] = (rho < 1.0) & inside
        return out

    def true_expression(self, points_um_zyx: NDArray[np.float64]) -> NDArray[np.float64]:
        """Expected counts ``(N, G)`` per spot (library size 1) of a tissue point; 0 off tissue.

        Gene ``g`` of programme ``k``: ``base_g * (0.1 + 6 a_k^1.5)``; with ``gene_mix``,
        ``a_k`` is replaced by the gene's mix of programmes ``sum_j gene_mix[g, j] a_j``."""
        p = np.asarray(points_um_zyx, dtype=np.float64).reshape(-1, 3)
        a = self.activity(p)
        if self.gene_mix is None:
            drive = a[:, gene_programs(self.n_genes, N_PROGRAMS)]
        else:
            drive = np.clip(a @ self.gene_mix.T, 0.0, 1.0)
        mu: NDArray[np.float64] = self.gene_base[None, :] * (0.1 + 6.0 * drive**1.5)
        mu[~self.in_tissue(p)] = 0.0
        return mu

    def components(self, points_um_zyx: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
        """The morphology at points: ``tissue``, ``nucleus``, ``lumen`` (0/1), ``stroma`` and
        ``texture`` in [0, 1]."""
        p = np.asarray(points_um_zyx, dtype=np.float64).reshape(-1, 3)
        a = self.activity(p)
        tissue = self.in_tissue(p)
        # lumens
        cell = np.floor(p / LUMEN_CELL_UM).astype(np.int64)
        r_l = LUMEN_RADIUS_UM[0] + (LUMEN_RADIUS_UM[1] - LUMEN_RADIUS_UM[0]) * _hash01(cell, self.seed, 1)
        jit = np.stack([_hash01(cell, self.seed, 2 + i) for i in range(3)], axis=1)
        r_max = LUMEN_RADIUS_UM[1]
        c_l = cell * LUMEN_CELL_UM + r_max + jit * (LUMEN_CELL_UM - 2 * r_max)
        key = ((cell[:, 0] + 4096) * 8192 + (cell[:, 1] + 4096)) * 8192 + (cell[:, 2] + 4096)
        _, first, inv = np.unique(key, return_index=True, return_inverse=True)
        a_cell = self.activity(c_l[first])[inv.ravel()]
        present_l = _hash01(cell, self.seed, 5) < 0.05 + 0.9 * a_cell[:, 1]
        lumen = present_l & (np.linalg.norm(p - c_l, axis=1) < r_l)
        # nuclei
        cell = np.floor(p / NUCLEUS_CELL_UM).astype(np.int64)
        r_n = NUCLEUS_RADIUS_UM[0] + (NUCLEUS_RADIUS_UM[1] - NUCLEUS_RADIUS_UM[0]) * _hash01(cell, self.seed, 11)
        jit = np.stack([_hash01(cell, self.seed, 12 + i) for i in range(3)], axis=1)
        r_max = NUCLEUS_RADIUS_UM[1]
        c_n = cell * NUCLEUS_CELL_UM + r_max + jit * (NUCLEUS_CELL_UM - 2 * r_max)
        present_n = _hash01(cell, self.seed, 15) < 0.08 + 0.8 * a[:, 0]
        nucleus = present_n & (np.linalg.norm(p - c_n, axis=1) < r_n) & ~lumen
        # texture: oblique bands whose period is set by programme 3
        period = TEXTURE_PERIOD_UM[0] + (TEXTURE_PERIOD_UM[1] - TEXTURE_PERIOD_UM[0]) * a[:, 3]
        phase = (0.8 * p[:, 2] + 0.6 * p[:, 1] + 0.35 * p[:, 0]) / period
        texture = 0.5 + 0.5 * np.sin(2.0 * math.pi * phase)
        t = tissue.astype(np.float64)
        return {
            "tissue": t,
            "nucleus": nucleus * t,
            "lumen": lumen * t,
            "stroma": a[:, 2],
            "texture": texture,
        }

    def _noise(self, p: NDArray[np.float64], salt: int) -> NDArray[np.float64]:
        cells = np.floor(p / 0.5).astype(np.int64)
        return _hash01(cells, self.seed, 100 + salt) - 0.5

    def render(self, points_um_zyx: NDArray[np.float64], modality: str) -> NDArray[np.uint8]:
        """Voxel values at points, ``(N, C)`` uint8: ``microct`` (1 channel), ``otls``
        (2 channels: nuclear, cytoplasmic) or ``he`` (RGB)."""
        p = np.asarray(points_um_zyx, dtype=np.float64).reshape(-1, 3)
        inside = np.flatnonzero(self.in_tissue(p))
        m = {k: np.zeros(len(p)) for k in ("tissue", "nucleus", "lumen", "stroma", "texture")}
        if len(inside):  # the morphology is evaluated on tissue points only (background is flat)
            for k, v in self.components(p[inside]).items():
                m[k][inside] = v
        t, nuc, lum, s, tex = m["tissue"], m["nucleus"], m["lumen"], m["stroma"], m["texture"]
        body = t * (1 - nuc) * (1 - lum)
        gain, offset, gamma = self.stain
        if modality == "microct":
            v = 14.0 * (1 - t) + lum * 30.0 + nuc * 225.0 + body * (70.0 + 110.0 * s * (0.65 + 0.35 * tex))
            out = (v + 16.0 * self._noise(p, 0))[:, None]
        elif modality == "otls":
            nuclear = 6.0 * (1 - t) + lum * 8.0 + nuc * 220.0 + body * (18.0 + 25.0 * tex)
            cyto = 6.0 * (1 - t) + lum * 12.0 + nuc * 70.0 + body * (60.0 + 150.0 * s * (0.6 + 0.4 * tex))
            out = np.stack([nuclear + 14.0 * self._noise(p, 1), cyto + 14.0 * self._noise(p, 2)], axis=1)
        elif modality == "he":
            h = nuc * 1.0 + body * 0.08 * tex
            e = body * (0.25 + 0.6 * s * (0.6 + 0.4 * tex)) + nuc * 0.2
            od_h = np.array([0.65, 0.70, 0.29]) * 2.2 * gain
            od_e = np.array([0.07, 0.99, 0.11]) * 1.6 * gain
            rgb = 250.0 * np.exp(-(h[:, None] * od_h + e[:, None] * od_e))
            out = rgb + 8.0 * self._noise(p, 3)[:, None]
        else:
            raise OptionError(f"modality must be 'microct', 'otls' or 'he', got {modality!r}")
        if modality != "he" and self.stain != (1.0, 0.0, 1.0):
            out = offset + gain * 255.0 * (np.clip(out, 0.0, 255.0) / 255.0) ** gamma
        res: NDArray[np.uint8] = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        return res


def make_field(
    extent_um: tuple[float, float, float], gene_base: NDArray[np.float64], rng: np.random.Generator, seed: int
) -> TissueField:
    """A seeded :class:`TissueField` over a volume of ``extent_um`` (z, y, x)."""
    ext = np.asarray(extent_um, dtype=np.float64)
    k_n, b_n = N_PROGRAMS, 4
    centres = np.zeros((k_n, b_n, 3))
    scales = np.ones((k_n, b_n, 3))
    weights = np.zeros((k_n, b_n))
    for k in range(k_n):
        nb = int(rng.integers(2, b_n + 1))
        for b in range(nb):
            centres[k, b] = rng.uniform(-0.1, 1.1, size=3) * ext
            frac = rng.uniform(0.2, 0.45)
            scales[k, b] = np.maximum(frac * ext, 40.0)
            weights[k, b] = rng.uniform(0.5, 1.0) * (1 if b == 0 or rng.uniform() < 0.75 else -0.5)
    cy, cx = ext[1] / 2 + rng.uniform(-0.04, 0.04) * ext[1], ext[2] / 2 + rng.uniform(-0.04, 0.04) * ext[2]
    tissue = (
        float(cy),
        float(cx),
        float(0.44 * ext[1]),
        float(0.44 * ext[2]),
        float(rng.uniform(0.03, 0.08)),
        float(rng.uniform(0, 6.28)),
    )
    probe = TissueField(tuple(ext), centres, scales, weights, np.zeros(k_n), np.ones(k_n), gene_base, tissue, seed)  # type: ignore[arg-type]
    g = [np.linspace(0.05, 0.95, n) * e for n, e in zip((7, 15, 15), ext, strict=True)]
    grid = np.stack(np.meshgrid(*g, indexing="ij"), axis=-1).reshape(-1, 3)
    grid = grid[probe.in_tissue(grid)]
    raw = probe._raw(grid)
    lo, hi = np.percentile(raw, 2, axis=0), np.percentile(raw, 98, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    return TissueField(tuple(float(e) for e in ext), centres, scales, weights, lo, hi, gene_base, tissue, seed)  # type: ignore[arg-type]


def block_variation(
    n_genes: int, rule_shift: float, stain_shift: float, seed: int
) -> tuple[NDArray[np.float64] | None, NDArray[np.float64], tuple[float, float, float]]:
    """How one block differs from the cohort's shared rule and stain: ``(gene_mix, gain,
    stain)``, seeded by ``seed`` alone (so the tissue itself is unchanged).

    ``rule_shift`` r in [0, 1]: gene ``g`` is driven by ``(1 - r)`` x its own programme
    + ``r`` x a random mix of all programmes (Dirichlet(0.5)), and its base count is
    multiplied by ``exp(N(0, 0.5 r))``; r = 0 gives ``gene_mix=None`` and gains of 1.
    ``stain_shift`` s >= 0: intensity gain ``exp(N(0, 0.25 s))``, offset ``N(0, 15 s)``
    (grey levels) and gamma ``exp(N(0, 0.3 s))``.
    """
    if not 0.0 <= rule_shift <= 1.0:
        raise OptionError(f"rule_shift must be in [0, 1], got {rule_shift}")
    if stain_shift < 0.0:
        raise OptionError(f"stain_shift must be >= 0, got {stain_shift}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    own = np.zeros((n_genes, N_PROGRAMS))
    own[np.arange(n_genes), gene_programs(n_genes, N_PROGRAMS)] = 1.0
    mix_rand = rng.dirichlet(np.full(N_PROGRAMS, 0.5), size=n_genes)
    gain = np.exp(rng.normal(0.0, 0.5 * rule_shift, size=n_genes))
    z = rng.normal(size=3)
    stain = (float(np.exp(0.25 * stain_shift * z[0])), float(15.0 * stain_shift * z[1]), float(np.exp(0.3 * stain_shift * z[2])))
    mix = None if rule_shift == 0.0 else (1.0 - rule_shift) * own + rule_shift * mix_rand
    return mix, gain, stain
