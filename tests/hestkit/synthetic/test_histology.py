"""The histology-like synthetic cohorts encode their expression programmes in morphology that
can be measured back from the rendered pixels; the glands' fibre texture does not track
expression."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from hestkit.synthetic._build import BuiltSample, build_visium_sample
from hestkit.synthetic._histology import GlandTissue, NucleiTissue, histology_gene_design


def _build(kind: str, seed: int) -> BuiltSample:
    return build_visium_sample(
        n_rows=8,
        n_cols=8,
        n_genes=60,
        pixel_size_um=1.0,
        origin_px=(200.0, 200.0),
        in_tissue_fraction=0.85,
        species="Homo sapiens",
        seed=seed,
        morphology=kind,
    )


def _windows(b: BuiltSample, half: int) -> tuple[np.ndarray, list[np.ndarray]]:
    idx = np.flatnonzero(b.in_tissue)
    out = []
    for i in idx:
        x, y = b.grid.centres_px[i]
        out.append(b.scene.render(1.0, int(y) - half, int(x) - half, 2 * half, 2 * half))
    return idx, out


def _shape_stats(mask: np.ndarray, min_px: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Objects of a mask (not touching the border): count, areas, elongations, centroids."""
    lab, _ = ndi.label(mask)
    edge = np.unique(np.r_[lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    areas, elong, cents = [], [], []
    for k, sl in enumerate(ndi.find_objects(lab)):
        if sl is None or (k + 1) in edge:
            continue
        yy, xx = np.nonzero(lab[sl] == k + 1)
        if len(yy) < min_px:
            continue
        ev = np.linalg.eigvalsh(np.cov(np.stack([yy, xx]).astype(float)))
        areas.append(len(yy))
        elong.append(np.sqrt(ev[1] / max(ev[0], 1e-3)))
        cents.append((yy.mean() + sl[0].start, xx.mean() + sl[1].start))
    return len(areas), np.array(areas, float), np.array(elong, float), np.array(cents, float).reshape(-1, 2)


def _nuclei_features(p: np.ndarray) -> list[float]:
    """Count, median area, median elongation and short-range pair excess of the nuclei."""
    mask = p[..., 0] < 140  # haematoxylin-dark
    n, areas, elong, cents = _shape_stats(mask, 4)
    pairs = len(cKDTree(cents).query_pairs(9.0)) if n > 2 else 0
    excess = pairs / max(0.5 * n * n * np.pi * 81 / mask.size, 1e-6)
    return [n, float(np.median(areas)) if n else 0.0, float(np.median(elong)) if n else 1.0, excess]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("seed", [1, 2])
def test_nuclei_morphology_encodes_the_programmes(seed: int) -> None:
    b = _build("nuclei", seed)
    tissue = b.scene.histology
    assert isinstance(tissue, NucleiTissue)
    idx, patches = _windows(b, 56)
    a = tissue.programs(b.grid.centres_px[idx, 0], b.grid.centres_px[idx, 1])
    f = np.array([_nuclei_features(p) for p in patches])
    assert _corr(f[:, 0], a[:, 0]) > 0.8  # density
    assert _corr(f[:, 1], a[:, 1]) > 0.9  # nuclear size
    assert _corr(f[:, 2], a[:, 3]) > 0.85  # elongation
    assert _corr(f[:, 3], a[:, 2]) > 0.4  # clustering (pair excess at < 9 um)
    # no spot disks: the image is tissue everywhere in the blob, nuclei included
    assert b.scene.render(1.0, 0, 0, 10, 10).std() < 10  # glass corner stays flat


def _gland_features(p: np.ndarray) -> list[float]:
    lumen = (p > 215).all(axis=-1)
    n, areas, elong, _ = _shape_stats(lumen, 10)
    return [n, float(np.sqrt(np.median(areas) / np.pi)) if n else 0.0, float(np.median(elong)) if n else 1.0]


def _fibre_features(p: np.ndarray) -> list[float]:
    """Orientation (cos 2t, sin 2t) and energy of the stroma texture (structure tensor)."""
    g = ndi.gaussian_filter(p[..., 1].astype(float), 1.0)
    gy, gx = np.gradient(g)
    stroma = ~(p > 215).all(axis=-1) & (p[..., 0] >= 140)
    jxx, jyy, jxy = (gx * gx)[stroma].mean(), (gy * gy)[stroma].mean(), (gx * gy)[stroma].mean()
    t = 0.5 * np.arctan2(2 * jxy, jxx - jyy)
    return [float(np.cos(2 * t)), float(np.sin(2 * t)), float(jxx + jyy)]


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    a = np.c_[np.ones(len(x)), x]
    beta = np.linalg.lstsq(a, y, rcond=None)[0]
    return float(1 - ((y - a @ beta) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def test_glands_encode_the_programmes_and_fibres_do_not() -> None:
    feats: list[list[float]] = []
    fibres: list[list[float]] = []
    progs, truth_orient, expr = [], [], []
    for seed in (1, 2, 3):
        b = _build("glands", seed)
        tissue = b.scene.histology
        assert isinstance(tissue, GlandTissue)
        idx, patches = _windows(b, 100)
        cx, cy = b.grid.centres_px[idx, 0], b.grid.centres_px[idx, 1]
        progs.append(tissue.programs(cx, cy))
        feats.extend(_gland_features(p) for p in patches)
        fibres.extend(_fibre_features(p) for p in patches)
        e = 1e-2
        gx = tissue.fibre_phase(cx + e, cy) - tissue.fibre_phase(cx - e, cy)
        gy = tissue.fibre_phase(cx, cy + e) - tissue.fibre_phase(cx, cy - e)
        t = np.arctan2(gy, gx)
        truth_orient.append(np.c_[np.cos(2 * t), np.sin(2 * t)])
        expr.append(np.log1p(b.counts[idx].toarray()))
    a, f, fib = np.concatenate(progs), np.array(feats), np.array(fibres)
    to, x = np.concatenate(truth_orient), np.concatenate(expr)
    assert _corr(f[:, 0], a[:, 0]) > 0.6  # gland density
    lumen_r = (8 + 12 * a[:, 1]) - np.minimum(3 + 7 * a[:, 2], 0.7 * (8 + 12 * a[:, 1]))
    assert _corr(f[:, 1], lumen_r) > 0.6  # gland size minus the epithelial rim
    assert _corr(f[:, 2], a[:, 3]) > 0.5  # elongation
    # the fibres are strong and measurable ...
    assert _corr(fib[:, 0], to[:, 0]) > 0.8 and _corr(fib[:, 1], to[:, 1]) > 0.8
    # ... but carry no expression: gene by gene, the fibre features explain far less than the glands
    informative = histology_gene_design(60, np.random.default_rng([1818, 60]))["flat"] == 0
    r2_fibre = np.mean([_r2(fib, x[:, g]) for g in np.flatnonzero(informative)])
    r2_gland = np.mean([_r2(f, x[:, g]) for g in np.flatnonzero(informative)])
    print(f"R2 fibre {r2_fibre:.3f}, glands {r2_gland:.3f}")
    assert r2_fibre < 0.1 and r2_gland > 2 * r2_fibre


def test_gene_design_is_shared_and_nonlinear() -> None:
    d = histology_gene_design(60, np.random.default_rng([1818, 60]))
    assert (d["flat"] > 0).sum() == 9 and set(d["main"][d["flat"] == 0]) == {0.0, 1.0, 2.0, 3.0}
    assert (d["mix"] > 0).any() and (d["slope"] < 0).any()  # interactions and repressed genes
    b1, b2 = _build("nuclei", 1), _build("nuclei", 2)
    assert b1.genes == b2.genes
    with pytest.raises(ValueError, match="morphology"):
        _build("stripes", 1)
