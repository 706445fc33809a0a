"""``seal eval-hest`` on a HEST-Benchmark-shaped folder (real h5 / h5ad / CSV / JSON
formats), checked against an independent computation of HEST's protocol written here
with numpy, scipy and scikit-learn directly."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.decomposition import PCA
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from cli.seal import app
from hestkit.synthetic import SyntheticHestBench, make_hest_bench
from seal.encoders import parse_encoder
from seal.errors import EvalError
from seal.evaluate import Fold
from seal.hest_bench import HestBenchConfig, ProbeConfig, find_tasks, load_task_data, run_hest_bench, score_folds

runner = CliRunner()


# --------------------------------------------------------------------------- the reference


def _reference_embeddings(h5: Path) -> np.ndarray:
    """test_vit (random init, seed 0, as the spec builds it) on every patch of the file."""
    model, dcfg = parse_encoder("timm:test_vit").load(torch.device("cpu"))
    size = dcfg["input_size"][-1]
    mean = torch.tensor(dcfg["mean"]).view(3, 1, 1)
    std = torch.tensor(dcfg["std"]).view(3, 1, 1)
    with h5py.File(h5, "r") as f:
        imgs = f["img"][:]
    xs = []
    for img in imgs:
        x = torch.tensor(img, dtype=torch.float32).permute(2, 0, 1) / 255.0
        x = torch.nn.functional.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)[0]
        xs.append((x - mean) / std)
    with torch.no_grad():
        return model(torch.stack(xs)).numpy()


def _reference_targets(h5: Path, h5ad: Path, genes: list[str]) -> np.ndarray:
    with h5py.File(h5, "r") as f:
        bcs = [b.decode() for b in f["barcode"][:, 0]]
    a = ad.read_h5ad(h5ad)
    df = pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names)
    return np.log1p(df.loc[bcs, genes].to_numpy(dtype=np.float64))


def _reference_probe(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, probe: str, seed: int = 1) -> np.ndarray:
    k = min(256, xtr.shape[0], xtr.shape[1])
    sc = StandardScaler()
    pca = PCA(n_components=k, random_state=seed)
    ztr = pca.fit_transform(sc.fit_transform(xtr)).astype(np.float32)
    zte = pca.transform(sc.transform(xte)).astype(np.float32)
    if probe == "ridge":
        reg = Ridge(solver="lsqr", alpha=100 / (k * ytr.shape[1]), fit_intercept=False, max_iter=1000, random_state=seed)
        return np.asarray(reg.fit(ztr, ytr).predict(zte))
    cols = []
    for g in range(ytr.shape[1]):
        cols.append(RandomForestRegressor(n_estimators=70, random_state=42).fit(ztr, ytr[:, g]).predict(zte))
    return np.stack(cols, axis=1)


def _reference_task(task_dir: Path, emb: dict[str, np.ndarray], probe: str = "ridge") -> dict[str, Any]:
    """HEST's protocol for one task, from the split CSVs, written out plainly."""
    genes = json.loads((task_dir / "var_50genes.json").read_text())["genes"]
    split_means, gene_r = [], []
    k = 0
    while (task_dir / "splits" / f"train_{k}.csv").exists():
        parts = {}
        for kind in ("train", "test"):
            df = pd.read_csv(task_dir / "splits" / f"{kind}_{k}.csv")
            xs, ys = [], []
            for _, row in df.iterrows():
                xs.append(emb[row["sample_id"]])
                ys.append(_reference_targets(task_dir / row["patches_path"], task_dir / row["expr_path"], genes))
            parts[kind] = (np.concatenate(xs), np.concatenate(ys))
        pred = _reference_probe(parts["train"][0], parts["train"][1], parts["test"][0], probe)
        r = [pearsonr(parts["test"][1][:, g], pred[:, g])[0] for g in range(len(genes))]
        split_means.append(float(np.mean(r)))
        gene_r.append(r)
        k += 1
    per_gene = np.mean(np.array(gene_r), axis=0)
    return {
        "pearson_mean": float(np.mean(split_means)),
        "pearson_std": float(np.std(split_means)),
        "genes": dict(zip(genes, per_gene.tolist(), strict=True)),
    }


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> SyntheticHestBench:
    return make_hest_bench(tmp_path_factory.mktemp("hestbench") / "bench", n_spots=24, seed=3)


@pytest.fixture(scope="module")
def reference_embeddings(bench: SyntheticHestBench) -> dict[str, np.ndarray]:
    return {
        sid: _reference_embeddings(bench.root / task / "patches" / f"{sid}.h5")
        for task in bench.tasks
        for sid in bench.samples[task]
    }


@pytest.fixture(scope="module")
def ridge_run(bench: SyntheticHestBench, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hestrun") / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = runner.invoke(
            app,
            [
                *("eval-hest", str(bench.root), "--encoder", "timm:test_vit", "--out", str(out)),
                *("--workers", "1", "--batch-size", "16", "--device", "cpu", "--quiet"),
            ],
        )
    assert r.exit_code == 0, r.output
    return out


# --------------------------------------------------------------------------- tests


def test_eval_hest_equals_an_independent_computation_of_hests_protocol(
    bench: SyntheticHestBench, reference_embeddings: dict[str, np.ndarray], ridge_run: Path
) -> None:
    res = json.loads((ridge_run / "results.json").read_text())
    assert res["probe"] == "ridge"
    assert list(res["encoders"]) == ["test_vit"]
    enc = res["encoders"]["test_vit"]
    assert sorted(enc["tasks"]) == sorted(bench.tasks)
    means = []
    for task in bench.tasks:
        ref = _reference_task(bench.root / task, reference_embeddings)
        got = enc["tasks"][task]
        assert set(got) == {"pearson_mean", "pearson_std", "genes"}
        assert got["pearson_mean"] == pytest.approx(ref["pearson_mean"], abs=1e-5)
        assert got["pearson_std"] == pytest.approx(ref["pearson_std"], abs=1e-5)
        assert list(got["genes"]) == list(ref["genes"])
        for g, r in ref["genes"].items():
            assert got["genes"][g] == pytest.approx(r, abs=1e-5)
        means.append(ref["pearson_mean"])
    assert enc["mean"] == pytest.approx(float(np.mean(means)), abs=1e-5)
    # the image follows expression, so a random encoder already predicts it clearly
    assert enc["mean"] > 0.3
    md = (ridge_run / "results.md").read_text()
    assert "| Model | TASKA | TASKB | Average |" in md
    assert f"| test_vit | {enc['tasks']['TASKA']['pearson_mean']:.4f} | " in md


def test_pipeline_embeddings_equal_a_plain_loop_and_are_cached(
    bench: SyntheticHestBench, reference_embeddings: dict[str, np.ndarray], ridge_run: Path
) -> None:
    spec = parse_encoder("timm:test_vit")
    for task in bench.tasks:
        for sid in bench.samples[task]:
            with np.load(ridge_run / "embeddings" / spec.key / task / f"{sid}.npz") as z:
                np.testing.assert_allclose(z["embeddings"], reference_embeddings[sid], atol=2e-5)
    details = json.loads((ridge_run / "details.json").read_text())
    n = sum(t["n_spots"] for t in details["tasks"].values())
    assert details["embedding"]["test_vit"]["patches_embedded"] == n
    split0 = details["tasks"]["TASKA"]["splits"]["test_vit"][0]
    assert split0["n_components"] == min(64, split0["n_train"])  # fewer than 256 rows and dims: lowered
    # a second run takes every embedding from the cache and gives the same numbers
    out2 = ridge_run.parent / "again"
    shutil.copytree(ridge_run / "embeddings", out2 / "embeddings")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_hest_bench(bench.root, [spec], out2, HestBenchConfig(device="cpu", progress=False, num_workers=0))
    d2 = json.loads((out2 / "details.json").read_text())
    assert d2["embedding"]["test_vit"]["patches_embedded"] == 0
    assert d2["embedding"]["test_vit"]["patches_from_cache"] == n
    assert res == json.loads((ridge_run / "results.json").read_text())


def test_random_forest_probe_matches_hest_settings(
    bench: SyntheticHestBench, reference_embeddings: dict[str, np.ndarray], ridge_run: Path
) -> None:
    out = ridge_run.parent / "rf"
    shutil.copytree(ridge_run / "embeddings", out / "embeddings")
    cfg = HestBenchConfig(tasks=("TASKB",), probe="random-forest", device="cpu", progress=False, num_workers=0, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_hest_bench(bench.root, [parse_encoder("timm:test_vit")], out, cfg)
    ref = _reference_task(bench.root / "TASKB", reference_embeddings, probe="random-forest")
    got = res["encoders"]["test_vit"]["tasks"]["TASKB"]
    assert res["probe"] == "random-forest"
    assert got["pearson_mean"] == pytest.approx(ref["pearson_mean"], abs=1e-6)
    assert got["pearson_std"] == pytest.approx(ref["pearson_std"], abs=1e-6)


def test_score_folds_with_full_pca_256_equals_hest_steps() -> None:
    """Enough rows and dims for PCA(256) itself: alpha = 100 / (256 x n_genes)."""
    rng = np.random.default_rng(0)
    n, d, g = 600, 264, 6
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.log1p(rng.poisson(np.exp(x[:, :g] * 0.5)).astype(np.float64))
    folds = [Fold("split0", np.arange(0, 480), np.arange(480, n)), Fold("split1", np.arange(120, n), np.arange(0, 120))]
    genes = [f"G{i}" for i in range(g)]
    res, det = score_folds({"e": x}, y, folds, genes, ProbeConfig())
    means, per_gene = [], []
    for f in folds:
        pred = _reference_probe(x[f.train], y[f.train], x[f.test], "ridge")
        r = [pearsonr(y[f.test][:, j], pred[:, j])[0] for j in range(g)]
        means.append(np.mean(r))
        per_gene.append(r)
    assert [s.n_components for s in det["e"]] == [256, 256]
    assert res.encoders["e"].pearson_mean == pytest.approx(float(np.mean(means)), abs=1e-9)
    assert res.encoders["e"].pearson_std == pytest.approx(float(np.std(means)), abs=1e-9)
    for j, gname in enumerate(genes):
        assert res.encoders["e"].per_gene[gname] == pytest.approx(float(np.mean([p[j] for p in per_gene])), abs=1e-9)


def test_xgboost_probe_without_the_package_says_how_to_install(bench: SyntheticHestBench, tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    try:
        import xgboost  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("xgboost is installed")
    r = runner.invoke(
        app, ["eval-hest", str(bench.root), "--encoder", "timm:test_vit", "--out", str(tmp_path / "x"), "--probe", "xgboost"]
    )
    assert r.exit_code == 1
    assert "pip install xgboost" in r.output
    assert not (tmp_path / "x" / "results.json").exists()


def test_bad_layouts_get_clear_errors(bench: SyntheticHestBench, tmp_path: Path) -> None:
    root = tmp_path / "b"
    shutil.copytree(bench.root / "TASKA", root / "TASKA")
    with pytest.raises(EvalError, match=r"no task\(s\) \['IDC'\]"):
        find_tasks(root, ["IDC"])
    assert [t.name for t in find_tasks(root / "TASKA")] == ["TASKA"]  # a task folder itself
    assert [len(s.train) for s in find_tasks(root)[0].splits] == [2, 2, 2]
    (root / "TASKA" / "splits" / "test_2.csv").unlink()
    with pytest.raises(EvalError, match=r"test_2\.csv missing"):
        find_tasks(root)
    shutil.copy(bench.root / "TASKA" / "splits" / "test_2.csv", root / "TASKA" / "splits" / "test_2.csv")
    # an expression file that lacks some patch barcodes names the file and the barcodes
    h5ad = root / "TASKA" / "adata" / "TASKA_S1.h5ad"
    with h5py.File(root / "TASKA" / "patches" / "TASKA_S1.h5", "r") as f:
        dropped = {b.decode() for b in f["barcode"][:2, 0]}
    a = ad.read_h5ad(h5ad)
    a[[b not in dropped for b in a.obs_names]].copy().write_h5ad(h5ad)
    (task,) = find_tasks(root)
    with pytest.raises(EvalError, match=r"TASKA_S1\.h5ad: 2 of \d+ patch barcodes have no row"):
        load_task_data(task)
    r = runner.invoke(app, ["eval-hest", str(root), "--encoder", "timm:test_vit", "--out", str(tmp_path / "o")])
    assert r.exit_code == 1
    assert "TASKA_S1.h5ad" in r.output
