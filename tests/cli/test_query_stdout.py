"""``hestkit query --out -``: the pairs as TSV on stdout, everything else on stderr."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import catalog
from cli.hestkit import app
from hestkit.synthetic import make_hest, make_visium

runner = CliRunner()


@pytest.fixture(scope="module")
def cat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two samples of different gene panels, so some genes are unmeasured in one of them."""
    root = tmp_path_factory.mktemp("qout")
    make_visium(root / "lung1", n_rows=6, n_cols=6, seed=21)
    make_hest(root / "hest", "H002", organ="Kidney", species="Mus musculus", patient="M1", n_rows=6, n_cols=5, seed=23)
    c = root / "cat"
    for args in (["ingest", str(root / "lung1"), "--catalog", str(c), "--organ", "Lung"], ["ingest", str(root / "hest"), "--catalog", str(c)]):
        r = runner.invoke(app, ["-q", *args])
        assert r.exit_code == 0, r.output
    return c


def _parse(stdout: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(stdout), sep="\t", keep_default_na=False, na_values=[""], dtype={"barcode": str})


def test_out_dash_writes_only_the_pairs_to_stdout(cat: Path) -> None:
    r = runner.invoke(app, ["query", str(cat), "--out", "-"])
    assert r.exit_code == 0, r.output
    view = catalog.open(cat).pairs()
    df = _parse(r.stdout)
    # nothing but the table on stdout: one header, one line per pair, no log / warning / summary lines
    assert len(r.stdout.splitlines()) == len(view) + 1
    assert not any(x.startswith(("warning", "wrote", "INFO", "WARNING")) or "pairs," in x or "━" in x for x in r.stdout.splitlines())
    assert list(df.columns[:3]) == ["obs_name", "sample_id", "barcode"] and list(df.columns[-len(view.genes) :]) == view.genes
    assert not {"soma_joinid", "obs_id", "ingest_id", "patch_index"} & set(df.columns)
    assert list(df["obs_name"]) == [f"{s}_{b}" for s, b in zip(view.obs["sample_id"], view.obs["barcode"], strict=True)]
    np.testing.assert_allclose(df["x_px"].to_numpy(), view.obs["x_px"].to_numpy())
    # counts exact; an unmeasured gene is an empty field (NaN), a measured zero is 0
    X = view.expression(unmeasured="nan")
    got = df[view.genes].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(X))
    assert np.isnan(X).any() and (X == 0).any()
    np.testing.assert_array_equal(got[~np.isnan(got)], X[~np.isnan(X)])
    # the summary, the unmeasured-gene warning and the "wrote" line went to stderr
    assert "57 pairs" in r.stderr and "not measured" in r.stderr and "to stdout (TSV)" in r.stderr


def test_out_dash_with_json_and_filters_keeps_stdout_clean(cat: Path) -> None:
    r = runner.invoke(app, ["query", str(cat), "--organ", "Kidney", "--gene", "Actb", "--json", "--out", "-"])
    assert r.exit_code == 0, r.output
    df = _parse(r.stdout)
    assert set(df["sample_id"]) == {"H002"} and list(df.columns)[-1] == "Actb" and len(df) == 26
    summary = json.loads(r.stderr.strip().splitlines()[0])  # the JSON summary moved to stderr
    assert summary["n_pairs"] == 26
    # an empty selection still gives a parseable header on stdout; -q: nothing on stderr
    r = runner.invoke(app, ["-q", "query", str(cat), "--technology", "xenium", "--out", "-"])
    assert r.exit_code == 0 and r.stdout.splitlines()[0].startswith("obs_name\tsample_id") and len(r.stdout.splitlines()) == 1
    assert r.stderr == ""


def test_out_other_suffix_is_refused(cat: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["query", str(cat), "--out", str(tmp_path / "x.csv")])
    assert r.exit_code == 1 and "ending in .h5ad (or - for TSV on stdout)" in r.stderr and not (tmp_path / "x.csv").exists()
