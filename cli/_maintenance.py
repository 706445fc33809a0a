"""``hestkit check`` and ``hestkit gc``: verify and repair a catalog, remove replaced
patch generations."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import cli_text, fail, handle_errors

__all__ = ["register"]


def check(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Remove what failed or killed writers left (half-written schema files, orphan patch folders, temp "
            "files); never touches committed data.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    rows: Annotated[int, typer.Option("--rows", help="obs rows (with their counts and patches) read per sample.")] = 4,
    older_than: Annotated[
        str, typer.Option("--older-than", help="Unreferenced patch folders younger than this are in-flight ingests.")
    ] = "1h",
) -> None:
    """Verify every element of a catalog; exit 0 when no damage is found, 1 otherwise.

    Checks manifests, gene lists, SOMA arrays and their schemas, patch arrays; reads a
    sample of rows, counts and patches."""
    with handle_errors():
        import json

        from catalog.check import check_catalog, parse_duration

        rep = check_catalog(catalog_dir, repair=repair, per_sample=rows, older_than_s=parse_duration(older_than))
        if as_json:
            typer.echo(json.dumps(rep.to_dict(), indent=1))
        else:
            for line in rep.lines():
                typer.echo(cli_text(line))
        if not rep.ok:
            if not as_json:
                fail("the catalog is damaged (see above); `hestkit check --repair` removes leftovers of failed writers")
            raise typer.Exit(1)


def gc(
    catalog_dir: Annotated[str, typer.Argument(help="Catalog folder or s3://bucket/prefix.")],
    older_than: Annotated[
        str,
        typer.Option("--older-than", help="Keep generations replaced (or abandoned) more recently than this: 90s, 30m, 12h, 7d."),
    ] = "1h",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed.")] = False,
) -> None:
    """Remove replaced patch generations and dead ingests' staging, once old enough.

    Patch generations replaced by --overwrite are kept meanwhile for readers that hold
    them; both are removed once older than --older-than."""
    with handle_errors():
        from catalog.check import gc_catalog, parse_duration

        rep = gc_catalog(catalog_dir, older_than_s=parse_duration(older_than), dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        for g in rep.removed:
            typer.echo(f"{verb} {g}")
        typer.echo(f"{catalog_dir}: {verb} {len(rep.removed)} patch generation(s); kept {len(rep.kept)} younger than {older_than}")


def register(app: typer.Typer) -> None:
    app.command("check")(check)
    app.command("gc")(gc)
