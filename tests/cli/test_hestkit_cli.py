from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anndata as ad
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.hestkit import app
from hestkit.synthetic import make_hest, make_visium

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("in")
    make_visium(root / "lung1", n_rows=6, n_cols=6, seed=21)
    make_hest(root / "hest", "H001", organ="Bowel", patient="P5", n_rows=6, n_cols=6, seed=22)
    make_hest(root / "hest", "H002", organ="Kidney", species="Mus musculus", patient="M1", n_rows=6, n_cols=5, seed=23)
    return {"visium": root / "lung1", "hest": root / "hest"}


def test_ingest_ls_query_plot(inputs: dict[str, Path], tmp_path: Path) -> None:
    cat = tmp_path / "cat"
    r = runner.invoke(app, ["ingest", str(inputs["visium"]), "--catalog", str(cat), "--organ", "Lung", "--patient", "P9", "-q"])
    assert r.exit_code == 0, r.output
    assert "lung1" in r.output and "ingested 1 sample" in r.output
    r = runner.invoke(app, ["ingest", str(inputs["hest"]), "--catalog", str(cat), "--ids", "H002", "--workers", "2", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["ls", str(cat)])
    assert r.exit_code == 0 and "lung1" in r.output and "H002" in r.output and "H001" not in r.output
    r = runner.invoke(app, ["query", str(cat), "--organ", "Kidney", "--out", str(tmp_path / "k.h5ad")])
    assert r.exit_code == 0, r.output
    a = ad.read_h5ad(tmp_path / "k.h5ad")
    assert set(a.obs["sample_id"]) == {"H002"} and a.n_obs > 0
    assert f"{a.n_obs} pairs" in r.output
    r = runner.invoke(app, ["query", str(cat), "--technology", "xenium"])
    assert r.exit_code == 0 and "no pairs match" in r.output
    out = tmp_path / "p.png"
    r = runner.invoke(app, ["plot", str(cat), "lung1", "-o", str(out)])
    assert r.exit_code == 0, r.output
    w, h = Image.open(out).size
    assert w > 400 and h > 400
    gene = a.var_names[0]
    r = runner.invoke(app, ["plot", str(cat), "H002", "-o", str(tmp_path / "g.png"), "--gene", gene])
    assert r.exit_code == 0, r.output


def test_errors_exit_nonzero_with_message(inputs: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["ls", str(tmp_path / "nothing")])
    assert r.exit_code == 1 and "not a hestkit catalog" in r.output
    r = runner.invoke(app, ["ingest", str(tmp_path), "--catalog", str(tmp_path / "c")])
    assert r.exit_code == 1 and "no reader recognises" in r.output
    bad = tmp_path / "bad"
    make_visium(bad, n_rows=4, n_cols=4, seed=1)
    (bad / "spatial" / "scalefactors_json.json").unlink()
    r = runner.invoke(app, ["ingest", str(bad), "--catalog", str(tmp_path / "c2"), "-q"])
    assert r.exit_code == 1 and "scalefactors_json.json" in r.output and "re-run" in r.output
    r = runner.invoke(app, ["plot", str(tmp_path / "c2"), "nope", "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "no sample 'nope'" in r.output


def test_help_imports_nothing_heavy() -> None:
    proc = subprocess.run([sys.executable, "-m", "cli.hestkit", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ingest" in proc.stdout
    # heavy libraries are imported inside commands, not at start-up
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, cli.hestkit; print(sorted(m for m in ('torch','tiledbsoma','zarr','dask') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "[]", proc.stdout
