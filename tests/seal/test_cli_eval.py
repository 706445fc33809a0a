"""seal fit then seal eval through the command line, on a synthetic catalog whose image
content is determined by expression."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.seal import app

runner = CliRunner()


@pytest.mark.slow
def test_fit_then_eval_gives_retrieval_far_above_chance(small_catalog: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    r = runner.invoke(
        app,
        [
            "fit",
            str(small_catalog),
            "--backbone",
            "test_vit",
            "--out",
            str(model),
            "--epochs",
            "25",
            "--batch-size",
            "32",
            "--lr",
            "1e-3",
            "--workers",
            "0",
            "--n-genes",
            "60",
            "--lora-blocks",
            "all",
            "--samples",
            "s0",
            "--samples",
            "s1",
            "--val-fraction",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    out = tmp_path / "eval"
    r = runner.invoke(
        app,
        [
            "eval",
            str(small_catalog),
            "--encoder",
            "timm:test_vit",
            "--encoder",
            str(model),
            "--out",
            str(out),
            "--samples",
            "s2",
            "--samples",
            "s3",
            "--n-genes",
            "30",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"encoders", "genes", "folds"}
    assert len(res["genes"]) <= 30 and len(res["folds"]) == 2  # leave-one-patient-out over P2, P3
    frozen, tuned = (
        res["encoders"]["timm:test_vit" if "timm:test_vit" in res["encoders"] else "test_vit"],
        res["encoders"][f"seal:{model.name}"],
    )
    for enc in (frozen, tuned):
        assert -1.0 <= enc["pearson_mean"] <= 1.0 and enc["pearson_std"] >= 0.0
    assert "recall_at_10" not in frozen  # no expression encoder
    # held-out patients: gene-to-image retrieval is far above chance
    assert tuned["recall_at_10"] > 3 * tuned["chance_recall_at_10"]
    assert tuned["median_rank"] < tuned["chance_median_rank"] / 2
    assert (out / "results.md").exists() and (out / "results.png").exists()


def test_eval_errors(small_catalog: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["eval", str(small_catalog), "--encoder", "nonsense", "--out", str(tmp_path / "e")])
    assert r.exit_code == 1 and "is not PRESET[@WEIGHTS]" in r.output and "timm:NAME[@WEIGHTS]" in r.output
    r = runner.invoke(app, ["eval", str(small_catalog), "--encoder", "timm:not_a_model_xyz", "--out", str(tmp_path / "e")])
    assert r.exit_code == 1 and "unknown backbone" in r.output
    r = runner.invoke(
        app, ["eval", str(small_catalog), "--encoder", "timm:test_vit", "--out", str(tmp_path / "e"), "--organ", "Heart"]
    )
    assert r.exit_code == 1 and "no sample has organ 'Heart'" in " ".join(r.output.split())
    r = runner.invoke(
        app, ["fit", str(small_catalog), "--backbone", "test_vit", "--out", str(tmp_path / "m"), "--lora-blocks", "x"]
    )
    assert r.exit_code == 1 and "--lora-blocks" in r.output


@pytest.mark.slow
def test_seal_tuned_beats_frozen_on_pearson(plaid_catalog: Path, tmp_path: Path) -> None:
    """Acceptance: a short CPU fit of a random-init tiny ViT, then eval on held-out patients:
    the tuned encoder predicts expression better than the same frozen encoder."""
    model = tmp_path / "model"
    args = ["fit", str(plaid_catalog), "--backbone", "test_vit", "--out", str(model), "--epochs", "20"]
    args += ["--batch-size", "16", "--lr", "2e-3", "--workers", "0", "--n-genes", "60", "--lora-blocks", "all"]
    args += ["--val-fraction", "0", "--seed", "0"]
    for s in ("s0", "s1", "s2", "s3"):
        args += ["--samples", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = tmp_path / "eval"
    args = ["eval", str(plaid_catalog), "--encoder", "timm:test_vit", "--encoder", str(model), "--out", str(out)]
    args += ["--samples", "s4", "--samples", "s5", "--n-genes", "50"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    frozen = res["encoders"]["timm:test_vit" if "timm:test_vit" in res["encoders"] else "test_vit"]
    tuned = res["encoders"][f"seal:{model.name}"]
    print(f"frozen {frozen['pearson_mean']:.3f}, tuned {tuned['pearson_mean']:.3f}, recall@10 {tuned['recall_at_10']:.3f}")
    assert tuned["pearson_mean"] > frozen["pearson_mean"] + 0.05
    assert tuned["recall_at_10"] > 1.5 * tuned["chance_recall_at_10"]
