"""Pictures of a catalog: spots over the slide thumbnail."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .catalog import Catalog
from .errors import QueryError

__all__ = ["plot_sample"]


def plot_sample(
    cat: Catalog, sample_id: str, out: str | Path, *, gene: str | None = None, dpi: int = 150, tissue: bool = True
) -> Path:
    """Draw the pairs of ``sample_id`` over its thumbnail, coloured by ``gene`` (log1p
    counts) or by total counts, each spot drawn at its true diameter, and (``tissue``)
    the outline of the sample's tissue mask when it has one. Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import EllipseCollection

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
    fig, ax = plt.subplots(figsize=(8, 8 * h / max(w, 1.0) + 0.6))
    ax.imshow(thumb, extent=(0, w, h, 0))
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
    ax.set_title(
        f"{sample_id}: {len(view)} pairs, {m.get('technology')}, {m.get('organ') or '?'}, "
        f"{float(m['pixel_size_um']):.3g} um/px ({m.get('pixel_size_source')})",
        fontsize=9,
    )
    ax.set_xlabel("x (level-0 px)")
    ax.set_ylabel("y (level-0 px)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
