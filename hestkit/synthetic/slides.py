"""A seeded cohort of synthetic whole-slide images (no spatial transcriptomics) with labels.

Each slide is a pyramidal, tiled, JPEG-compressed TIFF written tile by tile (never held
whole, so 100,000 x 100,000 px slides are fine) with its pixel size embedded. It shows
glass, several tissue pieces with holes, pen strokes (green / blue / black ink), dust and
a dark slide-edge shadow. The tissue has three textures:

- A: loose stroma (the default);
- B: a dense cellular sheet over a seeded share of the tissue; that share is the
  continuous label ``score`` (regression target);
- C: glands, over a small region (under 10 % of the tissue) of the positive slides only:
  the binary label ``label`` (a small-region, multiple-instance target).

Slides also differ in their stain (a per-slide colour gain of the tissue), so a label
cannot be read from the mean colour of the whole slide.

Files written to ``out_dir``:

- ``{slide_id}.tif``: the slide;
- ``{slide_id}_truth.png``: the true tissue mask (255 = tissue; pen, dust, shadow and
  glass are 0) at ``truth_downsample`` (pixel ``(y, x)`` samples level-0
  ``((x + 0.5) d, (y + 0.5) d)``);
- ``{slide_id}_classes.png``: the class map at the same downsample
  (:data:`SLIDE_CLASS_CODES`);
- ``slides.csv``: ``slide_id, path, patient, label, score`` (what ``add-slides`` takes);
- ``truth.csv``: per slide the truth files and figures (see :func:`make_slide_cohort`).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from PIL import Image
from scipy import ndimage

from ..errors import OptionError
from ._slide_scene import CLASS_CODES, INKS, SlideScene
from ._tiff import write_pyramidal_tiff

__all__ = ["SLIDE_CLASS_CODES", "SlideScene", "make_slide_cohort", "make_slide_scene"]

SLIDE_CLASS_CODES = dict(CLASS_CODES)

_MAX_NODES = 1024


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> NDArray[np.float64]:
    z = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    out: NDArray[np.float64] = z / (z.std() + 1e-12)
    return out


def _wobbly(
    gx: NDArray[np.float64], gy: NDArray[np.float64], cx: float, cy: float, ax: float, ay: float, angle: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Signed distance-like field (px) of a wobbly rotated ellipse: > 0 inside."""
    dx, dy = gx - cx, gy - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = (dx * c + dy * s) / ax, (-dx * s + dy * c) / ay
    theta = np.arctan2(v, u)
    wob = np.ones_like(theta)
    for harmonic in (2, 3, 5):
        wob += rng.uniform(0.0, 0.12 if harmonic < 5 else 0.05) * np.sin(harmonic * theta + rng.uniform(0, 2 * math.pi))
    rho = np.sqrt(u * u + v * v) / wob
    out: NDArray[np.float64] = (1.0 - rho) * min(ax, ay)
    return out


def _polyline_field(
    pts: NDArray[np.float64], cell: float, shape: tuple[int, int], half_width: float
) -> NDArray[np.float64]:
    """``half_width - distance`` (level-0 px) from every node to a polyline."""
    seg = np.concatenate(
        [np.linspace(a, b, max(2, int(np.hypot(*(b - a)) / (0.25 * cell))), endpoint=False) for a, b in itertools.pairwise(pts)]
    )
    grid = np.ones(shape, dtype=bool)
    iy = np.clip(np.round(seg[:, 1] / cell).astype(np.int64), 0, shape[0] - 1)
    ix = np.clip(np.round(seg[:, 0] / cell).astype(np.int64), 0, shape[1] - 1)
    grid[iy, ix] = False
    dist = ndimage.distance_transform_edt(grid) * cell
    out: NDArray[np.float64] = half_width - dist
    return out


def make_slide_scene(
    height: int,
    width: int,
    *,
    seed: int,
    positive: bool,
    b_share: float,
    c_share: float = 0.05,
    n_pieces: int | None = None,
    pens: tuple[str, ...] | None = None,
    stain_jitter: float = 0.08,
) -> tuple[SlideScene, float]:
    """Build one slide's scene. Returns it and the achieved share of texture C (0 if negative)."""
    rng = np.random.default_rng([seed, 1])
    size = min(height, width)
    cell = max(8.0, max(height, width) / (_MAX_NODES - 1))
    hn, wn = math.ceil(height / cell) + 1, math.ceil(width / cell) + 1
    gy, gx = np.meshgrid(np.arange(hn) * cell, np.arange(wn) * cell, indexing="ij")

    # Tissue pieces (placed away from the edges, where the shadows are), each with holes.
    n_pieces = int(rng.integers(3, 6)) if n_pieces is None else n_pieces
    tissue = np.full((hn, wn), -1e9)
    placed: list[tuple[float, float, float]] = []
    for _ in range(200):
        if len(placed) == n_pieces:
            break
        r = rng.uniform(0.08, 0.15) * size
        cx = rng.uniform(0.15 * width + r, 0.85 * width - r) if 0.7 * width > 2 * r else width / 2
        cy = rng.uniform(0.15 * height + r, 0.85 * height - r) if 0.7 * height > 2 * r else height / 2
        if any(math.hypot(cx - px, cy - py) < 1.05 * (r + pr) for px, py, pr in placed):
            continue
        placed.append((cx, cy, r))
        ax, ay = r * rng.uniform(0.85, 1.15), r * rng.uniform(0.6, 1.0)
        piece = _wobbly(gx, gy, cx, cy, ax, ay, rng.uniform(0, math.pi), rng)
        for _ in range(int(rng.integers(1, 4))):  # holes (vessels, tears)
            a, d = rng.uniform(0, 2 * math.pi), rng.uniform(0.0, 0.5) * r
            hr = rng.uniform(0.06, 0.13) * r
            hole = _wobbly(gx, gy, cx + d * math.cos(a), cy + d * math.sin(a), hr, hr * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi), rng)
            piece = np.minimum(piece, -hole)
        tissue = np.maximum(tissue, piece)
    if not placed:
        raise OptionError(f"slide {height}x{width} px is too small for tissue pieces")
    # ragged edges: smooth noise of ~1 % of the slide
    tissue += 0.01 * size * _smooth_noise(rng, (hn, wn), sigma=max(1.0, 0.01 * size / cell))
    inside = tissue > 0

    # Texture B: a smooth random field cut at the quantile that gives the requested share.
    fb = _smooth_noise(rng, (hn, wn), sigma=max(1.5, 0.05 * size / cell))
    thr_b = float(np.quantile(fb[inside], 1.0 - b_share)) if 0 < b_share < 1 else (np.inf if b_share <= 0 else -np.inf)
    texb = np.clip(fb - thr_b, -50.0, 50.0)

    fields: dict[str, NDArray[np.float32]] = {"tissue": tissue.astype(np.float32), "texb": texb.astype(np.float32)}
    achieved_c = 0.0
    if positive:
        nodes = np.flatnonzero(inside)
        # centre well inside a piece, then grow a blob until it covers c_share of the tissue
        depth = tissue.ravel()[nodes]
        centre = nodes[rng.choice(len(nodes), p=depth / depth.sum())]
        cy_c, cx_c = gy.ravel()[centre], gx.ravel()[centre]
        shape_rng = np.random.default_rng([seed, 2])
        state = shape_rng.bit_generator.state
        lo, hi = 0.0, float(size)
        blob = np.zeros_like(tissue)
        for _ in range(18):
            r = 0.5 * (lo + hi)
            shape_rng.bit_generator.state = state
            blob = _wobbly(gx, gy, cx_c, cy_c, r, 0.7 * r, shape_rng.uniform(0, math.pi), shape_rng)
            share = float(((blob > 0) & inside).sum() / inside.sum())
            lo, hi = (r, hi) if share < c_share else (lo, r)
        fields["texc"] = blob.astype(np.float32)
        achieved_c = float(((blob > 0) & inside).sum() / inside.sum())

    # Pen strokes: arcs around a tissue piece, or a short scribble, in 1-3 ink colours.
    pens = tuple(rng.choice(list(INKS), size=int(rng.integers(1, 4)), replace=False)) if pens is None else pens
    for colour in pens:
        half = rng.uniform(0.003, 0.006) * size
        px, py, pr = placed[int(rng.integers(len(placed)))]
        if rng.uniform() < 0.6:
            t0 = rng.uniform(0, 2 * math.pi)
            t = np.linspace(t0, t0 + rng.uniform(0.6, 1.6) * math.pi, 40)
            rr = pr * rng.uniform(1.25, 1.45)
            pts = np.stack([px + rr * np.cos(t), py + rr * np.sin(t)], axis=1)
        else:
            a = rng.uniform(0, 2 * math.pi)
            start = np.array([px + 1.6 * pr * math.cos(a), py + 1.6 * pr * math.sin(a)])
            steps = rng.normal(0, 0.04 * size, (6, 2)) + 0.05 * size * np.array([math.cos(a + 1.5), math.sin(a + 1.5)])
            pts = start + np.cumsum(np.vstack([[0.0, 0.0], steps]), axis=0)
        pts[:, 0] = np.clip(pts[:, 0], 0.05 * width, 0.95 * width)
        pts[:, 1] = np.clip(pts[:, 1], 0.05 * height, 0.95 * height)
        fields[f"pen_{colour}"] = _polyline_field(pts, cell, (hn, wn), half).astype(np.float32)

    # Dust specks on the glass (debris: brownish, tiny).
    n_dust = int(rng.integers(15, 40))
    dust = np.stack(
        [rng.uniform(0, width, n_dust), rng.uniform(0, height, n_dust), rng.uniform(0.0008, 0.002, n_dust) * size], axis=1
    )
    # Slide-edge shadows on one or two sides.
    sides = rng.choice(["left", "right", "top", "bottom"], size=int(rng.integers(1, 3)), replace=False)
    shadows = tuple(
        (str(s), float(rng.uniform(0.02, 0.05) * (width if s in ("left", "right") else height)), float(rng.uniform(0.7, 0.95)))
        for s in sides
    )
    gain = 1.0 + rng.uniform(-stain_jitter, stain_jitter, 3)
    scene = SlideScene(height, width, cell, fields, shadows, dust, gain, seed)
    return scene, achieved_c


def make_slide_cohort(
    out_dir: str | Path,
    *,
    n_slides: int = 8,
    size_px: int | tuple[int, int] = 4096,
    seed: int = 0,
    mpp: float = 0.5,
    positive_share: float = 0.5,
    region_share: tuple[float, float] = (0.03, 0.08),
    score_range: tuple[float, float] = (0.05, 0.6),
    slides_per_patient: int = 1,
    truth_downsample: int | None = None,
    tile: int = 256,
    jpeg_quality: int = 85,
    pens: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Write a seeded cohort of synthetic slides and their truth; return one row per slide.

    Args:
        out_dir: folder for the slides, truth masks and CSVs (created).
        n_slides: number of slides.
        size_px: level-0 size, one int (square) or ``(height, width)``.
        seed: everything is a function of it.
        mpp: embedded level-0 pixel size, micrometres per pixel.
        positive_share: share of slides with the small texture-C region (``label = 1``);
            ``round(n_slides * positive_share)`` slides, in seeded order.
        region_share: range of the share of tissue covered by texture C in positive slides.
        score_range: range of the share of tissue covered by texture B (``score``).
        slides_per_patient: consecutive slides share a patient id.
        truth_downsample: downsample of the truth PNGs (power of two); default keeps
            their long side at most 2048 px.
        tile, jpeg_quality: TIFF tile edge and JPEG quality.
        pens: ink colours drawn on every slide (``green``, ``blue``, ``black``); default
            1 to 3 seeded colours per slide.

    Returns:
        DataFrame with ``slide_id, path, patient, label, score`` (also in ``slides.csv``)
        and, as in ``truth.csv``: ``truth_mask, classes_mask, truth_downsample, height,
        width, mpp, region_share`` (achieved texture-C share of the tissue), ``b_share``
        (target share of B), ``tissue_share`` (tissue share of the slide), ``pens``.
        ``score`` is the texture-B share of the tissue measured on the truth masks.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    height, width = (size_px, size_px) if isinstance(size_px, int) else (int(size_px[0]), int(size_px[1]))
    if n_slides < 1:
        raise OptionError(f"n_slides must be >= 1, got {n_slides}")
    if min(height, width) < 512:
        raise OptionError(f"size_px must be at least 512 px, got {height}x{width}")
    if not 0 < region_share[0] <= region_share[1] < 0.1:
        raise OptionError(f"region_share must lie in (0, 0.1), got {region_share}")
    if truth_downsample is None:
        truth_downsample = 1
        while max(height, width) / truth_downsample > 2048:
            truth_downsample *= 2
    rng = np.random.default_rng(seed)
    n_pos = round(n_slides * positive_share)
    positive = np.zeros(n_slides, dtype=bool)
    positive[rng.permutation(n_slides)[:n_pos]] = True
    rows = []
    for i in range(n_slides):
        slide_id = f"slide_{i:03d}"
        b_target = float(rng.uniform(*score_range))
        c_target = float(rng.uniform(*region_share))
        slide_seed = int(rng.integers(2**31))
        scene, c_achieved = make_slide_scene(height, width, seed=slide_seed, positive=bool(positive[i]), b_share=b_target, c_share=c_target, pens=pens)
        path = out / f"{slide_id}.tif"
        write_pyramidal_tiff(
            path,
            height=height,
            width=width,
            render=scene.render,
            pixel_size_um=mpp,
            tile=tile,
            jpeg_quality=jpeg_quality,
            bigtiff=height * width * 3 > 3_500_000_000,
        )
        tissue, cls = scene.truth(truth_downsample)
        truth_path = out / f"{slide_id}_truth.png"
        classes_path = out / f"{slide_id}_classes.png"
        Image.fromarray(tissue.astype(np.uint8) * 255).save(truth_path)
        Image.fromarray(cls).save(classes_path)
        n_t = max(int(tissue.sum()), 1)
        rows.append(
            {
                "slide_id": slide_id,
                "path": str(path.resolve()),
                "patient": f"patient_{i // max(1, slides_per_patient):03d}",
                "label": int(positive[i]),
                "score": float((cls == CLASS_CODES["tissue_b"]).sum() / n_t),
                "truth_mask": str(truth_path.resolve()),
                "classes_mask": str(classes_path.resolve()),
                "truth_downsample": int(truth_downsample),
                "height": height,
                "width": width,
                "mpp": float(mpp),
                "region_share": float((cls == CLASS_CODES["tissue_c"]).sum() / n_t),
                "region_share_nodes": c_achieved,
                "b_share": b_target,
                "tissue_share": float(tissue.mean()),
                "pens": "+".join(k[4:] for k in scene.fields if k.startswith("pen_")),
            }
        )
    df = pd.DataFrame(rows)
    df[["slide_id", "path", "patient", "label", "score"]].to_csv(out / "slides.csv", index=False)
    df.drop(columns=["path", "patient", "label", "score"]).to_csv(out / "truth.csv", index=False)
    return df
