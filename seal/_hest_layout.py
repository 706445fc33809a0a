"""The released HEST-Benchmark layout: task folders, their splits, genes, patch files and
expression files, read the way mahmoodlab/HEST's ``src/hest/bench/benchmark.py`` reads them.

One task folder (``IDC``, ``PRAD``, ...) holds::

    patches/{sample}.h5     img (N, H, W, 3) uint8, barcode (N, 1) bytes, coords (N, 2)
    adata/{sample}.h5ad     raw counts, obs_names = spot barcodes
    splits/train_K.csv      columns sample_id, patches_path, expr_path (paths relative to the task)
    splits/test_K.csv
    var_50genes.json        {"genes": [...]}: the task's 50 genes
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from hestkit.errors import Opt, fix

from .errors import EvalError

__all__ = [
    "BenchSample",
    "BenchSplit",
    "BenchTask",
    "find_tasks",
    "read_genes_file",
    "read_patch_barcodes",
    "read_split_csv",
    "read_targets",
    "read_task",
]

_SPLIT = re.compile(r"^(train|test)_(\d+)\.csv$")
_COLUMNS = ("sample_id", "patches_path", "expr_path")


@dataclass(frozen=True)
class BenchSample:
    """One sample of a task: its patch file and its expression file."""

    sample_id: str
    patches: Path
    expr: Path


@dataclass(frozen=True)
class BenchSplit:
    """Split ``K``: the training and test samples, in the order of their CSV files."""

    index: int
    train: tuple[BenchSample, ...]
    test: tuple[BenchSample, ...]


@dataclass(frozen=True)
class BenchTask:
    """A HEST-Benchmark task folder."""

    name: str
    root: Path
    genes: tuple[str, ...]
    splits: tuple[BenchSplit, ...]

    @property
    def samples(self) -> tuple[BenchSample, ...]:
        """Every sample of the task once, in order of first appearance over the splits."""
        seen: dict[str, BenchSample] = {}
        for s in self.splits:
            for smp in s.train + s.test:
                seen.setdefault(smp.sample_id, smp)
        return tuple(seen.values())


def read_genes_file(path: Path) -> tuple[str, ...]:
    """Genes from HEST's ``var_50genes.json`` (``{"genes": [...]}``), a JSON list, or a text
    file with one gene per line (blank lines and ``#`` comments skipped)."""
    if not path.is_file():
        raise EvalError(f"{path}: gene list not found; expected var_50genes.json or a text file with one gene per line.")
    text = path.read_text()
    genes: list[str]
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise EvalError(f"{path}: not valid JSON ({exc}); expected {{\"genes\": [...]}} as HEST writes it.") from exc
        raw = obj.get("genes") if isinstance(obj, dict) else obj
        if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
            raise EvalError(
                f"{path}: found {type(raw).__name__} under 'genes'; expected a list of gene names "
                '(HEST layout: {"genes": ["ABCC11", ...]}).'
            )
        genes = [g.strip() for g in raw]
    else:
        genes = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    genes = [g for g in genes if g]
    if not genes:
        raise EvalError(f"{path}: the gene list is empty; expected at least one gene name.")
    dup = sorted({g for g in genes if genes.count(g) > 1})
    if dup:
        raise EvalError(f"{path}: gene(s) listed twice ({', '.join(dup[:5])}); expected each gene once. Fix: remove the repeats.")
    return tuple(genes)


def read_split_csv(path: Path, root: Path, *, need_paths: bool = True) -> tuple[BenchSample, ...]:
    """One ``splits/{train,test}_K.csv``: rows ``sample_id, patches_path, expr_path`` (paths
    relative to ``root``). ``need_paths=False`` accepts a CSV with only ``sample_id``."""
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise EvalError(f"{path}: cannot be read as CSV ({exc}); expected columns {', '.join(_COLUMNS)}.") from exc
    wanted = _COLUMNS if need_paths else _COLUMNS[:1]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise EvalError(
            f"{path}: columns {list(df.columns)} lack {missing}; expected {', '.join(wanted)} "
            "(HEST-Benchmark splits: sample_id,patches_path,expr_path)."
        )
    if df.empty:
        raise EvalError(f"{path}: no rows; expected one row per sample of the split.")
    out: list[BenchSample] = []
    for _, row in df.iterrows():
        sid = str(row["sample_id"]).strip()
        if not sid:
            raise EvalError(f"{path}: a row has an empty sample_id; expected one sample id per row.")
        pp = root / str(row["patches_path"]) if need_paths else Path()
        ep = root / str(row["expr_path"]) if need_paths else Path()
        out.append(BenchSample(sid, pp, ep))
    ids = [s.sample_id for s in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise EvalError(f"{path}: sample(s) {dup} listed twice; expected each sample once per split file.")
    return tuple(out)


def read_splits(split_dir: Path, root: Path, *, need_paths: bool = True) -> tuple[BenchSplit, ...]:
    """All ``train_K.csv`` / ``test_K.csv`` pairs of ``split_dir``, ordered by K."""
    if not split_dir.is_dir():
        raise EvalError(f"{split_dir}: no splits folder; expected splits/train_K.csv and splits/test_K.csv (K = 0, 1, ...).")
    found: dict[int, dict[str, Path]] = {}
    for p in sorted(split_dir.iterdir()):
        m = _SPLIT.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), {})[m.group(1)] = p
    if not found:
        names = sorted(p.name for p in split_dir.iterdir())[:8]
        raise EvalError(f"{split_dir}: no train_K.csv/test_K.csv files (found {names}); expected HEST's split files.")
    unpaired = [f"{kind}_{k}.csv" for k, d in sorted(found.items()) for kind in ("train", "test") if kind not in d]
    if unpaired:
        raise EvalError(f"{split_dir}: {', '.join(unpaired)} missing; expected a train and a test file for every split.")
    splits: list[BenchSplit] = []
    for k in sorted(found):
        train = read_split_csv(found[k]["train"], root, need_paths=need_paths)
        test = read_split_csv(found[k]["test"], root, need_paths=need_paths)
        both = sorted({s.sample_id for s in train} & {s.sample_id for s in test})
        if both:
            raise EvalError(
                f"{split_dir}: split {k} has sample(s) {both} in both train_{k}.csv and test_{k}.csv; "
                "expected disjoint train and test samples."
            )
        splits.append(BenchSplit(k, train, test))
    return tuple(splits)


def read_task(path: Path, *, gene_list: str = "var_50genes.json") -> BenchTask:
    """A HEST-Benchmark task folder; checks that every file the splits name exists."""
    path = Path(path)
    if not path.is_dir():
        raise EvalError(f"{path}: not a folder; expected a HEST-Benchmark task folder (patches/, adata/, splits/, {gene_list}).")
    genes = read_genes_file(path / gene_list)
    splits = read_splits(path / "splits", path)
    task = BenchTask(path.name, path, genes, splits)
    missing = [str(p) for s in task.samples for p in (s.patches, s.expr) if not p.is_file()]
    if missing:
        raise EvalError(
            f"task {task.name}: {len(missing)} file(s) named in splits/ are missing (e.g. {', '.join(missing[:3])}); "
            "expected the patches/*.h5 and adata/*.h5ad of every sample. Fix: download the complete task folder."
        )
    return task


def find_tasks(bench_dir: Path, names: Sequence[str] | None = None) -> list[BenchTask]:
    """The tasks under ``bench_dir`` (every sub-folder with ``splits/``), or ``bench_dir``
    itself when it is a task folder; ``names`` selects and orders them."""
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        raise EvalError(f"{bench_dir}: no such folder; expected the HEST-Benchmark data folder (one sub-folder per task).")
    if (bench_dir / "splits").is_dir():
        available = {bench_dir.name: bench_dir}
    else:
        available = {p.name: p for p in sorted(bench_dir.iterdir()) if p.is_dir() and (p / "splits").is_dir()}
    if not available:
        raise EvalError(
            f"{bench_dir}: no task folders (sub-folders with splits/); expected HEST-Benchmark's layout, "
            "e.g. IDC/{patches,adata,splits,var_50genes.json}."
        )
    if names:
        unknown = [n for n in names if n not in available]
        if unknown:
            tasks = Opt("tasks", "[NAME]", cli="NAME")
            raise EvalError(f"{bench_dir}: no task(s) {unknown}; expected {tasks} among {sorted(available)}.", fix=fix("", tasks))
        chosen = list(dict.fromkeys(names))
    else:
        chosen = sorted(available)
    return [read_task(available[n]) for n in chosen]


def read_patch_barcodes(path: Path) -> list[str]:
    """The barcodes of a HEST patch file (``barcode``, shape (N, 1) or (N,), bytes or str)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "barcode" not in f or "img" not in f:
            raise EvalError(f"{path}: datasets {sorted(f.keys())}; expected 'img' and 'barcode' (HEST patch file).")
        raw = f["barcode"][:]
        n = f["img"].shape[0]
    bcs = [b.decode() if isinstance(b, bytes) else str(b) for b in np.asarray(raw).reshape(len(raw), -1)[:, 0]]
    if len(bcs) != n:
        raise EvalError(f"{path}: {len(bcs)} barcodes for {n} images; expected one barcode per patch.")
    return bcs


def read_targets(path: Path, genes: Sequence[str], barcodes: Sequence[str], *, log1p: bool = True) -> NDArray[np.float64]:
    """HEST's targets: ``adata[barcodes][:, genes]``, as float64, then ``log1p`` (HEST's
    ``normalize_adata``: no library-size normalisation, only ``sc.pp.log1p``)."""
    import anndata as ad
    import scipy.sparse as sp

    try:
        adata = ad.read_h5ad(path)
    except Exception as exc:
        raise EvalError(f"{path}: cannot be read as AnnData ({exc}); expected an .h5ad file with raw counts.") from exc
    names = adata.obs_names.astype(str)
    if not names.is_unique:
        raise EvalError(f"{path}: obs_names (spot barcodes) are not unique; expected one row per barcode.")
    rows = names.get_indexer(list(barcodes))
    if (rows < 0).any():
        miss = [b for b, r in zip(barcodes, rows, strict=True) if r < 0]
        raise EvalError(
            f"{path}: {len(miss)} of {len(barcodes)} patch barcodes have no row (e.g. {miss[:3]}); "
            "expected every barcode of the patch file among obs_names. Fix: pair the patch file with its own .h5ad."
        )
    var = adata.var_names.astype(str)
    cols = var.get_indexer(list(genes))
    if (cols < 0).any():
        miss = [g for g, c in zip(genes, cols, strict=True) if c < 0]
        raise EvalError(
            f"{path}: {len(miss)} of the task's {len(genes)} genes are not in var_names (e.g. {miss[:5]}); "
            "expected every gene of the gene list. Fix: use the task's own var_50genes.json."
        )
    x = adata.X[rows][:, cols]
    y = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    if y.size and (not np.all(np.isfinite(y)) or float(y.min()) < 0):
        raise EvalError(f"{path}: X holds negative or non-finite values for the task's genes; expected raw counts >= 0.")
    return np.log1p(y) if log1p else y
