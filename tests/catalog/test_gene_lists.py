"""Gene lists live in shared, content-addressed ``genes/{sha256}.json`` elements (manifest
format 2.x); 1.x manifests with inline gene lists are still read."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import catalog
from catalog import errors
from catalog._store import Layout
from catalog.export import sample_anndata
from catalog.writer import gene_list_ref, write_gene_list

from .conftest import Case


def test_manifests_reference_one_shared_list_per_distinct_gene_list(ingested: tuple[catalog.Catalog, list[Case]]) -> None:
    cat, cases = ingested
    truth = {c.sample_id: list(c.truth.genes) for c in cases}
    refs: dict[str, str] = {}
    for m in cat.manifests():
        assert m["encoding-version"].startswith("2.")
        assert "genes" not in m
        assert m["n_genes"] == len(truth[m["sample_id"]])
        assert cat.sample_genes(m) == truth[m["sample_id"]]
        refs[m["sample_id"]] = m["genes_ref"]
    distinct = {tuple(g) for g in truth.values()}
    assert len(distinct) < len(truth)  # the cohort has samples with the same genes ...
    files = sorted((cat.path / "genes").glob("*.json"))
    assert len(files) == len(distinct) == len(set(refs.values()))  # ... and they share one file
    for f in files:
        doc = json.loads(f.read_text())
        assert doc["encoding-type"] == "hestkit-gene-list" and doc["encoding-version"] == "1.0.0"
        compact = json.dumps(doc["genes"], separators=(",", ":"), ensure_ascii=False).encode()
        assert f.stem == hashlib.sha256(compact).hexdigest() == gene_list_ref(doc["genes"])
    for sid, ref in refs.items():
        assert ref == gene_list_ref(truth[sid])


def test_write_gene_list_is_idempotent(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "cat")
    genes = ["ACTB", "GAPDH", "Émile-1"]
    ref = write_gene_list(layout, genes)
    path = Path(layout.gene_list(ref))
    before = path.stat().st_mtime_ns
    assert write_gene_list(layout, list(genes)) == ref
    assert path.stat().st_mtime_ns == before  # present: not rewritten
    assert write_gene_list(layout, genes[::-1]) != ref  # order is part of the content
    assert len(list(path.parent.iterdir())) == 2


def _copy(cat: catalog.Catalog, dest: Path) -> Path:
    shutil.copytree(cat.path, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


def test_format_1_manifests_with_inline_genes_still_read(ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path) -> None:
    cat, cases = ingested
    old = _copy(cat, tmp_path / "old")
    for f in sorted((old / "manifest").glob("*.json")):  # rewrite every manifest to the 1.0.0 form
        m = json.loads(f.read_text())
        m["genes"] = cat.sample_genes(m)
        del m["genes_ref"]
        m["encoding-version"] = "1.0.0"
        f.write_text(json.dumps(m))
    shutil.rmtree(old / "genes")  # a 1.x catalog has no genes/ element
    ocat = catalog.open(old)
    assert all("genes_ref" not in m for m in ocat.manifests())
    want, got = cat.pairs(), ocat.pairs()
    assert got.genes == want.genes
    assert got.obs[["sample_id", "barcode"]].equals(want.obs[["sample_id", "barcode"]])
    assert (got.expression() != want.expression()).nnz == 0
    pick = [cases[1].truth.genes[i] for i in (3, 0)]
    sub, osub = cat.pairs(organ="Brain", genes=pick), ocat.pairs(organ="Brain", genes=pick)
    assert osub.genes == sub.genes == pick and len(osub) == len(sub) > 0
    assert (osub.expression() != sub.expression()).nnz == 0
    a = sample_anndata(ocat, "brainB")
    assert list(a.var_names) == [g for g in want.genes if g in set(cases[1].truth.genes)]
    np.testing.assert_array_equal(a.X.toarray(), sample_anndata(cat, "brainB").X.toarray())


def test_newer_manifest_or_missing_gene_list_is_a_clear_error(
    ingested: tuple[catalog.Catalog, list[Case]], tmp_path: Path
) -> None:
    cat, _ = ingested
    root = _copy(cat, tmp_path / "bad")
    f = root / "manifest" / "breastA.json"
    m = json.loads(f.read_text())
    f.write_text(json.dumps({**m, "encoding-version": "3.0.0"}))
    with pytest.raises(errors.CatalogVersionError, match=r"breastA\.json: manifest format 3\.0\.0 .*upgrade hestkit"):
        catalog.open(root).pairs()
    f.write_text(json.dumps({**m, "genes_ref": "0" * 64}))
    bad = catalog.open(root)
    with pytest.raises(errors.CatalogError, match=r"genes/0{64}\.json: gene list of sample 'breastA' is missing.*overwrite=True"):
        bad.pairs(organ="Breast")
    assert len(bad.pairs(organ="Brain")) > 0  # only the queried samples' lists are read
