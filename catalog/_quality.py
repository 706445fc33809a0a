"""What a sample's manifest records about how honest its pairs are: spots dropped by
cause, the edge rule and each edge patch's valid fraction, the source resolution and
upsampling factor, and absolute source paths (see docs/catalog-format.md)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hestkit.patches import PatchPlan
from hestkit.resolution import Resolution

__all__ = ["DROP_CAUSES", "absolute_path", "quality_fields", "valid_fractions"]

#: Causes a spot of a sample has no pair, in the manifest's ``dropped`` mapping.
DROP_CAUSES = ("outside_image", "edge", "not_in_tissue")


def absolute_path(p: str | Path) -> str:
    """A path as stored in a manifest: URIs (``scheme://...``) as given, local paths made
    absolute against the current folder (symbolic links are kept, not resolved)."""
    s = str(p)
    if "://" in s:
        return s
    return os.path.abspath(os.path.expanduser(s))


def quality_fields(plan: PatchPlan, n_not_in_tissue: int, resolution: Resolution) -> dict[str, Any]:
    """The manifest keys (format 2.1) of one sample's plan and resolution."""
    dropped = {
        "outside_image": len(plan.dropped_outside),
        "edge": len(plan.dropped_edge),
        "not_in_tissue": int(n_not_in_tissue),
    }
    vf = np.asarray(plan.valid_fraction, dtype=float)
    partial = np.flatnonzero(vf < 1.0)
    return {
        "dropped": dropped,
        "n_dropped_edge": dropped["edge"],
        "n_dropped_not_in_tissue": dropped["not_in_tissue"],
        "edge_rule": plan.edge,
        "n_edge_patches": len(partial),
        "background_rgb": list(plan.background),
        # only the patches that are not whole, keyed by patch_index (all others are 1.0)
        "patch_valid_fraction": {
            "patch_index": [int(x) for x in np.asarray(plan.slots)[partial]],
            "fraction": [round(float(x), 6) for x in vf[partial]],
        },
        "source_pixel_size_um": resolution.source_pixel_size_um,
        "upsampling_factor": round(resolution.factor, 4),
        "upsampling_allowed": resolution.allowed,
    }


def valid_fractions(manifests: Sequence[dict[str, Any]], obs: pd.DataFrame) -> np.ndarray:
    """``patch_valid_fraction`` of every row of ``obs`` (rows of ``manifests``' samples): the
    share of the pair's patch that lies on the image. 1.0 unless the manifest lists the
    row's patch as an edge patch (catalogs written before the edge rule dropped such spots,
    so their patches are all whole)."""
    out = np.ones(len(obs), dtype=np.float32)
    if not len(obs):
        return out
    partial = [m for m in manifests if (m.get("patch_valid_fraction") or {}).get("patch_index")]
    if not partial:
        return out
    col = obs["sample_id"]
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = np.asarray(col.cat.codes.to_numpy(), dtype=np.int64)
        names = [str(c) for c in col.cat.categories]
    else:
        fc, fn = pd.factorize(col)
        codes, names = np.asarray(fc, dtype=np.int64), [str(c) for c in fn]
    order = np.argsort(codes, kind="stable")  # one sort, then each sample's rows by slicing
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    where = {n: k for k, n in enumerate(names)}
    pidx = obs["patch_index"].to_numpy(dtype=np.int64)
    for m in partial:
        k = where.get(str(m["sample_id"]))
        if k is None:
            continue
        rows = order[bounds[k] : bounds[k + 1]]
        pv = m["patch_valid_fraction"]
        keys = np.asarray(pv["patch_index"], dtype=np.int64)
        vals = np.asarray(pv["fraction"], dtype=np.float32)
        srt = np.argsort(keys)
        keys, vals = keys[srt], vals[srt]
        pos = np.clip(np.searchsorted(keys, pidx[rows]), 0, len(keys) - 1)
        hit = keys[pos] == pidx[rows]
        out[rows[hit]] = vals[pos[hit]]
    return out
