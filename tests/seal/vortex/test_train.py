"""The trainer on an in-memory pair source: seeded determinism on CPU, resume, model dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from seal.data import fit_preprocessing
from seal.vortex import ModelConfig, TrainConfig, build_model, load_model, train_model


class _Source:
    def __init__(self, n: int = 24, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.subs = rng.integers(0, 255, (n, 3, 32, 32, 1), dtype=np.uint8)
        self.counts = rng.poisson(4.0, (n, 10)).astype(np.float32) + self.subs.mean(axis=(1, 2, 3, 4))[:, None] / 20
        self.obs = pd.DataFrame({"sample_id": "s", "volume_id": "v"}, index=range(n))
        self.genes = [f"g{i}" for i in range(10)]

    def expression(self) -> np.ndarray:
        return self.counts

    def __len__(self) -> int:
        return len(self.subs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.subs[i], self.counts[i]


def _run(out: Path, *, stop_after: int | None = None, resume: bool = False, epochs: int = 2) -> Path:
    cfg = ModelConfig(backbone="test_vit", create_kwargs={"img_size": 32}, n_slices=3, aggregation="transformer")
    tcfg = TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, n_genes=10, smooth=False, device="cpu", max_steps_per_epoch=2)
    src = _Source()
    prep, values = fit_preprocessing(src, n_genes=10, smooth=False)  # type: ignore[arg-type]
    model, px = build_model(cfg, len(prep.genes), 1, seed=tcfg.seed)
    meta = {"stage": "pretrain", "model": cfg.to_dict()}
    return train_model(model, px, src, values, prep, tcfg, out, meta, progress=False, stop_after=stop_after, resume=resume)


def test_seeded_runs_are_identical_and_resume_matches(tmp_path: Path) -> None:
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b")
    sa, sb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # interrupted after one epoch, then resumed: the same model as the uninterrupted run
    c = _run(tmp_path / "c", stop_after=1)
    assert not (c / "model.safetensors").exists() and (c / "checkpoint.pt").exists()
    _run(tmp_path / "c", resume=True)
    sc = load_file(str(c / "model.safetensors"))
    assert all(torch.allclose(sa[k], sc[k], atol=1e-6) for k in sa)
    meta = json.loads((a / "config.json").read_text())
    assert meta["channels"] == 1 and meta["size_px"] == 32 and meta["n_genes"] == 10
    assert (a / "genes.txt").read_text().split() == [f"G{i}" for i in range(10)]
    assert (a / "loss_curve.png").exists()
    log = [json.loads(x) for x in (a / "train_log.jsonl").read_text().splitlines()]
    assert sum("loss" in r for r in log) == 4 and all(np.isfinite(r["loss"]) for r in log if "loss" in r)
    lm = load_model(a)
    x = torch.rand(2, 3, 1, 32, 32)
    assert lm.model.predict(x).shape == (2, 10)


def test_zero_epochs_writes_the_untouched_model(tmp_path: Path) -> None:
    out = _run(tmp_path / "z", epochs=0)
    assert (out / "model.safetensors").exists() and (out / "loss_curve.png").exists()
    assert not [r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines()) if "loss" in r]
    # the same weights as a freshly built model with the same seed: no step was taken
    cfg = ModelConfig(backbone="test_vit", create_kwargs={"img_size": 32}, n_slices=3, aggregation="transformer")
    fresh, _ = build_model(cfg, 10, 1, seed=0)
    saved = load_file(str(out / "model.safetensors"))
    state = {k: v for k, v in fresh.state_dict().items() if k in saved}
    assert state and all(torch.equal(saved[k], v) for k, v in state.items())
    import pytest

    with pytest.raises(ValueError, match="epochs must be >= 0"):
        TrainConfig(epochs=-1)
