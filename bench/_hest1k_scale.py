"""Build a catalog shaped like HEST-1k from its metadata table (no slides are read).

Every row of ``hest1k_metadata_v1_1_0.csv`` becomes one committed sample with its real
``organ``, ``st_technology``, ``species``, ``patient``, ``spots_under_tissue`` and
``nb_genes``. Expression is sparse raw counts at that shape: each spot detects a
technology-dependent fraction of the sample's genes (times ``density_scale``), drawn
from a skewed gene popularity so that housekeeping-like genes are detected most often;
gene names are per organism (human upper-case symbols, mouse title-case), the first
``nb_genes`` of that organism's list. Patches (textured, JPEG, through the catalog's own
whole-shard writer) are written for a seeded ``patch_fraction`` of the samples; the
others get an empty patch array (zarr fill value, nothing on disk).

The catalog is written through the catalog's writer internals, one sample at a time,
exactly as an ingest commits it: SOMA rows under the catalog lock
(:func:`catalog._soma.append_rows`), then the sample's manifest, atomically. The result
is read with the normal API (``catalog.open``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

import catalog
from catalog import _soma
from catalog._shards import write_patches
from catalog._store import (
    MANIFEST_ENCODING,
    MANIFEST_VERSION,
    PATCHES_ENCODING,
    PATCHES_VERSION,
    Layout,
    atomic_write_json,
    check_sample_id,
    new_ingest_id,
)
from catalog.writer import SHARD_PATCHES, write_gene_joinids, write_gene_list
from hestkit.patches import PairSpec
from hestkit.readers.hest1k import HEST_TECHNOLOGIES
from hestkit.synthetic import gene_table

__all__ = ["DETECTED_FRACTION", "ScaleStats", "build_scale_catalog", "gene_universe", "read_metadata"]

#: Fraction of a sample's genes detected (non-zero) in a typical spot, per technology:
#: Visium ~2,500 of ~33k genes, legacy ST ~1,500 of ~16k, Visium HD 56 um pseudo-spots
#: ~15 %, Xenium 55 um pseudo-spots about half of the panel.
DETECTED_FRACTION = {"visium": 0.08, "st": 0.10, "visium-hd": 0.15, "xenium": 0.5}
#: Size of each organism's gene list (HEST-1k's largest sample has 68,886 genes).
UNIVERSE = 70_000
_DEFAULT_SPOT_UM = {"visium": 55.0, "visium-hd": 56.0, "xenium": 55.0, "st": 100.0}
_PITCH_UM = {"visium": 100.0, "visium-hd": 56.0, "xenium": 55.0, "st": 200.0}


@dataclass(frozen=True)
class ScaleStats:
    n_samples: int
    n_spots: int
    n_nonzero: int
    n_patch_samples: int
    n_patches: int
    n_var: int
    seconds: float
    patch_samples: tuple[str, ...]


def read_metadata(path: str | Path, n_samples: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The HEST-1k metadata rows (all, or a seeded random ``n_samples`` of them), with the
    catalog's technology names in ``technology``."""
    df = pd.read_csv(path, encoding="utf-8-sig")
    need = ["id", "organ", "species", "patient", "st_technology", "spots_under_tissue", "nb_genes"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected the HEST-1k metadata CSV")
    if n_samples is not None and n_samples < len(df):
        df = df.sample(n=n_samples, random_state=seed)
    df = df.sort_values("id").reset_index(drop=True)
    df["technology"] = [HEST_TECHNOLOGIES.get(str(t).strip().lower(), str(t).strip().lower()) for t in df["st_technology"]]
    df["patient"] = df["patient"].fillna("").astype(str).str.strip()
    df["spots_under_tissue"] = df["spots_under_tissue"].astype(np.int64)
    df["nb_genes"] = df["nb_genes"].astype(np.int64)
    return df


def gene_universe(species: str) -> tuple[list[str], list[str]]:
    """(ids, symbols) of an organism's gene list; a sample uses the first ``nb_genes``."""
    ids, symbols = gene_table(UNIVERSE, species)
    return ids, symbols


def _counts(rng: np.random.Generator, n_spots: int, n_genes: int, per_spot: float) -> sp.csr_matrix:
    """Sparse raw counts: ~``per_spot`` distinct genes per spot (Poisson around it), genes
    drawn with popularity ~ 1 / (rank + 20), counts 1 + geometric."""
    k = np.minimum(rng.poisson(max(per_spot, 1.0), n_spots), n_genes).astype(np.int64)
    total = int(k.sum())
    # inverse-CDF draw from p(rank) ~ 1 / (rank + 20) on [0, n_genes)
    u = rng.random(total)
    a = 20.0
    cols = np.floor((a + n_genes) ** u * a ** (1.0 - u) - a).astype(np.int64)
    np.clip(cols, 0, n_genes - 1, out=cols)
    rows = np.repeat(np.arange(n_spots, dtype=np.int64), k)
    key = rows * n_genes + cols
    key.sort()
    key = key[np.concatenate(([True], key[1:] != key[:-1]))] if len(key) else key
    r, c = np.divmod(key, n_genes)
    data = (1 + rng.geometric(0.45, len(key))).astype(np.float32)
    indptr = np.zeros(n_spots + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n_spots), out=indptr[1:])
    return sp.csr_matrix((data, c.astype(np.int32), indptr), shape=(n_spots, n_genes))


def _barcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    codes = letters[rng.integers(0, 4, size=(n, 16))]
    raw = codes.view("S16").ravel()
    out = np.char.add(raw.astype(str), np.char.add("-", (np.arange(n) % 7 + 1).astype(str)))
    return out.astype(object)


def _texture(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """A smooth pink H&E-like texture with nuclei-like dark blobs and fine noise."""
    import cv2

    low = rng.normal(0, 1, (size // 16, size // 16, 3)).astype(np.float32)
    low = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.array([225.0, 180.0, 205.0], dtype=np.float32) + 18.0 * low
    nuclei = (rng.random((size, size)) < 0.004).astype(np.float32)
    nuclei = cv2.GaussianBlur(nuclei, (0, 0), 2.5) * 60.0
    img -= np.clip(nuclei, 0, 1.0)[..., None] * np.array([120.0, 130.0, 60.0], dtype=np.float32)
    img += rng.normal(0, 5, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _patches(rng: np.random.Generator, texture: np.ndarray, n: int, size: int) -> np.ndarray:
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    lim = texture.shape[0] - size
    ys = rng.integers(0, lim, n)
    xs = rng.integers(0, lim, n)
    tint = rng.integers(-20, 21, (n, 1, 1, 3))
    for i in range(n):
        out[i] = texture[ys[i] : ys[i] + size, xs[i] : xs[i] + size]
    return np.clip(out.astype(np.int16) + tint, 0, 255).astype(np.uint8)


def _obs(row: Any, ingest_id: str, rng: np.random.Generator, n: int, technology: str) -> pd.DataFrame:
    sid = str(row.id)
    pitch_um = _PITCH_UM.get(technology, 100.0)
    px = float(row.pixel_size_um_estimated) if pd.notna(row.pixel_size_um_estimated) else 0.5
    side = max(1, math.ceil(math.sqrt(n)))
    arow = (np.arange(n) // side).astype(np.int32)
    acol = (np.arange(n) % side).astype(np.int32)
    x_um = (acol + 1) * pitch_um
    y_um = (arow + 1) * pitch_um
    spot = float(row.spot_diameter) if pd.notna(row.spot_diameter) else _DEFAULT_SPOT_UM.get(technology, 55.0)
    bc = _barcodes(rng, n)
    return pd.DataFrame(
        {
            "obs_id": [f"{sid}/{ingest_id}/{b}" for b in bc],
            "sample_id": sid,
            "ingest_id": ingest_id,
            "barcode": bc,
            "organ": str(row.organ),
            "technology": technology,
            "species": str(row.species),
            "patient": str(row.patient),
            "in_tissue": np.ones(n, dtype=np.int8),
            "array_row": arow,
            "array_col": acol,
            "x_px": x_um / px,
            "y_px": y_um / px,
            "x_um": x_um.astype(float),
            "y_um": y_um.astype(float),
            "pixel_size_um": np.full(n, px),
            "spot_size_um": np.full(n, spot),
            "patch_index": np.arange(n, dtype=np.int64),
        }
    )


def _patch_group(layout: Layout, sid: str, ingest_id: str, n: int, spec: PairSpec) -> Path:
    import zarr

    from catalog._jpeg import JpegCodec

    gpath = Path(layout.patches(sid, ingest_id))
    group = zarr.open_group(str(gpath), mode="w", zarr_format=3)
    group.attrs.update(
        {
            "encoding-type": PATCHES_ENCODING,
            "encoding-version": PATCHES_VERSION,
            "sample_id": sid,
            "ingest_id": ingest_id,
            "patch_size_px": spec.patch_size_px,
            "pixel_size_um": spec.pixel_size_um,
            "source_level": 0,
            "source_level_downsample": 1.0,
            "centre_convention": "patch i is centred on obs x_px/y_px (level-0 px) of the row with patch_index i",
        }
    )
    p = spec.patch_size_px
    n_slots = max(SHARD_PATCHES, math.ceil(n / SHARD_PATCHES) * SHARD_PATCHES)
    group.create_array(
        "patches",
        shape=(n_slots, p, p, 3),
        chunks=(1, p, p, 3),
        shards=(SHARD_PATCHES, p, p, 3),
        dtype="uint8",
        serializer=JpegCodec(quality=spec.jpeg_quality),
        compressors=None,
        fill_value=0,
        dimension_names=["pair", "y", "x", "c"],
    )
    thumb = np.full((32, 32, 3), 240, dtype=np.uint8)
    tarr = group.create_array("thumbnail", shape=thumb.shape, chunks=thumb.shape, dtype="uint8", dimension_names=["y", "x", "c"])
    tarr[:] = thumb
    tarr.attrs["downsample"] = 1.0
    return gpath


def _manifest(
    row: Any,
    sid: str,
    ingest_id: str,
    obs: pd.DataFrame,
    genes: list[str],
    gpath: Path,
    layout: Layout,
    start: int,
    has_patches: bool,
) -> dict[str, Any]:
    genes_ref = write_gene_list(layout, genes)  # the writer's shared genes/{sha256}.json
    n_obs = len(obs)
    technology = str(row.technology)
    px = float(obs["pixel_size_um"].iloc[0]) if n_obs else float("nan")
    return {
        "encoding-type": MANIFEST_ENCODING,
        "encoding-version": MANIFEST_VERSION,
        "sample_id": sid,
        "ingest_id": ingest_id,
        "technology": technology,
        "organ": str(row.organ),
        "species": str(row.species),
        "patient": str(row.patient),
        "n_spots": n_obs,
        "n_in_tissue": n_obs,
        "n_pairs": n_obs,
        "n_dropped_outside_image": 0,
        "n_genes": len(genes),
        "pixel_size_um": px,
        "pixel_size_source": "metadata",
        "pixel_size_um_embedded": float(row.pixel_size_um_embedded) if pd.notna(row.pixel_size_um_embedded) else None,
        "pixel_size_um_estimated": px,
        "spot_diameter_um": float(obs["spot_size_um"].iloc[0]) if n_obs else None,
        "spot_shape": "square" if technology in ("visium-hd", "xenium") else "circle",
        "image_path": f"wsis/{row.image_filename}",
        "image_width": int(row.fullres_px_width) if pd.notna(row.fullres_px_width) else 0,
        "image_height": int(row.fullres_px_height) if pd.notna(row.fullres_px_height) else 0,
        "source_level": 0,
        "source_level_downsample": 1.0,
        "patches_path": str(gpath.relative_to(layout.root)),
        "n_slots": int(max(SHARD_PATCHES, math.ceil(n_obs / SHARD_PATCHES) * SHARD_PATCHES)),
        "soma_joinid_start": start,
        "soma_joinid_stop": start + n_obs,
        "genes_ref": genes_ref,
        "reader": "hest1k-scale-generator",
        "source_paths": [],
        "source_fingerprint": "",
        "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hestkit_version": "bench",
        "warnings": [] if has_patches else ["scale generator: no patches written (empty patch array)"],
        "metadata": {"hest_id": sid, "has_patches": has_patches, "dataset_title": str(row.dataset_title)},
    }


def build_scale_catalog(
    root: str | Path,
    metadata: pd.DataFrame,
    *,
    patch_fraction: float = 0.05,
    density_scale: float = 1.0,
    samples_per_commit: int = 1,
    seed: int = 0,
    spec: PairSpec | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ScaleStats:
    """Write one committed sample per metadata row into a new catalog at ``root``.

    ``samples_per_commit`` > 1 appends that many samples' SOMA rows in one write (one
    TileDB fragment per batch instead of per sample, as a consolidated catalog would
    hold); each sample still gets its own joinid range, ingest id and manifest.
    """
    t0 = time.perf_counter()
    spec = spec or PairSpec()
    cat = catalog.create(root, spec)
    layout = Layout(cat.path)
    rng = np.random.default_rng(seed)
    n = len(metadata)
    n_patch = min(n, max(1, round(patch_fraction * n))) if patch_fraction > 0 else 0
    patch_ids = set(rng.choice(metadata["id"].to_numpy(), size=n_patch, replace=False).tolist()) if n_patch else set()
    texture = _texture(rng) if n_patch else None
    universes: dict[str, tuple[list[str], list[str]]] = {}
    n_spots = n_nnz = n_patches = 0
    batch: list[tuple[Any, str, str, pd.DataFrame, sp.csr_matrix, list[str], list[str], Path]] = []

    def flush() -> None:
        if not batch:
            return
        union: dict[str, str] = {}
        for *_, genes, gene_ids, _g in batch:
            for g, gid in zip(genes, gene_ids, strict=True):
                union.setdefault(g, gid)
        pos = {g: i for i, g in enumerate(union)}
        mats = []
        for _row, _sid, _iid, _obs, counts, genes, _ids, _g in batch:
            cmap = np.array([pos[g] for g in genes], dtype=np.int32)
            c = counts.tocoo()
            mats.append(sp.csr_matrix((c.data, (c.row, cmap[c.col])), shape=(counts.shape[0], len(union))))
        obs_all = pd.concat([b[3] for b in batch], ignore_index=True)
        with layout.writer_lock():
            start, gene_map = _soma.append_rows(layout.soma, obs_all, sp.vstack(mats).tocsr(), list(union), list(union.values()))
            off = start
            for row, sid, ingest_id, obs, _c, genes, _ids, gpath in batch:
                m = _manifest(row, sid, ingest_id, obs, genes, gpath, layout, off, sid in patch_ids)
                write_gene_joinids(layout, m["genes_ref"], [gene_map[g] for g in genes])  # as the writer's commit
                atomic_write_json(Path(layout.manifest(sid)), m)
                off += len(obs)
        batch.clear()

    for k, row in enumerate(metadata.itertuples(index=False)):
        sid = check_sample_id(str(row.id))
        technology = str(row.technology)
        species = str(row.species)
        if species not in universes:
            universes[species] = gene_universe(species)
        ids, symbols = universes[species]
        n_genes = min(int(row.nb_genes), UNIVERSE)
        n_obs = int(row.spots_under_tissue)
        srng = np.random.default_rng([seed, k])
        ingest_id = new_ingest_id()
        per_spot = DETECTED_FRACTION.get(technology, 0.1) * n_genes * density_scale
        counts = _counts(srng, n_obs, n_genes, per_spot)
        obs = _obs(row, ingest_id, srng, n_obs, technology)
        gpath = _patch_group(layout, sid, ingest_id, n_obs, spec)
        if sid in patch_ids and texture is not None:
            for s0 in range(0, n_obs, 4 * SHARD_PATCHES):
                m = min(4 * SHARD_PATCHES, n_obs - s0)
                write_patches(gpath / "patches", s0, _patches(srng, texture, m, spec.patch_size_px))
            n_patches += n_obs
        batch.append((row, sid, ingest_id, obs, counts, symbols[:n_genes], ids[:n_genes], gpath))
        if len(batch) >= samples_per_commit:
            flush()
        n_spots += n_obs
        n_nnz += int(counts.nnz)
        if progress:
            progress(k + 1, n)
    flush()
    n_var = len(_soma.read_var(layout.soma))
    return ScaleStats(n, n_spots, n_nnz, len(patch_ids), n_patches, n_var, time.perf_counter() - t0, tuple(sorted(patch_ids)))
