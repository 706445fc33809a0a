"""Issue 17 §3: blocks that differ as patients do, and fine-tuning that earns its place there."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import catalog
from hestkit.sample import ReadOptions
from hestkit.synthetic._field import block_variation, make_field
from hestkit.synthetic.volume import SyntheticVolumeCohort, make_volume
from seal.evaluate import pearson_per_gene
from seal.vortex import finetune, load_model
from seal.vortex.config import FINETUNE_DEFAULTS, TrainConfig, finetune_config
from seal.vortex.data import spatial_holdout
from seal.vortex.train import pair_spec, predict_pairs, volume_view


def _log_norm(mu: np.ndarray) -> np.ndarray:
    tot = mu.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(mu, tot, out=np.zeros_like(mu), where=tot > 0) * 1e4)


def test_block_variation_changes_rule_and_stain_only_when_asked() -> None:
    ext = (40.0, 400.0, 400.0)
    base = np.random.default_rng(1).lognormal(1.0, 0.5, size=12)
    f = make_field(ext, base, np.random.default_rng(5), 5)
    pts = np.random.default_rng(0).uniform([0, 0, 0], ext, size=(800, 3))
    pts = pts[f.in_tissue(pts)]
    mix, gain, stain = block_variation(12, 0.0, 0.0, 5)
    assert mix is None and np.all(gain == 1.0) and stain == (1.0, 0.0, 1.0)
    mix, gain, stain = block_variation(12, 0.8, 0.5, 5)
    assert mix is not None and np.allclose(mix.sum(axis=1), 1.0)
    m2, g2, s2 = block_variation(12, 0.8, 0.5, 5)  # seeded
    other = block_variation(12, 0.8, 0.5, 6)[0]
    assert m2 is not None and other is not None
    assert np.array_equal(mix, m2) and np.array_equal(gain, g2) and stain == s2
    assert not np.array_equal(mix, other)  # another block, another rule
    shifted = dataclasses.replace(f, gene_mix=mix, gene_base=f.gene_base * gain, stain=stain)
    r = np.nanmean(pearson_per_gene(_log_norm(f.true_expression(pts)), _log_norm(shifted.true_expression(pts))))
    assert r < 0.8  # the rule really changed
    assert not np.array_equal(f.render(pts, "microct"), shifted.render(pts, "microct"))  # and the stain
    same_stain = dataclasses.replace(f, gene_mix=mix)
    assert np.array_equal(f.render(pts, "microct"), same_stain.render(pts, "microct"))  # morphology unchanged
    with pytest.raises(ValueError, match="rule_shift must be in"):
        block_variation(12, 1.5, 0.0, 5)


def test_spatial_holdout_takes_whole_blocks() -> None:
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"sample_id": "s0", "y_um": rng.uniform(0, 1000, 120), "x_um": rng.uniform(0, 1000, 120)})
    tr, va = spatial_holdout(obs, 0.2, 200.0, seed=1)
    assert len(tr) + len(va) == 120 and not set(tr) & set(va) and 24 <= len(va) < 60
    blk = lambda i: (int(obs.y_um[i] // 200), int(obs.x_um[i] // 200))  # noqa: E731
    assert not {blk(i) for i in va} & {blk(i) for i in tr}  # no block on both sides
    assert np.array_equal(spatial_holdout(obs, 0.2, 200.0, seed=1)[1], va)
    assert len(spatial_holdout(obs, 0.0, 200.0, seed=1)[1]) == 0


@pytest.fixture(scope="module")
def shifted_target(vortex_cohort: tuple[SyntheticVolumeCohort, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """A fourth block of the test cohort (same genes) whose expression rule and stain are its own."""
    coh, _ = vortex_cohort
    root = tmp_path_factory.mktemp("shifted")
    v = make_volume(
        root / "raw",
        volume_id="volx",
        seed=3 * 1000 + 7,
        shape_zyx=(20, 250, 250),  # 1000 um: ~70 spots per section, as one Visium section of a small block
        voxel_size_um=(4.0, 4.0, 4.0),
        n_genes=24,
        section_pixel_size_um=2.0,
        gene_seed=1234 + 3,
        rule_shift=0.8,
        stain_shift=0.5,
    )
    assert v.genes == coh.genes
    cat = catalog.create(root / "cat")
    cat.ingest_volume(v.path, v.volume_id, modality=v.modality, organ=v.organ, patient=v.patient)
    for s in v.sections:
        opts = ReadOptions(sample_id=s.sample_id, organ=v.organ, patient=v.patient, species="Homo sapiens")
        assert not cat.ingest([s.path], options=opts, workers=1).failed
        cat.link_section(s.sample_id, v.volume_id, s.z_um, affine=s.affine_path)
    return v, root / "cat"


def test_finetuning_recovers_a_shifted_rule(shifted_target: tuple[object, Path], pretrained_dir: Path, tmp_path: Path) -> None:
    vol, cat_path = shifted_target
    pre = load_model(pretrained_dir)
    cfg = finetune_config(pre.train_cfg)
    assert cfg.epochs == FINETUNE_DEFAULTS["epochs"] and cfg.early_stop_fraction > 0 and cfg.lr == pre.train_cfg.lr
    ft_dir = finetune(cat_path, pretrained_dir, "volx", tmp_path / "ft", cfg=cfg, sections=["volx_s0"], progress=False)
    meta = json.loads((ft_dir / "config.json").read_text())
    assert meta["early_stop_spots"] >= 2 and meta["train"]["early_stop_fraction"] == cfg.early_stop_fraction
    log = [json.loads(x) for x in (ft_dir / "train_log.jsonl").read_text().splitlines()]
    ep = [r for r in log if "loss" not in r]
    assert all("val_pearson" in r and "best_epoch" in r for r in ep) and not (ft_dir / "best_state.pt").exists()
    ft = load_model(ft_dir)
    cat = catalog.open(cat_path)
    spec = pair_spec(pre.model_cfg, pre.size_px)
    genes = list(pre.prep.genes)
    col = {g.upper(): i for i, g in enumerate(vol.genes)}  # type: ignore[attr-defined]
    r: dict[str, list[float]] = {"pretrained": [], "finetuned": []}
    for sec in ("volx_s1", "volx_s2"):  # held-out depths (40 and 60 um)
        view = volume_view(cat, spec, volumes=["volx"], sections=[sec])
        truth = _log_norm(vol.true_expression(view.obs[["z_um", "y_um", "x_um"]].to_numpy(dtype=float)))[:, [col[g] for g in genes]]  # type: ignore[attr-defined]
        for name, lm in (("pretrained", pre), ("finetuned", ft)):
            pred = predict_pairs(lm.model, view, lm.size_px, device="cpu")
            r[name].append(float(np.nanmean(pearson_per_gene(truth, pred))))
    print("Pearson vs truth at held-out depths of a shifted block:", r)
    # measured (seeded, deterministic on CPU): 0.276 -> 0.432 at 40 um, 0.300 -> 0.342 at 60 um
    for a, b in zip(r["pretrained"], r["finetuned"], strict=True):
        assert b > a + 0.02  # better at every held-out depth
    assert np.mean(r["finetuned"]) > np.mean(r["pretrained"]) + 0.08


def test_head_tuning_leaves_the_encoder_alone(shifted_target: tuple[object, Path], pretrained_dir: Path, tmp_path: Path) -> None:
    _, cat_path = shifted_target
    pre = load_model(pretrained_dir)
    cfg = dataclasses.replace(pre.train_cfg, epochs=1, tune="head", early_stop_fraction=0.0)
    d = finetune(cat_path, pretrained_dir, "volx", tmp_path / "head", cfg=cfg, sections=["volx_s0"], progress=False)
    before, after = load_file(str(pretrained_dir / "model.safetensors")), load_file(str(d / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    cfg = dataclasses.replace(cfg, tune="last")
    d = finetune(cat_path, pretrained_dir, "volx", tmp_path / "last", cfg=cfg, sections=["volx_s0"], progress=False)
    after = load_file(str(d / "model.safetensors"))
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"head.net.3.weight", "head.net.3.bias"}
    with pytest.raises(ValueError, match="tune must be"):
        TrainConfig(tune="encoder")  # type: ignore[arg-type]
    from cli.seal_vortex import _FT

    assert _FT == FINETUNE_DEFAULTS  # the CLI's defaults are the library's
