"""A seeded HEST-Benchmark-shaped data folder, in the released file formats.

Per task: ``patches/{sample}.h5`` (``img`` (N, P, P, 3) uint8, ``barcode`` (N, 1) bytes,
``coords`` (N, 2) int top-left corners in level-0 px of a notional slide, with HEST's
``patch_size_target`` / ``pixel_size`` / ``downsample`` attributes unless
``attrs=False``), ``adata/{sample}.h5ad`` (raw counts, obs_names = barcodes, rows in
another order than the patches and with extra spots that have no patch, as in HEST's
Xenium tasks), ``splits/train_K.csv`` / ``test_K.csv`` (leave one sample out) and
``var_50genes.json``. A patch's colour and texture follow its expression, so a probe
on image embeddings can predict it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SyntheticHestBench", "make_hest_bench"]


@dataclass(frozen=True)
class SyntheticHestBench:
    """What :func:`make_hest_bench` wrote."""

    root: Path
    tasks: tuple[str, ...]
    samples: Mapping[str, tuple[str, ...]]
    genes: Mapping[str, tuple[str, ...]]
    all_genes: tuple[str, ...]
    patch_px: int
    pixel_size_um: float


def _write_patches(path: Path, imgs: np.ndarray, barcodes: list[str], coords: np.ndarray, attrs: dict[str, float] | None) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("img", data=imgs, chunks=(1, *imgs.shape[1:]))
        f.create_dataset("barcode", data=np.asarray(barcodes, dtype="S").reshape(-1, 1))
        f.create_dataset("coords", data=coords.astype(np.int64))
        if attrs:
            for key in ("img", "coords"):
                for k, v in attrs.items():
                    f[key].attrs[k] = v


def make_hest_bench(
    root: str | Path,
    *,
    tasks: Mapping[str, int] | None = None,
    n_spots: int = 40,
    extra_spots: int = 5,
    n_genes: int = 30,
    n_task_genes: int = 8,
    patch_px: int = 32,
    pixel_size_um: float = 0.5,
    attrs: bool = True,
    seed: int = 0,
) -> SyntheticHestBench:
    """Write a HEST-Benchmark data folder under ``root``: ``tasks`` maps task names to their
    number of samples (default two tasks of three samples)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    root = Path(root)
    tasks = dict(tasks or {"TASKA": 3, "TASKB": 3})
    rng = np.random.default_rng(seed)
    all_genes = tuple(f"GENE{g:03d}" for g in range(n_genes))
    samples: dict[str, tuple[str, ...]] = {}
    task_genes: dict[str, tuple[str, ...]] = {}
    src_px = pixel_size_um / 2.0
    for task, n_samples in tasks.items():
        tdir = root / task
        genes = tuple(sorted(rng.choice(all_genes, size=n_task_genes, replace=False).tolist()))
        task_genes[task] = genes
        (tdir / "var_50genes.json").parent.mkdir(parents=True, exist_ok=True)
        (tdir / "var_50genes.json").write_text(json.dumps({"genes": list(genes)}))
        sids = tuple(f"{task}_S{s}" for s in range(n_samples))
        samples[task] = sids
        # two latent programs drive expression and the image
        load = rng.gamma(1.0, 1.0, size=(2, n_genes))
        for s_i, sid in enumerate(sids):
            n_all = n_spots + s_i + extra_spots
            z = rng.random((n_all, 2))
            rate = 0.3 + 6.0 * z @ load
            counts = rng.poisson(rate).astype(np.int32)
            barcodes = [f"{sid}-{i:05d}-1" for i in range(n_all)]
            ys, xs = np.divmod(np.arange(n_all), 16)
            centre_px = np.stack([xs, ys], axis=1) * (patch_px * 2 * 1.1) + 400.0
            with_patch = np.sort(rng.choice(n_all, size=n_all - extra_spots, replace=False))
            imgs = np.empty((len(with_patch), patch_px, patch_px, 3), np.uint8)
            xx = np.mgrid[0:patch_px, 0:patch_px][1]
            for k, i in enumerate(with_patch):
                base = np.array([230 - 150 * z[i, 0], 80 + 120 * z[i, 1], 190 - 60 * z[i, 0] * z[i, 1]])
                stripes = 25.0 * z[i, 1] * np.sin(xx * (0.3 + z[i, 0]))[..., None]
                noise = rng.normal(0.0, 12.0, size=(patch_px, patch_px, 3))
                imgs[k] = np.clip(base + stripes + noise, 0, 255).astype(np.uint8)
            coords = np.round(centre_px[with_patch] - patch_px * (pixel_size_um / src_px) / 2).astype(np.int64)
            a = {"patch_size_target": float(patch_px), "pixel_size": src_px, "downsample": pixel_size_um / src_px} if attrs else None
            _write_patches(tdir / "patches" / f"{sid}.h5", imgs, [barcodes[i] for i in with_patch], coords, a)
            order = rng.permutation(n_all)
            adata = ad.AnnData(
                X=sp.csr_matrix(counts[order]),
                obs=pd.DataFrame(index=pd.Index([barcodes[i] for i in order], name=None)),
                var=pd.DataFrame(index=pd.Index(list(all_genes))),
            )
            adata.obsm["spatial"] = centre_px[order]
            (tdir / "adata").mkdir(parents=True, exist_ok=True)
            adata.write_h5ad(tdir / "adata" / f"{sid}.h5ad")
        (tdir / "splits").mkdir(parents=True, exist_ok=True)
        for k, test_sid in enumerate(sids):
            for kind, members in (("train", [s for s in sids if s != test_sid]), ("test", [test_sid])):
                rows = [f"{m},patches/{m}.h5,adata/{m}.h5ad" for m in members]
                (tdir / "splits" / f"{kind}_{k}.csv").write_text("sample_id,patches_path,expr_path\n" + "\n".join(rows) + "\n")
    return SyntheticHestBench(root, tuple(tasks), samples, task_genes, all_genes, patch_px, pixel_size_um)
