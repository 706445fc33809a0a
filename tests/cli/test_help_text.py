"""Help text (issue 16, item 9): every command's summary in the command lists is one whole
sentence (not cut, no ragged line breaks), every ``--help`` fits 80 columns, text in
brackets is shown (not eaten as markup), and technology-dependent defaults are stated."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli import hestkit, seal

_BOX = re.compile(r"[│╭╮╰╯─┃━]")


def _flat(text: str) -> str:
    """The help's words in order, box drawing removed and whitespace collapsed."""
    return " ".join(_BOX.sub(" ", text).split())


def _commands(app: typer.Typer) -> Iterator[tuple[list[str], Any]]:
    def walk(c: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        yield path, c
        for name, sub in getattr(c, "commands", {}).items():
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


def _help(app: typer.Typer, path: list[str]) -> str:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    return r.output


def _summary(cmd: Any) -> str:
    return " ".join(inspect.cleandoc(cmd.help or "").split("\n\n")[0].split())


APPS: list[tuple[str, Any]] = [("hestkit", hestkit.app), ("seal", seal.app)]


@pytest.mark.parametrize(("name", "app"), APPS, ids=[n for n, _ in APPS])
def test_summaries_whole_and_help_fits_80_columns(name: str, app: typer.Typer) -> None:
    n_groups = 0
    for path, cmd in _commands(app):
        out = _help(app, path)
        for line in out.splitlines():
            assert len(line) <= 80, f"{name} {' '.join(path)} --help: {len(line)} columns: {line!r}"
        subs = getattr(cmd, "commands", {})
        if not subs:
            continue
        n_groups += 1
        flat = _flat(out)
        for sub_name, sub in subs.items():
            summary = _summary(sub)
            where = f"{name} {' '.join([*path, sub_name])}"
            assert summary, f"{where}: no help"
            assert summary.endswith("."), f"{where}: summary is not a whole sentence: {summary!r}"
            assert len(summary) <= 100, f"{where}: summary of {len(summary)} chars, keep it short: {summary!r}"
            assert "..." not in summary and "…" not in summary
            # shown whole in the command list: the full sentence, in one piece
            assert f"{sub_name} {summary}" in flat, f"{where}: summary cut or broken in the list:\n{out}"
    assert n_groups >= 1


def test_spot_size_defaults_stated_and_true() -> None:
    from hestkit.readers.visium_hd import VISIUM_HD_DEFAULT_SPOT_UM
    from hestkit.readers.xenium import XENIUM_DEFAULT_SPOT_SIZE_UM

    flat = _flat(_help(hestkit.app, ["ingest"]))
    stated = f"default: {XENIUM_DEFAULT_SPOT_SIZE_UM:g} for Xenium, {VISIUM_HD_DEFAULT_SPOT_UM:g} for Visium HD"
    assert stated in flat, flat


def test_brackets_in_help_are_shown() -> None:
    """Rich markup mode ate ``[@WEIGHTS]`` in ``PRESET[@WEIGHTS]`` as a style tag."""
    for path, cmd in _commands(seal.app):
        helps = [h for p in cmd.params if "[@WEIGHTS]" in (h := getattr(p, "help", None) or "")]
        if helps:
            assert "[@WEIGHTS]" in _flat(_help(seal.app, path)), path
            return
    pytest.fail("no seal option documents PRESET[@WEIGHTS] any more; update this test")
