"""HEST's protocol on catalog data: ``hestkit ingest`` of a HEST-Benchmark task folder, then
``seal eval --genes var_50genes.json --splits TASK/splits``, checked against the protocol
written out here with scikit-learn and scipy directly."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

import catalog
from cli.hestkit import app as hestkit_app
from cli.seal import app as seal_app
from hestkit.synthetic import make_hest_bench
from seal.encoders import parse_encoder
from seal.errors import EvalError, GeneListError
from seal.hest_bench import catalog_folds, match_genes

runner = CliRunner()


def _embed(patches: list[np.ndarray]) -> np.ndarray:
    model, dcfg = parse_encoder("timm:test_vit").load(torch.device("cpu"))
    s = dcfg["input_size"][-1]
    x = torch.tensor(np.stack(patches), dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    x = torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", antialias=True)
    x = (x - torch.tensor(dcfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(dcfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).numpy()


def test_seal_eval_with_given_genes_and_splits_follows_hest(tmp_path: Path) -> None:
    bench = make_hest_bench(tmp_path / "bench", tasks={"TASKA": 3}, n_spots=24, seed=11)
    task = bench.root / "TASKA"
    cat_dir = tmp_path / "cat"
    r = runner.invoke(
        hestkit_app,
        ["ingest", str(task), "--catalog", str(cat_dir), "--organ", "Breast", "--patch-size", "32", "--workers", "1", "-q"],
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "eval"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = runner.invoke(
            seal_app,
            [
                *("eval", str(cat_dir), "--encoder", "timm:test_vit", "--out", str(out)),
                *("--genes", str(task / "var_50genes.json"), "--splits", str(task / "splits"), "--device", "cpu"),
            ],
        )
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    genes = json.loads((task / "var_50genes.json").read_text())["genes"]
    assert res["genes"] == genes
    assert [f["label"] for f in res["folds"]] == ["split0", "split1", "split2"]

    # the reference: catalog patches and counts, HEST's steps spelled out
    view = catalog.open(cat_dir).pairs()
    emb = _embed([view.patch(i) for i in range(len(view))])
    gpos = {g: i for i, g in enumerate(view.genes)}
    y = np.log1p(view.expression()[:, [gpos[g] for g in genes]].toarray().astype(np.float64))
    sids = view.obs["sample_id"].astype(str).to_numpy()
    means = []
    for k in range(3):
        idx = {}
        for kind in ("train", "test"):
            order = pd.read_csv(task / "splits" / f"{kind}_{k}.csv")["sample_id"]
            idx[kind] = np.concatenate([np.flatnonzero(sids == s) for s in order])
        n_comp = min(256, len(idx["train"]), emb.shape[1])
        sc, pca = StandardScaler(), PCA(n_components=n_comp, random_state=1)
        ztr = pca.fit_transform(sc.fit_transform(emb[idx["train"]])).astype(np.float32)
        zte = pca.transform(sc.transform(emb[idx["test"]])).astype(np.float32)
        ridge = Ridge(solver="lsqr", alpha=100 / (n_comp * len(genes)), fit_intercept=False, max_iter=1000, random_state=1)
        pred = ridge.fit(ztr, y[idx["train"]]).predict(zte)
        r_k = np.mean([pearsonr(y[idx["test"]][:, g], pred[:, g])[0] for g in range(len(genes))])
        assert res["encoders"]["test_vit"]["per_fold"][f"split{k}"] == pytest.approx(r_k, abs=1e-5)
        means.append(r_k)
    assert res["encoders"]["test_vit"]["pearson_mean"] == pytest.approx(float(np.mean(means)), abs=1e-5)
    assert res["encoders"]["test_vit"]["pearson_std"] == pytest.approx(float(np.std(means)), abs=1e-5)
    assert res["split_level"].startswith("given splits")


def test_gene_matching_and_split_errors(tmp_path: Path) -> None:
    assert match_genes(["ACTB", "Gapdh", "MKI67"], ["actb", "GAPDH", "MKI67"]) == ["ACTB", "Gapdh", "MKI67"]
    with pytest.raises(GeneListError, match=r"2 of 3 genes are not measured .*ERBB2, ESR1"):
        match_genes(["ACTB"], ["ACTB", "ERBB2", "ESR1"])
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train_0.csv").write_text("sample_id\nA\nB\n")
    (splits / "test_0.csv").write_text("sample_id\nC\n")
    folds = catalog_folds(np.array(["C", "A", "B", "A", "C"]), splits)
    assert folds[0].train.tolist() == [1, 3, 2] and folds[0].test.tolist() == [0, 4]
    with pytest.raises(EvalError, match=r"name sample\(s\) \['C'\] that are not among the selected pairs"):
        catalog_folds(np.array(["A", "B"]), splits)
