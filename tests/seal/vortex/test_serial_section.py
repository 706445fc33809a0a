"""Issue 8, acceptance 2: fine-tune on one depth, evaluate at two others against the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hestkit.synthetic.volume import SyntheticVolumeCohort
from seal.evaluate import pearson_per_gene
from seal.vortex.evaluate import METHODS, SerialSectionConfig, serial_section_eval


def _log_norm(mu: np.ndarray) -> np.ndarray:
    tot = mu.sum(axis=1, keepdims=True)
    return np.log1p(np.divide(mu, tot, out=np.zeros_like(mu), where=tot > 0) * 1e4)


def test_finetuned_beats_baselines_at_heldout_depths(
    vortex_cohort: tuple[SyntheticVolumeCohort, Path], pretrained_dir: Path, tmp_path: Path, train_cfg: object
) -> None:
    coh, cat_path = vortex_cohort
    cfg = SerialSectionConfig(finetune_section="vol2_s0", train=train_cfg(8), device="cpu")  # type: ignore[operator]
    res = serial_section_eval(cat_path, pretrained_dir, ["vol2"], tmp_path / "eval", cfg, progress=False)

    summary = json.loads((tmp_path / "eval" / "results.json").read_text())
    v = summary["volumes"]["vol2"]
    assert v["finetune_section"] == "vol2_s0" and not v["target_seen_in_pretraining"]
    assert summary["texture_fit"]["fit_on"] == "pretraining sections" and summary["texture_fit"]["n_spots"] > 50
    assert set(v["heldout"]) == {"vol2_s1", "vol2_s2"}
    assert "| vol2 | vol2_s0 | vol2_s1 |" in (tmp_path / "eval" / "results.md").read_text()
    assert (tmp_path / "eval" / "results.png").stat().st_size > 5000

    vol = next(x for x in coh.volumes if x.volume_id == "vol2")
    genes = summary["genes"]
    col = {g.upper(): i for i, g in enumerate(vol.genes)}
    truth_r: dict[str, list[float]] = {m: [] for m in METHODS}
    for sec in ("vol2_s1", "vol2_s2"):
        obs = res.obs["vol2"][sec]
        centres = obs[["z_um", "y_um", "x_um"]].to_numpy(dtype=float)
        truth = _log_norm(vol.true_expression(centres))[:, [col[g] for g in genes]]
        for m in METHODS:
            truth_r[m].append(float(np.nanmean(pearson_per_gene(truth, res.predictions["vol2"][sec][m]))))
    mean = {m: float(np.mean(r)) for m, r in truth_r.items()}
    print("mean Pearson against the truth at held-out depths:", mean)
    assert mean["vortex"] > mean["pretrained"] + 0.05
    assert mean["vortex"] > mean["2d"] + 0.02
    assert mean["vortex"] > 0.3


def test_needs_two_sections(vortex_cohort: tuple[SyntheticVolumeCohort, Path], pretrained_dir: Path, tmp_path: Path) -> None:
    from seal.vortex.errors import SectionError

    _, cat_path = vortex_cohort
    with pytest.raises(SectionError, match="not linked to volume 'vol2'"):
        serial_section_eval(
            cat_path, pretrained_dir, ["vol2"], tmp_path, SerialSectionConfig(finetune_section="vol0_s0"), progress=False
        )
    with pytest.raises(SectionError, match="no volume 'nope'"):
        serial_section_eval(cat_path, pretrained_dir, ["nope"], tmp_path, progress=False)
