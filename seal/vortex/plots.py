"""Pictures of a prediction: orthogonal slices and a depth montage per gene (PNG), and an
animated flythrough over the morphology (GIF). Headless (matplotlib Agg, PIL); the
morphology is read plane by plane from a coarse pyramid level, never whole."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import VortexConfigError

__all__ = ["depth_montage", "flythrough_gif", "orthoslices", "render_prediction"]


def _shape_of(a: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


class _Pred:
    """A prediction OME-Zarr opened for pictures."""

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        self.group: Any = zarr.open_group(str(self.path), mode="r")
        attrs: dict[str, Any] = dict(self.group.attrs)
        self.genes: list[str] = [str(g) for g in attrs["vortex"]["genes"]]
        self.stride = tuple(float(s) for s in attrs["vortex"]["stride_zyx_um"])
        self.arr: Any = self.group["0"]
        self.mask: Any = self.group["labels/tissue_mask/0"]
        shape: Any = _shape_of(self.arr)
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape[1:])

    def gene_index(self, gene: str) -> int:
        g = gene.upper()
        if g not in self.genes:
            raise VortexConfigError(f"{self.path} holds no prediction for {gene!r}; it has {', '.join(self.genes)}")
        return self.genes.index(g)

    def limits(self, gi: int) -> tuple[float, float]:
        last = len(list(self.group.array_keys())) - 1
        vals = np.asarray(self.group[str(last)][gi]).ravel()
        m = np.asarray(self.group[f"labels/tissue_mask/{last}"][0]).ravel() > 0
        v = vals[m] if m.any() else vals
        lo, hi = np.percentile(v, [1, 99]) if v.size else (0.0, 1.0)
        return float(lo), float(hi if hi > lo else lo + 1e-6)


def _level_for(volume: Any, max_px: int) -> int:
    best = 0
    for i, lv in enumerate(volume.levels):
        if max(lv.shape_zyx[1:]) >= max_px or i == 0:
            best = i
    return best


def _to_rgb(block: np.ndarray) -> np.ndarray:
    """(…, C) uint8 -> (…, 3) float in [0, 1] (grey for 1-2 channels: channel mean)."""
    b = block.astype(np.float32) / 255.0
    if b.shape[-1] == 3:
        return b
    g = b.mean(axis=-1, keepdims=True)
    return np.repeat(g, 3, axis=-1)


def _morph_xy(volume: Any, z_um: float, max_px: int) -> np.ndarray:
    lvl = _level_for(volume, max_px)
    nz, ny, nx = volume.levels[lvl].shape_zyx
    vz = volume.voxel_size_um[0] * volume.levels[lvl].scale_zyx[0]
    k = int(np.clip(z_um / vz, 0, nz - 1))
    step = max(1, int(np.ceil(max(ny, nx) / max_px)))
    rows = []
    for y0 in range(0, ny, 512 * step):
        blk = np.asarray(volume.read(slice(k, k + 1), slice(y0, min(y0 + 512 * step, ny)), slice(0, nx), lvl))
        rows.append(blk[0, ::step, ::step])
    return _to_rgb(np.concatenate(rows, axis=0))


def _morph_side(volume: Any, axis: str, pos_um: float, max_px: int) -> np.ndarray:
    """A (z, x) plane at y = pos_um (axis 'y') or a (z, y) plane at x = pos_um (axis 'x')."""
    lvl = _level_for(volume, max_px)
    nz, ny, nx = volume.levels[lvl].shape_zyx
    sc = volume.levels[lvl].scale_zyx
    vy, vx = volume.voxel_size_um[1] * sc[1], volume.voxel_size_um[2] * sc[2]
    if axis == "y":
        j = int(np.clip(pos_um / vy, 0, ny - 1))
        blk = np.asarray(volume.read(slice(0, nz), slice(j, j + 1), slice(0, nx), lvl))[:, 0]
    else:
        i = int(np.clip(pos_um / vx, 0, nx - 1))
        blk = np.asarray(volume.read(slice(0, nz), slice(0, ny), slice(i, i + 1), lvl))[:, :, 0]
    step = max(1, int(np.ceil(blk.shape[1] / max_px)))
    return _to_rgb(blk[:, ::step])


def _overlay(
    ax: Any,
    morph: np.ndarray,
    pred: np.ndarray,
    mask: np.ndarray,
    extent: list[float],
    lims: tuple[float, float],
    aspect: str = "equal",
) -> Any:
    ax.imshow(morph, extent=extent, origin="upper", interpolation="bilinear", aspect=aspect)
    shown = np.ma.masked_where(mask == 0, pred)
    im = ax.imshow(
        shown,
        extent=extent,
        origin="upper",
        cmap="magma",
        alpha=0.6,
        vmin=lims[0],
        vmax=lims[1],
        interpolation="nearest",
        aspect=aspect,
    )
    return im


def orthoslices(pred_path: str | Path, volume: Any, gene: str, out: str | Path, *, max_px: int = 512) -> Path:
    """XY, XZ and YZ planes through the middle of the grid, prediction over morphology."""
    from matplotlib.figure import Figure

    p = _Pred(pred_path)
    gi = p.gene_index(gene)
    lims = p.limits(gi)
    nz, ny, nx = p.shape
    sz, sy, sx = p.stride
    kz, ky, kx = nz // 2, ny // 2, nx // 2
    Z, Y, X = nz * sz, ny * sy, nx * sx
    fig = Figure(figsize=(13, 4.4))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [X, X, Y]})
    xy = _overlay(
        axes[0],
        _morph_xy(volume, (kz + 0.5) * sz, max_px),
        np.asarray(p.arr[gi, kz]),
        np.asarray(p.mask[0, kz]),
        [0, X, Y, 0],
        lims,
    )
    axes[0].set(title=f"XY at z = {(kz + 0.5) * sz:.0f} um", xlabel="x (um)", ylabel="y (um)")
    _overlay(
        axes[1],
        _morph_side(volume, "y", (ky + 0.5) * sy, max_px),
        np.asarray(p.arr[gi, :, ky]),
        np.asarray(p.mask[0, :, ky]),
        [0, X, Z, 0],
        lims,
        "auto",
    )
    axes[1].set(title=f"XZ at y = {(ky + 0.5) * sy:.0f} um", xlabel="x (um)", ylabel="z (um)")
    _overlay(
        axes[2],
        _morph_side(volume, "x", (kx + 0.5) * sx, max_px),
        np.asarray(p.arr[gi, :, :, kx]),
        np.asarray(p.mask[0, :, :, kx]),
        [0, Y, Z, 0],
        lims,
        "auto",
    )
    axes[2].set(title=f"YZ at x = {(kx + 0.5) * sx:.0f} um", xlabel="y (um)", ylabel="z (um)")
    fig.colorbar(xy, ax=axes, shrink=0.8, label=f"{gene} (log-normalised)")
    fig.suptitle(f"VORTEX prediction: {gene}")
    out = Path(out)
    fig.savefig(out, dpi=110)
    return out


def depth_montage(
    pred_path: str | Path, volume: Any, gene: str, out: str | Path, *, n_planes: int = 8, max_px: int = 256
) -> Path:
    """XY planes at ``n_planes`` evenly spaced depths, prediction over morphology."""
    from matplotlib.figure import Figure

    p = _Pred(pred_path)
    gi = p.gene_index(gene)
    lims = p.limits(gi)
    nz, ny, nx = p.shape
    sz, sy, sx = p.stride
    ks = sorted({round(v) for v in np.linspace(0, nz - 1, min(n_planes, nz))})
    cols = min(4, len(ks))
    rows = int(np.ceil(len(ks) / cols))
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for ax, k in zip(axes.ravel(), ks, strict=False):
        im = _overlay(
            ax,
            _morph_xy(volume, (k + 0.5) * sz, max_px),
            np.asarray(p.arr[gi, k]),
            np.asarray(p.mask[0, k]),
            [0, nx * sx, ny * sy, 0],
            lims,
        )
        ax.set_title(f"z = {(k + 0.5) * sz:.0f} um", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(ks) :]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8, label=f"{gene} (log-normalised)")
    fig.suptitle(f"{gene} through depth")
    out = Path(out)
    fig.savefig(out, dpi=100)
    return out


def flythrough_gif(
    pred_path: str | Path,
    volume: Any,
    gene: str,
    out: str | Path,
    *,
    n_frames: int = 16,
    size_px: int = 256,
    duration_ms: int = 150,
) -> Path:
    """An animated GIF stepping through depth: morphology with the predicted gene overlaid."""
    import matplotlib
    from PIL import Image

    p = _Pred(pred_path)
    gi = p.gene_index(gene)
    lo, hi = p.limits(gi)
    nz, _ny, _nx = p.shape
    sz = p.stride[0]
    cmap = matplotlib.colormaps["magma"]
    z_um = np.linspace(0.5 * sz, (nz - 0.5) * sz, n_frames)
    frames = []
    for z in z_um:
        morph = _morph_xy(volume, float(z), size_px)
        h = size_px
        w = max(1, round(size_px * morph.shape[1] / morph.shape[0]))
        base = Image.fromarray((morph * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
        k = int(np.clip(z / sz - 0.5, 0, nz - 1))
        val = np.clip((np.asarray(p.arr[gi, k]) - lo) / (hi - lo), 0, 1)
        rgba = (cmap(val) * 255).astype(np.uint8)
        rgba[..., 3] = np.where(np.asarray(p.mask[0, k]) > 0, 150, 0).astype(np.uint8)
        over = Image.fromarray(rgba, mode="RGBA").resize((w, h), Image.Resampling.NEAREST)
        frame = base.convert("RGBA")
        frame.alpha_composite(over)
        frames.append(frame.convert("P", palette=Image.Palette.ADAPTIVE))
    out = Path(out)
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)
    return out


def render_prediction(pred_path: str | Path, volume: Any, out_dir: str | Path, genes: Sequence[str] | None = None) -> list[Path]:
    """Orthogonal slices, depth montage and flythrough for each gene (default: the first 6)."""
    p = _Pred(pred_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for g in list(genes) if genes else p.genes[:6]:
        written.append(orthoslices(pred_path, volume, g, out_dir / f"{g}_orthoslices.png"))
        written.append(depth_montage(pred_path, volume, g, out_dir / f"{g}_depth_montage.png"))
        written.append(flythrough_gif(pred_path, volume, g, out_dir / f"{g}_flythrough.gif"))
    return written
