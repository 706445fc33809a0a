"""VORTEX: 3D expression volumes from 3D morphology plus 2D ST sections.

A 2D timm backbone embeds a sub-volume slice by slice, a learned aggregator pools the
slices over depth, and SEAL's expression VAE and image head (and objective) complete the
model. ``pretrain`` on the linked sections of many volumes, ``finetune`` on one volume's
section(s), ``predict_volume`` densely through the volume into OME-Zarr, and
``serial_section_eval`` for the serial-section protocol. See ``docs/vortex.md``.
"""

from __future__ import annotations

from .aggregate import AGGREGATIONS, AttentionPool, MeanPool, SliceTransformer, make_aggregator
from .channels import CHANNEL_RULES, ChannelMapper
from .config import ModelConfig, TrainConfig
from .data import SubvolumeTransform, VolumeDataset
from .encoder import VolumeEncoder
from .errors import ChannelMismatchError, ModelDirError, PredictionError, SectionError, VortexError
from .model import LoadedModel, VortexModel, build_model, load_model
from .train import finetune, pretrain, train_model

__all__ = [
    "AGGREGATIONS",
    "CHANNEL_RULES",
    "AttentionPool",
    "ChannelMapper",
    "ChannelMismatchError",
    "LoadedModel",
    "MeanPool",
    "ModelConfig",
    "ModelDirError",
    "PredictionError",
    "SectionError",
    "SliceTransformer",
    "SubvolumeTransform",
    "TrainConfig",
    "VolumeDataset",
    "VolumeEncoder",
    "VortexError",
    "VortexModel",
    "build_model",
    "finetune",
    "load_model",
    "make_aggregator",
    "pretrain",
    "train_model",
]
