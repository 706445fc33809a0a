"""``hestkit add-slides``: whole-slide images without ST in the catalog's slide table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import handle_errors, print_table

__all__ = ["add_slides", "print_slides", "register"]


def print_slides(cat_path: str | Path) -> bool:
    """Print the slide table of a catalog; False when it has none."""
    import catalog

    df = catalog.open(cat_path).slides()
    if df.empty:
        return False
    shown = df.drop(columns=["path", "added_at"], errors="ignore")
    print_table(shown, title=f"{cat_path}: {len(df)} slides")
    return True


def add_slides(
    slides_csv: Annotated[Path, typer.Argument(help="CSV with slide_id, path, patient, optional mpp, then label columns.")],
    catalog_dir: Annotated[str, typer.Option("--catalog", "-c", help="Catalog folder or s3:// URI (created if absent).")],
    overwrite: Annotated[bool, typer.Option(help="Replace slides already recorded with another file or labels.")] = False,
) -> None:
    """Add whole-slide images (no ST) and their labels to the catalog's slide table.

    Every row and slide file is checked first; any problem is reported (all at once) and
    nothing is written. Re-running the same command skips slides already recorded.
    """
    with handle_errors():
        from catalog.slides import add_slides as run

        rep = run(catalog_dir, slides_csv, overwrite=overwrite)
        typer.echo(
            f"{len(rep.added)} slide(s) added, {len(rep.replaced)} replaced, {len(rep.skipped)} already recorded; "
            f"label columns: {', '.join(rep.label_columns) or 'none'}"
        )
        print_slides(catalog_dir)


def register(app: typer.Typer) -> None:
    app.command("add-slides")(add_slides)
