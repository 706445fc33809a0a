"""The synthetic whole-slide scene: glass, tissue pieces with holes, three tissue textures,
pen strokes, dust and slide-edge shadows, rendered window by window at any downsample.

Geometry lives in a few smooth scalar fields sampled on a coarse node grid (``cell``
level-0 px between nodes) and bilinearly interpolated at every pixel centre, so edges are
smooth at any resolution and any window of any level is rendered independently and
consistently (the truth mask is the same fields evaluated on a coarse grid):

- ``tissue > 0``: tissue (pieces are wobbly ellipses, holes are cut out of them);
- ``texb > 0``: tissue texture B (its share of the tissue is the continuous score);
- ``texc > 0``: tissue texture C (a small region, only in positive slides);
- ``pen_k > 0``: ink of pen ``k`` (drawn over everything, never tissue in the truth).

Textures are periodic level-0 patterns (``PATTERN_PX``), box-downsampled per level, so a
pyramid level looks like the downsampled level 0 (no aliasing of the fine texture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from ..errors import OptionError

__all__ = ["CLASS_CODES", "PATTERN_PX", "SlideScene"]

PATTERN_PX = 512
GLASS = (242, 240, 241)
SHADOW = (58, 58, 64)
INKS = {"green": (38, 128, 72), "blue": (40, 62, 158), "black": (34, 34, 40)}
DUST = (150, 128, 112)

#: Codes of the class map (``{slide_id}_classes.png``).
CLASS_CODES = {"glass": 0, "tissue_a": 1, "tissue_b": 2, "tissue_c": 3, "pen": 4, "dust": 5, "shadow": 6}

F32 = NDArray[np.float32]


def _wrap_dist2(grid: NDArray[np.float64], centre: NDArray[np.float64]) -> NDArray[np.float64]:
    d = np.abs(grid[None, :] - centre[:, None])
    d = np.minimum(d, PATTERN_PX - d)
    out: NDArray[np.float64] = d * d
    return out


def _dots(
    canvas: NDArray[np.float64],
    rng: np.random.Generator,
    n: int,
    radius: tuple[float, float],
    colour: tuple[float, float, float],
    *,
    ring: float = 0.0,
) -> None:
    """Paint ``n`` toroidally wrapped disks (or rings of width ``ring``) on the canvas."""
    ax = np.arange(PATTERN_PX, dtype=np.float64) + 0.5
    for _ in range(n):
        cx, cy = rng.uniform(0, PATTERN_PX, 2)
        r = rng.uniform(*radius)
        lo_x, lo_y = int(cx - r - 2), int(cy - r - 2)
        idx_x = np.arange(lo_x, lo_x + int(2 * r + 5)) % PATTERN_PX
        idx_y = np.arange(lo_y, lo_y + int(2 * r + 5)) % PATTERN_PX
        dx2 = _wrap_dist2(ax[idx_x], np.array([cx]))[0]
        dy2 = _wrap_dist2(ax[idx_y], np.array([cy]))[0]
        d = np.sqrt(dy2[:, None] + dx2[None, :])
        if ring > 0:
            inside = (d < r) & (d > r - ring)
        else:
            # elongated, slightly irregular nuclei: squash along a random axis
            inside = d < r * (1.0 + 0.25 * rng.uniform(-1, 1))
        sub = canvas[np.ix_(idx_y, idx_x)]
        sub[inside] = colour
        canvas[np.ix_(idx_y, idx_x)] = sub


def _texture(kind: str, rng: np.random.Generator, gain: NDArray[np.float64]) -> NDArray[np.uint8]:
    """One ``PATTERN_PX``-periodic level-0 pattern ``(P, P, 3)`` uint8."""
    p = PATTERN_PX
    ax = np.arange(p, dtype=np.float64)
    if kind == "glass":
        canvas = np.empty((p, p, 3))
        canvas[:] = GLASS
        canvas += rng.uniform(-2.5, 2.5, (p, p, 1))
        return np.clip(canvas, 0, 255).astype(np.uint8)
    if kind in INKS:
        canvas = np.empty((p, p, 3))
        canvas[:] = INKS[kind]
        canvas += rng.uniform(-6, 6, (p, p, 1))
        return np.clip(canvas, 0, 255).astype(np.uint8)
    if kind == "dust":
        canvas = np.empty((p, p, 3))
        canvas[:] = DUST
        canvas += rng.uniform(-8, 8, (p, p, 1))
        return np.clip(canvas, 0, 255).astype(np.uint8)
    # Tissue: eosin-pink stroma with oblique fibres, purple nuclei.
    k = 2 * math.pi / p
    fibres = np.sin(k * 8 * (ax[None, :] * 0.8 + ax[:, None] * 0.6)) + 0.5 * np.sin(k * 21 * (ax[None, :] - 0.3 * ax[:, None]))
    canvas = np.empty((p, p, 3))
    if kind == "tissue_a":  # loose stroma, sparse small nuclei
        canvas[:] = (228, 168, 204)
        canvas += 7.0 * fibres[..., None]
        _dots(canvas, rng, 160, (3.0, 4.5), (112, 62, 150))
    elif kind == "tissue_b":  # dense cellular sheet: many large dark nuclei
        canvas[:] = (212, 150, 200)
        canvas += 4.0 * fibres[..., None]
        _dots(canvas, rng, 900, (3.5, 5.5), (86, 44, 132))
    elif kind == "tissue_c":  # glands: pale lumens ringed by nuclei, in pink stroma
        canvas[:] = (224, 160, 200)
        canvas += 5.0 * fibres[..., None]
        _dots(canvas, rng, 22, (16.0, 28.0), (246, 230, 240))
        _dots(canvas, rng, 22, (22.0, 34.0), (92, 46, 140), ring=5.0)
        _dots(canvas, rng, 40, (3.0, 4.5), (112, 62, 150))
    else:
        raise OptionError(f"unknown texture {kind!r}")
    canvas += rng.uniform(-5, 5, (p, p, 1))
    canvas = 255.0 - (255.0 - canvas) * gain[None, None, :]
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _downsample(pattern: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    p = pattern.shape[0]
    if factor == 1:
        return pattern  # identical to the mean over 1 x 1 blocks, without the float pass
    if factor >= p:
        return np.round(pattern.reshape(-1, 3).mean(axis=0)).astype(np.uint8)[None, None, :]
    q = p // factor
    out: NDArray[np.uint8] = np.round(pattern.reshape(q, factor, q, factor, 3).mean(axis=(1, 3))).astype(np.uint8)
    return out


def _interp_index(pos: NDArray[np.float64], cell: float, n_nodes: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Bilinear interpolation on a node grid: left node index and weight of the right one."""
    u = np.clip(pos / cell, 0.0, n_nodes - 1.0)
    j = np.minimum(np.floor(u).astype(np.int64), n_nodes - 2)
    return j, (u - j).astype(np.float32)


@dataclass(frozen=True, eq=False)
class SlideScene:
    """Everything needed to render any window of one synthetic slide (see module docstring).

    Attributes:
        height, width: level-0 size in pixels.
        cell: level-0 px between field nodes.
        fields: ``name -> (Hn, Wn)`` float32 node values (``tissue``, ``texb``, ``texc``,
            ``pen_<colour>`` ...).
        shadows: ``(side, width_px, strength)`` of each slide-edge shadow, side in
            ``left/right/top/bottom``.
        dust: ``(N, 3)`` dust specks ``(x, y, radius)`` in level-0 px.
        gain: per-channel stain gain of the tissue textures (per-slide stain variation).
        seed: pattern seed.
    """

    height: int
    width: int
    cell: float
    fields: dict[str, F32]
    shadows: tuple[tuple[str, float, float], ...]
    dust: NDArray[np.float64]
    gain: NDArray[np.float64]
    seed: int
    _patterns: dict[str, NDArray[np.uint8]] = field(init=False, repr=False)
    _cache: dict[tuple[str, int], NDArray[np.uint8]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 7])
        kinds = ["glass", "tissue_a", "tissue_b", "tissue_c", "dust", *INKS]
        object.__setattr__(self, "_patterns", {k: _texture(k, rng, self.gain) for k in kinds})
        object.__setattr__(self, "_cache", {})

    def _pattern(self, kind: str, downsample: float) -> NDArray[np.uint8]:
        factor = 1 << max(0, math.floor(math.log2(max(downsample, 1.0)) + 1e-9))
        key = (kind, factor)
        if key not in self._cache:
            self._cache[key] = _downsample(self._patterns[kind], factor)
        return self._cache[key]

    def _field_window(self, ds: float, y0: int, x0: int, h: int, w: int) -> dict[str, F32]:
        xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * ds
        ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * ds
        any_f = next(iter(self.fields.values()))
        jx, fx = _interp_index(xs, self.cell, any_f.shape[1])
        jy, fy = _interp_index(ys, self.cell, any_f.shape[0])
        x_lo, x_hi = int(jx[0]), int(jx[-1]) + 2
        y_lo, y_hi = int(jy[0]), int(jy[-1]) + 2
        jx -= x_lo
        jy -= y_lo
        out: dict[str, F32] = {}
        # No BLAS here: two-tap gathers (BLAS threads stall on a busy machine).
        for name, f in self.fields.items():
            sub = f[y_lo:y_hi, x_lo:x_hi]
            if sub.max() <= 0:
                continue  # absent from this window (callers treat absent as <= 0)
            rows = sub[jy] * (1.0 - fy)[:, None] + sub[jy + 1] * fy[:, None]
            out[name] = rows[:, jx] * (1.0 - fx)[None, :] + rows[:, jx + 1] * fx[None, :]
        return out

    def classes(self, downsample: float, y0: int, x0: int, h: int, w: int) -> tuple[NDArray[np.uint8], F32]:
        """Class map (:data:`CLASS_CODES`, pens all ``pen``) and shadow strength of a window.

        Pixel ``(y, x)`` of the level with ``downsample`` samples level-0 position
        ``((x + 0.5) ds, (y + 0.5) ds)``.
        """
        ds = float(downsample)
        f = self._field_window(ds, y0, x0, h, w)
        cls = np.zeros((h, w), dtype=np.uint8)
        tissue = f["tissue"] > 0 if "tissue" in f else np.zeros((h, w), dtype=bool)
        cls[tissue] = CLASS_CODES["tissue_a"]
        if "texb" in f:
            cls[tissue & (f["texb"] > 0)] = CLASS_CODES["tissue_b"]
        if "texc" in f:
            cls[tissue & (f["texc"] > 0)] = CLASS_CODES["tissue_c"]
        dust = self._dust_mask(ds, y0, x0, h, w)
        if dust is not None:
            cls[dust & ~tissue] = CLASS_CODES["dust"]
        for name, v in f.items():
            if name.startswith("pen_"):
                cls[v > 0] = CLASS_CODES["pen"]
        shadow = self._shadow(ds, y0, x0, h, w)
        cls[shadow > 0.25] = CLASS_CODES["shadow"]  # visibly dark; fainter is glass
        return cls, shadow

    def _dust_mask(self, ds: float, y0: int, x0: int, h: int, w: int) -> NDArray[np.bool_] | None:
        if not len(self.dust):
            return None
        xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * ds
        ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * ds
        d = self.dust
        near = (d[:, 0] + d[:, 2] >= xs[0]) & (d[:, 0] - d[:, 2] <= xs[-1])
        near &= (d[:, 1] + d[:, 2] >= ys[0]) & (d[:, 1] - d[:, 2] <= ys[-1])
        if not near.any():
            return None
        mask = np.zeros((h, w), dtype=bool)
        for x, y, r in d[near]:
            mask |= ((ys[:, None] - y) ** 2 + (xs[None, :] - x) ** 2) < r * r
        return mask

    def _shadow(self, ds: float, y0: int, x0: int, h: int, w: int) -> F32:
        xs = (np.arange(x0, x0 + w, dtype=np.float64) + 0.5) * ds
        ys = (np.arange(y0, y0 + h, dtype=np.float64) + 0.5) * ds
        s = np.zeros((h, w), dtype=np.float32)
        for side, width, strength in self.shadows:
            d = {"left": xs, "right": self.width - xs, "top": ys, "bottom": self.height - ys}[side]
            prof = (strength * np.clip(1.0 - d / width, 0.0, 1.0) ** 1.3).astype(np.float32)
            if side in ("left", "right"):
                s = np.maximum(s, prof[None, :])
            else:
                s = np.maximum(s, prof[:, None])
        return s

    def render(self, downsample: float, y0: int, x0: int, h: int, w: int) -> NDArray[np.uint8]:
        """Window ``(h, w, 3)`` uint8, top-left ``(y0, x0)``, of level ``downsample``."""
        ds = float(downsample)
        if h <= 0 or w <= 0:
            return np.zeros((max(h, 0), max(w, 0), 3), dtype=np.uint8)
        f = self._field_window(ds, y0, x0, h, w)

        def gather(kind: str) -> NDArray[np.uint8]:
            pat = self._pattern(kind, ds)
            q = pat.shape[0]
            a, b = y0 % q, x0 % q
            if a + h <= q and b + w <= q:
                return pat[a : a + h, b : b + w].copy()
            iy = np.arange(y0, y0 + h) % q
            ix = np.arange(x0, x0 + w) % q
            out: NDArray[np.uint8] = pat[iy[:, None], ix[None, :]]
            return out

        tissue = f["tissue"] > 0 if "tissue" in f else np.zeros((h, w), dtype=bool)
        out = gather("glass")
        if tissue.any():
            kind = np.zeros((h, w), dtype=np.uint8)
            if "texb" in f:
                kind[f["texb"] > 0] = 1
            if "texc" in f:
                kind[f["texc"] > 0] = 2
            for code, name in enumerate(("tissue_a", "tissue_b", "tissue_c")):
                sel = tissue & (kind == code)
                if sel.any():
                    out[sel] = gather(name)[sel]
        dust = self._dust_mask(ds, y0, x0, h, w)
        if dust is not None:
            sel = dust & ~tissue
            out[sel] = gather("dust")[sel]
        for name, v in f.items():
            if name.startswith("pen_"):
                sel = v > 0
                if sel.any():
                    ink = gather(name[4:]).astype(np.float32)
                    # translucent ink: the tissue or glass under it shows a little
                    blended = 0.82 * ink + 0.18 * out.astype(np.float32)
                    out[sel] = blended[sel].astype(np.uint8)
        shadow = self._shadow(ds, y0, x0, h, w)
        if shadow.max() > 0:
            a = shadow[..., None]
            out = (out.astype(np.float32) * (1.0 - a) + np.asarray(SHADOW, np.float32) * a).astype(np.uint8)
        return out

    def truth(self, downsample: float) -> tuple[NDArray[np.bool_], NDArray[np.uint8]]:
        """Tissue truth and class map of the whole slide at ``downsample``.

        Shape ``(ceil(height / ds), ceil(width / ds))``; pixel ``(y, x)`` samples level-0
        ``((x + 0.5) ds, (y + 0.5) ds)``. Tissue = tissue textures A, B, C (pen, dust,
        shadow and glass are not tissue).
        """
        h = -(-self.height // int(downsample))
        w = -(-self.width // int(downsample))
        cls = np.zeros((h, w), dtype=np.uint8)
        step = 1024
        for y in range(0, h, step):
            for x in range(0, w, step):
                c, _ = self.classes(downsample, y, x, min(step, h - y), min(step, w - x))
                cls[y : y + c.shape[0], x : x + c.shape[1]] = c
        tissue = (cls >= CLASS_CODES["tissue_a"]) & (cls <= CLASS_CODES["tissue_c"])
        return tissue, cls
