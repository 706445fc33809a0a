"""The HEST-1k-shaped scale generator (bench/_hest1k_scale.py) at a tiny size, and the
catalog's query path on it: exact sample, spot, organ and gene counts through the API."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import catalog
from catalog import _soma
from catalog._shards import PatchReader

ROOT = Path(__file__).resolve().parents[2]
CSV = ROOT.parent / "shared" / "hest1k_metadata_v1_1_0.csv"
pytestmark = pytest.mark.skipif(not CSV.exists(), reason=f"{CSV} (HEST-1k metadata) is not here")


def _scale_module() -> Any:
    spec = importlib.util.spec_from_file_location("_hest1k_scale", ROOT / "bench" / "_hest1k_scale.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_hest1k_scale"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path, Any]:
    scale = _scale_module()
    md = scale.read_metadata(CSV, 20, seed=3)
    root = tmp_path_factory.mktemp("scale") / "cat"
    stats = scale.build_scale_catalog(root, md, patch_fraction=0.1, density_scale=0.02, samples_per_commit=7, seed=3)
    return scale, md, root, stats


def test_catalog_has_exactly_the_metadata_samples(built: tuple[Any, Any, Path, Any]) -> None:
    _scale, md, root, stats = built
    cat = catalog.open(root)
    samples = cat.samples()
    assert list(samples["sample_id"]) == sorted(md["id"])
    assert stats.n_spots == int(md["spots_under_tissue"].sum())
    got = samples.set_index("sample_id")
    for row in md.itertuples():
        assert got.loc[row.id, "n_pairs"] == row.spots_under_tissue
        assert got.loc[row.id, "organ"] == row.organ
        assert got.loc[row.id, "technology"] == row.technology
        assert got.loc[row.id, "n_genes"] == min(row.nb_genes, 70_000)
    view = cat.pairs()
    assert len(view) == stats.n_spots
    assert view.obs["soma_joinid"].is_unique
    per_sample = view.obs.groupby("sample_id").size()
    assert per_sample.to_dict() == dict(zip(md["id"], md["spots_under_tissue"], strict=True))


def test_filters_return_exact_counts(built: tuple[Any, Any, Path, Any]) -> None:
    _scale, md, root, _stats = built
    cat = catalog.open(root)
    for (organ, tech), grp in md.groupby(["organ", "technology"]):
        v = cat.pairs(organ=organ.upper(), technology=tech)
        assert len(v) == int(grp["spots_under_tissue"].sum()), (organ, tech)
        assert set(v.obs["sample_id"]) == set(grp["id"])
        assert (v.obs["organ"] == organ).all() and (v.obs["technology"] == tech).all()
    for species, grp in md.groupby("species"):
        assert len(cat.pairs(species=species)) == int(grp["spots_under_tissue"].sum())
    patients = [p for p in md["patient"].unique() if p][:2]
    if patients:
        want = md[md["patient"].isin(patients)]
        assert len(cat.pairs(patients=patients)) == int(want["spots_under_tissue"].sum())
    # the joinid-range read returns exactly the rows the ingest-id filter returns
    ms = cat.manifests()
    by_range = _soma.read_obs_ranges(
        cat.layout.soma, [(m["soma_joinid_start"], m["soma_joinid_stop"], m["ingest_id"]) for m in ms]
    )
    by_filter = _soma.read_obs(cat.layout.soma, [m["ingest_id"] for m in ms])
    assert by_range.equals(by_filter)


def test_expression_matches_the_generated_counts(built: tuple[Any, Any, Path, Any]) -> None:
    scale, md, root, _stats = built
    cat = catalog.open(root)
    k = int(np.argmax(md["spots_under_tissue"].to_numpy()))
    row = md.iloc[k]
    m = cat.manifest(row["id"])
    rng = np.random.default_rng([3, k])
    n_genes = min(int(row["nb_genes"]), 70_000)
    per_spot = scale.DETECTED_FRACTION[row["technology"]] * n_genes * 0.02
    want = scale._counts(rng, int(row["spots_under_tissue"]), n_genes, per_spot)
    view = cat.pairs(sample_ids=[row["id"]])
    genes = cat.sample_genes(m)
    got = view.expression(genes)
    assert got.shape == want.shape
    assert (got != want).nnz == 0
    # a gene subset over the whole catalog: the columns of the full matrix, in the order asked
    pick = [genes[i] for i in (5, 0, 40, 17)]
    sub = cat.pairs(genes=pick)
    X = sub.expression()
    rows = np.flatnonzero((sub.obs["sample_id"] == row["id"]).to_numpy())
    assert (X[rows] != want[:, [5, 0, 40, 17]]).nnz == 0
    with pytest.raises(catalog.QueryError, match="not in the selected samples"):
        cat.pairs(genes=["NOT_A_GENE"])


def test_patches_read_back_through_the_fast_reader_and_zarr(built: tuple[Any, Any, Path, Any]) -> None:
    _scale, _md, root, stats = built
    cat = catalog.open(root)
    with_patches = stats.patch_samples[0]
    view = cat.pairs(sample_ids=[with_patches, *[s for s in cat.samples()["sample_id"] if s not in stats.patch_samples][:1]])
    m = cat.manifest(with_patches)
    arr = zarr.open_array(str(root / m["patches_path"] / "patches"), mode="r")
    reader = PatchReader(str(root / m["patches_path"] / "patches"))
    for row in (0, 1, 63, 64, m["n_pairs"] - 1, m["n_slots"] - 1):
        assert np.array_equal(reader[row], np.asarray(arr[row]))
    assert reader[0].std() > 5  # textured, not the fill value
    assert not reader[m["n_slots"] - 1].any() or m["n_slots"] == m["n_pairs"]
    obs = view.obs
    for i in np.linspace(0, len(view) - 1, 7).astype(int):
        patch, expr = view[int(i)]
        sid = obs["sample_id"].iloc[i]
        if sid == with_patches:
            assert np.array_equal(patch, np.asarray(arr[int(obs["patch_index"].iloc[i])]))
        else:
            assert not patch.any()  # samples without patches read as the fill value
        assert expr.shape == (len(view.genes),)
