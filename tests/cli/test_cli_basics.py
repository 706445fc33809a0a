"""Both commands: --version, shell completion, --technology takes any registered reader,
and a broken reader plug-in is a warning naming it, not a crash of every ingest."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.hestkit import app as hestkit_app
from cli.seal import app as seal_app
from hestkit import __version__
from hestkit.readers import ReaderPluginWarning, _registry, find_reader, reader_names, register_reader

runner = CliRunner()


@pytest.mark.parametrize(("app", "prog"), [(hestkit_app, "hestkit"), (seal_app, "seal")])
def test_version_and_completion(app: Any, prog: str) -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"{prog} {__version__}"
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "--install-completion" in r.output and "--version" in r.output


def test_technology_takes_registered_readers_and_suggests(tmp_path: Path) -> None:
    r = runner.invoke(hestkit_app, ["ingest", str(tmp_path), "--catalog", str(tmp_path / "c"), "--technology", "visum"])
    text = re.sub(r"[\s│╭╮╰╯─]+", " ", r.output)  # rich wraps the error in a box
    assert r.exit_code != 0 and "no reader named 'visum'" in text and "did you mean 'visium'" in text, text
    assert not (tmp_path / "c").exists()
    assert {"visium", "visium-hd", "xenium", "st", "hest"} <= set(reader_names())


class _Broken:
    name = "broken-plugin"
    description = "a reader whose can_open raises"

    def can_open(self, path: Path) -> bool:
        raise RuntimeError("boom")

    def scan(self, path: Path, options: Any) -> list[Any]:
        return []

    def load(self, ref: Any) -> Any:
        raise NotImplementedError


class _EntryPoint:
    name = "bad"
    value = "nowhere.module:Reader"
    dist = None

    def load(self) -> Any:
        raise ImportError("No module named 'nowhere'")


def test_a_broken_plugin_warns_and_the_others_still_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hestkit.synthetic import make_visium

    sample = make_visium(tmp_path / "v", seed=0, n_rows=6, n_cols=6, n_genes=10)
    monkeypatch.setattr(_registry, "_PLUGINS_LOADED", False)
    monkeypatch.setattr(_registry, "entry_points", lambda group: [_EntryPoint()])
    monkeypatch.setitem(_registry._READERS, "broken-plugin", _Broken())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = find_reader(Path(getattr(sample, "path", sample)))
    assert reader.name == "visium"
    text = [str(w.message) for w in caught if issubclass(w.category, ReaderPluginWarning)]
    assert any("'bad'" in t and "nowhere" in t for t in text), text
    assert any("'broken-plugin'" in t and "boom" in t for t in text), text
    assert "broken-plugin" in reader_names()
    with pytest.raises(ValueError, match="already registered"):
        register_reader(_Broken())
