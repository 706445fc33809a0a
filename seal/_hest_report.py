"""``seal eval-hest`` output: results.json (the issue's schema), results.md (HEST's table
layout: one row per encoder, one column per task, the average last) and details.json."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._report import _jsonable

__all__ = ["PUBLISHED", "markdown_table", "write_results"]

#: HEST-Benchmark's published mean Pearson (PCA 256 + ridge) per encoder, from the HEST
#: README (table of 08.30.24; H0-mini from the later README the issue cites).
PUBLISHED: dict[str, float] = {
    "H-optimus-0": 0.4146,
    "UNIv1.5": 0.4090,
    "Virchow2": 0.3984,
    "Virchow": 0.3977,
    "H0-mini": 0.3957,
    "UNI": 0.3862,
    "GigaPath": 0.3853,
    "CONCH": 0.3709,
    "Phikon": 0.3656,
    "CTransPath": 0.3447,
    "ResNet50": 0.326,
}


def _cell(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{float(x):.4f}"


def markdown_table(results: Mapping[str, Any], tasks: Sequence[str]) -> str:
    """HEST's layout: ``| Model | TASK ... | Average |``; best per column in bold, second
    in italics (HEST underlines it)."""
    encs: Mapping[str, Any] = results["encoders"]
    cols = [*tasks, "Average"]

    def value(label: str, col: str) -> float | None:
        e = encs[label]
        v = e["mean"] if col == "Average" else e["tasks"].get(col, {}).get("pearson_mean")
        return float(v) if v is not None and math.isfinite(float(v)) else None

    rank: dict[tuple[str, str], int] = {}
    for c in cols:
        vals = sorted({v for lab in encs if (v := value(lab, c)) is not None}, reverse=True)
        for lab in encs:
            v = value(lab, c)
            if v is not None and len(encs) > 1:
                rank[(lab, c)] = vals.index(v)
    lines = ["| Model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for lab in encs:
        cells = []
        for c in cols:
            s = _cell(value(lab, c))
            r = rank.get((lab, c))
            cells.append(f"**{s}**" if r == 0 else f"_{s}_" if r == 1 else s)
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _std_table(results: Mapping[str, Any], tasks: Sequence[str]) -> str:
    encs: Mapping[str, Any] = results["encoders"]
    lines = ["| Model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for lab, e in encs.items():
        cells = []
        for t in tasks:
            te = e["tasks"].get(t, {})
            cells.append(f"{_cell(te.get('pearson_mean'))} ± {_cell(te.get('pearson_std'))}")
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out: Path, results: Mapping[str, Any], details: Mapping[str, Any], tasks: Sequence[str]) -> None:
    """Write results.json, results.md and details.json under ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    (out / "details.json").write_text(json.dumps(_jsonable(details), indent=2) + "\n")
    probe = results["probe"]
    cfg = details.get("config", {})
    red = f"PCA ({cfg.get('latent_dim')} components)" if cfg.get("latent_dim") else "no dimensionality reduction"
    md = [
        "# HEST-Benchmark results",
        "",
        f"Probe: {probe}, {red}, seed {cfg.get('seed')}. Pearson r per gene on each test split, "
        "mean over genes, then mean over splits; Average = mean over tasks (HEST's protocol, see docs/seal.md).",
        "",
        markdown_table(results, tasks),
        "",
        "## Mean ± std over splits",
        "",
        _std_table(results, tasks),
        "",
        "Published HEST-Benchmark averages (ridge on PCA-256, HEST README): "
        + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
        + ".",
        "",
    ]
    (out / "results.md").write_text("\n".join(md))
