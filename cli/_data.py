"""CLI pieces about data honesty: the edge rule option, unmeasured-gene warnings, and
``hestkit relocate``."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import typer

from ._common import fail, handle_errors

__all__ = ["EdgeRule", "parse_spot_size", "quietly", "register", "warn_unmeasured_genes"]

T = TypeVar("T")


class EdgeRule(str, Enum):
    fill = "fill"
    drop = "drop"


def parse_spot_size(value: str | None) -> tuple[float | None, bool]:
    """``--spot-size-um``: a size in um, or ``cell`` (Xenium: one pair per cell)."""
    if value is None:
        return None, False
    if value.strip().lower() == "cell":
        return None, True
    try:
        return float(value), False
    except ValueError:
        fail(f"--spot-size-um {value!r}: give a size in micrometres (e.g. 55) or 'cell' (Xenium: one pair per cell)")
        raise  # unreachable: fail exits


def warn_unmeasured_genes(view: Any, named: bool) -> None:
    """Say on stderr which genes some selected samples did not measure (their zeros are
    not measurements): every named gene, or a summary over all genes."""
    if not len(view):
        return
    lacking = view.lacking()
    bad = lacking[lacking > 0]
    if bad.empty:
        return
    n = len(view.sample_ids)
    if named:
        for g, k in bad.items():
            typer.secho(
                f"warning: {g} was not measured by {int(k)} of {n} selected samples; their pairs have no "
                "measurement of it (left empty in TSV output; written as 0 in the .h5ad export, which records "
                "uns['hestkit']['measured'])",
                fg=typer.colors.YELLOW,
                err=True,
            )
    else:
        worst = ", ".join(f"{g} ({int(k)})" for g, k in bad.sort_values(ascending=False).head(5).items())
        typer.secho(
            f"warning: {len(bad)} of {len(lacking)} genes were not measured by some of the {n} selected samples "
            f"(samples lacking: {worst}, ...); their values are not measurements (empty in TSV output; 0 in the "
            ".h5ad export, which records uns['hestkit']['measured']; see PairView.measured)",
            fg=typer.colors.YELLOW,
            err=True,
        )


def quietly(fn: Callable[[], T]) -> T:
    """Call ``fn`` without repeating the unmeasured-gene warning already printed."""
    import warnings

    from catalog import UnmeasuredGeneWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnmeasuredGeneWarning)
        return fn()


def relocate(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
    old: Annotated[str, typer.Option("--from", help="The old location (path prefix) of the input data.")],
    new: Annotated[str, typer.Option("--to", help="Their new location.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change; write nothing.")] = False,
) -> None:
    """Rewrite the slide and source paths the catalog records after the input data moved.

    Each manifest is rewritten atomically, under the writers' lock."""
    with handle_errors():
        import catalog
        from catalog.relocate import relocate as _relocate

        rep = _relocate(catalog.open(catalog_dir), old, new, dry_run=dry_run)
        if not rep.samples:
            fail(f"{catalog_dir}: no recorded path starts with {old}; see `hestkit ls {catalog_dir} --all` (image_path)")
        verb = "would rewrite" if dry_run else "rewrote"
        typer.echo(f"{catalog_dir}: {verb} {rep.n_paths} path(s) of {len(rep.samples)} sample(s): {', '.join(rep.samples)}")
        for p in rep.missing:
            typer.secho(f"warning: {p} does not exist", fg=typer.colors.YELLOW, err=True)


def register(app: typer.Typer) -> None:
    app.command("relocate")(relocate)
