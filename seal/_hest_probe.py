"""HEST-Benchmark's probes, step by step as in mahmoodlab/HEST ``src/hest/bench``:

* ``benchmark.py::predict_single_split``: ``Pipeline([StandardScaler(), PCA(n_components=
  latent_dim, random_state=seed)])`` fit on the training split (``fit_transform``), applied
  to the test split, both cast to float32 (``torch.Tensor``);
* ``trainer.py::train_test_reg``: Ridge(solver='lsqr', alpha=100 / (n_features x n_genes),
  fit_intercept=False, max_iter=1000, random_state=seed) on all genes at once; or one
  random forest of 70 trees (random_state=42) per gene (cuML there, scikit-learn here);
  or XGBRegressor(n_estimators=100, learning_rate=0.1, max_depth=3, min_child_weight=1,
  subsample=0.8, colsample_bytree=0.8, gamma=0, reg_alpha=0, reg_lambda=1,
  random_state=seed) on all genes at once;
* Pearson r per gene on the test split (``scipy.stats.pearsonr``), mean over genes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from hestkit.errors import Opt, fix

from .errors import EvalError
from .evaluate import EncoderScores, EvalResult, Fold

__all__ = ["PROBES", "Probe", "ProbeConfig", "fit_predict", "pearson_hest", "reduce_dims", "score_folds"]

Probe = Literal["ridge", "random-forest", "xgboost"]
PROBES: tuple[str, ...] = ("ridge", "random-forest", "xgboost")


@dataclass(frozen=True)
class ProbeConfig:
    """HEST-Benchmark's probe settings (defaults: HEST's ``BenchmarkConfig``)."""

    probe: Probe = "ridge"
    #: PCA components before the probe (HEST ``latent_dim``); 0 skips the reduction (HEST ``dimreduce=None``).
    latent_dim: int = 256
    #: HEST's ``seed`` (BenchmarkConfig default 1): PCA and ridge/XGBoost ``random_state``.
    seed: int = 1
    #: Parallel jobs of the random forest (scikit-learn ``n_jobs``); results do not depend on it.
    n_jobs: int = 1

    def __post_init__(self) -> None:
        if self.probe not in PROBES:
            raise EvalError(f"probe {self.probe!r}; expected one of {', '.join(PROBES)}.")
        if self.latent_dim < 0:
            raise EvalError(f"latent_dim={self.latent_dim}; expected >= 0 (0 = no PCA, HEST default 256).")


def require_probe(probe: str) -> None:
    """Fail early, with the fix, when the probe's package is missing."""
    if probe not in PROBES:
        raise EvalError(f"probe {probe!r}; expected one of {', '.join(PROBES)}.")
    if probe == "xgboost":
        try:
            import xgboost  # noqa: F401
        except ImportError as exc:
            xgb, ridge = Opt("probe", "'xgboost'", cli="xgboost"), Opt("probe", "'ridge'", cli="ridge")
            raise EvalError(
                f"{xgb} needs the xgboost package, which is not installed.",
                fix=fix(f"`pip install xgboost` (HEST's XGBRegressor settings are then used), or choose {ridge}.", ridge, xgb),
            ) from exc


def reduce_dims(
    x_train: NDArray[Any], x_test: NDArray[Any], latent_dim: int, seed: int
) -> tuple[NDArray[np.float32], NDArray[np.float32], int]:
    """StandardScaler then PCA fit on the training rows, applied to both; float32 like HEST.

    Returns the reduced arrays and the number of components used. HEST asks PCA for
    exactly ``latent_dim`` components, which scikit-learn refuses when there are fewer
    training rows or features; here the count is then lowered to what the data allow
    (:func:`score_folds` warns; HEST itself would stop with an error).
    """
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if latent_dim == 0:
        return np.asarray(x_train, np.float32), np.asarray(x_test, np.float32), int(np.shape(x_train)[1])
    k = min(latent_dim, x_train.shape[0], x_train.shape[1])
    pipe = Pipeline([("scaler", StandardScaler()), ("PCA", PCA(n_components=k, random_state=seed))])
    z_train = np.asarray(pipe.fit_transform(x_train), dtype=np.float32)
    z_test = np.asarray(pipe.transform(x_test), dtype=np.float32)
    return z_train, z_test, k


def fit_predict(
    probe: Probe, z_train: NDArray[Any], y_train: NDArray[np.float64], z_test: NDArray[Any], *, seed: int, n_jobs: int = 1
) -> NDArray[np.float64]:
    """Predictions (n_test x n_genes) of HEST's probe ``probe``."""
    if probe == "ridge":
        from sklearn.linear_model import Ridge

        alpha = 100 / (z_train.shape[1] * y_train.shape[1])
        reg = Ridge(solver="lsqr", alpha=alpha, random_state=seed, fit_intercept=False, max_iter=1000)
        reg.fit(z_train, y_train)
        return np.asarray(reg.predict(z_test), dtype=np.float64).reshape(len(z_test), y_train.shape[1])
    if probe == "random-forest":
        from sklearn.ensemble import RandomForestRegressor

        preds = np.zeros((len(z_test), y_train.shape[1]))
        for g in range(y_train.shape[1]):
            rf = RandomForestRegressor(n_estimators=70, random_state=42, n_jobs=n_jobs)
            rf.fit(z_train, y_train[:, g])
            preds[:, g] = rf.predict(z_test)
        return preds
    if probe == "xgboost":
        require_probe("xgboost")
        import xgboost as xgb

        reg = xgb.XGBRegressor(
            n_estimators=100,
            learning_rate=0.1,
            max_depth=3,
            min_child_weight=1,
            subsample=0.8,
            colsample_bytree=0.8,
            gamma=0,
            reg_alpha=0,
            reg_lambda=1,
            random_state=seed,
        )
        reg.fit(z_train, y_train)
        return np.asarray(reg.predict(z_test), dtype=np.float64).reshape(len(z_test), y_train.shape[1])
    raise EvalError(f"probe {probe!r}; expected one of {', '.join(PROBES)}.")


def pearson_hest(y_true: NDArray[np.float64], y_pred: NDArray[np.float64]) -> NDArray[np.float64]:
    """``scipy.stats.pearsonr`` per gene (column); NaN where either column is constant."""
    from scipy.stats import ConstantInputWarning, pearsonr

    out = np.full(y_true.shape[1], np.nan)
    if y_true.shape[0] < 2:
        return out
    for g in range(y_true.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)
            out[g] = float(pearsonr(y_true[:, g], y_pred[:, g])[0])
    return out


@dataclass(frozen=True)
class SplitDetail:
    """What one split of one encoder used and gave (for ``details.json``)."""

    label: str
    n_train: int
    n_test: int
    n_components: int
    pearson_mean: float
    undefined_genes: tuple[str, ...] = field(default_factory=tuple)


def _nanmean(x: NDArray[np.float64], axis: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def score_folds(
    embeddings: Mapping[str, NDArray[Any]],
    targets: NDArray[np.float64],
    folds: Sequence[Fold],
    genes: Sequence[str],
    cfg: ProbeConfig,
    *,
    subject: str = "task",
) -> tuple[EvalResult, dict[str, list[SplitDetail]]]:
    """HEST's protocol for each encoder: per split, :func:`reduce_dims` then :func:`fit_predict`
    on the training rows, Pearson per gene on the test rows, mean over genes; then mean and
    std (ddof=0) over splits, and each gene's r averaged over splits (HEST's
    ``merge_fold_results``). A gene whose r is undefined in a split (constant test values
    or predictions; HEST's own mean would then be NaN) is left out of that split's mean
    with a warning and listed in the details."""
    y = np.asarray(targets, dtype=np.float64)
    n, n_genes = y.shape
    gene_list = [str(g) for g in genes]
    if len(gene_list) != n_genes:
        raise EvalError(f"{subject}: {len(gene_list)} gene names for {n_genes} target columns; expected one per column.")
    if not folds:
        raise EvalError(f"{subject}: no splits; expected at least one train/test split.")
    for f in folds:
        for name, idx in (("train", f.train), ("test", f.test)):
            if len(idx) == 0:
                raise EvalError(f"{subject}: split {f.label} has no {name} rows; expected spots in both train and test.")
            if int(np.min(idx)) < 0 or int(np.max(idx)) >= n:
                raise EvalError(f"{subject}: split {f.label} has {name} rows outside [0, {n}).")
        if len(f.train) < 2:
            raise EvalError(f"{subject}: split {f.label} has {len(f.train)} training spot(s); the probe needs >= 2.")
    scores: dict[str, EncoderScores] = {}
    details: dict[str, list[SplitDetail]] = {}
    for label, emb in embeddings.items():
        x = np.asarray(emb)
        if x.ndim != 2 or x.shape[0] != n:
            raise EvalError(f"{subject}: embeddings of {label!r} have shape {x.shape}; expected ({n}, dim).")
        if not np.all(np.isfinite(x)):
            raise EvalError(f"{subject}: embeddings of {label!r} hold NaN/inf; expected finite values (check the encoder).")
        r = np.full((len(folds), n_genes), np.nan)
        per_fold: dict[str, float] = {}
        det: list[SplitDetail] = []
        for i, f in enumerate(folds):
            z_tr, z_te, k = reduce_dims(x[f.train], x[f.test], cfg.latent_dim, cfg.seed)
            pred = fit_predict(cfg.probe, z_tr, y[f.train], z_te, seed=cfg.seed, n_jobs=cfg.n_jobs)
            r[i] = pearson_hest(y[f.test], pred)
            bad = tuple(g for g, v in zip(gene_list, r[i], strict=True) if not np.isfinite(v))
            if bad:
                warnings.warn(
                    f"{subject}, {label}, split {f.label}: Pearson r undefined for {len(bad)} gene(s) "
                    f"(constant in the test split or in the predictions: {', '.join(bad[:5])}); "
                    "they are left out of the split's mean (HEST would report NaN).",
                    stacklevel=2,
                )
            per_fold[f.label] = float(_nanmean(r[i]))
            det.append(SplitDetail(f.label, len(f.train), len(f.test), k, per_fold[f.label], bad))
        low = [d for d in det if cfg.latent_dim and d.n_components < cfg.latent_dim]
        if low:
            warnings.warn(
                f"{subject}, {label}: PCA to {cfg.latent_dim} components needs >= {cfg.latent_dim} training spots "
                f"and embedding dimensions; {len(low)} split(s) have fewer (e.g. {low[0].n_train} spots x "
                f"{x.shape[1]} dims), so {min(d.n_components for d in low)}-{max(d.n_components for d in low)} "
                "components were used there (HEST's own code would stop with an error).",
                stacklevel=2,
            )
        fm = np.array(list(per_fold.values()))
        ok = fm[np.isfinite(fm)]
        per_gene = _nanmean(r, axis=0)
        scores[label] = EncoderScores(
            label=str(label),
            pearson_mean=float(ok.mean()) if ok.size else float("nan"),
            pearson_std=float(ok.std()) if ok.size else float("nan"),
            per_fold=per_fold,
            per_gene={g: float(v) for g, v in zip(gene_list, per_gene, strict=True)},
        )
        details[label] = det
    result = EvalResult(encoders=scores, genes=tuple(gene_list), folds=tuple(folds), n_components=cfg.latent_dim, seed=cfg.seed)
    return result, details
