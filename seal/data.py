"""Data for SEAL: gene preprocessing and datasets read lazily from a catalog view."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch.utils.data import Dataset

from catalog import PairView
from hestkit.errors import Opt, fix

from .errors import ConfigError, GeneListError, SelectionError, ShapeError

logger = logging.getLogger(__name__)

__all__ = [
    "CONTROL_PREFIXES",
    "PROBE_MODES",
    "ExpressionPrep",
    "PatchTransform",
    "ProbeSplit",
    "SealDataset",
    "apply_preprocessing",
    "clean_genes",
    "fit_preprocessing",
    "gene_filter",
    "highly_variable",
    "log_normalise",
    "patient_split",
    "probe_split",
    "smooth_visium",
]

#: Control probes and codewords dropped before anything else (Xenium, incl. XOA 1.x names).
CONTROL_PREFIXES = (
    "NEGCONTROLPROBE_",
    "NEGCONTROLCODEWORD_",
    "UNASSIGNEDCODEWORD_",
    "BLANK_",
    "DEPRECATEDCODEWORD_",
    "INTERGENIC_REGION_",
    "NEGCONTROL",
    "ANTISENSE_",
)

_MIN_FRACTION = Opt("min_gene_fraction", "F")
_MIN_STD = Opt("min_gene_std", "F")
_GENES = Opt("genes", "[GENE]", cli="GENE")


@dataclass(frozen=True)
class ExpressionPrep:
    """Everything needed to preprocess expression the way a model was trained."""

    genes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    smooth: bool = True
    target_sum: float = 1e4

    def to_dict(self) -> dict[str, Any]:
        return {
            "genes": list(self.genes),
            "mean": list(self.mean),
            "std": list(self.std),
            "smooth": self.smooth,
            "target_sum": self.target_sum,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExpressionPrep:
        return cls(tuple(d["genes"]), tuple(d["mean"]), tuple(d["std"]), bool(d["smooth"]), float(d["target_sum"]))


def clean_genes(genes: Sequence[str]) -> tuple[list[int], list[str]]:
    """Upper-case names, drop control probes and duplicates (first kept). Returns the kept
    column indices and their upper-case names."""
    idx, names, seen = [], [], set()
    for i, g in enumerate(genes):
        u = str(g).upper()
        if u.startswith(CONTROL_PREFIXES) or u in seen:
            continue
        seen.add(u)
        idx.append(i)
        names.append(u)
    return idx, names


def smooth_visium(counts: sp.csr_matrix, obs: pd.DataFrame) -> sp.csr_matrix:
    """x' = 0.5 x + 0.5 mean(neighbours in the first hexagonal ring), per Visium sample.

    Neighbours of (row, col) are (row, col +- 2) and (row +- 1, col +- 1) of the same
    sample, among the rows given. Spots without neighbours, and non-Visium rows, are kept.
    """
    n = counts.shape[0]
    rows, cols = [], []
    key_of: dict[tuple[str, int, int], int] = {}
    sid = obs["sample_id"].astype(str).to_numpy()
    ar = obs["array_row"].to_numpy()
    ac = obs["array_col"].to_numpy()
    tech = obs["technology"].astype(str).to_numpy()
    for i in range(n):
        if tech[i] == "visium" and ar[i] >= 0:
            key_of[(sid[i], int(ar[i]), int(ac[i]))] = i
    offsets = ((0, -2), (0, 2), (-1, -1), (-1, 1), (1, -1), (1, 1))
    has_nb = np.zeros(n, dtype=bool)
    for (s, r, c), i in key_of.items():
        for dr, dc in offsets:
            j = key_of.get((s, r + dr, c + dc))
            if j is not None:
                rows.append(i)
                cols.append(j)
                has_nb[i] = True
    if not rows:
        return counts
    adj = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, n))
    deg = np.asarray(adj.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    mean_nb = sp.diags(1.0 / deg) @ adj @ counts
    keep = sp.diags((~has_nb).astype(np.float32))
    mix = sp.diags(has_nb.astype(np.float32) * 0.5)
    return sp.csr_matrix(keep @ counts + mix @ counts + mix @ mean_nb)


def log_normalise(counts: sp.csr_matrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """normalize_total(target_sum) then log1p, row by row."""
    c = sp.csr_matrix(counts, dtype=np.float32)
    tot = np.asarray(c.sum(axis=1)).ravel()
    tot[tot == 0] = 1.0
    out = sp.diags((target_sum / tot).astype(np.float32)) @ c
    out = sp.csr_matrix(out)
    out.data = np.log1p(out.data)
    return out


def gene_filter(x: sp.csr_matrix, min_fraction: float, min_std: float) -> tuple[np.ndarray, np.ndarray]:
    """Which genes of log-normalised ``x`` are detected in at least ``min_fraction`` of the
    rows with a standard deviation of at least ``min_std``; and every gene's variance."""
    mean = np.asarray(x.mean(axis=0)).ravel()
    sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
    var = np.maximum(sq - mean**2, 0.0)
    detected = np.asarray((x > 0).sum(axis=0)).ravel() / max(x.shape[0], 1)
    return (detected >= min_fraction) & (np.sqrt(var) >= min_std), var


def highly_variable(
    x: sp.csr_matrix, n_top: int, *, min_fraction: float = 0.0, min_std: float = 0.0
) -> np.ndarray:
    """Column indices of the ``n_top`` highest-variance genes of log-normalised ``x``
    (ties by index), in column order, among the genes detected in at least
    ``min_fraction`` of the rows whose standard deviation is at least ``min_std``
    (genes failing either are never chosen, even when fewer than ``n_top`` remain)."""
    ok, var = gene_filter(x, min_fraction, min_std)
    cand = np.flatnonzero(ok)
    order = cand[np.lexsort((cand, -var[cand]))]
    return np.sort(order[: min(n_top, len(order))])


def _prepared_matrix(view: PairView, smooth: bool, target_sum: float) -> tuple[sp.csr_matrix, list[str]]:
    raw = view.expression()
    idx, names = clean_genes(view.genes)
    raw = sp.csr_matrix(raw[:, idx])
    if smooth:
        raw = smooth_visium(raw, view.obs)
    return log_normalise(raw, target_sum), names


def fit_preprocessing(
    view: PairView,
    *,
    n_genes: int = 2000,
    genes: Sequence[str] | None = None,
    smooth: bool = True,
    target_sum: float = 1e4,
    min_fraction: float = 0.0,
    min_std: float = 0.0,
    std_floor: float = 0.0,
) -> tuple[ExpressionPrep, np.ndarray]:
    """Choose the genes (HVG over the training view among the genes detected in at least
    ``min_fraction`` of the pairs with a standard deviation of at least ``min_std``, or a
    given list) and the per-gene mean/std (the std floored at ``std_floor``, so that the
    z-scores of near-constant genes cannot explode); returns the preprocessing and the
    training matrix (n_pairs x G, float32)."""
    if len(view) == 0:
        raise SelectionError("the training selection holds no pairs; loosen its filters (organ, technology, samples)")
    x, names = _prepared_matrix(view, smooth, target_sum)
    pos = {g: i for i, g in enumerate(names)}
    if genes is not None:
        wanted = [str(g).upper() for g in genes]
        missing = [g for g in wanted if g not in pos]
        if missing:
            raise GeneListError(
                f"{len(missing)} of {len(wanted)} genes of the gene list are not in the selected pairs "
                f"(e.g. {', '.join(missing[:10])}); remove them or select samples that measure them"
            )
        cols = np.array([pos[g] for g in wanted], dtype=np.int64)
    else:
        cols = highly_variable(x, n_genes, min_fraction=min_fraction, min_std=min_std)
        if len(cols) == 0:
            raise GeneListError(
                f"no gene is detected in >= {min_fraction:.0%} of the {x.shape[0]} training pairs with a standard "
                f"deviation >= {min_std}",
                fix=fix(f"lower {_MIN_FRACTION} / {_MIN_STD} or give {_GENES}", _MIN_FRACTION, _MIN_STD, _GENES),
            )
        dropped = x.shape[1] - int(gene_filter(x, min_fraction, min_std)[0].sum())
        if dropped:
            logger.info("%d of %d genes fail the expression/variance filter before the top-%d choice", dropped, x.shape[1], n_genes)
    dense = np.asarray(x[:, cols].toarray(), dtype=np.float32)
    mean = dense.mean(axis=0)
    std = dense.std(axis=0)
    std[std < 1e-6] = 1.0
    std = np.maximum(std, std_floor)
    prep = ExpressionPrep(tuple(names[i] for i in cols), tuple(map(float, mean)), tuple(map(float, std)), smooth, target_sum)
    return prep, dense


def apply_preprocessing(view: PairView, prep: ExpressionPrep) -> np.ndarray:
    """The same preprocessing on another view; genes it lacks are zero (with a warning)."""
    x, names = _prepared_matrix(view, prep.smooth, prep.target_sum)
    pos = {g: i for i, g in enumerate(names)}
    missing = [g for g in prep.genes if g not in pos]
    if len(missing) == len(prep.genes):
        raise GeneListError("none of the model's genes are in the selected pairs; is this the right catalog/species?")
    if missing:
        warnings.warn(
            f"{len(missing)} of the model's {len(prep.genes)} genes are absent from the selection and set to 0 "
            f"(e.g. {', '.join(missing[:5])})",
            stacklevel=2,
        )
    out = np.zeros((len(view), len(prep.genes)), dtype=np.float32)
    present = [(k, pos[g]) for k, g in enumerate(prep.genes) if g in pos]
    if present:
        ks, cs = zip(*present, strict=True)
        out[:, list(ks)] = x[:, list(cs)].toarray()
    return out


class PatchTransform:
    """uint8 HWC patch -> normalised float CHW tensor at the model's input size, with
    optional augmentation (flips, 90-degree rotations, mild colour jitter). An input size
    of 0 keeps the patch's own size (the ``texture`` encoder)."""

    def __init__(self, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float], augment: bool = False) -> None:
        self.size = int(input_size[-1])
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = augment

    def __call__(self, patch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float().div_(255.0)
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(2)
            if torch.rand(()) < 0.5:
                x = x.flip(1)
            x = torch.rot90(x, int(torch.randint(0, 4, ())), dims=(1, 2))
            b = 1.0 + (torch.rand(()) - 0.5) * 0.2
            c = 1.0 + (torch.rand(()) - 0.5) * 0.2
            m = x.mean()
            x = ((x - m) * c + m) * b
            x = x.clamp_(0.0, 1.0)
        if self.size > 0 and x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(
                x[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )[0]
        return (x - self.mean) / self.std


class SealDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(image, expression)`` pairs: patches read lazily from the catalog, expression
    preprocessed once (``values`` rows align with the view's rows)."""

    def __init__(self, view: PairView, values: np.ndarray, transform: PatchTransform) -> None:
        if len(values) != len(view):
            raise ShapeError(f"{len(values)} expression rows for {len(view)} pairs")
        self.view = view
        self.values = values
        self.transform = transform

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.view.patch(i)), torch.from_numpy(self.values[i])


def patient_split(obs: pd.DataFrame, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Row indices of a train/validation split by patient (sample when patients are
    unknown); returns the grouping used. No validation when there is one group."""
    pat = obs["patient"].astype(str).where(~obs["patient"].astype(str).isin(["", "nan", "None"]))
    level = "patient"
    groups = pat
    if pat.isna().any() or pat.nunique() < 2:
        level = "sample"
        groups = obs["sample_id"].astype(str)
        if val_fraction > 0:
            warnings.warn("patients are unknown for some pairs (or there is only one); splitting by sample instead", stacklevel=2)
    uniq = np.array(sorted(groups.unique()))
    n_val = round(len(uniq) * val_fraction) if val_fraction > 0 else 0
    if val_fraction > 0 and len(uniq) >= 2:
        n_val = max(1, min(n_val, len(uniq) - 1))
    else:
        n_val = 0
    rng = np.random.default_rng(seed)
    val_groups = set(rng.permutation(uniq)[:n_val])
    is_val = groups.isin(val_groups).to_numpy()
    return np.flatnonzero(~is_val), np.flatnonzero(is_val), level


#: How ``seal fit`` holds out pairs for its in-training probe.
PROBE_MODES = ("auto", "patients", "spots", "off")


@dataclass(frozen=True)
class ProbeSplit:
    """Train/probe rows of a fit and how they were chosen (said in the fit's summary).

    ``level``: ``"patient"``, ``"sample"`` (whole groups held out), ``"spot"`` (a spatial
    band of spots held out within every sample) or ``"none"``; ``note``: one sentence."""

    train: np.ndarray
    val: np.ndarray
    level: str
    n_groups: int
    note: str


def _spatial_band_split(obs: pd.DataFrame, val_fraction: float, seed: int) -> np.ndarray:
    """Probe rows: in every sample, the spots of a band across the tissue (``val_fraction`` of
    the sample's spots, contiguous in array row or column, chosen by ``seed``), so that probe
    spots have few training neighbours."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(obs), dtype=bool)
    sid = obs["sample_id"].astype(str).to_numpy()
    if "array_row" in obs and "array_col" in obs:
        coords = np.stack([obs["array_row"].to_numpy(dtype=float), obs["array_col"].to_numpy(dtype=float)], axis=1)
    else:
        coords = np.stack([np.arange(len(obs), dtype=float), np.zeros(len(obs))], axis=1)
    for s in sorted(set(sid)):
        rows = np.flatnonzero(sid == s)
        n_val = round(val_fraction * len(rows))
        if n_val < 1 or n_val >= len(rows):
            continue
        axis = int(rng.integers(0, 2))
        key = coords[rows, axis] + 1e-3 * coords[rows, 1 - axis]
        order = rows[np.argsort(key, kind="stable")]
        start = int(rng.integers(0, len(rows) - n_val + 1))
        is_val[order[start : start + n_val]] = True
    return is_val


def probe_split(obs: pd.DataFrame, val_fraction: float, seed: int, *, mode: str = "auto", min_patients: int = 5) -> ProbeSplit:
    """Rows for training and for the in-training probe.

    ``mode``: ``"patients"`` holds out ``val_fraction`` of the patients (samples when
    patients are unknown); ``"spots"`` holds out a spatial band of ``val_fraction`` of the
    spots of every sample (no patient leaves training); ``"off"`` holds out nothing;
    ``"auto"`` is ``"patients"`` from ``min_patients`` patients (or samples) on, else
    ``"spots"`` with a warning (holding out whole patients would take a large share of a
    small cohort out of training)."""
    if mode not in PROBE_MODES:
        raise ConfigError(f"probe mode must be one of {', '.join(PROBE_MODES)}, got {mode!r}")
    pat = obs["patient"].astype(str)
    known = ~pat.isin(["", "nan", "None"])
    n_patients = int(pat[known].nunique()) if known.all() else int(obs["sample_id"].astype(str).nunique())
    everything = np.arange(len(obs))
    if val_fraction <= 0 or mode == "off":
        return ProbeSplit(everything, everything[:0], "none", n_patients, "no in-training probe (every pair trains)")
    if mode == "auto":
        mode = "patients" if n_patients >= min_patients else "spots"
        if mode == "spots":
            warnings.warn(
                f"only {n_patients} patient(s): the in-training probe holds out a band of {val_fraction:.0%} of the spots "
                f"within every sample instead of whole patients (use probe='patients' to hold out patients, "
                f"probe='off' for none)",
                stacklevel=3,
            )
    if mode == "spots":
        is_val = _spatial_band_split(obs, val_fraction, seed)
        note = f"probe: a spatial band of {int(is_val.sum())} spots ({val_fraction:.0%}) within each of the {obs['sample_id'].nunique()} samples"
        return ProbeSplit(np.flatnonzero(~is_val), np.flatnonzero(is_val), "spot", n_patients, note)
    train, val, level = patient_split(obs, val_fraction, seed)
    n_val = len(set(obs.iloc[val]["patient" if level == "patient" else "sample_id"].astype(str))) if len(val) else 0
    note = f"probe: {n_val} of {n_patients} {level}s held out ({len(val)} pairs, {len(val) / max(len(obs), 1):.0%} of the pairs)"
    return ProbeSplit(train, val, level, n_patients, note)
