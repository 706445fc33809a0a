"""HEST-Benchmark, run exactly as mahmoodlab/HEST runs it, on its released data layout.

Per task folder (see :mod:`seal._hest_layout`): every patch of every sample is embedded
once per encoder (cached under ``OUT/embeddings``); targets are ``log1p`` of the raw
counts of the task's genes at each patch's barcode; for each ``splits/train_K.csv`` /
``test_K.csv`` pair the probe of :mod:`seal._hest_probe` is fit on the training samples
and scored by Pearson r per gene on the test samples; a task's score is the mean (and
std) over splits of the mean over genes, and an encoder's score the mean over tasks.

Encoders are anything :func:`seal.encoders.parse_encoder` returns: an object with a
``label``, a ``key`` (identity of the weights) and ``load(device) -> (model, data_config)``.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from hestkit.errors import Opt, fix

from ._hest_embed import embed_patch_file, file_fingerprint, load_cached, save_cached
from ._hest_layout import BenchTask, find_tasks, read_patch_barcodes, read_targets
from ._hest_probe import PROBES, Probe, ProbeConfig, SplitDetail, require_probe, score_folds
from ._hest_report import PUBLISHED, markdown_table, write_results
from .errors import EvalError
from .evaluate import Fold

__all__ = [
    "PROBES",
    "PUBLISHED",
    "EncoderLike",
    "HestBenchConfig",
    "ProbeConfig",
    "TaskData",
    "catalog_folds",
    "find_tasks",
    "load_task_data",
    "markdown_table",
    "match_genes",
    "run_hest_bench",
    "score_folds",
    "split_folds",
]

log = logging.getLogger(__name__)


class EncoderLike(Protocol):
    """What the benchmark needs from an encoder spec (:class:`seal.encoders.EncoderSpec`)."""

    @property
    def label(self) -> str: ...

    @property
    def key(self) -> str: ...

    def load(self, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]: ...


@dataclass(frozen=True)
class HestBenchConfig:
    """Settings of ``seal eval-hest`` (probe defaults: HEST's ``BenchmarkConfig``)."""

    tasks: tuple[str, ...] | None = None
    probe: Probe = "ridge"
    latent_dim: int = 256
    seed: int = 1
    batch_size: int = 128
    num_workers: int = 1
    device: str = "auto"
    cache: bool = True
    progress: bool = True
    n_jobs: int = 1

    def probe_config(self) -> ProbeConfig:
        return ProbeConfig(self.probe, self.latent_dim, self.seed, self.n_jobs)


@dataclass(frozen=True)
class TaskData:
    """A task's targets and row layout: the rows of sample ``i`` are ``offsets[i]:offsets[i+1]``."""

    task: BenchTask
    barcodes: dict[str, list[str]]
    targets: NDArray[np.float64]
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)


def split_folds(offsets: dict[str, tuple[int, int]], splits: Sequence[Any]) -> list[Fold]:
    """One :class:`Fold` per split: the rows of its train / test samples, in CSV order
    (HEST concatenates the samples of a split in that order)."""
    folds = []
    for s in splits:
        tr = [np.arange(*offsets[x.sample_id]) for x in s.train]
        te = [np.arange(*offsets[x.sample_id]) for x in s.test]
        folds.append(Fold(f"split{s.index}", np.concatenate(tr).astype(np.int64), np.concatenate(te).astype(np.int64)))
    return folds


def load_task_data(task: BenchTask) -> TaskData:
    """Barcodes of every patch file and the HEST targets at those barcodes."""
    barcodes: dict[str, list[str]] = {}
    ys: list[NDArray[np.float64]] = []
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for smp in task.samples:
        bcs = read_patch_barcodes(smp.patches)
        if not bcs:
            raise EvalError(f"{smp.patches}: no patches; expected at least one patch per sample.")
        barcodes[smp.sample_id] = bcs
        ys.append(read_targets(smp.expr, task.genes, bcs))
        offsets[smp.sample_id] = (start, start + len(bcs))
        start += len(bcs)
    return TaskData(task, barcodes, np.concatenate(ys), offsets)


def _embed_encoder(
    spec: EncoderLike, data: Sequence[TaskData], cfg: HestBenchConfig, device: torch.device, cache_root: Path | None
) -> tuple[dict[str, NDArray[np.float32]], dict[str, Any]]:
    """Embeddings of every task's rows for one encoder (cache first, model loaded only if needed)."""
    from tqdm.auto import tqdm

    todo: list[tuple[TaskData, str]] = []
    got: dict[tuple[str, str], NDArray[np.float32]] = {}
    for td in data:
        for smp in td.task.samples:
            fp = file_fingerprint(smp.patches)
            hit = None
            if cache_root is not None:
                hit = load_cached(cache_root / spec.key / td.task.name / f"{smp.sample_id}.npz", fp, td.barcodes[smp.sample_id])
            if hit is None:
                todo.append((td, smp.sample_id))
            else:
                got[(td.task.name, smp.sample_id)] = hit
    n_new = sum(len(td.barcodes[sid]) for td, sid in todo)
    seconds = 0.0
    if todo:
        model, dcfg = spec.load(device)
        model.eval()
        bar = tqdm(total=n_new, desc=f"{spec.label}: embedding", unit="patch", disable=not cfg.progress, leave=False)
        t0 = time.perf_counter()
        for td, sid in todo:
            smp = next(s for s in td.task.samples if s.sample_id == sid)
            emb = embed_patch_file(
                model, dcfg, smp.patches, device, batch_size=cfg.batch_size, num_workers=cfg.num_workers, progress=bar
            )
            if len(emb) != len(td.barcodes[sid]):
                raise EvalError(f"{smp.patches}: {len(emb)} embeddings for {len(td.barcodes[sid])} patches.")
            got[(td.task.name, sid)] = emb
            if cache_root is not None:
                save_cached(
                    cache_root / spec.key / td.task.name / f"{sid}.npz",
                    file_fingerprint(smp.patches),
                    td.barcodes[sid],
                    emb,
                    {"encoder": spec.label, "data_config": dcfg},
                )
        seconds = time.perf_counter() - t0
        bar.close()
        del model
    out: dict[str, NDArray[np.float32]] = {}
    for td in data:
        out[td.task.name] = np.concatenate([got[(td.task.name, s.sample_id)] for s in td.task.samples])
    n_cached = sum(len(td.targets) for td in data) - n_new
    info = {
        "patches_embedded": n_new,
        "patches_from_cache": n_cached,
        "embed_seconds": seconds,
        "patches_per_second": (n_new / seconds) if seconds > 0 else None,
    }
    return out, info


def run_hest_bench(
    bench_dir: str | Path, encoders: Sequence[EncoderLike], out: str | Path, cfg: HestBenchConfig | None = None
) -> dict[str, Any]:
    """Run HEST-Benchmark for every encoder on the tasks of ``bench_dir``; writes
    ``results.json``, ``results.md`` and ``details.json`` to ``out`` and returns the
    results dictionary (``{"probe", "encoders": {label: {"tasks": {task: {"pearson_mean",
    "pearson_std", "genes"}}, "mean"}}}``)."""
    import sklearn
    from tqdm.auto import tqdm

    from .train import resolve_device

    cfg = cfg or HestBenchConfig()
    pcfg = cfg.probe_config()
    require_probe(cfg.probe)
    if not encoders:
        enc = Opt("encoders", "[SPEC]", cli="SPEC")
        raise EvalError(f"no encoder given; expected at least one ({enc}).", fix=fix("", enc))
    labels = [e.label for e in encoders]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise EvalError(f"encoder label(s) {dup} given twice; expected each encoder once.")
    out = Path(out)
    tasks = find_tasks(Path(bench_dir), cfg.tasks)
    device = resolve_device(cfg.device)
    data = [load_task_data(t) for t in tasks]
    cache_root = out / "embeddings" if cfg.cache else None

    embeddings: dict[str, dict[str, NDArray[np.float32]]] = {t.name: {} for t in tasks}
    embed_info: dict[str, Any] = {}
    for spec in encoders:
        per_task, info = _embed_encoder(spec, data, cfg, device, cache_root)
        embed_info[spec.label] = info
        for name, x in per_task.items():
            embeddings[name][spec.label] = x

    results: dict[str, Any] = {"probe": cfg.probe, "encoders": {lab: {"tasks": {}, "mean": None} for lab in labels}}
    split_details: dict[str, dict[str, list[SplitDetail]]] = {}
    for td in tqdm(data, desc=f"{cfg.probe} probe", unit="task", disable=not cfg.progress, leave=False):
        folds = split_folds(td.offsets, td.task.splits)
        res, det = score_folds(embeddings[td.task.name], td.targets, folds, td.task.genes, pcfg, subject=f"task {td.task.name}")
        split_details[td.task.name] = det
        for lab, sc in res.encoders.items():
            results["encoders"][lab]["tasks"][td.task.name] = {
                "pearson_mean": sc.pearson_mean,
                "pearson_std": sc.pearson_std,
                "genes": dict(sc.per_gene),
            }
    for lab in labels:
        vals = [v["pearson_mean"] for v in results["encoders"][lab]["tasks"].values()]
        finite = [v for v in vals if np.isfinite(v)]
        results["encoders"][lab]["mean"] = float(np.mean(finite)) if finite else float("nan")

    details = {
        "config": asdict(cfg),
        "bench_dir": str(Path(bench_dir).resolve()),
        "tasks": {
            td.task.name: {
                "genes": list(td.task.genes),
                "n_spots": len(td.targets),
                "samples": {s.sample_id: len(td.barcodes[s.sample_id]) for s in td.task.samples},
                "splits": {
                    lab: [asdict(d) for d in split_details[td.task.name][lab]] for lab in labels
                },
            }
            for td in data
        },
        "embedding": embed_info,
        "encoders": {e.label: {"key": e.key} for e in encoders},
        "environment": {
            "device": str(device),
            "torch": torch.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
    }
    write_results(out, results, details, [t.name for t in tasks])
    return results


# --------------------------------------------------------------------------- catalog data


def match_genes(available: Sequence[str], wanted: Sequence[str], *, source: str = "the gene list") -> list[str]:
    """The catalog's names of ``wanted`` genes: exact matches first, else the single
    case-insensitive match. Raises :class:`~seal.errors.GeneListError` naming the genes
    the catalog lacks."""
    from .errors import GeneListError

    exact = set(available)
    folded: dict[str, list[str]] = {}
    for g in available:
        folded.setdefault(g.upper(), []).append(g)
    out, missing = [], []
    for g in wanted:
        if g in exact:
            out.append(g)
        elif len(folded.get(g.upper(), [])) == 1:
            out.append(folded[g.upper()][0])
        else:
            missing.append(g)
    if missing:
        raise GeneListError(
            f"{source}: {len(missing)} of {len(wanted)} genes are not measured in the selected pairs "
            f"(e.g. {', '.join(missing[:8])}); expected every listed gene. Fix: select samples that measure them "
            "or remove them from the list."
        )
    return out


def catalog_folds(sample_ids: Sequence[str] | NDArray[Any], split_dir: str | Path) -> list[Fold]:
    """Folds from HEST-style split files (``train_K.csv`` / ``test_K.csv``, a ``sample_id``
    column; path columns are not needed) over catalog rows with these sample ids; each
    fold's rows follow the CSV's sample order, as HEST concatenates them."""
    from ._hest_layout import read_splits

    split_dir = Path(split_dir)
    sids = np.asarray(sample_ids).astype(str)
    rows: dict[str, NDArray[np.int64]] = {s: np.flatnonzero(sids == s).astype(np.int64) for s in np.unique(sids)}
    splits = read_splits(split_dir, split_dir, need_paths=False)
    named = {x.sample_id for s in splits for x in s.train + s.test}
    absent = sorted(named - set(rows))
    if absent:
        raise EvalError(
            f"{split_dir}: split file(s) name sample(s) {absent[:8]} that are not among the selected pairs "
            f"(selected: {sorted(rows)[:8]}); expected every split sample in the selection. "
            "Fix: ingest those samples or widen the selection (samples, organ)."
        )
    unused = sorted(set(rows) - named)
    if unused:
        import warnings

        warnings.warn(f"sample(s) {unused[:8]} are selected but in no split file; they are not used.", stacklevel=2)
    folds = []
    for s in splits:
        tr = np.concatenate([rows[x.sample_id] for x in s.train])
        te = np.concatenate([rows[x.sample_id] for x in s.test])
        folds.append(Fold(f"split{s.index}", tr, te))
    return folds
