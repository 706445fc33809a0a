"""The tissue mask in the catalog: kept at ingest, tissue_fraction and in_tissue in obs,
min_tissue_fraction queries, the plot outline, and catalogs older than the column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

import catalog
from catalog import _soma
from catalog._tissue import patch_boxes, read_mask
from catalog.errors import QueryError
from cli.hestkit import app
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_xenium

runner = CliRunner()


@pytest.fixture(scope="module")
def xen(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("tissue_cat")
    return make_xenium(root / "xen", width_um=400, height_um=350, seed=3)


def _ingest(cat: catalog.Catalog, xen, sample_id: str = "x1") -> None:  # type: ignore[no-untyped-def]
    rep = cat.ingest([xen.path], technology="xenium", options=ReadOptions(image=xen.image_path, sample_id=sample_id), workers=1)
    assert not rep.failed, rep.failed[0].message


def test_mask_kept_and_used(xen, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cat = catalog.create(tmp_path / "cat")
    _ingest(cat, xen)
    m = cat.manifest("x1")
    entry = m["tissue"]
    assert entry["in_tissue_source"] == "tissue-mask" and entry["method"] == "threshold"
    assert (tmp_path / "cat" / entry["path"]).is_file()
    mask = read_mask(cat.layout, m)
    assert mask is not None and mask.width == m["image_width"] and mask.n_pieces == entry["n_pieces"]
    obs = cat.pairs().obs
    xy = obs[["x_px", "y_px"]].to_numpy(dtype=float)
    # in_tissue of the pseudo-spots comes from the mask (not 1 everywhere) ...
    np.testing.assert_array_equal(obs["in_tissue"].to_numpy(), mask.contains(xy[:, 0], xy[:, 1]).astype(np.int8))
    assert 0 < obs["in_tissue"].sum() < len(obs)
    assert any("off the tissue mask" in w for w in m["warnings"])
    # ... and every pair's tissue_fraction is its patch's share on the mask
    class _Src:
        pixel_size = type("P", (), {"value": m["pixel_size_um"]})()

    want = mask.fractions(patch_boxes(xy, _Src(), cat.spec))  # type: ignore[arg-type]
    np.testing.assert_allclose(obs["tissue_fraction"].to_numpy(dtype=float), want, atol=1e-6)
    assert obs["tissue_fraction"].min() < 0.2 and obs["tissue_fraction"].max() > 0.9
    # query filter, library and CLI
    sel = cat.pairs(min_tissue_fraction=0.5)
    assert len(sel) == int((want >= 0.5).sum()) and 0 < len(sel) < len(obs)
    assert (sel.obs["tissue_fraction"] >= 0.5).all()
    sel.patch(0)  # a filtered view still reads its patches
    res = runner.invoke(app, ["query", str(cat.path), "--min-tissue-fraction", "0.5"])
    assert res.exit_code == 0, res.output
    assert f"{len(sel)} pairs" in res.output
    res = runner.invoke(app, ["query", str(cat.path), "--min-tissue-fraction", "1.5"])
    assert res.exit_code == 1 and "[0, 1]" in res.output
    # plot with the outline
    png = tmp_path / "x1.png"
    res = runner.invoke(app, ["plot", str(cat.path), "x1", "--out", str(png)])
    assert res.exit_code == 0, res.output
    assert png.stat().st_size > 10_000


def test_catalog_without_the_column(xen, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    old = pa.schema([f for f in _soma.OBS_SCHEMA if f.name != "tissue_fraction"])
    with monkeypatch.context() as mp:  # a catalog created before tissue_fraction existed
        mp.setattr(_soma, "OBS_SCHEMA", old)
        cat = catalog.create(tmp_path / "old")
    with pytest.warns(UserWarning, match="predates the 'tissue_fraction' column"):
        _ingest(cat, xen)
    view = catalog.open(tmp_path / "old").pairs()
    assert len(view) > 0 and view.obs["tissue_fraction"].isna().all()
    view.patch(0)
    with pytest.raises(QueryError, match="have no tissue_fraction"):
        cat.pairs(min_tissue_fraction=0.1)
    res = runner.invoke(app, ["query", str(tmp_path / "old"), "--min-tissue-fraction", "0.1"])
    assert res.exit_code == 1 and "re-ingest" in res.output
