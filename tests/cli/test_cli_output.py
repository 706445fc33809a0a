"""Results on stdout, JSON for scripts, tables that fit the terminal, typo'd filters named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import catalog
from catalog.errors import QueryError
from cli.hestkit import app
from hestkit.synthetic import make_hest, make_visium

runner = CliRunner()


@pytest.fixture(scope="module")
def cat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("out")
    make_visium(root / "lung1", n_rows=6, n_cols=6, seed=21)
    make_hest(root / "hest", "H002", organ="Kidney", species="Mus musculus", patient="M1", n_rows=6, n_cols=5, seed=23)
    c = root / "cat"
    r = runner.invoke(app, ["-q", "ingest", str(root / "lung1"), "--catalog", str(c), "--organ", "Lung"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["-q", "ingest", str(root / "hest"), "--catalog", str(c)])
    assert r.exit_code == 0, r.output
    return c


def test_json_output_is_clean_and_complete(cat: Path) -> None:
    r = runner.invoke(app, ["ls", str(cat), "--json"])
    assert r.exit_code == 0
    d = json.loads(r.stdout)  # nothing but the JSON on stdout
    assert {s["sample_id"] for s in d["samples"]} == {"lung1", "H002"} and "pixel_size_um" in d["samples"][0]
    r = runner.invoke(app, ["query", str(cat), "--organ", "Kidney", "--json"])
    assert r.exit_code == 0
    q = json.loads(r.stdout)
    assert q["n_pairs"] == sum(s["pairs"] for s in q["by_sample"]) > 0 and q["by_sample"][0]["sample_id"] == "H002"


def test_tables_fit_the_terminal(cat: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for cols in (80, 250):
        monkeypatch.setenv("COLUMNS", str(cols))
        for args in (["ls", str(cat)], ["ls", str(cat), "--all"]):
            r = runner.invoke(app, args)
            assert r.exit_code == 0
            lines = r.stdout.splitlines()
            assert max(len(x) for x in lines) <= cols, (cols, args)
            # headers are never folded one letter per line
            assert not any(re.fullmatch(r"[│┃|\s]*\w[│┃|\s]*", x) for x in lines if x.strip()), args
            assert "sample_id" in r.stdout and "lung1" in r.stdout


def test_unknown_filter_values_are_named_with_the_catalogs_values(cat: Path) -> None:
    with pytest.raises(QueryError, match=r"technology 'visum' \(did you mean 'visium'\?\)"):
        catalog.open(cat).pairs(technology="visum")
    with pytest.raises(QueryError, match=r"organ 'lver'.*Kidney, Lung"):
        catalog.open(cat).pairs(organ="lver")
    assert len(catalog.open(cat).pairs(technology="VISIUM")) > 0  # case-insensitive as before
    assert len(catalog.open(cat).pairs(technology="xenium")) == 0  # a real technology the catalog lacks: empty
    r = runner.invoke(app, ["query", str(cat), "--species", "Mus muscul"])
    assert r.exit_code == 1 and "species 'Mus muscul' (did you mean 'Mus musculus'?)" in re.sub(r"\s+", " ", r.output)


def test_quiet_and_verbose(cat: Path) -> None:
    r = runner.invoke(app, ["-v", "ls", str(cat)])
    assert r.exit_code == 0 and "lung1" in r.stdout
    r = runner.invoke(app, ["-q", "query", str(cat), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["n_pairs"] > 0
