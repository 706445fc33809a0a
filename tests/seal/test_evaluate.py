"""Tests of seal.evaluate: HEST-Benchmark probe, folds, gene panel, retrieval, report."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from seal._retrieval import retrieval_ranks
from seal.errors import EvalError, SealError
from seal.evaluate import (
    EvalResult,
    Fold,
    hest_benchmark,
    patient_folds,
    pearson_per_gene,
    retrieval_metrics,
    ridge_probe,
    select_genes,
    write_report,
)

# --------------------------------------------------------------------------- probe


def _hand_probe(Xtr: np.ndarray, Ytr: np.ndarray, Xte: np.ndarray, k: int, alpha: float) -> np.ndarray:
    mu, sd = Xtr.mean(axis=0), Xtr.std(axis=0)
    A, At = (Xtr - mu) / sd, (Xte - mu) / sd
    c = A.mean(axis=0)
    _, _, vt = np.linalg.svd(A - c, full_matrices=False)
    V = vt[:k].T
    Z, Zt = (A - c) @ V, (At - c) @ V
    W = np.linalg.solve(Z.T @ Z + alpha * np.eye(k), Z.T @ Ytr)
    return Zt @ W


def _hand_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = []
    for j in range(a.shape[1]):
        x, y = a[:, j], b[:, j]
        dx, dy = x - x.mean(), y - y.mean()
        out.append(float((dx * dy).sum() / np.sqrt((dx * dx).sum() * (dy * dy).sum())))
    return np.array(out)


def test_ridge_probe_and_pearson_match_hand_computation() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(55, 10)) * rng.uniform(0.5, 3.0, size=10) + rng.normal(size=10)
    Y = X[:, :3] @ rng.normal(size=(3, 3)) + 0.3 * rng.normal(size=(55, 3))
    Xtr, Ytr, Xte, Yte = X[:40], Y[:40], X[40:], Y[40:]
    expected = _hand_probe(Xtr, Ytr, Xte, k=5, alpha=100 / (5 * 3))
    pred = ridge_probe(Xtr, Ytr, Xte, n_components=5, tol=1e-12)
    assert pred.shape == (15, 3)
    assert np.allclose(pred, expected, rtol=1e-8, atol=1e-10)
    # HEST's default lsqr tolerance stops close to the closed-form solution
    assert np.allclose(ridge_probe(Xtr, Ytr, Xte, n_components=5), expected, rtol=5e-3, atol=1e-3)
    pred2 = ridge_probe(Xtr, Ytr, Xte, n_components=5, alpha=2.5, tol=1e-12)
    assert np.allclose(pred2, _hand_probe(Xtr, Ytr, Xte, k=5, alpha=2.5), rtol=1e-8, atol=1e-10)
    # n_components is capped by the number of features
    capped = ridge_probe(Xtr, Ytr, Xte, n_components=256, tol=1e-12)
    assert np.allclose(capped, _hand_probe(Xtr, Ytr, Xte, k=10, alpha=100 / 30), rtol=1e-8, atol=1e-10)
    assert np.allclose(pearson_per_gene(Yte, pred), _hand_pearson(Yte, expected), atol=1e-10)
    assert np.allclose(
        ridge_probe(Xtr, Ytr[:, 0], Xte, n_components=5, tol=1e-12), _hand_probe(Xtr, Ytr[:, :1], Xte, k=5, alpha=20.0)[:, 0]
    )


def test_pearson_constant_column_is_nan() -> None:
    y = np.c_[np.arange(5.0), np.full(5, 2.0), np.arange(5.0) ** 2]
    r = pearson_per_gene(y, y)
    assert np.isclose(r[0], 1.0) and np.isnan(r[1]) and np.isclose(r[2], 1.0)
    with pytest.raises(EvalError):
        pearson_per_gene(y, y[:, :2])


def test_ridge_probe_rejects_bad_shapes() -> None:
    with pytest.raises(EvalError, match="rows"):
        ridge_probe(np.zeros((5, 3)), np.zeros((4, 2)), np.zeros((2, 3)))
    with pytest.raises(EvalError, match="features"):
        ridge_probe(np.ones((5, 3)), np.zeros((5, 2)), np.zeros((2, 4)))


# --------------------------------------------------------------------------- benchmark


def _synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    n_pat, n_samp, per = 4, 2, 50
    patients = np.repeat([f"P{i}" for i in range(n_pat)], n_samp * per)
    samples = np.repeat([f"S{i}" for i in range(n_pat * n_samp)], per)
    latent = rng.normal(size=(len(patients), 3))
    lam = np.exp(0.6 * latent @ rng.normal(size=(3, 6)) + 1.0)
    targets = np.log1p(rng.poisson(lam)).astype(float)
    genes = [f"G{j}" for j in range(6)]
    return patients, samples, targets, latent, genes


def test_hest_benchmark_informative_vs_noise() -> None:
    rng = np.random.default_rng(1)
    patients, samples, targets, _, genes = _synthetic()
    informative = targets @ rng.normal(size=(6, 32)) + 0.05 * rng.normal(size=(len(targets), 32))
    noise = rng.normal(size=(len(targets), 32))
    folds, level = patient_folds(patients, samples)
    assert level == "patient" and len(folds) == 4
    for f in folds:
        assert set(patients[f.train]).isdisjoint(patients[f.test])
        assert len(f.train) + len(f.test) == len(targets)
    res = hest_benchmark({"informative": informative, "noise": noise}, targets, folds, genes, n_components=16)
    inf, noi = res.encoders["informative"], res.encoders["noise"]
    assert inf.pearson_mean > 0.8
    assert noi.pearson_mean < 0.3
    assert inf.pearson_std >= 0 and noi.pearson_std >= 0
    assert set(inf.per_fold) == {f.label for f in folds}
    assert np.isclose(inf.pearson_mean, np.mean(list(inf.per_fold.values())))
    assert np.isclose(inf.pearson_std, np.std(list(inf.per_fold.values())))
    assert list(inf.per_gene) == genes
    with pytest.raises(EvalError, match="noise"):
        hest_benchmark({"noise": noise[:-1]}, targets, folds, genes)


# --------------------------------------------------------------------------- folds


def test_patient_folds_fallback_and_errors() -> None:
    samples = np.repeat(["A", "B", "C"], 4)
    for pats in (None, [], np.full(12, np.nan), ["P1"] * 12):
        with pytest.warns(UserWarning, match="leave-one-sample-out"):
            folds, level = patient_folds(pats, samples)
        assert level == "sample"
        assert [f.label for f in folds] == ["A", "B", "C"]
        assert all(set(samples[f.test]) == {f.label} for f in folds)
    with pytest.raises(EvalError, match=">= 2 groups"):
        patient_folds(["P1"] * 4, ["S1"] * 4)
    with pytest.raises(EvalError):
        patient_folds(None, ["S1"] * 4)
    with pytest.raises(EvalError, match="patient ids"):
        patient_folds(["P1", "P2"], samples)
    # a partly missing patient column: those samples become patients of their own
    pats = np.array(["P1"] * 4 + ["P2"] * 4 + [None] * 4, dtype=object)
    with pytest.warns(UserWarning, match="no patient id"):
        folds, level = patient_folds(pats, samples)
    assert level == "patient" and [f.label for f in folds] == ["P1", "P2", "sample:C"]
    assert issubclass(EvalError, SealError) and issubclass(EvalError, ValueError)


# --------------------------------------------------------------------------- genes


def _count_matrix(seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    n_per = 100
    sample_ids = np.repeat(["A", "B"], n_per)
    means = np.geomspace(0.5, 60.0, 400)
    counts = rng.poisson(means, size=(2 * n_per, 400)).astype(float)
    names = [f"g{j:03d}" for j in range(400)]
    hv = rng.choice([0.0, 60.0], size=2 * n_per)  # bimodal: by far the most variable gene
    rare = np.zeros(2 * n_per)
    rare[:n_per] = rng.poisson(30.0, size=n_per) + 1  # everywhere in sample A
    rare[n_per : n_per + 5] = 80.0  # 5 % of the spots of sample B
    absent = np.r_[rng.poisson(20.0, size=n_per) + 1.0, np.zeros(n_per)]  # all-zero in sample B
    counts = np.c_[counts, hv, rare, absent]
    return counts, [*names, "HV", "RARE", "ABSENT"], sample_ids


@pytest.mark.parametrize("flavor", ["seurat", "variance"])
def test_select_genes(flavor: str) -> None:
    counts, genes, sample_ids = _count_matrix()
    top = select_genes(counts, genes, sample_ids, n_top=10, flavor=flavor)  # type: ignore[arg-type]
    assert len(top) == 10
    assert "RARE" not in top and "ABSENT" not in top
    assert top[0] == "HV"
    assert select_genes(sp.csr_matrix(counts), genes, sample_ids, n_top=10, flavor=flavor) == top  # type: ignore[arg-type]
    # with no fraction threshold an all-zero column in one sample still drops the gene
    with pytest.warns(UserWarning, match="fewer than n_top"):
        loose = select_genes(counts, genes, sample_ids, n_top=1000, min_frac=0.0, flavor=flavor)  # type: ignore[arg-type]
    assert "ABSENT" not in loose and "RARE" in loose


def test_select_genes_seurat_matches_scanpy() -> None:
    sc = pytest.importorskip("scanpy")
    anndata = pytest.importorskip("anndata")
    counts, genes, sample_ids = _count_matrix()
    keep = [i for i, g in enumerate(genes) if g not in ("RARE", "ABSENT")]
    adata = anndata.AnnData(counts[:, keep].copy())
    adata.var_names = [genes[i] for i in keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
        sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=30)
    ref = set(adata.var_names[adata.var["highly_variable"].to_numpy()])
    assert set(select_genes(counts, genes, sample_ids, n_top=30)) == ref


def test_select_genes_few_and_none() -> None:
    counts, genes, sample_ids = _count_matrix()
    with pytest.warns(UserWarning, match="fewer than n_top"):
        out = select_genes(counts, genes, sample_ids, n_top=1000)
    assert len(out) == 401 and len(set(out)) == 401
    zero = np.zeros((10, 3))
    zero[:5, 0] = 1  # expressed only in sample A
    with pytest.raises(EvalError, match="no gene"):
        select_genes(zero, ["a", "b", "c"], ["A"] * 5 + ["B"] * 5)
    with pytest.raises(EvalError, match="gene names"):
        select_genes(zero, ["a", "b"], ["A"] * 10)
    with pytest.raises(EvalError, match="negative"):
        select_genes(-np.ones((2, 2)), ["a", "b"], ["A", "A"])


def test_select_genes_ties_broken_by_name() -> None:
    col = np.array([0.0, 5.0, 0.0, 5.0, 1.0, 2.0])
    counts = np.c_[col, col, col, col + 1]  # "d", "c", "b" identical; "a" far less variable
    out = select_genes(counts, ["d", "c", "b", "a"], ["A"] * 3 + ["B"] * 3, n_top=2, flavor="variance")
    assert out == ["b", "c"]


# --------------------------------------------------------------------------- retrieval


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_retrieval_identical_and_random() -> None:
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(300, 32)))
    m = retrieval_metrics(emb, emb.copy())
    assert m["recall_at_1"] == 1.0 and m["median_rank"] == 1.0 and m["n_queries"] == 300
    assert m["chance_recall_at_10"] == pytest.approx(10 / 300)
    assert m["chance_median_rank"] == pytest.approx(150.5)
    n = 2000
    rnd = retrieval_metrics(rng.normal(size=(n, 16)), rng.normal(size=(n, 16)))
    assert rnd["chance_recall_at_10"] == pytest.approx(0.005)
    assert rnd["recall_at_10"] < 0.02
    assert rnd["recall_at_1"] <= rnd["recall_at_5"] <= rnd["recall_at_10"]
    assert 0.35 * n < rnd["median_rank"] < 0.65 * n
    assert set(m) == {
        "recall_at_1", "recall_at_5", "recall_at_10", "median_rank",
        "chance_recall_at_1", "chance_recall_at_5", "chance_recall_at_10", "chance_median_rank", "n_queries",
    }  # fmt: skip


def test_retrieval_hand_checked() -> None:
    image = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expr = np.array(
        [
            [1.0, 0.0],  # true patch best -> rank 1
            [1.0, 0.1],  # patch 0 more similar -> rank 2
            [0.0, 1.0],  # patch 1 more similar, patch 0 tied (0 == 0) -> pessimistic rank 3
            [0.0, -2.0],  # scale does not matter -> rank 1
        ]
    )
    assert retrieval_ranks(image, expr).tolist() == [1, 2, 3, 1]
    m = retrieval_metrics(image, expr, ks=(1, 2, 5))
    assert m["recall_at_1"] == 0.5 and m["recall_at_2"] == 0.75 and m["recall_at_5"] == 1.0
    assert m["median_rank"] == 1.5
    assert m["chance_recall_at_1"] == 0.25 and m["chance_recall_at_5"] == 1.0


def test_retrieval_chunked_equals_unchunked() -> None:
    rng = np.random.default_rng(3)
    img, exp = rng.normal(size=(301, 8)), rng.normal(size=(301, 8))
    assert np.array_equal(retrieval_ranks(img, exp, chunk_size=7), retrieval_ranks(img, exp, chunk_size=10_000))
    assert retrieval_metrics(img, exp, chunk_size=1) == retrieval_metrics(img, exp, chunk_size=10_000)
    with pytest.raises(EvalError, match="equal shape"):
        retrieval_metrics(img, exp[:, :4])


# --------------------------------------------------------------------------- report


def test_write_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    patients, samples, targets, _, genes = _synthetic()
    informative = targets @ rng.normal(size=(6, 8)) + 0.1 * rng.normal(size=(len(targets), 8))
    folds, _ = patient_folds(patients, samples)
    res = hest_benchmark(
        {"informative": informative, "noise": rng.normal(size=(len(targets), 8))}, targets, folds, genes, n_components=8
    )
    assert isinstance(res, EvalResult) and all(isinstance(f, Fold) for f in res.folds)
    ret = retrieval_metrics(informative, informative)
    paths = write_report(res.to_dict(retrieval={"informative": ret}), tmp_path / "report")
    assert set(paths) == {"json", "md", "png"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads(paths["json"].read_text())
    assert set(d) == {"encoders", "genes", "folds"}
    assert d["genes"] == genes
    assert d["folds"] == [{"label": f.label, "n_train": f.n_train, "n_test": f.n_test} for f in folds]
    base = {"pearson_mean", "pearson_std", "per_fold", "per_gene"}
    assert set(d["encoders"]["noise"]) == base
    assert set(d["encoders"]["informative"]) == base | set(ret)
    assert d["encoders"]["informative"]["recall_at_1"] == 1.0
    assert isinstance(d["encoders"]["informative"]["pearson_mean"], float)
    md = paths["md"].read_text()
    assert "| informative |" in md and "±" in md and "R@10" in md
    with pytest.raises(EvalError, match="encoders"):
        write_report({"genes": []}, tmp_path)
    with pytest.raises(EvalError, match="unknown encoder"):
        res.to_dict(retrieval={"other": ret})
