"""The fast paths of a query, each checked against the slow path it replaces:

* gene-list var-joinid indexes (``genes/{sha256}.joinids-v1.npy``) vs mapping the names;
* obs read as per-row columns + per-sample values from the manifests vs whole rows;
* a few genes read from the gene-major X layer vs the row-major one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import catalog
from catalog import _soma
from catalog.catalog import _obs_constants

from .conftest import Case


def _copy(cat: catalog.Catalog, dest: Path) -> catalog.Catalog:
    shutil.copytree(cat.path, dest, ignore=shutil.ignore_patterns(".lock"))
    return catalog.open(dest)


def _var(cat: catalog.Catalog) -> dict[str, int]:
    var = _soma.read_var(cat.layout.soma)
    return dict(zip(var["var_id"].astype(str), var["soma_joinid"].astype(int), strict=True))


def test_each_gene_list_has_its_var_joinid_index(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    by_name = _var(cat)
    refs = {m["genes_ref"] for m in cat.manifests()}
    files = sorted((cat.path / "genes").glob("*.joinids-v1.npy"))
    assert {f.name.split(".")[0] for f in files} == refs
    for m in cat.manifests():
        stored = np.load(cat.path / "genes" / f"{m['genes_ref']}.joinids-v1.npy", allow_pickle=False)
        want = [by_name[g] for g in cat.sample_genes(m)]
        assert stored.dtype == np.int32 and stored.tolist() == want
        assert cat.gene_joinids(m).tolist() == want
    assert {c.sample_id for c in cases} == {m["sample_id"] for m in cat.manifests()}


def _same_view(a: catalog.PairView, b: catalog.PairView) -> None:
    assert a.genes == b.genes
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert (a.expression() != b.expression()).nnz == 0


def test_queries_without_or_with_bad_indexes_map_names_and_agree(
    ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path
) -> None:
    cat, cases = ingested
    old = _copy(cat, tmp_path / "noindex")
    idx = sorted((old.path / "genes").glob("*.joinids-v1.npy"))
    for f in idx:
        f.unlink()
    bad = _copy(cat, tmp_path / "bad")
    bad_files = sorted((bad.path / "genes").glob("*.joinids-v1.npy"))
    bad_files[0].write_bytes(b"not an npy file")  # unreadable
    np.save(bad_files[1], np.array([10**6], dtype=np.int64))  # joinid outside var
    pick = [cases[1].truth.genes[i] for i in (4, 1)]
    for other in (old, bad):
        _same_view(other.pairs(), cat.pairs())
        _same_view(other.pairs(organ="Brain", genes=pick), cat.pairs(organ="Brain", genes=pick))
        _same_view(other.pairs(species="Mus musculus"), cat.pairs(species="Mus musculus"))
    # reindex writes exactly the missing ones, and they equal what ingest wrote
    want = {f.name: f.read_bytes() for f in sorted((cat.path / "genes").glob("*.joinids-v1.npy"))}
    assert catalog.open(old.path).index_gene_lists() == len(idx)
    assert {f.name: f.read_bytes() for f in sorted((old.path / "genes").glob("*.joinids-v1.npy"))} == want
    assert catalog.open(old.path).index_gene_lists() == 0
    _same_view(catalog.open(old.path).pairs(organ="Brain", genes=pick), cat.pairs(organ="Brain", genes=pick))


def test_cli_reindex(ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path) -> None:
    from cli.hestkit import app

    cat, _ = ingested
    old = _copy(cat, tmp_path / "noindex")
    for f in (old.path / "genes").glob("*.joinids-v1.npy"):
        f.unlink()
    runner = CliRunner()
    res = runner.invoke(app, ["reindex", str(old.path)])
    assert res.exit_code == 0, res.output
    assert f"wrote {len({m['genes_ref'] for m in cat.manifests()})} gene-list index(es)" in res.output
    res = runner.invoke(app, ["reindex", str(old.path)])
    assert res.exit_code == 0 and "every gene list is indexed" in res.output
    res = runner.invoke(app, ["reindex", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "not a hestkit catalog" in res.output


def test_obs_per_sample_values_from_manifests_equal_whole_rows(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    ms = sorted(cat.manifests(), key=lambda m: m["soma_joinid_start"])[::-1]  # any order of ranges
    ranges = [(m["soma_joinid_start"], m["soma_joinid_stop"], m["ingest_id"]) for m in ms]
    fast = _soma.read_obs_ranges(cat.layout.soma, ranges, [_obs_constants(m) for m in ms])
    whole = _soma.read_obs_ranges(cat.layout.soma, ranges)
    pd.testing.assert_frame_equal(fast, whole)
    for c in ("sample_id", "ingest_id", "organ", "technology", "species", "patient"):
        assert isinstance(fast[c].dtype, pd.CategoricalDtype)
    assert fast["obs_id"].tolist() == [
        f"{s}/{i}/{b}" for s, i, b in zip(fast["sample_id"], fast["ingest_id"], fast["barcode"], strict=True)
    ]
    truth = {c.sample_id: (c.organ, c.species, c.patient) for c in cases}
    for sid, grp in fast.groupby("sample_id", observed=True):
        assert {(o, s, p) for o, s, p in zip(grp["organ"], grp["species"], grp["patient"], strict=True)} == {truth[str(sid)]}
    # a manifest that disagrees with its rows (or lacks a value) is not trusted: whole rows
    bad = [dict(_obs_constants(m)) for m in ms]
    del bad[0]["pixel_size_um"]
    pd.testing.assert_frame_equal(_soma.read_obs_ranges(cat.layout.soma, ranges, bad), whole)
    # a subset drops the categories it no longer holds
    v = cat.pairs()
    sub = v.subset(np.flatnonzero(v.obs["sample_id"].to_numpy() == "brainB"))
    assert list(sub.obs["sample_id"].cat.categories) == ["brainB"]


def test_obs_fast_path_keeps_missing_metadata_as_empty_text(tmp_path: Path) -> None:
    from hestkit.sample import ReadOptions
    from hestkit.synthetic import make_visium

    t = make_visium(tmp_path / "v", n_rows=5, n_cols=5, seed=3)
    cat = catalog.create(tmp_path / "cat")
    rep = cat.ingest([t.path], options=ReadOptions(sample_id="anon", patient="7"), workers=1)
    assert not rep.failed, rep.failed[0].message
    v = cat.pairs()
    ms = cat.manifests()
    whole = _soma.read_obs_ranges(cat.layout.soma, [(m["soma_joinid_start"], m["soma_joinid_stop"], m["ingest_id"]) for m in ms])
    pd.testing.assert_frame_equal(v.obs.drop(columns=["patch_valid_fraction"]), whole)  # the one column not in SOMA obs
    assert set(v.obs["patient"]) == {"7"}


@pytest.mark.parametrize("rows", ["all", "scattered", "one-sample"])
def test_gene_major_layer_reads_equal_row_major(
    ingested: tuple[catalog.Catalog, list[Case]], rows: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat, cases = ingested
    x = cat.path / "soma" / "ms" / "RNA" / "X"
    assert (x / _soma.X_BY_GENE_LAYER).is_dir()  # new catalogs have the gene-major copy
    v = cat.pairs()
    rng = np.random.default_rng(5)
    n = len(v)
    take = {
        "all": np.arange(n),
        "scattered": np.sort(rng.choice(n, size=n // 3, replace=False))[::-1],  # not increasing either
        "one-sample": np.flatnonzero(v.obs["sample_id"].to_numpy() == "breastA"),
    }[rows]
    genes = [v.genes[i] for i in rng.choice(len(v.genes), size=6, replace=False)]
    sub = v.subset(take).with_genes(genes)
    expr = {}
    for name, frac in (("row-major", 0.0), ("gene-major", 1.0)):
        monkeypatch.setattr(_soma, "BY_GENE_MAX_FRACTION", frac)
        expr[name] = sub.expression()
    # the truth: each sample's own counts, at the pairs' barcodes
    by_sample = {c.sample_id: c.truth for c in cases}
    want = np.zeros((len(sub), len(genes)), dtype=np.float32)
    for i, (sid, bc) in enumerate(zip(sub.obs["sample_id"], sub.obs["barcode"], strict=True)):
        t = by_sample[str(sid)]
        r = list(t.barcodes).index(bc)
        for k, g in enumerate(genes):
            if g in t.genes:
                want[i, k] = t.counts[r, list(t.genes).index(g)]
    for name, got in expr.items():
        np.testing.assert_array_equal(got.toarray(), want, err_msg=name)
    assert expr["gene-major"].sum() > 0


def _fragments(cat: catalog.Catalog) -> dict[str, int]:
    soma = cat.path / "soma"
    arrays = {"obs": soma / "obs", "var": soma / "ms" / "RNA" / "var"}
    arrays.update({p.name: p for p in (soma / "ms" / "RNA" / "X").iterdir() if (p / "__fragments").is_dir()})
    return {k: len(list((p / "__fragments").iterdir())) for k, p in arrays.items()}


def test_compact_merges_fragments_and_changes_no_pair(
    ingested: tuple[catalog.Catalog, list[Case]], cohort: list[Case], tmp_path: Path
) -> None:
    from cli.hestkit import app
    from hestkit.sample import ReadOptions

    cat, _ = ingested
    work = _copy(cat, tmp_path / "compact")
    frags = _fragments(work)
    assert frags["obs"] == frags["counts"] == frags["counts_by_gene"] == 4  # one commit per sample
    before = work.pairs()
    few = [before.genes[i] for i in (0, 5, 9)]
    res = CliRunner().invoke(app, ["compact", str(work.path)])
    assert res.exit_code == 0, res.output
    assert set(_fragments(work).values()) == {1}
    again = catalog.open(work.path)
    after = again.pairs()
    _same_view(after, before)
    _same_view(after.with_genes(few), before.with_genes(few))
    # the compacted catalog takes new commits: a fourth sample appends after the merged rows
    extra = cohort[0]
    rep = again.ingest([extra.path], options=ReadOptions(sample_id="breastA2", organ="Breast", patient="P9"), workers=1)
    assert not rep.failed, rep.failed[0].message
    grown = catalog.open(work.path).pairs()
    assert len(grown) == len(before) + len(catalog.open(work.path).pairs(sample_ids=["breastA2"]))
    old_rows = grown.subset(np.flatnonzero(grown.obs["sample_id"].to_numpy() != "breastA2"))
    pd.testing.assert_frame_equal(old_rows.obs, before.obs)
    a2 = catalog.open(work.path).pairs(sample_ids=["breastA2"])
    a1 = catalog.open(work.path).pairs(sample_ids=["breastA"])
    assert (a2.expression() != a1.expression()).nnz == 0  # same source, same counts
    assert _fragments(work)["obs"] == 2
