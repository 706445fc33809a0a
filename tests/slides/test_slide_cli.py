"""The slide path end to end through the CLI: add-slides, slide-embed (resume, --keep-tiles),
TRIDENT h5 export/import, slide-eval with its report."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import catalog
from catalog.slide_features import SlideFeatureStore
from cli.hestkit import app as hestkit_app
from cli.seal import app as seal_app
from seal.encoders import parse_encoder
from seal.slide_embed import feature_set_name

TILING = ["--mpp", "1.0", "--tile-px", "32"]
ENC = "timm:test_resnet"


@pytest.fixture(scope="module")
def embedded(slide_cohort: tuple[Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    csv, df = slide_cohort
    cat_dir = tmp_path_factory.mktemp("slidecli") / "cat"
    runner = CliRunner()
    r = runner.invoke(hestkit_app, ["add-slides", str(csv), "--catalog", str(cat_dir)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(seal_app, ["slide-embed", str(cat_dir), "--encoder", ENC, *TILING, "--workers", "2", "--device", "cpu", "--keep-tiles"])
    assert r.exit_code == 0, r.output
    assert f"{len(df)} slide(s) embedded" in r.output
    return cat_dir, df


def test_slide_embed_stores_trident_h5_on_tissue(embedded: tuple[Path, pd.DataFrame]) -> None:
    cat_dir, df = embedded
    cat = catalog.open(cat_dir)
    name = feature_set_name(parse_encoder(ENC), 1.0, 32)
    store = SlideFeatureStore(cat, name)
    assert store.slides() == sorted(df["slide_id"])
    for sid in store.slides():
        with h5py.File(store.path(sid), "r") as f:
            feats, coords = f["features"][:], f["coords"][:]
            attrs = dict(f["coords"].attrs)
            frac = f["tissue_fraction"][:]
        assert feats.ndim == 2 and len(feats) == len(coords) > 0 and np.isfinite(feats).all()
        # TRIDENT's coords attributes; 32 px at 1 um/px on a 0.5 um/px slide = 64 level-0 px
        assert attrs["patch_size"] == 32 and attrs["patch_size_level0"] == 64
        assert attrs["target_magnification"] == 10 and attrs["level0_magnification"] == 20 and attrs["overlap"] == 0
        assert (coords % 64 == 0).all() and (coords >= 0).all() and (coords + 64 <= 1024).all()
        assert (frac >= 0.25).all()
    # tissue masks kept in the catalog, tiles kept in zarr with their slot map
    assert len(list((cat_dir / "slide-tissue").glob("*.geojson"))) == len(df)
    assert len(list((cat_dir / "slide-tiles" / "1um-32px").glob("*.zarr"))) == len(df)


def test_resume_and_reuse_of_kept_tiles(embedded: tuple[Path, pd.DataFrame]) -> None:
    cat_dir, df = embedded
    runner = CliRunner()
    r = runner.invoke(seal_app, ["slide-embed", str(cat_dir), "--encoder", ENC, *TILING, "--device", "cpu"])
    assert r.exit_code == 0 and "0 slide(s) embedded" in r.output and f"{len(df)} already stored" in r.output
    # a second encoder at the same tiling reads the kept tiles, not the slide
    from seal.slide_embed import SlideEmbedConfig, embed_slides

    sid = sorted(df["slide_id"])[0]
    rep = embed_slides(cat_dir, "timm:test_vit", SlideEmbedConfig(mpp=1.0, tile_px=32, device="cpu", workers=1), slides=[sid])
    assert rep.tiles_from_store == [sid]
    cat = catalog.open(cat_dir)
    a = SlideFeatureStore(cat, feature_set_name(parse_encoder(ENC), 1.0, 32)).get(sid)
    b = SlideFeatureStore(cat, rep.feature_set).get(sid)
    assert np.array_equal(a.coords, b.coords) and b.features.shape[0] == a.features.shape[0]
    # another --min-tissue: not "already stored"; a subset of the grid, still from the kept tiles
    rep = embed_slides(cat_dir, ENC, SlideEmbedConfig(mpp=1.0, tile_px=32, min_tissue=0.9, device="cpu", workers=1), slides=[sid])
    assert rep.embedded == [sid] and rep.tiles_from_store == [sid]
    c = SlideFeatureStore(cat, rep.feature_set).get(sid)
    assert 0 < len(c.coords) < len(a.coords) and (c.tissue_fraction >= 0.9).all()
    keep = {tuple(xy) for xy in c.coords.tolist()}
    rows = [i for i, xy in enumerate(a.coords.tolist()) if tuple(xy) in keep]
    # same tiles (here decoded from the kept JPEG tiles, first from the slide): nearly the same features
    assert np.corrcoef(c.features.ravel(), a.features[rows].ravel())[0, 1] > 0.98


def test_trident_export_import_round_trip(embedded: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    cat_dir, df = embedded
    runner = CliRunner()
    r = runner.invoke(seal_app, ["slide-export", str(cat_dir), "--encoder", ENC, *TILING, "--out", str(tmp_path / "job")])
    assert r.exit_code == 0, r.output
    name = feature_set_name(parse_encoder(ENC), 1.0, 32)
    folder = tmp_path / "job" / "10x_32px_0px_overlap" / f"features_{name}"
    assert sorted(p.stem for p in folder.glob("*.h5")) == sorted(df["slide_id"])
    r = runner.invoke(seal_app, ["slide-import", str(cat_dir), str(folder), "--name", "trident-copy"])
    assert r.exit_code == 0, r.output
    cat = catalog.open(cat_dir)
    sid = sorted(df["slide_id"])[1]
    a, b = SlideFeatureStore(cat, name).get(sid), SlideFeatureStore(cat, "trident-copy").get(sid)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.coords, b.coords)
    assert b.attrs["patch_size_level0"] == 64
    # a file of an unknown slide and a file without coords: one error, nothing imported
    bad = tmp_path / "bad"
    bad.mkdir()
    with h5py.File(bad / "not_a_slide.h5", "w") as f:
        f["features"], f["coords"] = np.zeros((2, 4), "f4"), np.zeros((2, 2), "i8")
    with h5py.File(bad / f"{sid}.h5", "w") as f:
        f["features"] = np.zeros((2, 4), "f4")
    r = runner.invoke(seal_app, ["slide-import", str(cat_dir), str(bad), "--name", "bad-set"])
    assert r.exit_code == 1 and "not_a_slide" in r.output and "expected 'features' and 'coords'" in r.output
    assert not (cat_dir / "slide-features" / "bad-set").exists()


def _model_dir(path: Path) -> Path:
    """A model directory as `seal fit` writes its merged encoder (here: test_resnet, another seed)."""
    from safetensors.torch import save_file

    from seal.models import create_backbone, data_config

    model = create_backbone("test_resnet", seed=5)
    path.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "encoder.safetensors"))
    info = {"backbone": "test_resnet", "create_kwargs": {}, "data_config": data_config(model), "dim": model.num_features}
    (path / "encoder.json").write_text(json.dumps(info))
    return path


def test_slide_eval_compares_a_frozen_and_a_tuned_encoder(embedded: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    cat_dir, df = embedded
    out = tmp_path / "eval"
    runner = CliRunner()
    tuned = _model_dir(tmp_path / "seal-model")
    r = runner.invoke(seal_app, ["slide-embed", str(cat_dir), "--encoder", str(tuned), *TILING, "--device", "cpu", "--workers", "1"])
    assert r.exit_code == 0, r.output  # reads the kept tiles
    args = ["slide-eval", str(cat_dir), "--task", "label", "--encoder", ENC, "--encoder", str(tuned), *TILING, "--folds", "3", "--max-epochs", "3",
            "--patience", "2", "--device", "cpu", "--threads", "1", "--heatmaps", "2", "--out", str(out)]
    r = runner.invoke(seal_app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert res["task"]["kind"] == "classification" and res["task"]["n_slides"] == len(df)
    assert {(row["encoder"], row["model"]) for row in res["summary"]} == {
        (e, m) for e in ("test_resnet", "seal:seal-model") for m in ("abmil", "mean")
    }
    assert "seal:seal-model" in r.output and "test_resnet" in r.output
    assert set(res["out_of_fold"][feature_set_name(parse_encoder(ENC), 1.0, 32)]["abmil"]) == set(df["slide_id"])
    assert "| encoder | model | auc | balanced_accuracy |" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 0 and len(list((out / "heatmaps").glob("*.png"))) == 4
    r = runner.invoke(seal_app, [*args[:3], "nope", *args[4:]])
    assert r.exit_code == 1 and "no label column 'nope'" in r.output
