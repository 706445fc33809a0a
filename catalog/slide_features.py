"""Slide features: the tile features of each slide of the slide table, per feature set (one
encoder at one tiling), stored in TRIDENT's h5 layout so MIL code written for TRIDENT or
CLAM reads them as they are.

``CATALOG/slide-features/{set}/meta.json`` describes the set (encoder, weights' identity,
tiling); ``{set}/{slide_id}.h5`` holds one slide:

- ``features``: ``(n_tiles, dim)`` float32; attributes ``name``, ``savetodir`` (as TRIDENT)
- ``coords``: ``(n_tiles, 2)`` int64, the TOP-LEFT corner ``(x, y)`` of each tile in level-0
  pixels; attributes ``patch_size`` (tile side in px at the target resolution),
  ``patch_size_level0`` (its side in level-0 px), ``level0_magnification``,
  ``target_magnification`` (``10 / mpp`` rounded, TRIDENT's convention), ``overlap`` (0),
  ``name``, ``savetodir``
- ``tissue_fraction``: ``(n_tiles,)`` float32, the share of each tile on the tissue mask
  (hestkit's addition; absent in imported files)
- root attributes: ``encoding-type`` ``hestkit-slide-features``, ``encoding-version``,
  ``slide_id``, ``slide_fingerprint`` (the slide manifest's; a file whose fingerprint no
  longer matches is stale and recomputed), ``feature_set``, ``mpp``, ``tile_px``,
  ``slide_mpp``, ``min_tissue``, ``source`` (``seal slide-embed`` or ``trident import``).

Each file is written to a temporary name and renamed, so a slide's features are whole or
absent; an interrupted ``seal slide-embed`` resumes with the slides not yet written.
Local catalogs only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hestkit.errors import DataError, Opt, Problem, ValidationError, fix
from hestkit.fixes import OVERWRITE

from ._store import atomic_write_json
from .catalog import Catalog
from .errors import CatalogError, QueryError

__all__ = [
    "SLIDE_FEATURES_ENCODING",
    "SLIDE_FEATURES_VERSION",
    "SlideFeatureStore",
    "SlideFeatures",
    "export_trident",
    "feature_sets",
    "import_trident",
    "magnification",
]

SLIDE_FEATURES_ENCODING, SLIDE_FEATURES_VERSION = "hestkit-slide-features", "1.0.0"
_SET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,159}$")

_NAME = Opt("name", "NAME")


def magnification(mpp: float) -> int:
    """TRIDENT's objective magnification of a pixel size: 10 / mpp (0.5 um/px = 20x), rounded."""
    return max(1, round(10.0 / mpp))


@dataclass(frozen=True)
class SlideFeatures:
    """One slide's tile features: ``features (n, d)``, top-left ``coords (n, 2)`` in level-0
    px, the TRIDENT ``coords`` attributes, and the tiles' tissue fraction when known."""

    slide_id: str
    features: NDArray[np.float32]
    coords: NDArray[np.int64]
    attrs: dict[str, Any]
    tissue_fraction: NDArray[np.float32] | None = None

    @property
    def patch_size_level0(self) -> float:
        return float(self.attrs.get("patch_size_level0", 0))


def _root(cat: Catalog) -> Path:
    if cat.remote:
        raise CatalogError(
            f"{cat.uri}: slide features are stored in local catalogs only; use a local catalog folder for slide-level work"
        )
    return cat.path / "slide-features"


def feature_sets(cat: Catalog) -> list[str]:
    """Names of the feature sets stored in the catalog."""
    if cat.remote:
        return []
    d = cat.path / "slide-features"
    return sorted(p.name for p in d.iterdir() if (p / "meta.json").exists()) if d.exists() else []


def _attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


class SlideFeatureStore:
    """The slides' features of one feature set ``name`` in a catalog."""

    def __init__(self, cat: Catalog, name: str, meta: dict[str, Any] | None = None) -> None:
        if not _SET.match(name):
            raise QueryError(f"feature set name {name!r} must be 1-160 letters, digits, '.', '_' or '-'")
        self.cat = cat
        self.name = name
        self.dir = _root(cat) / name
        if meta is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            mpath = self.dir / "meta.json"
            if not mpath.exists():
                atomic_write_json(mpath, {"encoding-type": SLIDE_FEATURES_ENCODING, "encoding-version": SLIDE_FEATURES_VERSION, **meta})
        elif not (self.dir / "meta.json").exists():
            have = feature_sets(cat)
            raise QueryError(
                f"{cat.uri}: no slide feature set {name!r} (have: {', '.join(have) or 'none'}); "
                "compute one with `seal slide-embed` or import TRIDENT features with `seal slide-import`"
            )

    @property
    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads((self.dir / "meta.json").read_text())
        return out

    def path(self, slide_id: str) -> Path:
        return self.dir / f"{slide_id}.h5"

    def has(self, slide_id: str, fingerprint: str | None = None, **attrs: Any) -> bool:
        """True when the slide's features are stored (and, given ``fingerprint`` and other
        root attributes such as ``min_tissue``, made from that slide file with those values)."""
        import h5py

        p = self.path(slide_id)
        if not p.exists():
            return False
        want = dict(attrs)
        if fingerprint is not None:
            want["slide_fingerprint"] = fingerprint
        if not want:
            return True
        with h5py.File(p, "r") as f:
            return all(_attr(f.attrs.get(k)) == v for k, v in want.items())

    def slides(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted(p.stem for p in self.dir.glob("*.h5") if not p.name.startswith("."))

    def n_tiles(self, slide_id: str) -> int:
        import h5py

        with h5py.File(self.path(slide_id), "r") as f:
            return int(f["features"].shape[0])

    def features(self, slide_id: str) -> NDArray[np.float32]:
        """Only the ``(n, d)`` features of a slide (what MIL training reads per step)."""
        import h5py

        p = self.path(slide_id)
        if not p.exists():
            raise QueryError(f"{p}: no features of slide {slide_id!r} in set {self.name!r}; run `seal slide-embed` for it")
        with h5py.File(p, "r") as f:
            return np.asarray(f["features"][:], dtype=np.float32)

    def get(self, slide_id: str) -> SlideFeatures:
        import h5py

        p = self.path(slide_id)
        if not p.exists():
            raise QueryError(f"{p}: no features of slide {slide_id!r} in set {self.name!r}; run `seal slide-embed` for it")
        with h5py.File(p, "r") as f:
            feats = np.asarray(f["features"][:], dtype=np.float32)
            coords = np.asarray(f["coords"][:], dtype=np.int64)
            attrs = {k: _attr(v) for k, v in f["coords"].attrs.items()}
            tf = np.asarray(f["tissue_fraction"][:], dtype=np.float32) if "tissue_fraction" in f else None
        return SlideFeatures(slide_id, feats, coords, attrs, tf)

    def put(
        self,
        slide_id: str,
        features: NDArray[np.float32],
        coords: NDArray[np.int64],
        coords_attrs: dict[str, Any],
        root_attrs: dict[str, Any],
        tissue_fraction: NDArray[np.float32] | None = None,
    ) -> Path:
        """Write one slide's file atomically (temporary name, then rename)."""
        import h5py

        feats = np.asarray(features, dtype=np.float32)
        xy = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        if feats.ndim != 2 or len(feats) != len(xy):
            raise DataError(f"features {feats.shape} and coords {xy.shape} disagree")
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.path(slide_id)
        tmp = p.with_name(f".{p.stem}.{uuid.uuid4().hex}.tmp.h5")
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs.update(
                    {
                        "encoding-type": SLIDE_FEATURES_ENCODING,
                        "encoding-version": SLIDE_FEATURES_VERSION,
                        "slide_id": slide_id,
                        "feature_set": self.name,
                        **{k: v for k, v in root_attrs.items() if v is not None},
                    }
                )
                d = f.create_dataset("features", data=feats, chunks=(max(1, min(len(feats), 1024)), max(1, feats.shape[1])) if len(feats) else None)
                d.attrs.update({"name": slide_id, "savetodir": str(self.dir)})
                c = f.create_dataset("coords", data=xy)
                c.attrs.update({**coords_attrs, "name": slide_id, "savetodir": str(self.dir)})
                if tissue_fraction is not None:
                    f.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, dtype=np.float32))
            os.replace(tmp, p)
        finally:
            if tmp.exists():
                tmp.unlink()
        return p


def export_trident(cat: Catalog, name: str, out_dir: str | Path, slides: Sequence[str] | None = None) -> Path:
    """Copy a feature set to TRIDENT's folder layout:
    ``OUT/{mag}x_{patch_size}px_0px_overlap/features_{name}/{slide_id}.h5``. Returns that folder."""
    store = SlideFeatureStore(cat, name)
    meta = store.meta
    have = store.slides()
    want = list(slides) if slides else have
    missing = [s for s in want if s not in have]
    if missing:
        raise QueryError(f"{store.dir}: no features for slide(s) {', '.join(missing)}; run `seal slide-embed` for them first")
    tile = int(meta.get("tile_px", 0))
    mpp = float(meta.get("mpp", 0.5))
    if not tile and want:
        tile = int(store.get(want[0]).attrs.get("patch_size", 0))
    dest = Path(out_dir) / f"{magnification(mpp)}x_{tile}px_0px_overlap" / f"features_{name}"
    dest.mkdir(parents=True, exist_ok=True)
    for s in want:
        tmp = dest / f".{s}.{uuid.uuid4().hex}.tmp"
        shutil.copyfile(store.path(s), tmp)
        os.replace(tmp, dest / f"{s}.h5")
    return dest


def import_trident(
    cat: Catalog, folder: str | Path, name: str, *, overwrite: bool = False, encoder: str | None = None
) -> list[str]:
    """Import a TRIDENT feature folder (``{slide}.h5`` with ``features`` and ``coords``) as
    feature set ``name``. File stems must be slide ids of the slide table. Every file is
    checked first; any problem raises one :class:`ValidationError` and nothing is written."""
    import h5py

    from .slides import slide_manifests

    src = Path(folder)
    if not src.is_dir():
        raise ValidationError(f"{src}", [Problem(src, "not a folder; give TRIDENT's features_{encoder}/ folder of .h5 files")])
    files = sorted(p for p in src.glob("*.h5") if not p.name.startswith("."))
    known = {m["slide_id"]: m for m in slide_manifests(cat.layout)}
    problems: list[Problem] = []
    if not files:
        problems.append(Problem(src, "holds no .h5 files; give TRIDENT's features_{encoder}/ folder"))
    loaded: list[tuple[str, NDArray[np.float32], NDArray[np.int64], dict[str, Any]]] = []
    dims: set[int] = set()
    for p in files:
        sid = p.stem
        if sid not in known:
            problems.append(
                Problem(p, f"slide {sid!r} is not in the slide table of {cat.uri}; add it with `hestkit add-slides` first (file stem = slide_id)")
            )
            continue
        try:
            with h5py.File(p, "r") as f:
                if "features" not in f or "coords" not in f:
                    problems.append(Problem(p, f"has datasets {sorted(f.keys())}, expected 'features' and 'coords' (TRIDENT's patch features)"))
                    continue
                feats = np.asarray(f["features"][:], dtype=np.float32)
                coords = np.asarray(f["coords"][:])
                attrs = {k: _attr(v) for k, v in f["coords"].attrs.items()}
        except OSError as exc:
            problems.append(Problem(p, f"cannot be read as HDF5 ({exc}); re-copy the file"))
            continue
        if feats.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats):
            problems.append(
                Problem(p, f"features {feats.shape} and coords {coords.shape} do not match; expected (n, dim) and (n, 2) (slide encoder outputs are not tile features)")
            )
            continue
        if not np.isfinite(feats).all():
            problems.append(Problem(p, "features contain NaN or infinite values; re-extract this slide"))
            continue
        dims.add(int(feats.shape[1]))
        loaded.append((sid, feats, coords.astype(np.int64), attrs))
    if len(dims) > 1:
        problems.append(Problem(src, f"files have different feature sizes {sorted(dims)}; import one encoder's folder at a time"))
    if not overwrite and (_root(cat) / name / "meta.json").exists():
        problems.append(
            Problem(
                src,
                f"feature set {name!r} already exists in {cat.uri}",
                fix(f"choose another name ({_NAME}) or pass {OVERWRITE}", _NAME, OVERWRITE),
            )
        )
    if problems:
        raise ValidationError(f"{src}: nothing was imported into {cat.uri}", problems)
    first = loaded[0][3]
    psl0 = first.get("patch_size_level0")
    tile = first.get("patch_size")
    mag = first.get("target_magnification")
    store = SlideFeatureStore(
        cat,
        name,
        {
            "label": encoder or name,
            "source": "trident import",
            "source_folder": str(src.resolve()),
            "tile_px": None if tile is None else int(tile),
            "mpp": None if mag in (None, 0) else 10.0 / float(mag),
            "dim": int(next(iter(dims))),
        },
    )
    for sid, feats, coords, attrs in loaded:
        m = known[sid]
        store.put(
            sid,
            feats,
            coords,
            attrs,
            {
                "slide_fingerprint": m["fingerprint"],
                "slide_mpp": m["mpp"],
                "source": "trident import",
                "patch_size_level0": psl0,
            },
        )
    return [s for s, *_ in loaded]
