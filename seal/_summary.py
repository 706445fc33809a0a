"""What ``seal fit`` says at the end: whether training aligned images and expression."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._retrieval import retrieval_metrics

__all__ = ["CHANCE_MARGIN", "FitSummary", "clip_at_chance", "probe_retrieval"]

CHANCE_MARGIN = 0.97
"""The contrastive term counts as at chance above this fraction of ln(batch)."""


def clip_at_chance(clip: float, batch: int, start: float | None = None) -> bool:
    """Whether a symmetric InfoNCE value is (still) at the chance level ln(batch) and, when
    the first step's value ``start`` is known, has not fallen from it either (a centred,
    low-temperature loss starts above ln(batch) and is healthy while it falls)."""
    if batch <= 1 or clip < CHANCE_MARGIN * math.log(batch):
        return False
    return start is None or clip >= CHANCE_MARGIN * start


def probe_retrieval(image_emb: np.ndarray, expr_emb: np.ndarray, *, centre: bool = False) -> dict[str, float]:
    """Gene-to-image recall@10 of the probe pairs against chance (keys ``val_recall_at_10``,
    ``val_chance_recall_at_10``); empty below 2 pairs."""
    if len(image_emb) < 2:
        return {}
    m = retrieval_metrics(image_emb, expr_emb, ks=(10,), centre=centre)
    return {"val_recall_at_10": float(m["recall_at_10"]), "val_chance_recall_at_10": float(m["chance_recall_at_10"])}


@dataclass(frozen=True)
class FitSummary:
    """The end of a fit in numbers (``summary.json``) and in words (:meth:`lines`)."""

    probe: str
    probe_level: str
    n_train_pairs: int
    n_probe_pairs: int
    n_genes: int
    batch: int
    clip_chance: float
    clip_first_epoch: float | None
    clip_last_epoch: float | None
    clip_at_chance_after_first_epoch: bool
    probe_pearson: float | None
    probe_recall_at_10: float | None
    probe_chance_recall_at_10: float | None

    @classmethod
    def from_log(cls, log_path: Path, split: Any, n_train: int, n_genes: int, batch: int) -> FitSummary:
        epochs = [r for r in (json.loads(x) for x in log_path.read_text().splitlines() if x.strip()) if "lr" not in r]
        first = epochs[0] if epochs else {}
        last = epochs[-1] if epochs else {}

        def num(rec: dict[str, Any], key: str) -> float | None:
            v = rec.get(key)
            return float(v) if v is not None and np.isfinite(v) else None

        c1 = num(first, "clip_epoch")
        steps = [r for r in (json.loads(x) for x in log_path.read_text().splitlines() if x.strip()) if "lr" in r]
        c0 = num(steps[0], "clip") if steps else None
        return cls(
            probe=str(split.note),
            probe_level=str(split.level),
            n_train_pairs=int(n_train),
            n_probe_pairs=len(split.val),
            n_genes=int(n_genes),
            batch=int(batch),
            clip_chance=math.log(batch) if batch > 1 else 0.0,
            clip_first_epoch=c1,
            clip_last_epoch=num(last, "clip_epoch"),
            clip_at_chance_after_first_epoch=c1 is not None and clip_at_chance(c1, batch, c0),
            probe_pearson=num(last, "val_pearson"),
            probe_recall_at_10=num(last, "val_recall_at_10"),
            probe_chance_recall_at_10=num(last, "val_chance_recall_at_10"),
        )

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, path: Path) -> FitSummary:
        return cls(**json.loads(path.read_text()))

    def lines(self) -> list[str]:
        """The summary as printed by ``seal fit``."""
        out = [f"trained on {self.n_train_pairs} pairs, {self.n_genes} genes; {self.probe}"]
        if self.probe_pearson is not None:
            rec = ""
            if self.probe_recall_at_10 is not None and self.probe_chance_recall_at_10:
                ratio = self.probe_recall_at_10 / self.probe_chance_recall_at_10
                rec = (
                    f"; gene-to-image recall@10 {self.probe_recall_at_10:.3f} against chance "
                    f"{self.probe_chance_recall_at_10:.3f} ({ratio:.1f}x)"
                )
            out.append(f"probe ({self.n_probe_pairs} pairs): mean Pearson {self.probe_pearson:.3f}{rec}")
        if self.clip_first_epoch is not None:
            out.append(
                f"contrastive term: {self.clip_first_epoch:.3f} after epoch 1, {self.clip_last_epoch:.3f} at the end "
                f"(chance ln({self.batch}) = {self.clip_chance:.3f})"
            )
        if self.clip_at_chance_after_first_epoch:
            out.append(
                "WARNING: the contrastive term was still at chance after the first epoch: training may not be "
                "aligning images and expression (see docs/seal.md)"
            )
        return out
