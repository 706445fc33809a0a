"""Write evaluation results as results.json, results.md and results.png."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EvalError

__all__ = ["write_report"]

_RECALL = re.compile(r"^recall_at_(\d+)$")


def _jsonable(x: Any) -> Any:
    """Plain-Python copy of ``x`` with NaN/inf as None and numpy types unwrapped."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    return x


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, int):
        return str(x)
    return f"{float(x):.{digits}f}"


def _recall_ks(encoders: Mapping[str, Mapping[str, Any]]) -> list[int]:
    ks = {int(m.group(1)) for e in encoders.values() for key in e if (m := _RECALL.match(key))}
    return sorted(ks)


def _markdown(d: Mapping[str, Any]) -> str:
    encoders: Mapping[str, Mapping[str, Any]] = d["encoders"]
    ks = _recall_ks(encoders)
    has_median = any("median_rank" in e for e in encoders.values())
    header = ["Encoder", "Pearson r (mean ± std)"] + [f"R@{k} (chance)" for k in ks]
    if has_median:
        header.append("Median rank (chance)")
    lines = ["# Evaluation results", ""]
    genes = list(d.get("genes", []))
    folds = list(d.get("folds", []))
    lines.append(
        f"HEST-Benchmark protocol: {len(genes)} genes, {len(folds)} folds; Pearson r per gene over the pooled test "
        "spots of a fold, mean over genes, mean ± std (ddof=0) over folds."
    )
    if ks or has_median:
        lines.append("Retrieval: gene-to-image, expression query vs. all patches by cosine similarity; chance in brackets.")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, e in encoders.items():
        row = [str(label), f"{_fmt(e.get('pearson_mean'))} ± {_fmt(e.get('pearson_std'))}"]
        for k in ks:
            if f"recall_at_{k}" in e:
                row.append(f"{_fmt(e[f'recall_at_{k}'])} ({_fmt(e.get(f'chance_recall_at_{k}'), 4)})")
            else:
                row.append("–")
        if has_median:
            if "median_rank" in e:
                row.append(f"{_fmt(e['median_rank'], 1)} ({_fmt(e.get('chance_median_rank'), 1)})")
            else:
                row.append("–")
        lines.append("| " + " | ".join(row) + " |")
    fold_labels = [str(f["label"]) if isinstance(f, Mapping) else str(f) for f in folds]
    if fold_labels:
        lines += ["", "## Per fold (mean Pearson r over genes)", ""]
        sizes = {str(f["label"]): f for f in folds if isinstance(f, Mapping)}
        lines.append("| Encoder | " + " | ".join(fold_labels) + " |")
        lines.append("|" + "---|" * (len(fold_labels) + 1))
        if sizes:
            n_test = [_fmt(sizes[lbl].get("n_test")) if lbl in sizes else "" for lbl in fold_labels]
            lines.append("| *test spots* | " + " | ".join(n_test) + " |")
        for label, e in encoders.items():
            per_fold = e.get("per_fold", {}) or {}
            lines.append(f"| {label} | " + " | ".join(_fmt(per_fold.get(lbl)) for lbl in fold_labels) + " |")
    if genes:
        lines += ["", "## Genes", "", ", ".join(str(g) for g in genes)]
    return "\n".join(lines) + "\n"


def _plot(d: Mapping[str, Any], path: Path) -> None:
    # an explicit Agg canvas: no pyplot, no change to the global backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    encoders: Mapping[str, Mapping[str, Any]] = d["encoders"]
    labels = [str(k) for k in encoders]
    means = [e.get("pearson_mean") for e in encoders.values()]
    stds = [e.get("pearson_std") for e in encoders.values()]
    h = [float(m) if m is not None and math.isfinite(float(m)) else 0.0 for m in means]
    err = [float(s) if s is not None and math.isfinite(float(s)) else 0.0 for s in stds]
    fig = Figure(figsize=(max(4.0, 1.1 * len(labels) + 2.0), 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(labels))
    ax.bar(x, h, yerr=err, capsize=4, color="#4C72B0", edgecolor="black", linewidth=0.6)
    for xi, m, hi, ei in zip(x, means, h, err, strict=True):
        txt = "n/a" if m is None or not math.isfinite(float(m)) else f"{hi:.3f}"
        ax.text(
            float(xi),
            hi + ei + 0.01 if hi >= 0 else hi - ei - 0.01,
            txt,
            ha="center",
            va="bottom" if hi >= 0 else "top",
            fontsize=8,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("Pearson r (mean over genes, folds)")
    ax.set_title(f"HEST-Benchmark probe: {len(d.get('genes', []))} genes, {len(d.get('folds', []))} folds")
    fig.tight_layout()
    fig.savefig(path)


def write_report(result_dict: Mapping[str, Any] | Any, out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` into ``out_dir`` (created).

    ``result_dict`` has the form of :meth:`seal.evaluate.EvalResult.to_dict` --
    ``{"encoders": {label: {"pearson_mean", "pearson_std", "per_fold", ...retrieval keys}},
    "genes": [...], "folds": [...]}`` -- or is an object with such a ``to_dict()``.
    NaN values are written as JSON ``null``. Returns ``{"json": ..., "md": ..., "png": ...}``.
    """
    if not isinstance(result_dict, Mapping) and hasattr(result_dict, "to_dict"):
        result_dict = result_dict.to_dict()
    if not isinstance(result_dict, Mapping) or not isinstance(result_dict.get("encoders"), Mapping):
        raise EvalError(
            f"write_report got {type(result_dict).__name__} without an 'encoders' mapping; expected the dict of "
            "EvalResult.to_dict(). Fix: pass hest_benchmark(...).to_dict(retrieval=...)."
        )
    if not result_dict["encoders"]:
        raise EvalError("write_report got no encoders; expected at least one scored encoder.")
    for label, e in result_dict["encoders"].items():
        if not isinstance(e, Mapping) or "pearson_mean" not in e:
            raise EvalError(f"encoder {label!r} has no 'pearson_mean'; expected the entries of EvalResult.to_dict().")
    d = _jsonable(result_dict)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"cannot create the report folder {out}: {exc}. Fix: choose a writable out_dir.") from exc
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    paths["json"].write_text(json.dumps(d, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    paths["md"].write_text(_markdown(d), encoding="utf-8")
    _plot(d, paths["png"])
    return paths
