"""Patch-level evaluation on plain arrays: the HEST-Benchmark protocol and gene-to-image retrieval.

The HEST-Benchmark recipe (REFERENCE section 3), step by step:

1. :func:`select_genes` -- drop genes expressed in < 10 % of the spots of any sample
   (and genes absent from a sample), keep the top 50 highly variable genes.
2. :func:`patient_folds` -- leave one patient out (falls back to leave one sample out
   when patients are unknown).
3. :func:`ridge_probe` -- StandardScaler -> PCA(256) fit on the training fold ->
   Ridge without intercept, alpha = 100 / (n_components * n_genes).
4. :func:`pearson_per_gene` -- Pearson r per gene over the pooled test spots of a fold;
   mean over genes, then mean (and std, ddof=0) over folds: :func:`hest_benchmark`.

Gene-to-image retrieval (:func:`retrieval_metrics`) and the report writer
(:func:`write_report`) live in :mod:`seal._retrieval` and :mod:`seal._report` and are
re-exported here. This module only needs numpy, scipy and scikit-learn.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from ._report import write_report
from ._retrieval import retrieval_metrics
from .errors import EvalError

__all__ = [
    "EncoderScores",
    "EvalError",
    "EvalResult",
    "Fold",
    "hest_benchmark",
    "patient_folds",
    "pearson_per_gene",
    "retrieval_metrics",
    "ridge_probe",
    "select_genes",
    "write_report",
]

HVGFlavor = Literal["seurat", "variance"]


# --------------------------------------------------------------------------- genes


def _as_counts(counts: Any) -> sp.csr_matrix | NDArray[np.float64]:
    if sp.issparse(counts):
        mat = sp.csr_matrix(counts, dtype=np.float64)
        data = mat.data
    else:
        mat = np.asarray(counts, dtype=np.float64)
        data = mat
    if mat.ndim != 2:
        raise EvalError(
            f"counts has {mat.ndim} dimension(s); expected a 2-D spots x genes matrix. "
            "Fix: pass the raw count matrix (n_spots x n_genes)."
        )
    if data.size and not np.all(np.isfinite(data)):
        raise EvalError("counts contains NaN or infinite values; expected raw counts. Fix: pass the raw count matrix.")
    if data.size and float(data.min()) < 0:
        raise EvalError(
            f"counts contains negative values (min {float(data.min())}); expected raw counts >= 0. "
            "Fix: pass raw counts, not normalised or scaled values."
        )
    return mat


def _normalised_log1p(mat: sp.csr_matrix | NDArray[np.float64]) -> sp.csr_matrix | NDArray[np.float64]:
    """normalize_total(target 1e4) then log1p; spots with zero total stay zero."""
    totals = np.asarray(mat.sum(axis=1)).ravel()
    scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
    if sp.issparse(mat):
        out = sp.csr_matrix(sp.diags(scale) @ mat)
        out.data = np.log1p(out.data)
        return out
    return np.log1p(np.asarray(mat) * scale[:, None])


def _mean_var(mat: sp.csr_matrix | NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-column mean and unbiased (ddof=1) variance."""
    n = mat.shape[0]
    mean = np.asarray(mat.mean(axis=0), dtype=np.float64).ravel()
    if isinstance(mat, np.ndarray):
        var = np.asarray(mat, dtype=np.float64).var(axis=0)
    else:
        sq = np.asarray(mat.multiply(mat).mean(axis=0), dtype=np.float64).ravel()
        var = np.maximum(sq - mean**2, 0.0)
    if n > 1:
        var = var * (n / (n - 1))
    return mean, var


def _seurat_dispersion(lognorm: sp.csr_matrix | NDArray[np.float64], n_bins: int = 20) -> NDArray[np.float64]:
    """Seurat-flavour normalised dispersion (as scanpy ``flavor='seurat'``).

    On the normalised counts (expm1 of the log1p values): dispersion = var / mean,
    log-transformed; genes are binned by log1p(mean) into ``n_bins`` equal-width bins
    and the log dispersion is z-scored within its bin. A gene alone in its bin scores
    1.0 (as in scanpy); a bin with zero spread scores 0.0; zero-dispersion genes NaN.
    """
    norm: sp.csr_matrix | NDArray[np.float64]
    if isinstance(lognorm, np.ndarray):
        norm = np.expm1(lognorm)
    else:
        norm = lognorm.copy()
        norm.data = np.expm1(norm.data)
    mean, var = _mean_var(norm)
    mean[mean == 0] = 1e-12
    disp = var / mean
    disp[disp == 0] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        log_disp = np.log(disp)
    log_mean = np.log1p(mean)
    lo, hi = float(log_mean.min()), float(log_mean.max())
    if hi > lo:
        edges = np.linspace(lo, hi, n_bins + 1)
        bins = np.clip(np.searchsorted(edges, log_mean, side="right") - 1, 0, n_bins - 1)
    else:
        bins = np.zeros(len(log_mean), dtype=np.int64)
    out = np.full(len(log_mean), np.nan)
    for b in np.unique(bins):
        idx = np.flatnonzero(bins == b)
        vals = log_disp[idx]
        ok = np.isfinite(vals)
        if ok.sum() == 0:
            continue
        if ok.sum() == 1:
            out[idx[ok]] = 1.0
            continue
        mu = float(vals[ok].mean())
        sd = float(vals[ok].std(ddof=1))
        out[idx[ok]] = (vals[ok] - mu) / sd if sd > 0 else 0.0
    return out


def select_genes(
    counts: Any,
    genes: Sequence[str],
    sample_ids: ArrayLike,
    *,
    n_top: int = 50,
    min_frac: float = 0.10,
    flavor: HVGFlavor = "seurat",
) -> list[str]:
    """The HEST-Benchmark gene panel: the top ``n_top`` highly variable genes among the
    genes expressed (count > 0) in at least ``min_frac`` of the spots of EVERY sample.

    A gene whose column is all-zero in a sample counts as absent there and is dropped
    even with ``min_frac=0``. Variability is measured on log1p(normalize_total 1e4)
    values over all spots together:

    * ``flavor="seurat"`` (default): Seurat / scanpy ``flavor='seurat'`` normalised
      dispersion -- log(var / mean) of the normalised counts, z-scored within 20
      equal-width bins of log1p(mean);
    * ``flavor="variance"``: the plain variance (ddof=1) of the log1p-normalised values.

    Genes are ranked by score, descending, ties broken by gene name; genes without a
    score (zero dispersion) come last. Returns the genes in that rank order. Warns when
    fewer than ``n_top`` genes survive the filter; raises :class:`EvalError` when none do.
    """
    mat = _as_counts(counts)
    n_spots, n_genes = mat.shape
    gene_list = [str(g) for g in genes]
    if len(gene_list) != n_genes:
        raise EvalError(
            f"{len(gene_list)} gene names for a counts matrix with {n_genes} columns; expected one name per column. "
            "Fix: pass the gene names in column order."
        )
    sids = np.asarray(sample_ids).astype(str).ravel()
    if len(sids) != n_spots:
        raise EvalError(
            f"{len(sids)} sample ids for a counts matrix with {n_spots} rows; expected one sample id per spot. "
            "Fix: pass sample_ids aligned with the rows of counts."
        )
    if n_spots == 0 or n_genes == 0:
        raise EvalError(f"counts is empty ({n_spots} spots x {n_genes} genes). Fix: pass a non-empty count matrix.")
    if not isinstance(n_top, int | np.integer) or n_top < 1:
        raise EvalError(f"n_top={n_top!r}; expected a positive integer. Fix: pass e.g. n_top=50.")
    if not 0.0 <= float(min_frac) <= 1.0:
        raise EvalError(f"min_frac={min_frac!r}; expected a fraction in [0, 1]. Fix: pass e.g. min_frac=0.10.")
    if flavor not in ("seurat", "variance"):
        raise EvalError(f"flavor={flavor!r}; expected 'seurat' or 'variance'.")

    keep = np.ones(n_genes, dtype=bool)
    for sid in np.unique(sids):
        rows = np.flatnonzero(sids == sid)
        sub = mat[rows]
        expressed = np.asarray((sub > 0).sum(axis=0)).ravel()
        keep &= (expressed > 0) & (expressed >= min_frac * len(rows))
    survivors = np.flatnonzero(keep)
    if survivors.size == 0:
        raise EvalError(
            f"no gene is expressed in >= {min_frac:.0%} of the spots of every sample "
            f"({n_genes} genes, {len(np.unique(sids))} samples); expected at least one. "
            "Fix: lower min_frac, drop samples with very low coverage, or check that the samples share genes."
        )

    lognorm = _normalised_log1p(mat[:, survivors])
    if flavor == "seurat":
        score = _seurat_dispersion(lognorm)
    else:
        score = _mean_var(lognorm)[1]
    names = [gene_list[i] for i in survivors]
    order = sorted(range(len(names)), key=lambda i: (0, -score[i], names[i]) if np.isfinite(score[i]) else (1, 0.0, names[i]))
    if len(order) < n_top:
        warnings.warn(
            f"only {len(order)} genes are expressed in >= {min_frac:.0%} of the spots of every sample, "
            f"fewer than n_top={n_top}; returning all of them.",
            stacklevel=2,
        )
    return [names[i] for i in order[:n_top]]


# --------------------------------------------------------------------------- folds


@dataclass(frozen=True, eq=False)
class Fold:
    """One cross-validation fold: the held-out group and row indices."""

    label: str
    train: NDArray[np.int64]
    test: NDArray[np.int64]

    @property
    def n_train(self) -> int:
        return len(self.train)

    @property
    def n_test(self) -> int:
        return len(self.test)


def _missing(values: NDArray[Any]) -> NDArray[np.bool_]:
    out = np.zeros(len(values), dtype=bool)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float | np.floating) and math.isnan(v)):
            out[i] = True
        elif isinstance(v, str | np.str_) and v.strip() in ("", "nan", "NaN", "None", "<NA>"):
            out[i] = True
        elif str(v) in ("<NA>", "NaT"):
            out[i] = True
    return out


def patient_folds(patients: ArrayLike | None, sample_ids: ArrayLike) -> tuple[list[Fold], str]:
    """Leave-one-patient-out folds, and the grouping level used (``"patient"`` or ``"sample"``).

    Folds are ordered by group label. When patients are missing (``None``, empty, or
    all missing/NaN) or only one patient is known, falls back to leave-one-sample-out
    with a warning. Spots whose patient alone is missing are treated as a patient of
    their own per sample (with a warning). Raises :class:`EvalError` with < 2 groups.
    """
    sids_raw = np.asarray(sample_ids, dtype=object).ravel()
    n = len(sids_raw)
    if n == 0:
        raise EvalError("sample_ids is empty; expected one sample id per spot. Fix: pass the sample id of every spot.")
    if _missing(sids_raw).any():
        raise EvalError(
            f"{int(_missing(sids_raw).sum())} spot(s) have no sample id; expected one per spot. "
            "Fix: fill in the sample id of every spot."
        )
    sids = sids_raw.astype(str)

    pats: NDArray[Any] | None = None
    if patients is not None:
        pats = np.asarray(patients, dtype=object).ravel()
        if len(pats) == 0:
            pats = None
        elif len(pats) != n:
            raise EvalError(
                f"{len(pats)} patient ids for {n} sample ids; expected one patient id per spot. "
                "Fix: pass patients aligned with sample_ids, or None to fold by sample."
            )

    level = "patient"
    groups: NDArray[np.str_]
    if pats is None or _missing(pats).all():
        level = "sample"
        reason = "no patient ids were given"
    else:
        miss = _missing(pats)
        if miss.any():
            bad = sorted(set(sids[miss].tolist()))
            warnings.warn(
                f"{int(miss.sum())} spot(s) in sample(s) {bad[:5]} have no patient id; "
                "treating each such sample as a patient of its own.",
                stacklevel=2,
            )
        groups = np.where(miss, np.char.add("sample:", sids), pats.astype(str))
        if len(np.unique(groups)) < 2:
            level = "sample"
            reason = f"only one patient ({groups[0]!r}) is present"
    if level == "sample":
        groups = sids
        if len(np.unique(groups)) < 2:
            raise EvalError(
                f"only one patient and one sample ({sids[0]!r}) are present; cross-validation needs >= 2 groups. "
                "Fix: evaluate on at least two samples (ideally from two patients)."
            )
        warnings.warn(f"{reason}; folding leave-one-sample-out instead of leave-one-patient-out.", stacklevel=2)

    folds: list[Fold] = []
    for g in sorted(np.unique(groups).tolist()):
        is_test = groups == g
        folds.append(
            Fold(label=str(g), train=np.flatnonzero(~is_test).astype(np.int64), test=np.flatnonzero(is_test).astype(np.int64))
        )
    return folds, level


# --------------------------------------------------------------------------- probe


def _as_2d(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise EvalError(f"{name} has {arr.ndim} dimensions; expected a 2-D (rows x columns) array.")
    if not np.all(np.isfinite(arr)):
        raise EvalError(f"{name} contains NaN or infinite values; expected finite numbers. Fix: drop or impute those rows.")
    return arr


def ridge_probe(
    train_X: ArrayLike,
    train_Y: ArrayLike,
    test_X: ArrayLike,
    *,
    n_components: int = 256,
    alpha: float | None = None,
    seed: int = 0,
    tol: float = 1e-4,
) -> NDArray[np.float64]:
    """The HEST linear probe: predictions for ``test_X`` (n_test x n_targets).

    StandardScaler -> PCA(min(n_components, n_train, n_features), random_state=seed),
    both fit on the training rows only -> Ridge(fit_intercept=False, solver='lsqr',
    max_iter=1000) with ``alpha`` or, by default, 100 / (n_components_used * n_targets)
    (HEST: 100 / (256 * 50)). ``tol`` is the lsqr stopping tolerance (sklearn's and
    HEST's default 1e-4 leaves ~1e-3 relative differences to the closed-form ridge
    solution; lower it for an exact fit).
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    y_was_1d = np.ndim(train_Y) == 1
    X = _as_2d(train_X, "train_X")
    Y = _as_2d(train_Y, "train_Y")
    Xt = _as_2d(test_X, "test_X")
    if X.shape[0] != Y.shape[0]:
        raise EvalError(
            f"train_X has {X.shape[0]} rows but train_Y has {Y.shape[0]}; expected the same rows. "
            "Fix: align embeddings and targets."
        )
    if X.shape[0] < 2:
        raise EvalError(f"train_X has {X.shape[0]} row(s); the probe needs >= 2 training rows.")
    if Xt.shape[1] != X.shape[1]:
        raise EvalError(
            f"test_X has {Xt.shape[1]} features but train_X has {X.shape[1]}; expected the same embedding size. "
            "Fix: embed train and test with the same encoder."
        )
    if n_components < 1:
        raise EvalError(f"n_components={n_components}; expected >= 1. Fix: pass e.g. n_components=256.")
    if alpha is not None and not alpha > 0:
        raise EvalError(f"alpha={alpha}; expected > 0 (or None for the HEST default).")

    scaler = StandardScaler().fit(X)
    k = min(n_components, X.shape[0], X.shape[1])
    pca = PCA(n_components=k, random_state=seed).fit(scaler.transform(X))
    Z = pca.transform(scaler.transform(X))
    Zt = pca.transform(scaler.transform(Xt))
    a = float(alpha) if alpha is not None else 100.0 / (k * Y.shape[1])
    ridge = Ridge(alpha=a, fit_intercept=False, solver="lsqr", max_iter=1000, tol=tol, random_state=seed).fit(Z, Y)
    pred = np.asarray(ridge.predict(Zt), dtype=np.float64).reshape(len(Xt), Y.shape[1])
    return pred[:, 0] if y_was_1d else pred


def pearson_per_gene(y_true: ArrayLike, y_pred: ArrayLike) -> NDArray[np.float64]:
    """Pearson r per column between ``y_true`` and ``y_pred`` (rows = spots).

    A column that is constant in either array (or fewer than 2 rows) gives NaN, so
    averages over genes should use ``np.nanmean`` (as :func:`hest_benchmark` does).
    """
    a = np.asarray(y_true, dtype=np.float64)
    b = np.asarray(y_pred, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if a.shape != b.shape or a.ndim != 2:
        raise EvalError(f"y_true has shape {a.shape} but y_pred has {b.shape}; expected equal 2-D shapes.")
    if a.shape[0] < 2:
        return np.full(a.shape[1], np.nan)
    da = a - a.mean(axis=0)
    db = b - b.mean(axis=0)
    num = (da * db).sum(axis=0)
    den = np.sqrt((da * da).sum(axis=0) * (db * db).sum(axis=0))
    # tiny relative spreads are floating-point noise around a constant column
    tol_a = (np.abs(a).max(axis=0) * 1e-12) ** 2 * a.shape[0]
    tol_b = (np.abs(b).max(axis=0) * 1e-12) ** 2 * b.shape[0]
    const = ((da * da).sum(axis=0) <= tol_a) | ((db * db).sum(axis=0) <= tol_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(const | (den == 0), np.nan, num / den)
    return np.clip(r, -1.0, 1.0)


# --------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class EncoderScores:
    """HEST-Benchmark scores of one encoder."""

    label: str
    pearson_mean: float
    pearson_std: float
    per_fold: Mapping[str, float]
    per_gene: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pearson_mean": _num(self.pearson_mean),
            "pearson_std": _num(self.pearson_std),
            "per_fold": {k: _num(v) for k, v in self.per_fold.items()},
            "per_gene": {k: _num(v) for k, v in self.per_gene.items()},
        }


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


@dataclass(frozen=True)
class EvalResult:
    """Result of :func:`hest_benchmark`: scores per encoder, the genes and the folds."""

    encoders: Mapping[str, EncoderScores]
    genes: tuple[str, ...]
    folds: tuple[Fold, ...]
    n_components: int = 256
    seed: int = 0

    def to_dict(self, retrieval: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
        """``{"encoders": {label: {...}}, "genes": [...], "folds": [{"label", "n_train", "n_test"}]}``,
        JSON-ready (NaN -> None). ``retrieval`` maps encoder labels to
        :func:`retrieval_metrics` dicts merged into those encoders' entries."""
        retrieval = retrieval or {}
        unknown = sorted(set(retrieval) - set(self.encoders))
        if unknown:
            raise EvalError(
                f"retrieval metrics for unknown encoder(s) {unknown}; expected labels among {sorted(self.encoders)}. "
                "Fix: use the same labels as in hest_benchmark."
            )
        encoders: dict[str, Any] = {}
        for label, scores in self.encoders.items():
            entry = scores.to_dict()
            for k, v in retrieval.get(label, {}).items():
                entry[k] = int(v) if k == "n_queries" else _num(float(v))
            encoders[label] = entry
        return {
            "encoders": encoders,
            "genes": list(self.genes),
            "folds": [{"label": f.label, "n_train": f.n_train, "n_test": f.n_test} for f in self.folds],
        }


def _nanmean(x: NDArray[np.float64], axis: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def hest_benchmark(
    embeddings: Mapping[str, ArrayLike],
    targets_log1p: ArrayLike,
    folds: Sequence[Fold],
    genes: Sequence[str],
    *,
    n_components: int = 256,
    seed: int = 0,
) -> EvalResult:
    """Score each encoder's embeddings by the HEST-Benchmark protocol.

    For each encoder and fold: :func:`ridge_probe` on the training rows, per-gene
    Pearson r over all pooled test spots, mean over genes (``nanmean``: genes constant
    in a fold are skipped). ``pearson_mean`` / ``pearson_std`` are the mean / std
    (ddof=0) over folds; ``per_gene`` is each gene's r averaged over folds.
    """
    Y = _as_2d(targets_log1p, "targets_log1p")
    n, G = Y.shape
    gene_list = [str(g) for g in genes]
    if len(gene_list) != G:
        raise EvalError(f"{len(gene_list)} gene names for {G} target columns; expected one name per column.")
    if not embeddings:
        raise EvalError("no embeddings given; expected a mapping {encoder label: (n_spots x dim) array}.")
    if not folds:
        raise EvalError("no folds given; expected >= 1 fold. Fix: build them with patient_folds().")
    for f in folds:
        for name, idx in (("train", f.train), ("test", f.test)):
            if len(idx) == 0:
                raise EvalError(f"fold {f.label!r} has an empty {name} set; expected a non-empty one.")
            if int(np.min(idx)) < 0 or int(np.max(idx)) >= n:
                raise EvalError(f"fold {f.label!r} has {name} indices outside [0, {n}); expected row indices of the targets.")

    results: dict[str, EncoderScores] = {}
    for label, emb in embeddings.items():
        X = np.asarray(emb, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] != n:
            raise EvalError(
                f"embeddings of encoder {label!r} have shape {X.shape}; expected ({n}, dim) to match the targets' rows. "
                "Fix: embed exactly the spots of targets_log1p, in the same order."
            )
        fold_means: dict[str, float] = {}
        gene_r = np.full((len(folds), G), np.nan)
        for i, f in enumerate(folds):
            pred = ridge_probe(X[f.train], Y[f.train], X[f.test], n_components=n_components, seed=seed)
            gene_r[i] = pearson_per_gene(Y[f.test], pred)
            fold_means[f.label] = float(_nanmean(gene_r[i]))
        fm = np.array(list(fold_means.values()))
        finite = fm[np.isfinite(fm)]
        if finite.size < fm.size:
            warnings.warn(
                f"encoder {label!r}: {fm.size - finite.size} fold(s) have no gene with a defined Pearson r "
                "(constant targets or predictions); they are left out of the mean.",
                stacklevel=2,
            )
        per_gene = _nanmean(gene_r, axis=0)
        results[label] = EncoderScores(
            label=str(label),
            pearson_mean=float(finite.mean()) if finite.size else float("nan"),
            pearson_std=float(finite.std(ddof=0)) if finite.size else float("nan"),
            per_fold=fold_means,
            per_gene={g: float(r) for g, r in zip(gene_list, per_gene, strict=True)},
        )
    return EvalResult(encoders=results, genes=tuple(gene_list), folds=tuple(folds), n_components=n_components, seed=seed)
