"""``seal slide-embed``: tile features of the slide table's slides, per encoder.

Per slide: the tissue mask (:func:`hestkit.tissue.segment_tissue`, computed once and kept in
the catalog as ``slide-tissue/{slide_id}--{fingerprint}.geojson``), a grid of square tiles
of ``tile_px`` px at ``mpp`` um/px over the slide, kept where at least ``min_tissue`` of the
tile is on tissue; then the ingest's block path (:func:`hestkit.patches.plan_patches` +
:func:`~hestkit.patches.cut_block`): tiles are grouped by the tile-aligned block of the
pyramid level that holds them, each block is decoded once and every tile in it resampled
from it (dask tasks), and the encoder runs on the tiles in batches as blocks arrive
(bf16 on CUDA). Features and TOP-LEFT level-0 coordinates go to the slide feature store
(:mod:`catalog.slide_features`, TRIDENT's h5 layout) under the feature set
``{encoder key}--{mpp}um-{tile_px}px``: the encoder key is the weights' identity, as for the
patch embedding cache. A slide whose file is already there (same slide fingerprint) is
skipped, so an interrupted run resumes.

``keep_tiles`` also stores the tiles in the catalog's zarr JPEG patch format
(``slide-tiles/{mpp}um-{tile_px}px/{slide_id}--{fingerprint}.zarr``); later runs of other
encoders at that tiling read those instead of decoding the slide again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .encoders import EncoderSpec, parse_encoder
from .errors import ConfigError, SealError

__all__ = [
    "SlideEmbedConfig",
    "SlideEmbedReport",
    "embed_slides",
    "feature_set_name",
    "grid_tiles",
    "resolve_feature_set",
    "slide_tissue_mask",
    "tiling_name",
]

log = logging.getLogger(__name__)

#: Tiles per zarr shard of kept tiles (as the catalog's patches).
_SHARD = 64


@dataclass(frozen=True)
class SlideEmbedConfig:
    """Tiling and run settings of :func:`embed_slides`."""

    mpp: float = 0.5
    tile_px: int = 224
    min_tissue: float = 0.25
    batch_size: int = 64
    workers: int | None = None
    scheduler: str | None = None
    device: str = "auto"
    keep_tiles: bool = False
    block_px: int = 2048
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not self.mpp > 0:
            raise ConfigError(f"mpp must be > 0 um/px, got {self.mpp}")
        if self.tile_px < 8:
            raise ConfigError(f"tile_px must be >= 8, got {self.tile_px}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ConfigError(f"min_tissue must be in [0, 1], got {self.min_tissue}")


@dataclass
class SlideEmbedReport:
    feature_set: str
    embedded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    n_tiles: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    tiles_from_store: list[str] = field(default_factory=list)

    @property
    def tiles_per_second(self) -> float:
        t = sum(self.seconds.get(s, 0.0) for s in self.embedded)
        n = sum(self.n_tiles.get(s, 0) for s in self.embedded)
        return n / t if t > 0 else float("nan")


def tiling_name(mpp: float, tile_px: int) -> str:
    return f"{mpp:g}um-{tile_px}px"


def feature_set_name(spec: EncoderSpec, mpp: float, tile_px: int) -> str:
    """The feature set of an encoder at a tiling: ``{weights' key}--{mpp}um-{tile}px``."""
    return f"{spec.key}--{tiling_name(mpp, tile_px)}"


def resolve_feature_set(cat: Any, spec: str, mpp: float = 0.5, tile_px: int = 224) -> tuple[str, str]:
    """``(feature set name, label)`` for an ``--encoder`` value: the name of a stored
    feature set (e.g. imported from TRIDENT), or an encoder spec at the given tiling."""
    from catalog.slide_features import feature_sets

    have = feature_sets(cat)
    if spec in have:
        return spec, spec
    enc = parse_encoder(spec)
    return feature_set_name(enc, mpp, tile_px), enc.label


def grid_tiles(
    width: int, height: int, slide_mpp: float, mpp: float, tile_px: int, mask: Any, min_tissue: float
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Top-left corners (level-0 px, ``(n, 2)``) of the non-overlapping grid tiles that lie
    inside the slide with at least ``min_tissue`` of their area on the mask, their tissue
    fractions, and the tile side in level-0 px."""
    side = tile_px * mpp / slide_mpp
    nx = math.floor(width / side + 1e-9)
    ny = math.floor(height / side + 1e-9)
    if nx < 1 or ny < 1:
        return np.zeros((0, 2)), np.zeros(0), side
    gx, gy = np.meshgrid(np.arange(nx) * side, np.arange(ny) * side)
    tl = np.stack([gx.ravel(), gy.ravel()], axis=1)
    boxes = np.concatenate([tl, np.full((len(tl), 2), side)], axis=1)
    frac = np.asarray(mask.fractions(boxes), dtype=np.float64)
    keep = frac >= max(min_tissue, 1e-9)
    return tl[keep], frac[keep], side


def slide_tissue_mask(cat: Any, manifest: dict[str, Any]) -> Any:
    """The slide's tissue mask, read from the catalog or computed and kept there."""
    from hestkit.tissue import TissueMask, segment_tissue

    d = cat.path / "slide-tissue"
    p = d / f"{manifest['slide_id']}--{manifest['fingerprint']}.geojson"
    if p.exists():
        return TissueMask.from_geojson(p)
    mpp = float(manifest["mpp"])
    area_um2 = float(manifest["width"]) * float(manifest["height"]) * mpp * mpp
    # the segmenter's defaults (20,000 um2 pieces, 4,000 um2 holes) suit whole slides; on
    # small images (crops, TMA cores) they would drop every piece, so they scale down
    mask = segment_tissue(
        manifest["path"], pixel_size_um=mpp, min_area_um2=min(20_000.0, 0.002 * area_um2), min_hole_um2=min(4_000.0, 0.0004 * area_um2)
    )
    d.mkdir(parents=True, exist_ok=True)
    mask.write_geojson(p)
    return mask


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _read_block(path: str, plan: Any, block_index: int, centres: NDArray[np.float64], spec: Any) -> tuple[int, NDArray[np.uint8]]:
    """A dask task: decode one block of the slide and cut its tiles (one open slide per
    worker thread)."""
    from hestkit.patches import cut_block
    from hestkit.slide import thread_slide

    block = plan.blocks[block_index]
    return block_index, cut_block(thread_slide(path), plan, block, centres, spec)


def _client(workers: int | None, scheduler: str | None) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s", set_as_default=False), None
        except OSError as exc:
            raise SealError(f"cannot reach the dask scheduler at {scheduler!r} ({exc}); check the address (tcp://HOST:8786)") from exc
    import os

    n = workers or min(os.cpu_count() or 1, 8)
    cluster = LocalCluster(n_workers=1, threads_per_worker=n, processes=False, dashboard_address=None, silence_logs=40)
    return Client(cluster, set_as_default=False), cluster


def _tile_blocks(client: Any, path: str, plan: Any, centres: NDArray[np.float64], spec: Any, in_flight: int) -> Iterator[tuple[int, NDArray[np.uint8]]]:
    """Blocks of tiles as they are decoded, at most ``in_flight`` pending at once."""
    from distributed import as_completed

    n = len(plan.blocks)
    nxt = 0
    futs: list[Any] = []
    while nxt < n and len(futs) < in_flight:
        futs.append(client.submit(_read_block, path, plan, nxt, centres, spec, pure=False))
        nxt += 1
    ac = as_completed(futs, loop=client.loop)
    for fut in ac:
        bi, tiles = fut.result()
        fut.release()
        if nxt < n:
            ac.add(client.submit(_read_block, path, plan, nxt, centres, spec, pure=False))
            nxt += 1
        yield bi, tiles


def _tiles_store_path(cat: Any, cfg: SlideEmbedConfig, manifest: dict[str, Any]) -> Path:
    return cat.path / "slide-tiles" / tiling_name(cfg.mpp, cfg.tile_px) / f"{manifest['slide_id']}--{manifest['fingerprint']}.zarr"


def _kept_slots(path: Path, coords: NDArray[np.int64]) -> NDArray[np.int64] | None:
    """The patch row of each tile (top-left ``coords``) in kept tiles at ``path``, or None
    when there are none or they miss some of these tiles."""
    if not (path / "coords").exists():
        return None
    from catalog._store import zarr_open_array

    kept = np.asarray(zarr_open_array(str(path / "coords"))[:], dtype=np.int64)
    slots = np.asarray(zarr_open_array(str(path / "slot"))[:], dtype=np.int64)
    where = {(int(x), int(y)): int(s) for (x, y), s in zip(kept, slots, strict=True)}
    got = [where.get((int(x), int(y))) for x, y in coords]
    if any(g is None for g in got):
        return None
    return np.asarray(got, dtype=np.int64)


def _open_tile_array(
    path: Path, n_slots: int, cfg: SlideEmbedConfig, slots: NDArray[np.int64], coords: NDArray[np.int64], attrs: dict[str, Any]
) -> None:
    """Create the kept-tiles group: ``patches`` as the catalog's patch arrays (JPEG chunks,
    shards of 64), ``coords`` (top-left level-0 px of each tile) and ``slot`` (tile ->
    patch row)."""
    import catalog._jpeg  # noqa: F401 - registers the codec
    from catalog._jpeg import JpegCodec
    from catalog._store import PATCHES_ENCODING, PATCHES_VERSION, zarr_open_group

    g = zarr_open_group(str(path), mode="w")
    g.attrs.update({"encoding-type": PATCHES_ENCODING, "encoding-version": PATCHES_VERSION, **attrs})
    p = cfg.tile_px
    g.create_array(
        "patches",
        shape=(max(n_slots, 1), p, p, 3),
        chunks=(1, p, p, 3),
        shards=(_SHARD, p, p, 3),
        dtype="uint8",
        serializer=JpegCodec(quality=cfg.jpeg_quality),
        compressors=None,
        fill_value=0,
        dimension_names=["pair", "y", "x", "c"],
    )
    sa = g.create_array("slot", shape=(len(slots),), chunks=(max(len(slots), 1),), dtype="int64", dimension_names=["tile"])
    sa[:] = np.asarray(slots, dtype=np.int64)
    ca = g.create_array("coords", shape=(len(coords), 2), chunks=(max(len(coords), 1), 2), dtype="int64", dimension_names=["tile", "xy"])
    ca[:] = np.asarray(coords, dtype=np.int64)


def _embed_one(
    cat: Any,
    manifest: dict[str, Any],
    cfg: SlideEmbedConfig,
    model: Any,
    transform: Any,
    device: Any,
    client: Any,
    store: Any,
    report: SlideEmbedReport,
) -> None:
    import torch

    from hestkit.patches import PairSpec, plan_patches
    from hestkit.slide import open_slide

    sid = manifest["slide_id"]
    t0 = time.perf_counter()
    slide_mpp = float(manifest["mpp"])
    mask = slide_tissue_mask(cat, manifest)
    tl, frac, side = grid_tiles(int(manifest["width"]), int(manifest["height"]), slide_mpp, cfg.mpp, cfg.tile_px, mask, cfg.min_tissue)
    spec = PairSpec(cfg.tile_px, cfg.mpp, cfg.jpeg_quality)
    centres = tl + side / 2.0
    n = len(tl)
    feats: NDArray[np.float32] | None = None
    tiles_path = _tiles_store_path(cat, cfg, manifest)
    slot_of = _kept_slots(tiles_path, np.round(tl).astype(np.int64)) if n > 0 else None

    def run_batch(rows: NDArray[np.int64], tiles: NDArray[np.uint8]) -> None:
        nonlocal feats
        for s in range(0, len(rows), cfg.batch_size):
            x = torch.stack([transform(t) for t in tiles[s : s + cfg.batch_size]]).to(device)
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False):
                out = model(x).float().cpu().numpy()
            if feats is None:
                feats = np.zeros((n, out.shape[1]), np.float32)
            feats[rows[s : s + cfg.batch_size]] = out

    if slot_of is not None:
        from catalog._shards import PatchReader

        reader = PatchReader(str(tiles_path / "patches"))
        for s in range(0, n, cfg.batch_size):
            rows = np.arange(s, min(n, s + cfg.batch_size))
            run_batch(rows, np.stack([reader[int(slot_of[r])] for r in rows]))
        report.tiles_from_store.append(sid)
    elif n > 0:
        if tiles_path.exists():
            log.info("%s: kept tiles of another grid (other min_tissue); decoding the slide", sid)
        with open_slide(manifest["path"]) as slide:
            plan = plan_patches(slide, centres, slide_mpp, spec, block_px=cfg.block_px, slot_align=_SHARD if cfg.keep_tiles else 1)
        if len(plan.kept) != n:
            raise SealError(f"{manifest['path']}: {n - len(plan.kept)} grid tile(s) fall outside the slide; this is a bug, please report it")
        tmp_tiles: Path | None = None
        if cfg.keep_tiles:
            import uuid

            tmp_tiles = tiles_path.with_name(f".{tiles_path.name}.{uuid.uuid4().hex}.tmp")
            tmp_tiles.parent.mkdir(parents=True, exist_ok=True)
            _open_tile_array(
                tmp_tiles,
                plan.n_slots,
                cfg,
                plan.slots,
                np.round(tl).astype(np.int64),
                {
                    "slide_id": sid,
                    "slide_fingerprint": manifest["fingerprint"],
                    "patch_size_px": cfg.tile_px,
                    "pixel_size_um": cfg.mpp,
                    "order": "the tile with top-left coords[i] (level-0 px) is patches[slot[i]]",
                },
            )
        in_flight = 2 * max(cfg.workers or 2, 1)
        for bi, tiles in _tile_blocks(client, manifest["path"], plan, centres, spec, in_flight):
            block = plan.blocks[bi]
            rows = plan.kept[block.spots]
            if tmp_tiles is not None:
                from catalog._shards import write_patches

                write_patches(str(tmp_tiles / "patches"), block.slot_start, tiles)  # whole shards per block
            run_batch(rows, tiles)
        if tmp_tiles is not None:
            import os
            import shutil

            if tiles_path.exists():  # kept tiles of another grid: replaced by this one
                shutil.rmtree(tiles_path)
            os.replace(tmp_tiles, tiles_path)
    if feats is None:
        feats = np.zeros((0, 0), np.float32)
    coords = np.round(tl).astype(np.int64)
    from catalog.slide_features import magnification

    store.put(
        sid,
        feats,
        coords,
        {
            "patch_size": cfg.tile_px,
            "patch_size_level0": round(side),
            "level0_magnification": magnification(slide_mpp),
            "target_magnification": magnification(cfg.mpp),
            "overlap": 0,
        },
        {
            "slide_fingerprint": manifest["fingerprint"],
            "mpp": cfg.mpp,
            "tile_px": cfg.tile_px,
            "slide_mpp": slide_mpp,
            "min_tissue": cfg.min_tissue,
            "tile_side_level0": float(side),
            "source": "seal slide-embed",
        },
        frac.astype(np.float32),
    )
    report.embedded.append(sid)
    report.n_tiles[sid] = n
    report.seconds[sid] = time.perf_counter() - t0
    if n == 0:
        log.warning("%s: no tile has >= %.0f%% tissue; stored an empty bag", sid, 100 * cfg.min_tissue)


def embed_slides(
    catalog: str | Path,
    encoder: str | EncoderSpec,
    cfg: SlideEmbedConfig | None = None,
    *,
    slides: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SlideEmbedReport:
    """Embed the tiles of the slide table's slides (all, or ``slides``) with ``encoder``."""
    import catalog as catalog_pkg
    from catalog.slide_features import SlideFeatureStore
    from catalog.slides import slide_manifests

    cfg = cfg or SlideEmbedConfig()
    spec = parse_encoder(encoder) if isinstance(encoder, str) else encoder
    cat = catalog_pkg.open(catalog)
    manifests = {m["slide_id"]: m for m in slide_manifests(cat.layout)}
    if not manifests:
        raise SealError(f"{cat.uri}: the slide table is empty; add slides with Catalog.add_slides (hestkit add-slides)")
    want = list(slides) if slides else sorted(manifests)
    unknown = [s for s in want if s not in manifests]
    if unknown:
        raise SealError(f"{cat.uri}: no slide(s) {', '.join(unknown)} in the slide table; see `hestkit ls {cat.uri}`")
    name = feature_set_name(spec, cfg.mpp, cfg.tile_px)
    store = SlideFeatureStore(
        cat,
        name,
        {
            "label": spec.label,
            "backbone": spec.backbone,
            "encoder_key": spec.key,
            "weights": str(spec.weights or spec.model_dir or "random init (seed 0)"),
            "mpp": cfg.mpp,
            "tile_px": cfg.tile_px,
            "min_tissue": cfg.min_tissue,
            "source": "seal slide-embed",
        },
    )
    report = SlideEmbedReport(name)
    todo = [s for s in want if not store.has(s, manifests[s]["fingerprint"], min_tissue=cfg.min_tissue)]
    report.skipped = [s for s in want if s not in todo]
    if not todo:
        return report
    from .data import PatchTransform

    device = _device(cfg.device)
    model, dcfg = spec.load(device)
    transform = PatchTransform(dcfg["input_size"], dcfg["mean"], dcfg["std"])
    client, cluster = _client(cfg.workers, cfg.scheduler)
    try:
        for k, sid in enumerate(todo):
            _embed_one(cat, manifests[sid], cfg, model, transform, device, client, store, report)
            if progress is not None:
                progress("slides", k + 1, len(todo))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return report
