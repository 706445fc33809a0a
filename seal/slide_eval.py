"""Slide-level evaluation of encoders: ABMIL and a mean-pool linear probe on each encoder's
slide features, patient-level stratified folds (or given splits), early stopping on a
validation part of each training fold, seeded.

Classification: AUC (binary, or macro one-vs-rest for several classes) and balanced
accuracy; regression: Pearson r (and Spearman). Mean and std over folds per encoder and
model; out-of-fold predictions and ABMIL attention are kept for the report
(:mod:`seal._slide_report`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from hestkit.errors import Opt, fix

from .errors import EvalError
from .mil import MilConfig, Standardizer, predict_mil, train_mil

__all__ = [
    "FoldSplit",
    "SlideEvalResult",
    "SlideTask",
    "StoreBags",
    "classification_metrics",
    "evaluate_feature_sets",
    "patient_stratified_folds",
    "read_splits",
    "regression_metrics",
    "slide_task",
]

log = logging.getLogger(__name__)

#: Numeric label columns with more distinct values than this are regression targets.
MAX_CLASSES = 10

_COLUMN = Opt("column", "NAME", scope="slide_eval")
_CLASSIFY = Opt("task_type", "'classification'", cli="classification")
_MIN_TISSUE = Opt("min_tissue", "F")


@dataclass(frozen=True)
class SlideTask:
    """One label column over the slides that have a value: the slides, their patients, the
    targets (class index or value), and the class names (classification)."""

    column: str
    kind: str  # classification | regression
    slide_ids: tuple[str, ...]
    patients: tuple[str, ...]
    y: NDArray[np.float64]
    classes: tuple[str, ...] = ()
    n_missing: int = 0


@dataclass(frozen=True)
class FoldSplit:
    train: NDArray[np.int64]
    val: NDArray[np.int64]
    test: NDArray[np.int64]


def slide_task(slides: pd.DataFrame, column: str, kind: str = "auto") -> SlideTask:
    """The task of label ``column`` of the slide table (``Catalog.slides()``)."""
    if column not in slides.columns or column in ("slide_id", "patient", "path"):
        labels = [c for c in slides.columns if c not in ("slide_id", "patient", "path", "width", "height", "mpp", "mpp_source", "n_levels", "added_at")]
        raise EvalError(
            f"no label column {column!r} in the slide table (labels: {', '.join(labels) or 'none'})",
            fix=fix(f"pick one ({_COLUMN})", _COLUMN),
        )
    col = slides[column]
    have = col.notna().to_numpy() & (col.astype(str).str.strip() != "").to_numpy()
    sub = slides[have]
    vals = sub[column]
    num = pd.to_numeric(vals, errors="coerce")
    numeric = bool(num.notna().all()) and len(vals) > 0
    if kind == "auto":
        kind = "regression" if numeric and num.nunique() > MAX_CLASSES else "classification"
    if kind == "regression":
        if not numeric:
            raise EvalError(
                f"label {column!r} has non-numeric values; regression needs numbers", fix=fix(f"use {_CLASSIFY}", _CLASSIFY)
            )
        y = num.to_numpy(dtype=np.float64)
        classes: tuple[str, ...] = ()
    elif kind == "classification":
        text = vals.map(lambda v: str(int(v)) if isinstance(v, float) and float(v).is_integer() else str(v)).astype(str)
        classes = tuple(sorted(set(text)))
        if len(classes) < 2:
            raise EvalError(f"label {column!r} has {len(classes)} class(es) among the slides with a value; classification needs >= 2")
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[t] for t in text], dtype=np.float64)
    else:
        raise EvalError(f"task type {kind!r}: expected auto, classification or regression")
    return SlideTask(
        column,
        kind,
        tuple(sub["slide_id"].astype(str)),
        tuple(sub["patient"].astype(str)),
        y,
        classes,
        int((~have).sum()),
    )


def _strata(task: SlideTask) -> NDArray[np.int64]:
    if task.kind == "classification":
        return task.y.astype(np.int64)
    q = np.quantile(task.y, [1 / 3, 2 / 3])
    return np.digitize(task.y, q).astype(np.int64)


def _group_split(strata: NDArray[np.int64], groups: NDArray[Any], n: int, seed: int) -> list[NDArray[np.int64]]:
    """Indices of ``n`` patient-disjoint parts, stratified by ``strata``."""
    from sklearn.model_selection import StratifiedGroupKFold

    skf = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=seed)
    return [te.astype(np.int64) for _, te in skf.split(np.zeros(len(strata)), strata, groups)]


def patient_stratified_folds(task: SlideTask, n_folds: int = 5, seed: int = 0, val_fraction: float = 0.2) -> list[FoldSplit]:
    """``n_folds`` test parts with no patient in two parts, stratified by class (regression:
    by tertile of the value); each training part gives ~``val_fraction`` of its patients to
    validation (early stopping), also stratified."""
    groups = np.asarray(task.patients)
    n_pat = len(set(task.patients))
    if n_folds < 2 or n_folds > n_pat:
        nf = Opt("folds", str(n_folds))
        raise EvalError(f"{nf}: needs 2 .. {n_pat} (the number of patients with a {task.column!r} label)", fix=fix("", nf))
    strata = _strata(task)
    if np.bincount(strata).max() < n_folds:
        # sklearn's StratifiedGroupKFold raises a bare ValueError here
        nf, reg = Opt("folds", str(n_folds)), Opt("task_type", "'regression'", cli="regression")
        if task.kind == "classification":
            raise EvalError(
                f"label {task.column!r}: {len(task.classes)} classes, none with {n_folds} slides: too few for stratified folds ({nf})"
                f" (a numeric label with <= {MAX_CLASSES} distinct values is read as classes)",
                fix=fix(f"give fewer folds, or {reg} for a continuous label", reg),
            )
        raise EvalError(
            f"label {task.column!r}: {len(strata)} slides, no tertile of the values with {n_folds}: too few for stratified folds ({nf})",
            fix=fix("give fewer folds", nf),
        )
    folds = []
    for k, test in enumerate(_group_split(strata, groups, n_folds, seed)):
        train_all = np.setdiff1d(np.arange(len(groups)), test)
        n_parts = max(2, round(1 / val_fraction)) if val_fraction > 0 else 0
        if n_parts and len(set(groups[train_all])) >= max(n_parts, 4):
            st = strata[train_all]
            if np.bincount(st).max() < n_parts:
                warnings.warn(
                    f"label {task.column!r}, fold {k}: no class (or tertile) has {n_parts} training slides; "
                    "its validation part is patient-disjoint but not stratified",
                    stacklevel=2,
                )
                st = np.zeros_like(st)
            parts = _group_split(st, groups[train_all], n_parts, seed + 1000 + k)
            val = train_all[parts[0]]
        else:
            val = np.zeros(0, np.int64)
        train = np.setdiff1d(train_all, val)
        folds.append(FoldSplit(train, val, test))
    return folds


def read_splits(folder: str | Path, task: SlideTask) -> list[FoldSplit]:
    """Given splits: ``splits_{k}.csv`` files (CLAM's layout) with columns ``train``, ``val``
    (optional) and ``test`` listing slide ids. Slides of the task absent from a file are not
    used in that fold; ids unknown to the task are an error."""
    d = Path(folder)
    files = sorted(d.glob("splits_*.csv"), key=lambda p: int("".join(ch for ch in p.stem.split("_")[-1] if ch.isdigit()) or 0))
    if not files:
        raise EvalError(f"{d}: no splits_0.csv, splits_1.csv ... (CLAM layout: columns train, val, test of slide ids)")
    pos = {s: i for i, s in enumerate(task.slide_ids)}
    out = []
    for p in files:
        df = pd.read_csv(p, dtype=str)
        if "train" not in df.columns or "test" not in df.columns:
            raise EvalError(f"{p}: columns {list(df.columns)}; expected train, test (and optional val) of slide ids")
        parts: dict[str, NDArray[np.int64]] = {}
        for c in ("train", "val", "test"):
            ids = [s.strip() for s in df[c].dropna()] if c in df.columns else []
            bad = [s for s in ids if s not in pos]
            if bad:
                raise EvalError(
                    f"{p}: column {c} names slide(s) {', '.join(bad[:5])} that have no {task.column!r} label in the slide table; fix the split or the labels"
                )
            parts[c] = np.array([pos[s] for s in ids], dtype=np.int64)
        pt = {task.patients[i] for i in parts["test"]}
        leak = sorted(pt & {task.patients[i] for i in np.concatenate([parts["train"], parts["val"]])})
        if leak:
            raise EvalError(f"{p}: patient(s) {', '.join(leak[:5])} have slides in both test and train/val; split by patient")
        out.append(FoldSplit(parts["train"], parts["val"], parts["test"]))
    return out


def classification_metrics(y: NDArray[np.float64], logits: NDArray[np.float64], n_classes: int) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    yi = y.astype(int)
    present = np.unique(yi)
    auc = float("nan")
    if len(present) >= 2:
        if n_classes == 2:
            auc = float(roc_auc_score(yi, p[:, 1]))
        else:
            if len(present) == n_classes:
                auc = float(roc_auc_score(yi, p, multi_class="ovr", average="macro"))
    bacc = float(balanced_accuracy_score(yi, p.argmax(1)))
    return {"auc": auc, "balanced_accuracy": bacc}


def regression_metrics(y: NDArray[np.float64], pred: NDArray[np.float64]) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    if len(y) < 3 or np.std(pred) == 0 or np.std(y) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(pearsonr(y, pred)[0]), "spearman": float(spearmanr(y, pred)[0])}


class StoreBags:
    """Bags of one feature set, read per slide on demand; bags are kept in memory only up to
    ``cache_bytes`` in total (default 1 GiB), so large cohorts stream from disk."""

    def __init__(self, store: Any, slide_ids: Sequence[str], cache_bytes: int = 1 << 30) -> None:
        self.store = store
        self.slide_ids = list(slide_ids)
        self.cache_bytes = cache_bytes
        self._cache: dict[int, NDArray[np.float32]] = {}
        self._used = 0

    def bag(self, i: int) -> NDArray[np.float32]:
        got = self._cache.get(i)
        if got is not None:
            return got
        b = self.store.features(self.slide_ids[i])
        if len(b) == 0:
            raise EvalError(
                f"{self.store.path(self.slide_ids[i])}: slide has no tiles on tissue",
                fix=fix(f"lower {_MIN_TISSUE} or check its mask", _MIN_TISSUE),
            )
        if self._used + b.nbytes <= self.cache_bytes:
            self._cache[i] = b
            self._used += b.nbytes
        return b


@dataclass
class SlideEvalResult:
    """Per feature set and model: per-fold metrics, their mean and std, and the out-of-fold
    predictions (``oof``: slide id -> output) and ABMIL attention of the test slides."""

    task: SlideTask
    folds: int
    per_fold: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    oof: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    attention: dict[str, dict[str, NDArray[np.float32]]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        rows = []
        for fs, models in self.per_fold.items():
            for model, folds in models.items():
                row: dict[str, Any] = {"encoder": self.labels.get(fs, fs), "feature_set": fs, "model": model}
                for key in folds[0] if folds else {}:
                    vals = np.array([f[key] for f in folds], dtype=float)
                    row[f"{key}_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
                    row[f"{key}_std"] = float(np.nanstd(vals)) if np.isfinite(vals).any() else float("nan")
                rows.append(row)
        return pd.DataFrame(rows)


def evaluate_feature_sets(
    stores: dict[str, Any],
    task: SlideTask,
    splits: Sequence[FoldSplit],
    *,
    models: Sequence[str] = ("abmil", "mean"),
    cfg: MilConfig | None = None,
    labels: dict[str, str] | None = None,
    progress: Any = None,
) -> SlideEvalResult:
    """Train and test each model on each feature set (name -> store) over ``splits``."""
    import torch

    cfg = cfg or MilConfig()
    res = SlideEvalResult(task, len(splits), labels=dict(labels or {}))
    n_out = len(task.classes) if task.kind == "classification" else 1
    device = torch.device(cfg.device)
    for fs, store in stores.items():
        missing = [s for s in task.slide_ids if not store.path(s).exists()]
        if missing:
            raise EvalError(
                f"{store.dir}: no features for {len(missing)} slide(s) with a {task.column!r} label ({', '.join(missing[:5])}); "
                f"run `seal slide-embed` for them first"
            )
        bags = StoreBags(store, task.slide_ids)
        dim = int(bags.bag(0).shape[1])
        res.per_fold[fs] = {m: [] for m in models}
        res.oof[fs] = {m: {} for m in models}
        res.attention[fs] = {}
        for k, sp in enumerate(splits):
            norm = Standardizer.fit(bags, sp.train)
            targets = task.y.copy()
            if task.kind == "regression":
                mu, sd = float(task.y[sp.train].mean()), float(task.y[sp.train].std() or 1.0)
                targets = (task.y - mu) / sd
            for model_kind in models:
                fold_cfg = MilConfig(**{**cfg.__dict__, "seed": cfg.seed + 17 * k})
                model, info = train_mil(model_kind, bags, sp.train, sp.val, targets, task.kind, n_out, dim, fold_cfg, norm)
                outs, attn = predict_mil(model, bags, sp.test, norm, device, with_attention=model_kind == "abmil")
                yt = task.y[sp.test]
                if task.kind == "classification":
                    metrics = classification_metrics(yt, outs, n_out)
                    for i, o in zip(sp.test, outs, strict=True):
                        res.oof[fs][model_kind][task.slide_ids[i]] = [float(v) for v in o]
                else:
                    pred = outs[:, 0] * sd + mu
                    metrics = regression_metrics(yt, pred)
                    for i, v in zip(sp.test, pred, strict=True):
                        res.oof[fs][model_kind][task.slide_ids[i]] = [float(v)]
                metrics.update({"n_train": float(len(sp.train)), "n_val": float(len(sp.val)), "n_test": float(len(sp.test)), **info})
                res.per_fold[fs][model_kind].append(metrics)
                if model_kind == "abmil":
                    for i, a in zip(sp.test, attn, strict=True):
                        if a is not None:
                            res.attention[fs][task.slide_ids[i]] = a
                log.info("%s %s fold %d: %s", fs, model_kind, k, metrics)
                if progress is not None:
                    progress(fs, model_kind, k, metrics)
    return res


def run_slide_eval(
    catalog: str | Path,
    column: str,
    encoders: Sequence[str],
    out: str | Path,
    *,
    models: Sequence[str] = ("abmil", "mean"),
    folds: int = 5,
    splits: str | Path | None = None,
    task_type: str = "auto",
    mpp: float = 0.5,
    tile_px: int = 224,
    cfg: MilConfig | None = None,
    n_heatmaps: int = 4,
    progress: Any = None,
) -> tuple[SlideEvalResult, dict[str, Path]]:
    """``seal slide-eval``: evaluate each encoder's slide features (a stored feature set name,
    or an encoder spec embedded at ``mpp``/``tile_px``) on label ``column``; writes the report."""
    import catalog as catalog_pkg
    from catalog.slide_features import SlideFeatureStore

    from ._slide_report import write_slide_report
    from .slide_embed import resolve_feature_set

    cat = catalog_pkg.open(catalog)
    slides = cat.slides()
    if slides.empty:
        raise EvalError(f"{cat.uri}: the slide table is empty; add slides with Catalog.add_slides (hestkit add-slides)")
    task = slide_task(slides, column, task_type)
    if not encoders:
        enc = Opt("encoders", "[SPEC]", cli="SPEC")
        raise EvalError(f"give at least one encoder ({enc})", fix=fix("", enc))
    stores: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for e in encoders:
        name, label = resolve_feature_set(cat, e, mpp, tile_px)
        stores[name] = SlideFeatureStore(cat, name)
        labels[name] = label
    sp = read_splits(splits, task) if splits is not None else patient_stratified_folds(task, folds, (cfg or MilConfig()).seed)
    bad = [m for m in models if m not in ("abmil", "mean")]
    if bad:
        raise EvalError(f"model {bad[0]!r}: expected abmil, mean or both")
    res = evaluate_feature_sets(stores, task, sp, models=models, cfg=cfg, labels=labels, progress=progress)
    paths = dict(zip(slides["slide_id"].astype(str), slides["path"].astype(str), strict=True))
    written = write_slide_report(
        res,
        out,
        stores=stores,
        slide_paths=paths,
        n_heatmaps=n_heatmaps,
        meta={
            "catalog": cat.uri,
            "encoders": labels,
            "models": list(models),
            "splits": str(splits) if splits is not None else f"{len(sp)} patient-level stratified folds",
            "mil_config": dict((cfg or MilConfig()).__dict__),
        },
    )
    return res, written
