"""Exports write under a staging name and rename at the end: a killed or failed export
never leaves a partial folder or file that looks complete; a full disk ends in one line."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import catalog
from catalog import _faults
from catalog.export import export_sample
from hestkit.readers import scan
from hestkit.sample import ReadOptions

from .conftest import Case

_KILL = """
import sys, catalog
from catalog.export import export_sample
export_sample(catalog.open(sys.argv[1]), sys.argv[2], "hest", sys.argv[3])
"""


@pytest.fixture
def no_hook() -> Iterator[None]:
    yield
    _faults.set_fault_hook(None)


def test_killed_hest_export_leaves_nothing_that_ingests(ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path) -> None:
    cat, _ = ingested
    out = tmp_path / "hest"
    script = tmp_path / "export.py"
    script.write_text(_KILL)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HESTKIT_TEST_KILL_AT": "export-hest"}
    proc = subprocess.run([sys.executable, str(script), cat.uri, "breastA", str(out)], env=env, capture_output=True, timeout=180)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists()  # only the dot-named staging is left
    (stage,) = (p for p in tmp_path.iterdir() if p.name.startswith(".hest.partial-"))
    assert (stage / "wsis").is_dir() and not (stage / "st" / "breastA.h5ad").exists()
    # the finished export lands whole and ingests
    export_sample(cat, "breastA", "hest", out)
    assert [r.sample_id for r in scan(out, ReadOptions())] == ["breastA"]


@pytest.mark.parametrize("fmt", ["hest", "anndata", "spatialdata"])
def test_failed_export_of_every_format_leaves_the_target_as_it_was(
    ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path, fmt: str, no_hook: None
) -> None:
    if fmt == "spatialdata":
        pytest.importorskip("spatialdata")
    cat, _ = ingested
    out = tmp_path / {"hest": "hest", "anndata": "s.h5ad", "spatialdata": "s.zarr"}[fmt]

    def full(point: str) -> None:
        if point == "export:rename":
            raise OSError(errno.ENOSPC, "No space left on device")

    _faults.set_fault_hook(full)
    with pytest.raises(_faults.ResourceError) as ei:
        export_sample(cat, "breastA", fmt, out)  # type: ignore[arg-type]
    assert "exporting sample 'breastA'" in str(ei.value) and "free some space" in str(ei.value)
    assert list(tmp_path.iterdir()) == []  # no target, no staging
    if fmt == "spatialdata":
        return  # its successful export is tested in test_export.py (a slow writer)
    _faults.set_fault_hook(None)
    export_sample(cat, "breastA", fmt, out)  # type: ignore[arg-type]
    assert out.exists() and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_hest_export_into_an_existing_root_adds_the_sample(ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path) -> None:
    cat, _ = ingested
    out = tmp_path / "hest"
    export_sample(cat, "breastA", "hest", out)
    export_sample(cat, "brainB", "hest", out)
    assert sorted(r.sample_id for r in scan(out, ReadOptions())) == ["brainB", "breastA"]
    assert [p.name for p in tmp_path.iterdir()] == ["hest"]


def test_cli_export_on_a_full_disk_is_one_line(
    ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.hestkit import app

    cat, _ = ingested
    monkeypatch.setenv(_faults.FAIL_ENV, "export:anndata")
    res = CliRunner().invoke(app, ["export", cat.uri, "breastA", "-f", "anndata", "-o", str(tmp_path / "a.h5ad")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "exporting sample 'breastA' as anndata" in res.output and "no space left" in res.output, res.output
    assert list(tmp_path.iterdir()) == []
