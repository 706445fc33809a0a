"""``catalog.plot``: figures drawn without global state (issue 16, item 13), square
pseudo-spots drawn as squares of their true side and unknown fields left out of the title
(item 12)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import EllipseCollection, PolyCollection
from matplotlib.figure import Figure
from typer.testing import CliRunner

import catalog
from catalog.plot import plot_sample, sample_figure
from cli.hestkit import app
from hestkit.sample import ReadOptions
from hestkit.synthetic import make_visium, make_visium_hd


@pytest.fixture(scope="module")
def cat(tmp_path_factory: pytest.TempPathFactory) -> catalog.Catalog:
    root = tmp_path_factory.mktemp("plotcat")
    hd = make_visium_hd(root / "hd", n_rows=48, n_cols=48, sizes=(2, 16), n_genes=12, seed=5)
    v = make_visium(root / "v" / "outs", layout="spaceranger2", n_rows=6, n_cols=6, pixel_size_um=0.5, seed=6)
    c = catalog.create(root / "cat")
    # Visium HD, 16 um squares, no organ / species / patient given
    rep = c.ingest([hd.path], technology="visium-hd", options=ReadOptions(sample_id="hd1", spot_size_um=16), workers=1)
    assert not rep.failed, rep.failed[0].message
    rep = c.ingest([v.path], options=ReadOptions(sample_id="v1", organ="Brain", patient="P3"), workers=1)
    assert not rep.failed, rep.failed[0].message
    return c


def _spots(fig: Figure) -> EllipseCollection | PolyCollection:
    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    (coll,) = [c for c in ax.collections if isinstance(c, EllipseCollection | PolyCollection)]
    return coll


def test_square_spots_are_squares_of_their_side(cat: catalog.Catalog) -> None:
    m = cat.manifest("hd1")
    assert m["spot_shape"] == "square" and m["spot_diameter_um"] == pytest.approx(16.0)
    side_px = 16.0 / float(m["pixel_size_um"])
    fig = sample_figure(cat, "hd1", tissue=False)
    coll = _spots(fig)
    assert isinstance(coll, PolyCollection) and not isinstance(coll, EllipseCollection)
    view = cat.pairs(sample_ids=["hd1"])
    paths = coll.get_paths()
    assert len(paths) == len(view) > 4
    xy = view.obs[["x_px", "y_px"]].to_numpy(dtype=float)
    for p, (x, y) in zip(paths, xy, strict=True):
        v = np.asarray(p.vertices, dtype=float)[:4]
        assert v[:, 0].max() - v[:, 0].min() == pytest.approx(side_px)
        assert v[:, 1].max() - v[:, 1].min() == pytest.approx(side_px)
        assert v.mean(axis=0) == pytest.approx([x, y])
    # the colours are the spots' total counts
    np.testing.assert_allclose(np.asarray(coll.get_array(), dtype=float), np.asarray(view.expression().sum(axis=1)).ravel())


def test_round_spots_are_discs_of_their_diameter(cat: catalog.Catalog) -> None:
    m = cat.manifest("v1")
    assert m["spot_shape"] == "circle"
    coll = _spots(sample_figure(cat, "v1", tissue=False))
    assert isinstance(coll, EllipseCollection)
    diam_px = float(m["spot_diameter_um"]) / float(m["pixel_size_um"])
    np.testing.assert_allclose(np.asarray(coll.get_widths(), dtype=float), diam_px)  # full widths, in data units
    np.testing.assert_allclose(np.asarray(coll.get_heights(), dtype=float), diam_px)


def test_title_omits_unknown_fields(cat: catalog.Catalog) -> None:
    hd = sample_figure(cat, "hd1", tissue=False).axes[0].get_title()
    assert hd.startswith("hd1: ") and "visium-hd" in hd
    for junk in ("None", "?", "nan", ", ,", ",,"):
        assert junk not in hd, hd
    v1 = sample_figure(cat, "v1", tissue=False).axes[0].get_title()
    assert "Brain" in v1 and "P3" in v1 and "None" not in v1 and "?" not in v1


def test_no_global_state_changed(cat: catalog.Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plotting neither switches matplotlib's backend nor registers figures with pyplot,
    and nothing (plot, export, ingest) changes other packages' loggers or the warning filters."""

    def _no_use(*a: object, **k: object) -> None:
        raise AssertionError("library code called matplotlib.use()")

    monkeypatch.setattr(matplotlib, "use", _no_use)
    backend = matplotlib.get_backend()
    managers = logging.root.manager.loggerDict

    def _levels() -> dict[str, tuple[int, bool, bool]]:
        out = {"": (logging.root.level, logging.root.disabled, True)}
        for name, lg in list(managers.items()):
            if isinstance(lg, logging.Logger):
                out[name] = (lg.level, lg.disabled, lg.propagate)
        return out

    # a user's own levels for dask's loggers (an earlier ingest in this process may have run)
    dask_loggers = [logging.getLogger(n) for n in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.core")]
    saved = [lg.level for lg in dask_loggers]
    for lg in dask_loggers:
        lg.setLevel(logging.INFO)
    try:
        _check_untouched(cat, tmp_path, _levels)
    finally:
        for lg, level in zip(dask_loggers, saved, strict=True):
            lg.setLevel(level)
    assert matplotlib.get_backend() == backend


def _check_untouched(cat: catalog.Catalog, tmp_path: Path, _levels: Callable[[], dict[str, tuple[int, bool, bool]]]) -> None:
    before, filters, disable = _levels(), list(warnings.filters), logging.root.manager.disable
    fig = sample_figure(cat, "hd1", gene=cat.pairs(sample_ids=["hd1"]).genes[0])
    assert isinstance(fig, Figure)
    png = plot_sample(cat, "v1", tmp_path / "sub" / "v1.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(app, ["plot", str(cat.path), "hd1", "-o", str(tmp_path / "hd1.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hd1.png").stat().st_size > 5_000
    # an ingest starts (and stops) a local dask cluster: its loggers are left as they were
    c2 = catalog.create(tmp_path / "c2")
    v = make_visium(tmp_path / "v2" / "outs", layout="spaceranger2", n_rows=4, n_cols=4, pixel_size_um=0.5, seed=7)
    rep = c2.ingest([v.path], options=ReadOptions(sample_id="v2"), workers=1)
    assert not rep.failed, rep.failed[0].message
    after = _levels()
    changed = {k: (before[k], after[k]) for k in before if k in after and before[k] != after[k]}
    assert not changed, changed
    assert logging.root.manager.disable == disable
    assert warnings.filters == filters


def test_gene_colours_are_log1p_counts(cat: catalog.Catalog) -> None:
    view = cat.pairs(sample_ids=["hd1"])
    gene = view.genes[1]
    fig = sample_figure(cat, "hd1", gene=gene.lower() if gene.lower() not in view.genes else gene, tissue=False)
    coll = _spots(fig)
    want = np.log1p(np.asarray(view.expression([gene]).toarray(), dtype=float).ravel())
    np.testing.assert_allclose(np.asarray(coll.get_array(), dtype=float), want, rtol=1e-6)
    assert any(f"{gene} (log1p counts)" in a.get_ylabel() for a in fig.axes)
