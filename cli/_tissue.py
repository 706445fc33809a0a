"""``hestkit segment``: the tissue mask of a slide, as QuPath-compatible GeoJSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import handle_errors

__all__ = ["register", "segment"]


def segment(
    slide: Annotated[Path, typer.Argument(help="Slide image (TIFF, OME-TIFF, SVS, NDPI, MRXS, PNG, ...).", show_default=False)],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="GeoJSON to write (default: SLIDE's name + .tissue.geojson, beside it).")
    ] = None,
    target_mpp: Annotated[float, typer.Option("--target-mpp", help="Working resolution in um/px.")] = 8.0,
    min_area_um2: Annotated[float, typer.Option("--min-area-um2", help="Drop tissue pieces smaller than this.")] = 20_000.0,
    min_hole_um2: Annotated[float, typer.Option("--min-hole-um2", help="Fill holes smaller than this.")] = 4_000.0,
    pixel_size_um: Annotated[
        float | None, typer.Option("--pixel-size-um", help="Level-0 um/px, when the slide embeds none (or a wrong one).")
    ] = None,
    preview: Annotated[Path | None, typer.Option("--preview", help="Also write a PNG thumbnail with the outline.")] = None,
    weights: Annotated[
        Path | None,
        typer.Option(help="Local DeepLabV3-ResNet50 tissue weights (e.g. HEST's deeplabv3_seg_v4.ckpt) instead of thresholds."),
    ] = None,
    model_mpp: Annotated[float, typer.Option("--model-mpp", help="With --weights: um/px the network was trained at.")] = 1.0,
    device: Annotated[str, typer.Option(help="With --weights: torch device.")] = "cpu",
) -> None:
    """Segment the tissue of a slide (default: no weights; colour thresholds, ink and shadow removal)."""
    with handle_errors():
        import time

        from hestkit.slide import open_slide
        from hestkit.tissue import TissueSegmenter, segment_tissue

        method: str | TissueSegmenter = "threshold"
        if weights is not None:
            from seal.tissue import DeepLabTissueSegmenter

            method = DeepLabTissueSegmenter(weights, model_mpp=model_mpp, device=device)
        t0 = time.perf_counter()
        with open_slide(slide) as s:
            mask = segment_tissue(
                s,
                target_mpp=target_mpp,
                method=method,
                min_area_um2=min_area_um2,
                min_hole_um2=min_hole_um2,
                pixel_size_um=pixel_size_um,
            )
            dt = time.perf_counter() - t0
            if preview is not None:
                from PIL import Image

                thumb, ds = s.thumbnail(1024)
                Image.fromarray(mask.draw(thumb, ds)).save(preview)
        target = out if out is not None else slide.with_name(slide.name + ".tissue.geojson")
        mask.write_geojson(target)
        area = mask.area_um2
        size = f"{area / 1e6:.2f} mm2" if area is not None else f"{mask.area_px:.3g} px2 (no pixel size)"
        typer.echo(f"{slide}: {mask.n_pieces} tissue pieces, {size}, {mask.fraction(0, 0, mask.width, mask.height):.1%} of the slide, {dt:.1f} s")
        typer.echo(f"wrote {target}" + (f" and {preview}" if preview is not None else ""))


def register(app: typer.Typer) -> None:
    app.command("segment")(segment)
