"""Shared CLI helpers: error handling, progress bars, tables."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

__all__ = ["fail", "handle_errors", "print_table", "progress_bars"]


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn hestkit errors into a red message and exit code 1 (no traceback)."""
    from hestkit.errors import HestkitError

    try:
        yield
    except HestkitError as exc:
        fail(str(exc))
    except (OSError, MemoryError) as exc:  # a full disk or memory outside the library's own steps
        from catalog._faults import resource_message

        msg = resource_message(exc, "hestkit")
        if msg is None:
            raise
        fail(msg)
    except KeyboardInterrupt:
        fail("interrupted; the catalog holds only the samples committed before the interruption", 130)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(kind, done, total)`` callback drawing one rich bar per kind."""
    if not enabled:
        yield lambda kind, done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"samples": "samples committed", "blocks": "slide blocks cut"}
    with Progress(
        TextColumn("{task.description:>20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
        disable=not sys.stderr.isatty(),
    ) as prog:
        tasks: dict[str, Any] = {}

        def update(kind: str, done: int, total: int) -> None:
            if kind not in tasks:
                tasks[kind] = prog.add_task(labels.get(kind, kind), total=total)
            prog.update(tasks[kind], completed=done, total=total)

        yield update


def print_table(df: Any, title: str | None = None, max_rows: int = 200) -> None:
    """Print a DataFrame as a rich table."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for c in df.columns:
        t.add_column(str(c), overflow="fold")
    for _, row in df.head(max_rows).iterrows():
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append("" if v != v else f"{v:.4g}")
            else:
                cells.append("" if v is None else str(v))
        t.add_row(*cells)
    Console(width=200).print(t)
    if len(df) > max_rows:
        typer.echo(f"... {len(df) - max_rows} more rows")


def version_option(prog: str) -> Callable[[bool], None]:
    """A ``--version`` callback: print ``PROG VERSION`` (hestkit's, from the installed
    package metadata) and exit."""

    def show(value: bool) -> None:
        if value:
            from hestkit import __version__

            typer.echo(f"{prog} {__version__}")
            raise typer.Exit()

    return show
