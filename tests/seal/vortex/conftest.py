from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import catalog
from hestkit.sample import ReadOptions
from hestkit.synthetic.volume import SyntheticVolumeCohort, make_volume_cohort
from seal.vortex import ModelConfig, TrainConfig, pretrain

#: A tiny random ViT at 32 px, 5 planes over 20 um: fast on CPU.
TINY = ModelConfig(backbone="test_vit", create_kwargs={"img_size": 32}, n_slices=5, depth_um=20.0, tuning="full")


def tiny_train(epochs: int, **kw: Any) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=16, lr=1e-3, weight_decay=0.05, n_genes=24, device="cpu", cache_pairs=True, **kw)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Two busy cores: one torch thread avoids oversubscription (60x slower otherwise)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def vortex_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticVolumeCohort, Path]:
    """Three microCT-like volumes (80 x 800 x 800 um at 4 um voxels), each with Visium
    sections at 20, 40 and 60 um, ingested and linked in one catalog."""
    root = tmp_path_factory.mktemp("vortex")
    coh = make_volume_cohort(
        root / "raw",
        seed=3,
        n_volumes=3,
        shape_zyx=(20, 200, 200),
        voxel_size_um=(4.0, 4.0, 4.0),
        n_genes=24,
        section_pixel_size_um=2.0,
    )
    cat = catalog.create(root / "cat")
    for v in coh.volumes:
        cat.ingest_volume(v.path, v.volume_id, modality=v.modality, organ=v.organ, patient=v.patient)
        for s in v.sections:
            opts = ReadOptions(sample_id=s.sample_id, organ=v.organ, patient=v.patient, species="Homo sapiens")
            assert not cat.ingest([s.path], options=opts, workers=1).failed
            cat.link_section(s.sample_id, v.volume_id, s.z_um, affine=s.affine_path)
    return coh, root / "cat"


@pytest.fixture(scope="session")
def pretrained_dir(vortex_cohort: tuple[SyntheticVolumeCohort, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VORTEX pretrained on vol0 and vol1 (vol2 is the unseen target)."""
    _, cat = vortex_cohort
    out = tmp_path_factory.mktemp("vmodels") / "pretrained"
    torch.set_num_threads(1)
    return pretrain(cat, TINY, tiny_train(8), out, volumes=["vol0", "vol1"], progress=False)


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return TINY


@pytest.fixture
def train_cfg() -> Any:
    return tiny_train
