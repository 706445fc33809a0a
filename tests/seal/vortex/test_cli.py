"""``seal vortex`` with typer's CliRunner."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from cli.seal import app
from hestkit.synthetic.volume import SyntheticVolumeCohort

runner = CliRunner()
TINY = ["--backbone", "test_vit", "--img-size", "32", "--n-slices", "3", "--depth-um", "12", "--tuning", "full"]
QUICK = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--max-steps-per-epoch", "2"]


def test_cli_pretrain_finetune_predict_eval(vortex_cohort: tuple[SyntheticVolumeCohort, Path], tmp_path: Path) -> None:
    _, cat = vortex_cohort
    pre = tmp_path / "pre"
    r = runner.invoke(
        app, ["vortex", "pretrain", str(cat), "--volumes", "vol0", "--out", str(pre), "--n-genes", "12", *TINY, *QUICK]
    )
    assert r.exit_code == 0, r.output
    assert (pre / "model.safetensors").exists() and len((pre / "genes.txt").read_text().split()) == 12
    assert (pre / "loss_curve.png").exists()
    ft = tmp_path / "ft"
    r = runner.invoke(
        app,
        [
            "vortex",
            "finetune",
            str(cat),
            "--model",
            str(pre),
            "--volume",
            "vol2",
            "--sections",
            "vol2_s1",
            "--out",
            str(ft),
            "--tune",
            "head",
            "--early-stop-fraction",
            "0.3",
            "--patience",
            "2",
            *QUICK,
        ],
    )
    assert r.exit_code == 0, r.output
    tr = json.loads((ft / "config.json").read_text())["train"]
    assert (tr["tune"], tr["early_stop_fraction"], tr["patience"]) == ("head", 0.3, 2)
    gene = (pre / "genes.txt").read_text().split()[0]
    pred = tmp_path / "pred.zarr"
    r = runner.invoke(
        app,
        [
            "vortex",
            "predict",
            str(cat),
            "--model",
            str(ft),
            "--volume",
            "vol2",
            "--genes",
            gene,
            "--stride-um",
            "100",
            "40",
            "--out",
            str(pred),
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    assert zarr.open_group(str(pred), mode="r")["0"].shape == (1, 2, 8, 8)
    assert (tmp_path / "pred_pictures" / f"{gene}_flythrough.gif").exists()
    ev = tmp_path / "eval"
    r = runner.invoke(
        app,
        [
            "vortex",
            "eval",
            str(cat),
            "--model",
            str(pre),
            "--volume",
            "vol2",
            "--out",
            str(ev),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
            "--n-components",
            "8",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (ev / "results.md").exists() and "vol2_s2" in (ev / "results.md").read_text()


def test_cli_errors(vortex_cohort: tuple[SyntheticVolumeCohort, Path], tmp_path: Path) -> None:
    _, cat = vortex_cohort
    r = runner.invoke(
        app, ["vortex", "predict", str(cat), "--model", str(tmp_path), "--volume", "vol2", "--out", str(tmp_path / "p.zarr")]
    )
    assert r.exit_code == 1 and "not a VORTEX model directory" in r.output
    r = runner.invoke(app, ["vortex", "pretrain", str(cat), "--volumes", "nope", "--out", str(tmp_path / "m"), *TINY, *QUICK])
    assert r.exit_code == 1 and "no volume 'nope'" in r.output
    r = runner.invoke(app, ["vortex", "pretrain", str(cat), "--out", str(tmp_path / "m"), "--aggregation", "max", *TINY])
    assert r.exit_code == 1 and "unknown aggregation" in r.output
    r = runner.invoke(app, ["vortex", "pretrain", str(cat), "--out", str(tmp_path / "m"), "--context-scale", "0.5", *TINY])
    assert r.exit_code == 1 and "context_scale must be >= 1" in r.output
    r = runner.invoke(app, ["vortex", "--help"])
    assert r.exit_code == 0 and "predict" in r.output


@pytest.mark.slow
def test_torchrun_pretrain_on_cpu(vortex_cohort: tuple[SyntheticVolumeCohort, Path], tmp_path: Path) -> None:
    """Two processes (gloo) pretrain one model: each rank takes half the pairs; rank 0 logs and writes."""
    import json
    import subprocess
    import sys

    _, cat = vortex_cohort
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547", "-m", "cli.seal"]
    cmd += ["vortex", "pretrain", str(cat), "--volumes", "vol0", "--out", str(out), "--n-genes", "12", *TINY, *QUICK]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "loss_curve.png").exists()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert len(steps) == 2 and all(r["step"] == i + 1 for i, r in enumerate(steps))  # only rank 0 logs, once per step
    assert all(np.isfinite(r["loss"]) for r in steps)


def test_cli_pretrain_native_3d_encoders(vortex_cohort: tuple[SyntheticVolumeCohort, Path], tmp_path: Path) -> None:
    import json

    _, cat = vortex_cohort
    base = ["vortex", "pretrain", str(cat), "--volumes", "vol0", "--n-genes", "8", "--n-slices", "3", "--depth-um", "12", *QUICK]
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "v"), "--backbone", "test_vit", "--img-size", "32",
                            "--encoder3d", "vit3d", "--tubelet", "3", "--tuning", "lora"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "v" / "config.json").read_text())["model"]["encoder3d"] == "vit3d"
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--encoder3d", "cnn3d", "--cnn-width", "8",
                            "--size-px", "32", "--tuning", "full"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model"]["encoder3d"] == "cnn3d"
    r = runner.invoke(app, [*base, "--out", str(tmp_path / "x"), "--encoder3d", "cnn3d", "--tuning", "lora"])
    assert r.exit_code == 1 and "--tuning full" in r.output and not (tmp_path / "x" / "model.safetensors").exists()
