"""The report of ``seal slide-eval``: ``results.json``, ``results.md``, a bar plot of the
metrics per encoder and model, and ABMIL attention heatmaps over slide thumbnails."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .slide_eval import SlideEvalResult

__all__ = ["attention_figure", "write_slide_report"]


def _num(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _metrics(kind: str) -> list[str]:
    return ["auc", "balanced_accuracy"] if kind == "classification" else ["pearson", "spearman"]


def _markdown(res: SlideEvalResult, table: pd.DataFrame) -> str:
    t = res.task
    keys = _metrics(t.kind)
    lines = [
        f"# Slide-level evaluation: `{t.column}` ({t.kind})",
        "",
        f"{len(t.slide_ids)} slides of {len(set(t.patients))} patients"
        + (f", classes {', '.join(t.classes)}" if t.classes else "")
        + (f"; {t.n_missing} slide(s) without a label left out" if t.n_missing else "")
        + f"; {res.folds} patient-level folds (mean ± std over folds).",
        "",
        "| encoder | model | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for _, r in table.iterrows():
        cells = []
        for k in keys:
            m, s = r.get(f"{k}_mean"), r.get(f"{k}_std")
            cells.append("n/a" if m is None or not np.isfinite(m) else f"{m:.3f} ± {s:.3f}")
        lines.append(f"| {r['encoder']} | {r['model']} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _plot(res: SlideEvalResult, table: pd.DataFrame, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = _metrics(res.task.kind)
    fig = Figure(figsize=(4.5 * len(keys), 3.6))
    FigureCanvasAgg(fig)
    models = list(dict.fromkeys(table["model"]))
    encoders = list(dict.fromkeys(table["encoder"]))
    width = 0.8 / max(len(models), 1)
    for j, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), j + 1)
        for mi, model in enumerate(models):
            sub = table[table["model"] == model].set_index("encoder").reindex(encoders)
            x = np.arange(len(encoders)) + (mi - (len(models) - 1) / 2) * width
            ax.bar(x, sub[f"{key}_mean"].to_numpy(float), width, yerr=sub[f"{key}_std"].to_numpy(float), capsize=3, label=model)
        ax.set_xticks(np.arange(len(encoders)))
        ax.set_xticklabels(encoders, rotation=15, ha="right", fontsize=8)
        ax.set_title(key.replace("_", " "))
        if key in ("auc", "balanced_accuracy"):
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=8)
    fig.suptitle(f"{res.task.column}: {res.folds}-fold, patient-level")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def attention_figure(thumb: np.ndarray, thumb_ds: float, coords: np.ndarray, tile_l0: float, attention: np.ndarray, title: str) -> Any:
    """A matplotlib Figure: the thumbnail and, beside it, each tile coloured by the rank of
    its attention (percentile, so a few dominant tiles do not wash out the rest)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    h, w = thumb.shape[:2]
    ranks = np.argsort(np.argsort(attention)) / max(len(attention) - 1, 1)
    heat = np.full((h, w), np.nan, np.float32)
    for (x, y), r in zip(coords, ranks, strict=True):
        x0, y0 = int(x / thumb_ds), int(y / thumb_ds)
        x1, y1 = max(x0 + 1, round((x + tile_l0) / thumb_ds)), max(y0 + 1, round((y + tile_l0) / thumb_ds))
        heat[y0:y1, x0:x1] = r
    fig = Figure(figsize=(9, 4.5 * h / max(w, 1) + 0.8))
    FigureCanvasAgg(fig)
    a1 = fig.add_subplot(1, 2, 1)
    a1.imshow(thumb)
    a1.set_title("slide", fontsize=9)
    a1.axis("off")
    a2 = fig.add_subplot(1, 2, 2)
    a2.imshow(thumb)
    im = a2.imshow(np.ma.masked_invalid(heat), cmap=colormaps["inferno"], alpha=0.6, vmin=0, vmax=1)
    a2.set_title("ABMIL attention (percentile)", fontsize=9)
    a2.axis("off")
    fig.colorbar(im, ax=a2, fraction=0.04)
    fig.suptitle(title, fontsize=10)
    return fig


def write_slide_report(
    res: SlideEvalResult,
    out: str | Path,
    *,
    stores: Mapping[str, Any],
    slide_paths: Mapping[str, str],
    n_heatmaps: int = 4,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md``, ``results.png`` and ``heatmaps/*.png``."""
    from hestkit.slide import open_slide

    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    table = res.summary()
    t = res.task
    doc = {
        "task": {
            "column": t.column,
            "kind": t.kind,
            "classes": list(t.classes),
            "n_slides": len(t.slide_ids),
            "n_patients": len(set(t.patients)),
            "n_missing_label": t.n_missing,
        },
        "folds": res.folds,
        **(dict(meta) if meta else {}),
        "summary": [{k: _num(v) for k, v in r.items()} for r in table.to_dict(orient="records")],
        "per_fold": {
            fs: {m: [{k: _num(v) for k, v in f.items()} for f in folds] for m, folds in models.items()}
            for fs, models in res.per_fold.items()
        },
        "out_of_fold": res.oof,
        "labels": {s: (t.classes[int(y)] if t.classes else float(y)) for s, y in zip(t.slide_ids, t.y, strict=True)},
    }
    paths = {"json": d / "results.json", "md": d / "results.md", "plot": d / "results.png"}
    paths["json"].write_text(json.dumps(doc, indent=1))
    paths["md"].write_text(_markdown(res, table))
    _plot(res, table, paths["plot"])
    hm = d / "heatmaps"
    for fs, attn in res.attention.items():
        if not attn:
            continue
        oof = res.oof[fs].get("abmil", {})
        # the slides the model scores highest (for classification, on the last class)
        order = sorted(attn, key=lambda s: -(oof.get(s, [0.0])[-1] if t.kind == "classification" else oof.get(s, [0.0])[0]))
        for sid in order[:n_heatmaps]:
            sf = stores[fs].get(sid)
            with open_slide(slide_paths[sid]) as slide:
                thumb, ds = slide.thumbnail(768)
            lab = t.classes[int(t.y[t.slide_ids.index(sid)])] if t.classes else f"{t.y[t.slide_ids.index(sid)]:.3g}"
            fig = attention_figure(thumb, ds, sf.coords, sf.patch_size_level0, attn[sid], f"{sid} ({t.column} = {lab}) · {res.labels.get(fs, fs)}")
            hm.mkdir(exist_ok=True)
            p = hm / f"{fs}__{sid}.png"
            fig.savefig(p, dpi=100)
            paths[f"heatmap:{fs}:{sid}"] = p
    return paths
