"""The upsampling rule: how much finer the catalog's patches are than the image they come from.

A patch of ``p`` um/px cut from an image of ``s`` um/px (at the pyramid level it is read
from) is upsampled ``s / p`` times: each image pixel becomes ``s/p x s/p`` patch pixels,
which adds no detail. hestkit records the source resolution and the factor for every
sample, warns above :data:`WARN_ABOVE` and refuses above :data:`REFUSE_ABOVE` unless
upsampling is explicitly allowed (then it is recorded and warned about).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import Fix, HestkitError, Opt, fix
from .fixes import ALLOW_UPSAMPLING, IMAGE

__all__ = [
    "REFUSE_ABOVE",
    "WARN_ABOVE",
    "Resolution",
    "UpsamplingError",
    "check_upsampling",
    "spaceranger_image_note",
    "spaceranger_images_hint",
]

#: Upsampling factors above this are recorded and warned about.
WARN_ABOVE = 2.0
#: Upsampling factors above this are refused unless allowed.
REFUSE_ABOVE = 4.0

_SPACERANGER_IMAGES = {
    "tissue_lowres_image.png": "tissue_lowres_scalef",
    "tissue_hires_image.png": "tissue_hires_scalef",
}


class UpsamplingError(HestkitError):
    """The image is too coarse for the catalog's patches; ``fix`` says what to do (its
    options: ``image``, ``allow_upsampling``, the catalog's ``PairSpec.pixel_size_um``)."""

    fix: Fix

    def __init__(self, message: str, fix: Fix) -> None:
        super().__init__(message, fix=fix)


@dataclass(frozen=True)
class Resolution:
    """A sample's source resolution against the catalog's patches."""

    #: um/px of the pyramid level the patches are cut from.
    source_pixel_size_um: float
    #: um/px of the catalog's patches.
    patch_pixel_size_um: float
    #: Whether upsampling above :data:`REFUSE_ABOVE` was explicitly allowed.
    allowed: bool = False

    @property
    def factor(self) -> float:
        """Upsampling factor (>= 1; 1.0 when the patches are as coarse as the image or coarser)."""
        return max(1.0, self.source_pixel_size_um / self.patch_pixel_size_um)

    @property
    def warning(self) -> str | None:
        if self.factor <= WARN_ABOVE:
            return None
        return (
            f"patches are upsampled {self.factor:.1f}x: the image has {self.source_pixel_size_um:.3g} um/px, the patches "
            f"{self.patch_pixel_size_um:g} um/px (each image pixel becomes {self.factor:.1f} x {self.factor:.1f} patch "
            "pixels; they carry no finer detail)"
        )


def spaceranger_image_note(image_path: Path) -> str:
    """A sentence about Space Ranger's downscaled PNGs, empty for any other image."""
    key = _SPACERANGER_IMAGES.get(Path(image_path).name)
    if key is None:
        return ""
    return (
        f"; {Path(image_path).name} is Space Ranger's downscaled copy of the full-resolution image "
        f"(scaled by {key} of scalefactors_json.json), not the image the run was imaged at"
    )


def check_upsampling(
    subject: str, image_path: Path, source_pixel_size_um: float, patch_pixel_size_um: float, allow: bool = False
) -> Resolution:
    """The :class:`Resolution` of a sample; raises :class:`UpsamplingError` when the factor
    is above :data:`REFUSE_ABOVE` and ``allow`` is false."""
    res = Resolution(float(source_pixel_size_um), float(patch_pixel_size_um), allowed=bool(allow))
    if res.factor > REFUSE_ABOVE and not allow:
        coarsest = source_pixel_size_um / REFUSE_ABOVE
        patch_um = Opt("pixel_size_um", f"{coarsest:.3g}", scope="PairSpec")
        raise UpsamplingError(
            f"{subject}: {image_path} has {source_pixel_size_um:.3g} um/px; the catalog's {patch_pixel_size_um:g} um/px "
            f"patches would be upsampled {res.factor:.1f}x (each image pixel {res.factor:.1f} x {res.factor:.1f} patch "
            f"pixels), above the {REFUSE_ABOVE:g}x limit{spaceranger_image_note(image_path)}",
            fix(
                f"give the full-resolution image the spots were aligned to ({IMAGE}), or accept the upsampling, which is "
                f"then recorded per sample ({ALLOW_UPSAMPLING}), or use a catalog with patches of at least "
                f"{coarsest:.3g} um/px ({patch_um})",
                IMAGE,
                ALLOW_UPSAMPLING,
                patch_um,
            ),
        )
    return res


def spaceranger_images_hint(spatial: Path, scalefactors: dict[str, float], fullres_pixel_size_um: float | None) -> Fix | None:
    """What a Space Ranger ``spatial/`` folder offers when the full-resolution image is
    missing: each downscaled PNG there, its resolution, and what using it means."""
    found = []
    for name, key in _SPACERANGER_IMAGES.items():
        p = Path(spatial) / name
        if not p.exists():
            continue
        scale = scalefactors.get(key)
        res = ""
        if fullres_pixel_size_um and isinstance(scale, (int, float)) and scale > 0:
            res = f", about {fullres_pixel_size_um / float(scale):.3g} um/px"
        found.append(f"{p} ({key} {scale}{res})")
    if not found:
        return None
    return fix(
        ". Space Ranger's downscaled copies exist: "
        + "; ".join(found)
        + f". Passing one as {IMAGE} works (spot coordinates are scaled to it), but its patches are upsampled "
        "from a coarse image and carry no cellular detail: the factor is recorded per sample, warned about above "
        f"{WARN_ABOVE:g}x and refused above {REFUSE_ABOVE:g}x unless {ALLOW_UPSAMPLING}",
        IMAGE,
        ALLOW_UPSAMPLING,
    )
