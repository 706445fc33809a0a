"""Ingest of every supported layout: alignment, scale, expression, queries."""

from __future__ import annotations

import numpy as np
import pytest

import catalog
from catalog.errors import QueryError

from .conftest import Case


def _expected(case: Case, spec_field_um: float = 112.0, whole: bool = False) -> dict[str, int]:
    """Barcode -> spot index of the pairs a case must give: in tissue with the centre on the
    image (the default edge rule keeps patches that cross the edge); with ``whole``, only
    those whose patch lies entirely on the image."""
    t = case.truth
    half = spec_field_um / 2 / t.pixel_size_um if whole else 0.0
    h, w = t.image_shape
    out = {}
    for i in t.in_tissue_index():
        x, y = t.centres_px[i]
        if x - half >= 0 and y - half >= 0 and x + half <= w and y + half <= h and (half or (x < w and y < h)):
            out[t.barcodes[i]] = int(i)
    return out


def _disk_mask(patch: np.ndarray, colour: np.ndarray, tol: int = 30) -> np.ndarray:
    return (np.abs(patch.astype(int) - colour.astype(int)) <= tol).all(axis=2)


def test_samples_table(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    df = cat.samples().set_index("sample_id")
    assert sorted(df.index) == sorted(c.sample_id for c in cases)
    for c in cases:
        row = df.loc[c.sample_id]
        assert row["organ"] == c.organ and row["species"] == c.species and row["patient"] == c.patient
        assert row["technology"] == "visium"
        assert row["n_pairs"] == len(_expected(c))
        assert row["n_dropped_outside_image"] == int(c.truth.in_tissue.sum()) - len(_expected(c))
        assert row["pixel_size_um"] == pytest.approx(c.truth.pixel_size_um, rel=0.01)
    # the Space Ranger 1.x sample has no embedded pixel size: it was estimated from the grid
    assert df.loc["brainB", "pixel_size_source"] == "estimated"
    assert df.loc["breastA", "pixel_size_source"] == "embedded"
    # some of its spots are so close to the edge that their patches cross it: kept (edge rule "fill")
    assert df.loc["brainB", "n_edge_patches"] == len(_expected(cases[1])) - len(_expected(cases[1], whole=True)) > 0
    assert df.loc["brainB", "n_dropped_edge"] == 0


def test_patch_shows_its_own_spot(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    """Pixel level: the disk in the middle of each patch has that spot's colour and is centred."""
    cat, cases = ingested
    for c in cases:
        view = cat.pairs(sample_ids=[c.sample_id])
        exp = _expected(c)
        assert sorted(view.obs["barcode"]) == sorted(exp)
        whole = _expected(c, whole=True)
        yy, xx = np.mgrid[0:224, 0:224] + 0.5
        for k in range(len(view)):
            if view.obs["barcode"].iloc[k] not in whole:
                continue  # an edge patch: tested in test_edge_rule
            patch = view.patch(k)
            i = exp[view.obs["barcode"].iloc[k]]
            colour = c.truth.colour(i)
            centre = patch[104:120, 104:120].reshape(-1, 3).mean(axis=0)
            assert np.abs(centre - colour).max() < 14, (c.sample_id, k, centre, colour)
            mask = _disk_mask(patch, colour) & ((xx - 112) ** 2 + (yy - 112) ** 2 < 80**2)
            cy, cx = yy[mask].mean(), xx[mask].mean()
            assert abs(cx - 112) < 1.5 and abs(cy - 112) < 1.5, (c.sample_id, k, cx, cy)


def test_resampled_scale(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    """A 55 um disk is 110 px across at 0.5 um/px, whatever the slide's pixel size."""
    cat, cases = ingested
    yy, xx = np.mgrid[0:224, 0:224] + 0.5
    for c in cases:
        view = cat.pairs(sample_ids=[c.sample_id])
        exp = _expected(c)
        diams = []
        for k in range(0, len(view), max(1, len(view) // 12)):
            patch = view.patch(k)
            colour = c.truth.colour(exp[view.obs["barcode"].iloc[k]])
            mask = _disk_mask(patch, colour) & ((xx - 112) ** 2 + (yy - 112) ** 2 < 85**2)
            diams.append(2 * np.sqrt(mask.sum() / np.pi))
        assert np.median(diams) == pytest.approx(55.0 / 0.5, abs=3.0), (c.sample_id, diams)


def test_expression_round_trips_exactly(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    for c in cases:
        view = cat.pairs(sample_ids=[c.sample_id])
        exp = _expected(c)
        X = view.expression().toarray()
        gidx = [c.truth.genes.index(g) for g in view.genes]
        assert sorted(view.genes) == sorted(c.truth.genes)
        truth = c.truth.counts.toarray()
        for k, b in enumerate(view.obs["barcode"]):
            np.testing.assert_array_equal(X[k], truth[exp[b], gidx])
        # view[i] gives the same vector as float32
        patch, e = view[3]
        assert patch.shape == (224, 224, 3) and patch.dtype == np.uint8
        assert e.dtype == np.float32
        np.testing.assert_array_equal(e, X[3])


def test_obs_centres_are_level0_spot_centres(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    for c in cases:
        view = cat.pairs(sample_ids=[c.sample_id])
        exp = _expected(c)
        idx = [exp[b] for b in view.obs["barcode"]]
        np.testing.assert_allclose(view.obs[["x_px", "y_px"]].to_numpy(), c.truth.centres_px[idx])


def test_queries_return_exactly_the_expected_pairs(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested

    def keys(view: catalog.PairView) -> set[tuple[str, str]]:
        return set(zip(view.obs["sample_id"], view.obs["barcode"], strict=True))

    def expected(pred) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
        return {(c.sample_id, b) for c in cases if pred(c) for b in _expected(c)}

    assert keys(cat.pairs()) == expected(lambda c: True)
    assert keys(cat.pairs(organ="Breast")) == expected(lambda c: c.organ == "Breast")
    assert keys(cat.pairs(organ=["brain", "KIDNEY"])) == expected(lambda c: c.organ in ("Brain", "Kidney"))
    assert keys(cat.pairs(species="Mus musculus")) == expected(lambda c: c.species == "Mus musculus")
    assert keys(cat.pairs(technology="visium")) == expected(lambda c: True)
    assert len(cat.pairs(technology="xenium")) == 0
    assert keys(cat.pairs(sample_ids=["TENX01", "breastA"])) == expected(lambda c: c.sample_id in ("TENX01", "breastA"))
    assert keys(cat.pairs(patients=["M7", "M9"])) == expected(lambda c: c.patient in ("M7", "M9"))
    assert keys(cat.pairs(organ="Bowel", species="Mus musculus")) == set()
    # gene selection restricts and orders the columns
    g = cases[0].truth.genes
    view = cat.pairs(sample_ids=["breastA"], genes=[g[5], g[1]])
    assert view.genes == [g[5], g[1]]
    assert view.expression().shape == (len(view), 2)
    with pytest.raises(QueryError, match="NOT_A_GENE"):
        cat.pairs(genes=["NOT_A_GENE"])
    with pytest.raises(QueryError, match="unknown sample"):
        cat.pairs(sample_ids=["nope"])


def test_gene_union_across_samples(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    view = cat.pairs()
    union = set().union(*(c.truth.genes for c in cases))
    assert set(view.genes) == union
    # a mouse gene is zero (absent) in human samples
    mouse_only = sorted(set(cases[1].truth.genes) - set(cases[0].truth.genes))
    if mouse_only:
        v = cat.pairs(sample_ids=["breastA", "brainB"], genes=mouse_only[:3])
        X = v.expression().toarray()
        assert X[(v.obs["sample_id"] == "breastA").to_numpy()].sum() == 0


def test_torch_dataset_with_workers(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    import torch
    from torch.utils.data import DataLoader

    cat, _ = ingested
    view = cat.pairs(organ=["Breast", "Bowel"])
    ds = view.to_torch(expression_transform=np.log1p)
    loader = DataLoader(ds, batch_size=16, num_workers=2, shuffle=False)
    seen = 0
    X = np.log1p(view.expression().toarray())
    for imgs, expr in loader:
        assert imgs.shape[1:] == (3, 224, 224) and imgs.dtype == torch.float32
        assert 0.0 <= float(imgs.min()) and float(imgs.max()) <= 1.0
        np.testing.assert_allclose(expr.numpy(), X[seen : seen + len(expr)], rtol=1e-6)
        seen += len(expr)
    assert seen == len(view)


def test_export_anndata(ingested: tuple[catalog.Catalog, list[Case]], tmp_path) -> None:  # type: ignore[no-untyped-def]
    import anndata as ad

    cat, _ = ingested
    view = cat.pairs(organ="Brain")
    view.to_anndata().write_h5ad(tmp_path / "x.h5ad")
    a = ad.read_h5ad(tmp_path / "x.h5ad")
    assert a.shape == (len(view), len(view.genes))
    np.testing.assert_array_equal(a.X.toarray(), view.expression().toarray())
    np.testing.assert_allclose(a.obsm["spatial"], view.obs[["x_px", "y_px"]].to_numpy())


def test_catalog_elements_carry_encoding(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    import json

    import zarr

    cat, _ = ingested
    meta = json.loads((cat.path / "catalog.json").read_text())
    assert meta["encoding-type"] == "hestkit-catalog" and meta["encoding-version"].startswith("1.")
    m = cat.manifest("breastA")
    assert m["encoding-type"] == "hestkit-sample-manifest"
    g = zarr.open_group(str(cat.path / m["patches_path"]), mode="r")
    assert g.attrs["encoding-type"] == "hestkit-patches"
    assert g["patches"].metadata.codecs[0].codecs[0].to_dict()["name"] == "hestkit.jpeg"
