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
    from PIL import Image

    def lime(args: list[str]) -> int:
        png = tmp_path / "x1.png"
        res = runner.invoke(app, ["plot", str(cat.path), "x1", "--out", str(png), *args])
        assert res.exit_code == 0, res.output
        a = np.asarray(Image.open(png).convert("RGB")).astype(int)
        return int(((a[..., 1] > 200) & (a[..., 0] < 80) & (a[..., 2] < 80)).sum())

    assert lime([]) > 100 and lime(["--no-tissue"]) == 0  # the outline is drawn, and only on request


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


@pytest.mark.parametrize("technology", ["visium-hd", "visium"])
def test_in_tissue_source_by_technology(technology: str, tmp_path: Path) -> None:
    """Pseudo-spots (Visium HD, Xenium) take in_tissue from the mask; Visium keeps its
    reader's call. Spots are placed on the synthetic truth: on tissue and on glass."""
    import pandas as pd
    import scipy.sparse as sp
    from PIL import Image

    from catalog._tissue import sample_tissue, with_in_tissue
    from hestkit.geometry import PixelSizeDecision
    from hestkit.patches import PairSpec
    from hestkit.sample import SampleSource
    from hestkit.slide import open_slide
    from hestkit.synthetic.slides import SLIDE_CLASS_CODES, make_slide_cohort

    df = make_slide_cohort(tmp_path, n_slides=1, size_px=2048, mpp=2.0, seed=4)
    classes = np.asarray(Image.open(df.classes_mask[0]))
    d = int(df.truth_downsample[0])
    # deep inside tissue / on open glass: at least 60 um from any other class
    from scipy import ndimage

    rng = np.random.default_rng(0)
    tissue = (classes >= SLIDE_CLASS_CODES["tissue_a"]) & (classes <= SLIDE_CLASS_CODES["tissue_c"])
    picks = {}
    for name, region in (("tissue", tissue), ("glass", classes == SLIDE_CLASS_CODES["glass"])):
        ys, xs = np.nonzero(ndimage.distance_transform_edt(region) * d > 30)
        chosen = rng.choice(len(ys), 20, replace=False)
        picks[name] = list(zip(ys[chosen], xs[chosen], strict=True))
    yx = np.array(picks["tissue"] + picks["glass"], dtype=float)
    n = len(yx)
    spots = pd.DataFrame(
        {
            "barcode": [f"b{i}" for i in range(n)],
            "in_tissue": np.ones(n, np.int8),
            "array_row": np.arange(n),
            "array_col": np.arange(n),
            "x_px": (yx[:, 1] + 0.5) * d,
            "y_px": (yx[:, 0] + 0.5) * d,
            "x_um": np.nan,
            "y_um": np.nan,
        }
    )
    src = SampleSource(
        "s", technology, sp.csr_matrix((n, 1)), ["G"], ["G"], spots, Path(df.path[0]),
        PixelSizeDecision(2.0, "embedded", 2.0, None), 16.0, "square", {}, [],
    )
    with open_slide(df.path[0]) as slide:
        t = sample_tissue(slide, src, PairSpec(patch_size_px=8, pixel_size_um=2.0))
    out = with_in_tissue(src, t.in_tissue).spots["in_tissue"].to_numpy()
    assert t.manifest is not None
    if technology == "visium-hd":
        assert t.manifest["in_tissue_source"] == "tissue-mask"
        np.testing.assert_array_equal(out, [1] * 20 + [0] * 20)
        assert any("20 of 40 pseudo-spots" in w for w in t.warnings)
    else:
        assert t.manifest["in_tissue_source"] == "reader" and t.in_tissue is None
        assert (out == 1).all()
    assert (t.fraction[:20] > 0.9).all() and (t.fraction[20:] < 0.1).all()
