"""Structured fixes: the library names its parameters, the CLI renders its flags.

The same refusal (patches upsampled above 4x) reads ``allow_upsampling=True`` in Python
and ``--allow-upsampling`` on the command line, which exits non-zero.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

import catalog
from cli._common import cli_text, error_text, flag_for
from cli.hestkit import app
from hestkit import PairSpec, ReadOptions
from hestkit.errors import Fix, Opt, OptionError, Problem, ReaderError, ValidationError, fix, render
from hestkit.fixes import ALLOW_UPSAMPLING, IDS, IMAGE, PIXEL_SIZE_UM, VOXEL_SIZE_UM
from hestkit.resolution import UpsamplingError, check_upsampling
from hestkit.synthetic import make_visium

runner = CliRunner()
SIX_X = 0.5 / 6  # patches of this um/px cut from the 0.5 um/px synthetic slide: 6x upsampled, refused


@pytest.fixture(scope="module")
def visium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixes")
    make_visium(root / "s1", n_rows=4, n_cols=4, pixel_size_um=0.5, seed=31)
    return root / "s1"


def test_upsampling_refusal_names_the_parameter_in_python(visium: Path, tmp_path: Path) -> None:
    with pytest.raises(UpsamplingError) as ei:
        check_upsampling("s1", visium / "tissue_fullres.tif", 0.5, SIX_X)
    text = str(ei.value)
    assert "allow_upsampling=True" in text and "image=PATH" in text and "--" not in text
    assert {o.name for o in ei.value.options} == {"allow_upsampling", "image", "pixel_size_um"}
    assert ei.value.fix is not None and ei.value.fix.text in text
    # through an ingest, the failure keeps the structured fix next to its message
    cat = catalog.create(tmp_path / "cat", PairSpec(32, SIX_X))
    rep = cat.ingest([visium], options=ReadOptions(sample_id="s1"), workers=1)
    (failed,) = rep.failed
    assert "allow_upsampling=True" in failed.message and "--" not in failed.message
    assert ALLOW_UPSAMPLING in failed.options
    # errors survive pickling (dask.distributed workers send them back) with their fix
    back = pickle.loads(pickle.dumps(ei.value))
    assert type(back) is UpsamplingError and str(back) == text and back.options == ei.value.options


def test_cli_renders_the_flag_from_the_structured_fix(visium: Path, tmp_path: Path) -> None:
    args = ["ingest", str(visium), "--catalog", str(tmp_path / "c"), "--sample-id", "s1", "--workers", "1"]
    r = runner.invoke(app, [*args, "--patch-size", "32", "--patch-um-per-px", str(SIX_X)])
    assert r.exit_code == 1, r.output
    err = " ".join(r.stderr.split())
    assert "upsampled 6.0x" in err and "--allow-upsampling" in err and "--image PATH" in err
    assert "at least 0.125 um/px (--patch-um-per-px 0.125)" in err  # PairSpec's pixel_size_um, re-spelled
    assert "allow_upsampling=True" not in err and "image=PATH" not in err
    # the flag it names is the one that works
    r = runner.invoke(app, [*args, "--patch-size", "32", "--patch-um-per-px", str(SIX_X), "--allow-upsampling"])
    assert r.exit_code == 0, r.output


def test_a_direct_error_is_rendered_too(tmp_path: Path) -> None:
    """An error raised (not reported by ingest) goes through ``handle_errors``."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    r = runner.invoke(app, ["ingest", str(tmp_path / "empty"), "--catalog", str(tmp_path / "c")])
    assert r.exit_code == 1 and "pass --technology NAME" in " ".join(r.stderr.split()) and "technology=NAME" not in r.stderr


def test_render_and_flag_spelling() -> None:
    assert flag_for(ALLOW_UPSAMPLING) == "--allow-upsampling"
    assert flag_for(IMAGE) == "--image PATH"
    assert flag_for(VOXEL_SIZE_UM) == "--voxel-size-um Z Y X"
    assert flag_for(IDS) == "--ids ID"
    assert flag_for(Opt("overwrite", "False")) == "--no-overwrite"
    assert flag_for(Opt("cache", "False")) == "--no-cache"
    assert flag_for(Opt("pixel_size_um", "0.5", scope="PairSpec")) == "--patch-um-per-px 0.5"
    assert flag_for(Opt("cells")) == "--spot-size-um cell"
    # whole words only: ids=ID inside sample_ids=ID is left alone
    sample_ids = Opt("sample_ids", "ID")
    assert render(f"{sample_ids} or {IDS}", [IDS], lambda o: "X") == "sample_ids=ID or X"
    assert cli_text(f"pass {PIXEL_SIZE_UM}.") == "pass --pixel-size-um UM."  # common parameters without a fix


def test_validation_errors_gather_their_problems_fixes() -> None:
    p1 = Problem("/a", "several candidate images (a.tif, b.tif)", fix(f"pass {IMAGE} to choose one", IMAGE))
    p2 = Problem.of(ReaderError("/b", "no pixel size", fix(f"pass {PIXEL_SIZE_UM}", PIXEL_SIZE_UM)))
    err = ValidationError("sample x", [p1, p2])
    assert str(p1) == "/a: several candidate images (a.tif, b.tif); pass image=PATH to choose one"
    assert err.options == (IMAGE, PIXEL_SIZE_UM)
    out = error_text(err)
    assert "pass --image PATH to choose one" in out and "Fix: pass --pixel-size-um UM" in out and "=" not in out.split(":", 1)[1]
    # a plain-text fix is kept as a Fix and appended to the message
    e = OptionError("bad value", fix="use a good one")
    assert str(e) == "bad value. Fix: use a good one" and isinstance(e.fix, Fix) and e.options == () and isinstance(e, ValueError)
