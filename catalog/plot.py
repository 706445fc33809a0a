"""Pictures of a catalog: spots over the slide thumbnail.

The figures are plain :class:`matplotlib.figure.Figure` objects, drawn without pyplot and
without touching matplotlib's global backend: a notebook's backend and figure manager are
left as they are (display the returned figure, or save it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .catalog import Catalog
from .errors import QueryError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_sample", "sample_figure"]


def _known(v: Any) -> bool:
    """A manifest field worth printing: not None, not empty, not NaN."""
    if v is None:
        return False
    if isinstance(v, float) and math.isnan(v):
        return False
    return str(v).strip() != ""


def _title(sample_id: str, n_pairs: int, m: dict[str, Any]) -> str:
    parts = [f"{sample_id}: {n_pairs} pairs"]
    parts += [str(m[k]) for k in ("technology", "organ", "species", "patient") if _known(m.get(k))]
    ps = f"{float(m['pixel_size_um']):.3g} um/px"
    if _known(m.get("pixel_size_source")):
        ps += f" ({m['pixel_size_source']})"
    parts.append(ps)
    return ", ".join(parts)


def sample_figure(cat: Catalog, sample_id: str, *, gene: str | None = None, tissue: bool = True) -> Figure:
    """A figure of the pairs of ``sample_id`` over its thumbnail, coloured by ``gene``
    (log1p counts) or by total counts.

    Each spot is drawn at its true size and shape: a disc of the spot diameter, or, for
    square pseudo-spots (Visium HD bins, Xenium squares: ``spot_shape == "square"`` in the
    manifest), an axis-aligned square of that side. With ``tissue``, the outline of the
    sample's tissue mask is drawn when it has one. Fields the manifest does not know
    (organ, species, patient...) are left out of the title."""
    from matplotlib.collections import EllipseCollection, PolyCollection
    from matplotlib.figure import Figure

    m = cat.manifest(sample_id)
    thumb, ds = cat.sample_thumbnail(sample_id)
    view = cat.pairs(sample_ids=[sample_id])
    if gene is not None:
        try:
            values = np.asarray(view.expression([gene]).toarray()).ravel()
        except QueryError:
            upper = {g.upper(): g for g in view.genes}
            if gene.upper() not in upper:
                raise QueryError(f"{sample_id}: no gene {gene!r} (e.g. {', '.join(view.genes[:8])})") from None
            gene = upper[gene.upper()]
            values = np.asarray(view.expression([gene]).toarray()).ravel()
        label = f"{gene} (log1p counts)"
        values = np.log1p(values)
    else:
        values = np.asarray(view.expression().sum(axis=1)).ravel()
        label = "total counts"
    xy = view.obs[["x_px", "y_px"]].to_numpy(dtype=float)
    diam = float(m["spot_diameter_um"]) / float(m["pixel_size_um"])
    h, w = thumb.shape[0] * ds, thumb.shape[1] * ds
    fig = Figure(figsize=(8, 8 * h / max(w, 1.0) + 0.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(thumb, extent=(0, w, h, 0))
    coll: EllipseCollection | PolyCollection
    if m.get("spot_shape") == "square":
        half = diam / 2
        corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        coll = PolyCollection(xy[:, None, :] + corners[None, :, :], cmap="viridis", alpha=0.85, linewidths=0)
    else:
        coll = EllipseCollection(
            widths=diam,
            heights=diam,
            angles=0,
            units="xy",
            offsets=xy,
            offset_transform=ax.transData,
            cmap="viridis",
            alpha=0.85,
            linewidths=0,
        )
    coll.set_array(values)
    ax.add_collection(coll)
    fig.colorbar(coll, ax=ax, fraction=0.035, pad=0.02, label=label)
    if tissue:
        from ._tissue import read_mask

        mask = read_mask(cat.layout, m)
        for poly in mask.geometry.geoms if mask is not None else ():
            for ring in (poly.exterior, *poly.interiors):
                rx, ry = ring.xy
                ax.plot(rx, ry, color="lime", linewidth=1.0, label="_tissue")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(_title(sample_id, len(view), m), fontsize=9)
    ax.set_xlabel("x (level-0 px)")
    ax.set_ylabel("y (level-0 px)")
    fig.tight_layout()
    return fig


def plot_sample(
    cat: Catalog, sample_id: str, out: str | Path, *, gene: str | None = None, dpi: int = 150, tissue: bool = True
) -> Path:
    """Write :func:`sample_figure` of ``sample_id`` to the PNG ``out`` (parent folders
    created); returns ``out``."""
    fig = sample_figure(cat, sample_id, gene=gene, tissue=tissue)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out
