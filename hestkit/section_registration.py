"""Place a 2D section in a 3D volume without landmarks: its depth and in-plane affine.

The section's H&E and the volume's planes come from different modalities (brightfield
H&E against microCT or light-sheet), so both are first turned into a grey *tissue
density* image at a common working resolution (micrometres per pixel): the H&E's optical
density, and the volume's channel mean, whose sign (tissue bright or dark) is chosen by the
fit. Then, coarse to fine:

1. **Rotation and translation.** For rotations over ``+-max_rotation_deg`` (5-degree steps),
   the rotated section is matched against the mean of the volume's planes in the depth
   range by masked normalised cross-correlation over every translation (Padfield 2012,
   computed with FFTs), so partial overlap is scored fairly. The best rotation/translation
   starts the refinement.
2. **Refinement.** Rotation, isotropic scale and translation are optimised (Powell) to
   maximise the normalised cross-correlation of the section resampled into the plane, at
   half the working pixel size.
3. **Depth.** Each plane in the depth range (full z resolution, one plane read at a time,
   decimated in-plane) is scored against the refined section; the best depth is refined to
   sub-plane precision by a parabola through the peak, and step 2 is repeated on it.
4. **Confidence and residuals.** The score is the correlation at the optimum. The confidence
   is how much the best plane stands out of the depth profile, ``(peak - median) / (1 -
   median)``: a section that matches every depth alike (or a section of another block, whose
   outline alone correlates) has a flat profile and a confidence near 0. Residuals are the
   shifts (micrometres) that best align each cell of a 3 x 3 grid over the overlap, so a fit
   that holds globally but not locally shows. A score under ``min_score`` or a confidence
   under ``min_confidence`` is refused with the fix (landmarks), never stored as if it were
   a placement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import Opt, RegistrationError, fix
from .fixes import AFFINE, LANDMARKS, PIXEL_SIZE_UM, Z_UM
from .geometry import Affine

__all__ = ["RegistrationError", "RegistrationResult", "masked_ncc", "plot_registration", "register_section"]

logger = logging.getLogger(__name__)

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class RegistrationResult:
    """Where a section lies in a volume.

    ``affine`` maps section level-0 pixels (x, y) to volume micrometres (x, y) (the
    convention of ``hestkit link-section``); ``z_um`` is the plane's depth (volume frame).
    ``score`` is the normalised cross-correlation of the section's and the plane's tissue
    density at the optimum (1 = identical up to contrast); ``confidence`` how far the best
    depth stands out of the others (0: all depths alike); ``depth_profile`` the score of each
    candidate plane (``depths_um``); ``residuals_um`` the local misfit of a 3 x 3 grid of cells.
    """

    z_um: float
    affine: Affine
    score: float
    confidence: float
    rotation_deg: float
    scale: float
    depths_um: F64
    depth_profile: F64
    residuals_um: F64

    @property
    def residual_rms_um(self) -> float:
        return float(np.sqrt(np.mean(self.residuals_um**2))) if len(self.residuals_um) else 0.0


# -- images --------------------------------------------------------------------------------------
def _he_density(rgb: NDArray[Any]) -> F64:
    """Optical density summed over RGB (0 on glass, larger on stained tissue)."""
    od = -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0)
    out: F64 = od.sum(axis=-1)
    return out


def _block_mean(a: F64, k: int) -> F64:
    if k <= 1:
        return a
    h, w = a.shape[0] // k * k, a.shape[1] // k * k
    out: F64 = a[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3))
    return out


def _corr(a: F64, b: F64) -> F64:
    from scipy.signal import fftconvolve

    out: F64 = fftconvolve(a, b[::-1, ::-1], mode="full")
    return out


def masked_ncc(f: F64, mf: F64, g: F64, mg: F64, *, overlap: float = 0.3) -> tuple[F64, F64]:
    """Masked normalised cross-correlation of ``g`` placed at every offset over ``f``.

    Returns the NCC map and the overlap counts; index ``k`` is the offset ``k - (g.shape - 1)``
    of ``g``'s top-left in ``f``'s pixels. Offsets whose overlap is under ``overlap`` x the
    smaller mask are set to -1.
    """
    f, g = f * mf, g * mg
    n = _corr(mf, mg)
    sf, sg = _corr(f, mg), _corr(mf, g)
    sfg = _corr(f, g)
    sff, sgg = _corr(f * f, mg), _corr(mf, g * g)
    with np.errstate(invalid="ignore", divide="ignore"):
        nn = np.maximum(n, 1e-9)
        num = sfg - sf * sg / nn
        den = np.sqrt(np.maximum(sff - sf**2 / nn, 0) * np.maximum(sgg - sg**2 / nn, 0))
        ncc = np.where(den > 1e-9 * nn, num / np.maximum(den, 1e-12), 0.0)
    ncc[n < overlap * min(mf.sum(), mg.sum())] = -1.0
    return ncc, n


def _rotate_about_centre(img: F64, mask: F64, deg: float) -> tuple[F64, F64, F64]:
    """Rotate into a canvas large enough for any angle; also returns the 3x3 map from
    the input's (x, y) pixel coordinates to the canvas's."""
    from scipy.ndimage import affine_transform

    h, w = img.shape
    side = math.ceil(math.hypot(h, w)) + 2
    th = math.radians(deg)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])  # (x, y)
    c_in = np.array([w / 2.0, h / 2.0])
    c_out = np.array([side / 2.0, side / 2.0])
    fwd = np.eye(3)
    fwd[:2, :2] = rot
    fwd[:2, 2] = c_out - rot @ c_in
    inv = np.linalg.inv(fwd)
    # scipy works in (row, col) = (y, x) and maps output index -> input index (centres at +0.5)
    m_yx = inv[[1, 0]][:, [1, 0]]
    off = inv[[1, 0], 2] + m_yx @ np.array([0.5, 0.5]) - 0.5
    out = affine_transform(img, m_yx, offset=off, output_shape=(side, side), order=1, cval=0.0)
    om = affine_transform(mask, m_yx, offset=off, output_shape=(side, side), order=0, cval=0.0)
    return out, om, fwd


def _sample_section(sec: F64, sec_um_px: float, m_um: F64, shape: tuple[int, int], plane_um_px: float) -> tuple[F64, F64]:
    """The section density resampled onto a plane grid through ``m_um`` (section um -> volume um)."""
    from scipy.ndimage import map_coordinates

    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    vol_xy = np.stack([(xx.ravel() + 0.5) * plane_um_px, (yy.ravel() + 0.5) * plane_um_px, np.ones(h * w)])
    sec_um = np.linalg.inv(m_um) @ vol_xy
    sx, sy = sec_um[0] / sec_um_px - 0.5, sec_um[1] / sec_um_px - 0.5
    inside = (sx >= 0) & (sy >= 0) & (sx <= sec.shape[1] - 1) & (sy <= sec.shape[0] - 1)
    vals = map_coordinates(sec, [sy, sx], order=1, cval=0.0)
    return vals.reshape(h, w), inside.reshape(h, w).astype(np.float64)


def _ncc(a: F64, b: F64, m: F64) -> float:
    sel = m > 0
    if sel.sum() < 16:
        return -1.0
    x, y = a[sel], b[sel]
    x, y = x - x.mean(), y - y.mean()
    d = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else -1.0


def _params_to_matrix(p: Sequence[float] | F64) -> F64:
    th, log_s, tx, ty = (float(v) for v in p)
    s = math.exp(log_s)
    c, si = math.cos(math.radians(th)), math.sin(math.radians(th))
    return np.array([[s * c, -s * si, tx], [s * si, s * c, ty], [0.0, 0.0, 1.0]])


_LANDMARKS, _AFFINE, _Z_UM = LANDMARKS, AFFINE, Z_UM
_ZR = Opt("z_range_um", "(Z0, Z1)", cli="Z0 Z1")


# -- the fit -------------------------------------------------------------------------------------
def register_section(
    section_rgb: NDArray[Any],
    section_um_px: float,
    volume: Any,
    *,
    section_px_per_image_px: float = 1.0,
    z_range_um: tuple[float, float] | None = None,
    work_um_px: float = 8.0,
    max_rotation_deg: float = 180.0,
    rotation_step_deg: float = 5.0,
    scale_range: tuple[float, float] = (0.8, 1.25),
    min_score: float = 0.3,
    min_confidence: float = 0.35,
    what: str = "section",
) -> RegistrationResult:
    """Find the depth and in-plane affine of a section image in ``volume``.

    ``section_rgb``: an RGB image of the section (a thumbnail is enough) whose pixels are
    ``section_px_per_image_px`` level-0 pixels of ``section_um_px`` micrometres; ``volume``: a
    :class:`hestkit.volume.VolumeLike` (levels, ``read``). See the module doc for the steps.
    """
    from scipy.optimize import minimize

    from .volume import level_voxel_size_um, volume_extent_um

    img_um = section_um_px * section_px_per_image_px
    if not (math.isfinite(img_um) and img_um > 0):
        raise RegistrationError(
            f"{what}: the section's pixel size is unknown ({section_um_px!r} um/px)", fix=fix(f"give {PIXEL_SIZE_UM} at ingest", PIXEL_SIZE_UM)
        )
    ez = volume_extent_um(volume)[0]
    z0, z1 = z_range_um if z_range_um is not None else (0.0, ez)
    if not (0.0 <= z0 < z1 <= ez + 1e-9):
        zr = Opt("z_range_um", f"({z0:g}, {z1:g})", cli=f"{z0:g} {z1:g}")
        raise RegistrationError(
            f"{what}: {zr} is not within the volume's depth 0 .. {ez:g} um",
            fix=fix(f"give {_ZR} within 0 .. {ez:g} um", _ZR, zr),
        )
    vz = float(volume.voxel_size_um[0])
    # the working grid: the coarsest level no coarser than the working pixel, then block means
    lvl = 0
    for i in range(len(volume.levels)):
        if level_voxel_size_um(volume, i)[1] <= work_um_px * 1.01:
            lvl = i
    lv_um = level_voxel_size_um(volume, lvl)
    k = max(1, int(work_um_px // lv_um[1]))
    plane_um = lv_um[1] * k
    zs0 = int(z0 // lv_um[0])
    zs1 = max(zs0 + 1, min(volume.levels[lvl].shape_zyx[0], math.ceil(z1 / lv_um[0])))
    ny, nx = volume.levels[lvl].shape_zyx[1:]
    proj = np.zeros((ny // k, nx // k)) if k > 1 else np.zeros((ny, nx))
    for z in range(zs0, zs1):
        plane = volume.read(slice(z, z + 1), slice(0, ny), slice(0, nx), lvl)[0].astype(np.float64).mean(axis=-1)
        proj += _block_mean(plane, k)
    proj /= zs1 - zs0
    # the section at the working resolution
    dens = _he_density(section_rgb)
    ks = max(1, round(plane_um / img_um))
    sec = _block_mean(dens, ks)
    sec_um = img_um * ks
    if sec.shape[0] < 8 or sec.shape[1] < 8:
        raise RegistrationError(f"{what}: the section image is too small at {sec_um:.3g} um/px to register; give a larger image")
    sec_mask = np.ones_like(sec)
    vol_mask = np.ones_like(proj)
    # 1. coarse: rotation x translation by masked NCC (both signs of the volume's contrast)
    best = (-2.0, 0.0, 1.0, np.eye(3))
    if abs(sec_um - plane_um) / plane_um > 0.02:  # bring the section to the plane's pixel size first
        from scipy.ndimage import zoom

        sec = zoom(sec, sec_um / plane_um, order=1)
        sec_mask = np.ones_like(sec)
        sec_um = plane_um
    n_rot = int(max_rotation_deg // rotation_step_deg)
    for deg in np.arange(-n_rot, n_rot + 1) * rotation_step_deg:
        if deg <= -180.0:
            continue
        r, rm, fwd = _rotate_about_centre(sec, sec_mask, float(deg))
        for sign in (1.0, -1.0):
            ncc, _ = masked_ncc(sign * proj, vol_mask, r, rm)
            i = int(np.argmax(ncc))
            if ncc.flat[i] > best[0]:
                ky, kx = np.unravel_index(i, ncc.shape)
                u = np.array([kx - (r.shape[1] - 1), ky - (r.shape[0] - 1)], dtype=np.float64)
                # section work px -> canvas px -> plane px, then to micrometres on both sides
                t = np.eye(3)
                t[:2, 2] = u
                m_px = t @ fwd
                m_um = np.diag([plane_um, plane_um, 1.0]) @ m_px @ np.diag([1.0 / sec_um, 1.0 / sec_um, 1.0])
                best = (float(ncc.flat[i]), float(deg), sign, m_um)
    coarse_score, coarse_deg, sign, m0 = best
    if coarse_score <= 0:
        raise RegistrationError(
            f"{what}: no rotation or translation correlates the section with the volume (best {coarse_score:.2f})",
            fix=fix(f"place it with landmarks ({_LANDMARKS})", _LANDMARKS),
        )
    logger.info("%s: coarse fit rotation %.0f deg, NCC %.3f", what, coarse_deg, coarse_score)

    # 2. refinement at half the working pixel size
    fine_um = plane_um / 2.0
    kf = max(1, round(fine_um / img_um))
    sec_f = _block_mean(dens, kf)
    sec_f_um = img_um * kf

    def read_plane(zi: int) -> F64:
        """One plane of level 0 at index ``zi``, block-averaged to ``fine_um``."""
        ny0, nx0 = volume.levels[0].shape_zyx[1:]
        kk = max(1, round(fine_um / float(volume.voxel_size_um[1])))
        a = volume.read(slice(zi, zi + 1), slice(0, ny0), slice(0, nx0), 0)[0].astype(np.float64).mean(axis=-1)
        return sign * _block_mean(a, kk)

    kk_um = max(1, round(fine_um / float(volume.voxel_size_um[1]))) * float(volume.voxel_size_um[1])

    def refine(target: F64, start: F64) -> tuple[F64, float]:
        th0 = math.degrees(math.atan2(start[1, 0], start[0, 0]))
        s0 = math.hypot(start[0, 0], start[1, 0])
        x0 = np.array([th0, math.log(s0), start[0, 2], start[1, 2]])

        def cost(p: F64) -> float:
            s = math.exp(p[1])
            if not scale_range[0] <= s <= scale_range[1]:
                return 2.0
            vals, m = _sample_section(sec_f, sec_f_um, _params_to_matrix(p), target.shape, kk_um)
            return -_ncc(vals, target, m)

        res = minimize(cost, x0, method="Powell", options={"xtol": 1e-3, "ftol": 1e-5, "maxfev": 1200})
        return _params_to_matrix(res.x), float(-res.fun)

    zi_lo = int(z0 // vz)
    zi_hi = max(zi_lo + 1, min(volume.shape_zyx[0], math.ceil(z1 / vz)))
    mid = (zi_lo + zi_hi - 1) // 2
    m1, _ = refine(read_plane(mid), m0)
    # 3. depth: every plane in range, against the refined placement
    depths = (np.arange(zi_lo, zi_hi) + 0.5) * vz
    prof = np.empty(len(depths))
    for j, zi in enumerate(range(zi_lo, zi_hi)):
        target = read_plane(zi)
        vals, m = _sample_section(sec_f, sec_f_um, m1, target.shape, kk_um)
        prof[j] = _ncc(vals, target, m)
    jb = int(np.argmax(prof))
    z_best = float(depths[jb])
    if 0 < jb < len(prof) - 1:
        a, b, c = prof[jb - 1], prof[jb], prof[jb + 1]
        den = a - 2 * b + c
        if den < 0:
            z_best += float(np.clip(0.5 * (a - c) / den, -0.5, 0.5)) * vz
    best_plane = read_plane(zi_lo + jb)
    m2, score = refine(best_plane, m1)
    # 4. residuals: per cell of a 3 x 3 grid, the shift that best aligns it (+-3 px search)
    vals, m = _sample_section(sec_f, sec_f_um, m2, best_plane.shape, kk_um)
    res = _local_residuals(vals, best_plane, m, kk_um)
    th = math.degrees(math.atan2(m2[1, 0], m2[0, 0]))
    sc = math.hypot(m2[0, 0], m2[1, 0])
    # section level-0 px -> section um -> volume um
    aff = Affine.from_array(m2 @ np.diag([section_um_px, section_um_px, 1.0]))
    med = float(np.median(prof))
    confidence = float((prof.max() - med) / max(1.0 - med, 1e-6)) if len(prof) > 2 else 0.0
    result = RegistrationResult(
        z_um=z_best,
        affine=aff,
        score=score,
        confidence=confidence,
        rotation_deg=th,
        scale=sc,
        depths_um=depths,
        depth_profile=prof,
        residuals_um=res,
    )
    manual = fix(f"place the section with landmarks ({_LANDMARKS}) or a matrix ({_AFFINE}) and {_Z_UM}", _LANDMARKS, _AFFINE, _Z_UM)
    if score < min_score:
        raise RegistrationError(
            f"{what}: the best automatic placement (z = {z_best:.1f} um, rotation {th:.1f} deg, scale {sc:.3f}) "
            f"correlates only {score:.2f} with the volume (at least {min_score:.2f} is needed to trust it); {manual}",
            fix=manual,
        )
    if confidence < min_confidence:
        raise RegistrationError(
            f"{what}: the depth is not identifiable: the best plane (z = {z_best:.1f} um, NCC {score:.2f}) stands out of "
            f"the depth profile by a confidence of {confidence:.2f} (at least {min_confidence:.2f} is needed; NCC over depth "
            f"ranges {prof.min():.2f} .. {prof.max():.2f}); the section may not belong to this volume or lie outside "
            f"the depth range searched (z_range_um); {manual}",
            fix=manual,
        )
    return result


def _local_residuals(moving: F64, fixed: F64, mask: F64, px_um: float, search: int = 3) -> F64:
    ys, xs = np.nonzero(mask > 0)
    if len(ys) < 64:
        return np.zeros(0)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    out = []
    for gy in range(3):
        for gx in range(3):
            a0, a1 = y0 + (y1 - y0) * gy // 3, y0 + (y1 - y0) * (gy + 1) // 3
            b0, b1 = x0 + (x1 - x0) * gx // 3, x0 + (x1 - x0) * (gx + 1) // 3
            if a1 - a0 <= 2 * search + 4 or b1 - b0 <= 2 * search + 4:
                continue
            ref = moving[a0 + search : a1 - search, b0 + search : b1 - search]
            rm = mask[a0 + search : a1 - search, b0 + search : b1 - search]
            if rm.mean() < 0.5 or ref.std() < 1e-6:
                continue
            best, shift = -2.0, (0, 0)
            for dy in range(-search, search + 1):
                for dx in range(-search, search + 1):
                    tgt = fixed[a0 + search + dy : a1 - search + dy, b0 + search + dx : b1 - search + dx]
                    v = _ncc(ref, tgt, rm)
                    if v > best:
                        best, shift = v, (dy, dx)
            out.append(math.hypot(*shift) * px_um)
    return np.asarray(out, dtype=np.float64)


def plot_registration(
    section_rgb: NDArray[Any],
    section_um_px: float,
    volume: Any,
    z_um: float,
    affine: Affine,
    *,
    section_px_per_image_px: float = 1.0,
    plane_um_px: float = 4.0,
    depths_um: Sequence[float] | None = None,
    depth_profile: Sequence[float] | None = None,
    title: str = "",
) -> Any:
    """A figure of a placement: the volume plane at ``z_um``, the section resampled into it
    through ``affine`` (section level-0 px -> volume um), their overlay (magenta = volume,
    green = section) and, when given, the depth profile. Returns a matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    from .volume import level_voxel_size_um

    lvl = 0
    for i in range(len(volume.levels)):
        if level_voxel_size_um(volume, i)[1] <= plane_um_px * 1.01:
            lvl = i
    lv = level_voxel_size_um(volume, lvl)
    zi = min(volume.levels[lvl].shape_zyx[0] - 1, max(0, int(z_um // lv[0])))
    ny, nx = volume.levels[lvl].shape_zyx[1:]
    plane = volume.read(slice(zi, zi + 1), slice(0, ny), slice(0, nx), lvl)[0].astype(np.float64).mean(axis=-1)
    dens = _he_density(section_rgb)
    img_um = section_um_px * section_px_per_image_px
    m_um = affine.to_array() @ np.diag([1.0 / section_um_px, 1.0 / section_um_px, 1.0])
    vals, mask = _sample_section(dens, img_um, m_um, plane.shape, lv[1])

    def norm(a: F64, m: F64 | None = None) -> F64:
        sel = a[m > 0] if m is not None and (m > 0).any() else a
        lo, hi = np.percentile(sel, (1, 99)) if sel.size else (0.0, 1.0)
        out: F64 = np.clip((a - lo) / max(hi - lo, 1e-9), 0, 1)
        return out

    pv, sv = norm(plane), norm(vals, mask) * mask
    if _ncc(vals, plane, mask) < 0:  # show tissue bright in both
        pv = 1.0 - pv
    extent = (0.0, nx * lv[2], ny * lv[1], 0.0)
    has_profile = depths_um is not None and depth_profile is not None
    fig = Figure(figsize=(13 if has_profile else 10, 3.8))
    axes = fig.subplots(1, 4 if has_profile else 3)
    axes[0].imshow(pv, cmap="gray", extent=extent)
    axes[0].set_title(f"volume plane z = {z_um:.1f} um")
    axes[1].imshow(sv, cmap="gray", extent=extent)
    axes[1].set_title("section, placed")
    axes[2].imshow(np.dstack([pv, sv, pv]), extent=extent)
    axes[2].set_title("overlay (magenta volume, green section)")
    for ax in axes[:3]:
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)")
    if has_profile:
        d = np.asarray(depths_um, dtype=float)
        p = np.asarray(depth_profile, dtype=float)
        axes[3].plot(d, p, marker=".")
        axes[3].axvline(z_um, color="r", lw=1)
        axes[3].set_xlabel("depth z (um)")
        axes[3].set_ylabel("NCC")
        axes[3].set_title("depth profile")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
