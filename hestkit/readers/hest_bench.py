"""A HEST-Benchmark task folder (``patches/{id}.h5``, ``adata/{id}.h5ad``, ``splits/``,
``var_50genes.json``): pre-cut patches and their spots' expression.

There is no slide: the patches ARE the images. Each sample's patch file is opened as a
mosaic of its patches (:mod:`hestkit._patch_mosaic`) and every spot's centre is the
centre of its own patch there, so the catalog cuts back exactly the stored patch when
its patch size and resolution equal the patches' (HEST: 224 px at 0.5 um/px), a
downsampled copy for a coarser catalog, and refuses a field wider than a patch.

Pixel size: HEST's patch attributes (``pixel_size`` x ``downsample``) when the file has
them; otherwise the benchmark's documented 0.5 um/px for 224 px patches (112 um),
recorded as an assumption; otherwise ``--pixel-size-um`` is required. Spot positions in
um come from the attributes and ``coords`` (top-left corners in the source slide's px).
Spots of the ``.h5ad`` without a patch are not paired (counted in the warnings).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._patch_mosaic import mosaic_grid, patch_file_pixel_size, read_patch_attrs
from ..errors import Problem, ReaderError, ValidationError, fix
from ..fixes import IDS, PIXEL_SIZE_UM, SAMPLE_ID
from ..geometry import PixelSizeDecision, resolve_pixel_size
from ..sample import ReadOptions, SampleRef, SampleSource
from ._common import normalise_spots

__all__ = ["BENCH_PATCH_PX", "BENCH_PIXEL_SIZE_UM", "HestBenchReader"]

#: HEST-Benchmark's documented patches: 224 px at 0.5 um/px (112 x 112 um).
BENCH_PATCH_PX = 224
BENCH_PIXEL_SIZE_UM = 0.5


def _root_of(path: Path) -> Path | None:
    if path.is_dir() and (path / "patches").is_dir() and (path / "adata").is_dir():
        return path
    if path.is_file() and path.suffix == ".h5" and path.parent.name == "patches" and (path.parent.parent / "adata").is_dir():
        return path.parent.parent
    return None


class HestBenchReader:
    """A HEST-Benchmark task folder (all samples, or ``--ids``), or one ``patches/{id}.h5`` in it."""

    name = "hest-bench"
    description = "HEST-Benchmark task folder (patches/*.h5, adata/*.h5ad): pre-cut patches as images"

    def can_open(self, path: Path) -> bool:
        return _root_of(path) is not None

    def scan(self, path: Path, options: ReadOptions) -> list[SampleRef]:
        root = _root_of(path)
        if root is None:
            raise ReaderError(path, "is not a HEST-Benchmark task folder (needs patches/ and adata/)", "point at the task folder")
        ids = [path.stem] if path.is_file() else sorted(p.stem for p in (root / "patches").glob("*.h5"))
        if options.ids:
            unknown = [i for i in options.ids if i not in ids]
            if unknown:
                raise ReaderError(
                    root / "patches", f"no patches/{{id}}.h5 for id(s) {', '.join(unknown)}", fix(f"choose {IDS} among {ids[:8]}", IDS)
                )
            ids = [i for i in ids if i in options.ids]
        if not ids:
            raise ReaderError(root / "patches", "holds no .h5 patch files", "download the task's patches/ folder")
        if options.sample_id and len(ids) > 1:
            raise ReaderError(
                root, f"one sample id ({SAMPLE_ID}) given but {len(ids)} samples were found", fix(f"drop {SAMPLE_ID} or pass one id ({IDS})", SAMPLE_ID, IDS)
            )
        return [SampleRef(self.name, options.sample_id or i, root, options, {"bench_id": i}) for i in ids]

    def load(self, ref: SampleRef) -> SampleSource:
        import anndata as ad
        import h5py

        root, opts = ref.path, ref.options
        bid = str(ref.extra["bench_id"])
        h5 = root / "patches" / f"{bid}.h5"
        h5ad = root / "adata" / f"{bid}.h5ad"
        problems: list[Problem] = []
        barcodes: list[str] = []
        coords: np.ndarray | None = None
        attrs: dict[str, Any] = {}
        patch_px = 0
        try:
            with h5py.File(h5, "r") as f:
                missing = [k for k in ("img", "barcode") if k not in f]
                if missing:
                    problems.append(Problem(h5, f"lacks dataset(s) {missing}; a HEST patch file has img, barcode and coords"))
                else:
                    patch_px = int(f["img"].shape[1])
                    raw = np.asarray(f["barcode"][:])
                    barcodes = [b.decode() if isinstance(b, bytes) else str(b) for b in raw.reshape(len(raw), -1)[:, 0]]
                    if len(barcodes) != f["img"].shape[0]:
                        problems.append(Problem(h5, f"{len(barcodes)} barcodes for {f['img'].shape[0]} patches; expected one each"))
                    coords = np.asarray(f["coords"][:], dtype=float) if "coords" in f else None
                    attrs = read_patch_attrs(f)
        except OSError as exc:
            problems.append(Problem(h5, f"cannot be read as HDF5 ({exc}); re-download it"))
        adata = None
        try:
            adata = ad.read_h5ad(h5ad)
        except Exception as exc:  # noqa: BLE001 - h5py/anndata raise many types
            problems.append(Problem(h5ad, f"cannot be read as AnnData ({exc}); re-download it"))
        rows = np.zeros(0, dtype=np.int64)
        if adata is not None and barcodes:
            names = adata.obs_names.astype(str)
            rows = names.get_indexer(barcodes)
            if (rows < 0).any():
                miss = [b for b, r in zip(barcodes, rows, strict=True) if r < 0]
                problems.append(Problem(h5ad, f"has no row for {len(miss)} patch barcode(s) (e.g. {miss[:3]}); pair it with its own patches"))
            if len(set(barcodes)) != len(barcodes):
                problems.append(Problem(h5, "repeats barcodes; expected one patch per spot"))
        if problems or adata is None or not barcodes:
            raise ValidationError(f"HEST-Benchmark sample {bid!r} under {root}", problems)

        counts = sp.csr_matrix(adata.X[rows])
        if counts.nnz and not np.allclose(counts.data, np.round(counts.data)):
            raise ValidationError(
                f"HEST-Benchmark sample {bid!r}", [Problem(h5ad, "X holds non-integer values; hestkit stores raw counts")]
            )
        decision = self._pixel_size(bid, h5, patch_px, attrs, opts)
        grid = mosaic_grid(len(barcodes), patch_px)
        centres = grid.centres_px()
        obs = adata.obs.iloc[rows]
        spots = pd.DataFrame({"barcode": barcodes, "x_px": centres[:, 0], "y_px": centres[:, 1]})
        for c in ("array_row", "array_col"):
            if c in obs:
                spots[c] = obs[c].to_numpy()
        src_px = attrs.get("pixel_size")
        if coords is not None and src_px is not None and math.isfinite(float(src_px)):
            # coords: top-left corners in the source slide's level-0 px; the patch spans patch_px * downsample of them
            span = patch_px * float(np.asarray(attrs.get("downsample", 1.0)).ravel()[0])
            spots["x_um"] = (coords[:, 0] + span / 2.0) * float(src_px)
            spots["y_um"] = (coords[:, 1] + span / 2.0) * float(src_px)
        warn = [decision.warning] if decision.warning else []
        n_without = adata.n_obs - len(barcodes)
        if n_without > 0:
            warn.append(f"{bid}: {n_without} of {adata.n_obs} spots of {h5ad.name} have no patch in {h5.name}; they are not paired")
        metadata: dict[str, Any] = {"hest_bench_task": root.name, "hest_bench_id": bid, "image_kind": "pre-cut patches (mosaic)"}
        for key in ("organ", "species", "patient"):
            given = getattr(opts, key)
            if given is not None:
                metadata[key] = given
        return SampleSource(
            sample_id=ref.sample_id,
            technology="unknown",
            counts=counts,
            genes=[str(g) for g in adata.var_names],
            gene_ids=[str(g) for g in adata.var["gene_ids"]] if "gene_ids" in adata.var else [str(g) for g in adata.var_names],
            spots=normalise_spots(spots),
            image_path=h5,
            pixel_size=decision,
            spot_diameter_um=float("nan"),
            spot_shape="circle",
            metadata=metadata,
            source_paths=[str(h5), str(h5ad)],
            warnings=warn,
        )

    @staticmethod
    def _pixel_size(bid: str, h5: Path, patch_px: int, attrs: dict[str, Any], opts: ReadOptions) -> PixelSizeDecision:
        from_attrs = patch_file_pixel_size(attrs)
        documented = BENCH_PIXEL_SIZE_UM if patch_px == BENCH_PATCH_PX else None
        if from_attrs is None and documented is None and opts.pixel_size_um is None:
            raise ReaderError(
                h5,
                f"has {patch_px} px patches and no pixel_size/downsample attributes, so their resolution is unknown",
                fix(f"pass {PIXEL_SIZE_UM} (um per patch pixel)", PIXEL_SIZE_UM),
            )
        d = resolve_pixel_size(
            embedded=from_attrs, estimated=None, override=opts.pixel_size_um, metadata=documented, subject=f"{bid} ({h5.name})"
        )
        if d.source == "metadata":
            return PixelSizeDecision(
                d.value,
                d.source,
                d.embedded,
                d.estimated,
                f"{bid}: {h5.name} records no resolution; assumed HEST-Benchmark's documented {BENCH_PIXEL_SIZE_UM} um/px "
                f"for {BENCH_PATCH_PX} px patches (112 um). Pass {PIXEL_SIZE_UM} to override.",
            )
        return d
