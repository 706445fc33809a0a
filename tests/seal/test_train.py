from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from catalog.errors import QueryError
from seal.errors import GeneListError
from seal.io import load_encoder
from seal.models import LoraSpec, create_backbone, wrap_lora
from seal.train import FitConfig, fit


def _cfg(**kw: object) -> FitConfig:
    base = dict(
        backbone="test_vit",
        epochs=2,
        batch_size=16,
        lr=1e-3,
        num_workers=0,
        max_steps_per_epoch=2,
        lora=LoraSpec(rank=4, alpha=4, dropout=0.1, blocks=1),
        n_genes=40,
    )
    base.update(kw)
    return FitConfig(**base)  # type: ignore[arg-type]


def test_fit_writes_a_model_directory(small_catalog: Path, tmp_path: Path) -> None:
    out = fit(small_catalog, _cfg(), tmp_path / "m", progress=False)
    for name in (
        "encoder.safetensors",
        "encoder.json",
        "expression.safetensors",
        "preprocess.json",
        "genes.txt",
        "config.json",
        "train_log.jsonl",
        "loss_curve.png",
        "checkpoint.pt",
        "summary.json",
        "adapter/adapter_model.safetensors",
    ):
        assert (out / name).exists(), name
    genes = (out / "genes.txt").read_text().split()
    assert len(genes) == 40 and genes == [g.upper() for g in genes]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert sum("lr" in r for r in log) == 4  # 2 epochs x 2 steps
    assert any("val_pearson" in r for r in log)  # held-out patients probed each epoch


def test_merged_encoder_equals_lora_model(small_catalog: Path, tmp_path: Path) -> None:
    out = fit(small_catalog, _cfg(epochs=1), tmp_path / "m", progress=False)
    merged = load_encoder(out)
    # rebuild the LoRA model from the backbone and the checkpoint's trainable tensors
    enc = wrap_lora(create_backbone("test_vit", seed=0), LoraSpec(rank=4, alpha=4, dropout=0.1, blocks=1))
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    own = {k[len("encoder.") :]: v for k, v in ck["trainable"].items() if k.startswith("encoder.")}
    assert own, "the checkpoint holds the LoRA tensors"
    missing = enc.load_state_dict(own, strict=False)
    assert not missing.unexpected_keys
    enc.eval()
    x = torch.randn(3, 3, 160, 160)
    with torch.no_grad():
        a, b = enc(x), merged(x)
    assert torch.allclose(a, b, atol=1e-5)
    # and the merged weights differ from the random backbone (training changed them)
    base = create_backbone("test_vit", seed=0).eval()
    with torch.no_grad():
        assert not torch.allclose(base(x), b, atol=1e-4)
    # a plain timm state dict: no LoRA keys
    assert not any("lora" in k for k in load_file(str(out / "encoder.safetensors")))


def test_resume_continues_from_the_same_state(small_catalog: Path, tmp_path: Path) -> None:
    straight = fit(small_catalog, _cfg(epochs=2), tmp_path / "a", progress=False)
    fit(small_catalog, _cfg(epochs=2), tmp_path / "b", progress=False, stop_after=1)
    assert not (tmp_path / "b" / "encoder.safetensors").exists()  # interrupted: no model yet
    resumed = fit(small_catalog, _cfg(epochs=2), tmp_path / "b", resume=True, progress=False)
    ca = torch.load(straight / "checkpoint.pt", weights_only=False)
    cb = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert ca["step"] == cb["step"] == 4 and ca["epoch"] == cb["epoch"] == 1
    for k, v in ca["trainable"].items():
        assert torch.allclose(v, cb["trainable"][k], atol=1e-6), k


def test_seeded_runs_are_deterministic_on_cpu(small_catalog: Path, tmp_path: Path) -> None:
    a = fit(small_catalog, _cfg(epochs=1), tmp_path / "a", progress=False)
    b = fit(small_catalog, _cfg(epochs=1), tmp_path / "b", progress=False)
    ea, eb = load_file(str(a / "encoder.safetensors")), load_file(str(b / "encoder.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


def test_bad_selections(small_catalog: Path, tmp_path: Path) -> None:
    with pytest.raises(GeneListError, match="not in the selected pairs"):
        fit(small_catalog, _cfg(genes=("NOT_A_GENE", "ALSO_NOT")), tmp_path / "g", progress=False)
    with pytest.raises(QueryError, match="no sample has organ 'Heart'"):
        fit(small_catalog, _cfg(organ=("Heart",)), tmp_path / "e", progress=False)


def test_without_patients_splits_by_sample(tmp_path: Path) -> None:
    import catalog
    from hestkit.sample import ReadOptions
    from hestkit.synthetic import make_visium

    cat = catalog.create(tmp_path / "cat")
    for i in range(3):
        make_visium(tmp_path / f"s{i}", n_rows=6, n_cols=6, pixel_size_um=1.0, seed=300 + i)
        cat.ingest([tmp_path / f"s{i}"], options=ReadOptions(sample_id=f"s{i}"), workers=1)
    with pytest.warns(UserWarning, match="splitting by sample"):
        out = fit(cat.path, _cfg(epochs=1, val_fraction=0.34, probe="patients"), tmp_path / "m", progress=False)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["split"] == "sample"
    assert np.isfinite(log[-1]["val_loss"])


@pytest.mark.slow
def test_torchrun_ddp_on_cpu(small_catalog: Path, tmp_path: Path) -> None:
    """Two processes (gloo) run the same command; rank 0 writes the model."""
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        "-m",
        "cli.seal",
        "fit",
        str(small_catalog),
        "--backbone",
        "test_vit",
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--max-steps-per-epoch",
        "2",
        "--n-genes",
        "20",
        "--val-fraction",
        "0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "encoder.safetensors").exists()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "lr" in r]
    assert len(steps) == 2  # only rank 0 logs
    assert all(np.isfinite(r["loss"]) for r in steps)
