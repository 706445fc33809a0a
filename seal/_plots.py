"""Plots of training runs."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_loss_curve"]


def plot_loss_curve(log: Path, out: Path) -> Path:
    """Training loss terms per step, and validation Pearson per epoch, from a JSONL log."""
    from matplotlib.figure import Figure

    steps: list[dict[str, float]] = []
    epochs: list[dict[str, float]] = []
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        (steps if "loss" in rec and "lr" in rec else epochs).append(rec)
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    for key in ("loss", "clip", "recon", "pred"):
        if steps and key in steps[0]:
            axes[0].plot([r["step"] for r in steps], [r[key] for r in steps], label=key, lw=1)
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss" if steps else "no training step")
    if steps:
        axes[0].legend(fontsize=8)
    val = [r for r in epochs if "val_pearson" in r]
    if val:
        axes[1].plot([r["epoch"] + 1 for r in val], [r["val_pearson"] for r in val], marker="o")
        axes[1].set_title("held-out mean Pearson (image head)")
    else:
        axes[1].set_title("no held-out split")
    axes[1].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out
