"""Shared CLI helpers: error handling, progress bars, tables."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

__all__ = [
    "FLAGS",
    "cli_text",
    "configure_output",
    "error_text",
    "fail",
    "flag_for",
    "handle_errors",
    "print_json",
    "print_table",
    "progress_bars",
    "root_callback",
    "version_option",
    "warn",
]

#: Set by the root ``-q/--quiet`` option: no progress bars, warnings only.
QUIET = False


def configure_output(quiet: bool = False, verbose: int = 0) -> None:
    """``-q``/``-v`` of the root command: the log level of hestkit's own loggers (catalog,
    seal, hestkit) on stderr, and whether progress bars are drawn. Results stay on stdout."""
    import logging

    global QUIET, _ORIGINAL_SHOWWARNING
    QUIET = quiet
    import warnings

    if _ORIGINAL_SHOWWARNING is None:  # the CLI owns the process: library warnings name flags, not parameters
        _ORIGINAL_SHOWWARNING = warnings.showwarning
        warnings.showwarning = _show_warning
    level = logging.ERROR if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("hestkit", "catalog", "seal", "cli"):
        log = logging.getLogger(name)
        log.setLevel(level)
        if not any(getattr(h, "_hestkit_cli", False) for h in log.handlers):
            handler._hestkit_cli = True  # type: ignore[attr-defined]
            log.addHandler(handler)


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


#: Library parameters whose flag is not ``--`` + the name with ``-`` for ``_``.
FLAGS: dict[str, str] = {
    "cells": "--spot-size-um cell",
    "PairSpec.patch_size_px": "--patch-size",
    "PairSpec.pixel_size_um": "--patch-um-per-px",
    "sample_ids": "--sample",
    "patients": "--patient",
    "encoders": "--encoder",
    "slide_eval.column": "--task",
    "LoraSpec.blocks": "--lora-blocks",
    "encoder_2d": "--encoder-2d",
}


def flag_for(opt: Any) -> str:
    """The command-line spelling of a library parameter named in a fix
    (:class:`hestkit.errors.Opt`): ``allow_upsampling=True`` -> ``--allow-upsampling``,
    ``image=PATH`` -> ``--image PATH``, ``overwrite=False`` -> ``--no-overwrite``."""
    flag = FLAGS.get(f"{opt.scope}.{opt.name}") or FLAGS.get(opt.name, "--" + opt.name.replace("_", "-"))
    value = opt.cli if opt.cli is not None else opt.value
    if value == "True" or (opt.name == "use_cache" and value == "False"):
        return flag
    if value == "False":
        return "--no-" + flag[2:]
    return f"{flag} {value}"


def cli_text(text: str, options: Any = None) -> str:
    """A library message with the parameters its fix names (``options``) spelled as
    flags; the common parameters of :data:`hestkit.fixes.ALL` too, for texts with no
    structured fix (warnings, check reports, resource failures)."""
    from hestkit.errors import render
    from hestkit.fixes import ALL

    return render(text, (*(options or ()), *ALL), flag_for)


def error_text(exc: BaseException) -> str:
    """``str(exc)`` with a hestkit error's fix spelled as this command line's flags."""
    return cli_text(str(exc), getattr(exc, "options", ()))


def warn(text: str) -> None:
    """A library warning on stderr, its parameters spelled as flags."""
    typer.secho(f"warning: {cli_text(text)}", fg=typer.colors.YELLOW, err=True)


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
    _ORIGINAL_SHOWWARNING(cli_text(str(message)), category, filename, lineno, file, line)


_ORIGINAL_SHOWWARNING: Any = None


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn hestkit errors into a red message and exit code 1 (no traceback); the
    library parameters an error's fix names are shown as this command line's flags."""
    from hestkit.errors import HestkitError

    try:
        yield
    except HestkitError as exc:
        fail(error_text(exc))
    except (OSError, MemoryError) as exc:  # a full disk or memory outside the library's own steps
        from catalog._faults import resource_message

        msg = resource_message(exc, "hestkit")
        if msg is None:
            raise
        fail(cli_text(msg))
    except KeyboardInterrupt:
        fail("interrupted; the catalog holds only the samples committed before the interruption", 130)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(kind, done, total)`` callback drawing one rich bar per kind."""
    if not enabled or QUIET:
        yield lambda kind, done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {"samples": "samples committed", "blocks": "slide blocks cut"}
    with Progress(
        TextColumn("{task.description:>20}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
        console=Console(stderr=True),  # progress on stderr: stdout carries results only
        disable=not sys.stderr.isatty(),
    ) as prog:
        tasks: dict[str, Any] = {}

        def update(kind: str, done: int, total: int) -> None:
            if kind not in tasks:
                tasks[kind] = prog.add_task(labels.get(kind, kind), total=total)
            prog.update(tasks[kind], completed=done, total=total)

        yield update


def _terminal_width() -> int:
    import shutil

    return max(60, shutil.get_terminal_size((120, 24)).columns)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.4g}"
    return "" if v is None else str(v)


def print_table(df: Any, title: str | None = None, max_rows: int = 200, err: bool = False) -> None:
    """Print a DataFrame as a table that fits the terminal: columns never narrower than
    their header; when they cannot all fit, one block per row (field: value) instead.
    ``err``: on stderr (when stdout carries a result such as ``query --out -``)."""
    from rich.console import Console
    from rich.table import Table

    width = _terminal_width()
    console = Console(width=width, soft_wrap=False, stderr=err)
    rows = [[_cell(v) for v in row] for _, row in df.head(max_rows).iterrows()]
    cols = [str(c) for c in df.columns]
    need = sum(min(max([len(c), *(len(r[i]) for r in rows)]), 40) + 3 for i, c in enumerate(cols)) + 1
    if need <= width:
        t = Table(title=title, show_lines=False)
        for c in cols:
            t.add_column(c, overflow="fold", min_width=len(c))
        for r in rows:
            t.add_row(*r)
        console.print(t)
    else:
        if title:
            console.print(title, style="italic")
        key_w = max(len(c) for c in cols)
        for r in rows:
            t = Table(show_header=False, show_lines=False, box=None, pad_edge=False)
            t.add_column(no_wrap=True, style="bold", min_width=key_w)
            t.add_column(overflow="fold")
            for c, v in zip(cols, r, strict=True):
                t.add_row(c, v)
            console.print(t)
            console.print()
    if len(df) > max_rows:
        typer.echo(f"... {len(df) - max_rows} more rows", err=err)


def print_json(obj: Any, err: bool = False) -> None:
    """Results as JSON on stdout (NaN -> null), for pipes and scripts (``err``: on stderr)."""
    import json
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and callable(v.item):
            try:
                return clean(v.item())
            except (ValueError, TypeError):
                return str(v)
        if hasattr(v, "tolist"):
            return clean(v.tolist())
        return v

    typer.echo(json.dumps(clean(obj), default=str, allow_nan=False), err=err)


def version_option(prog: str) -> Callable[[bool], None]:
    """A ``--version`` callback: print ``PROG VERSION`` (hestkit's, from the installed
    package metadata) and exit."""

    def show(value: bool) -> None:
        if value:
            from hestkit import __version__

            typer.echo(f"{prog} {__version__}")
            raise typer.Exit()

    return show


def root_callback(prog: str) -> Callable[..., None]:
    """The root options every command shares: ``--version``, ``-q/--quiet``, ``-v/--verbose``."""

    def root(
        version: bool = typer.Option(
            False, "--version", callback=version_option(prog), is_eager=True, help="Print the version and exit."
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; errors only on stderr."),
        verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output on stderr (-vv: debug)."),
    ) -> None:
        configure_output(quiet, verbose)

    return root
