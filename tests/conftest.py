"""Shared fixtures: tiny ViTs and tiny runs, so the whole suite stays fast on two CPU cores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import sparsity_core  # noqa: E402,F401  (installs the torchvision shim before timm is imported)
from sparsity_core.models.builder import ModelConfig, build_model  # noqa: E402
from sparsity_core.training.config import TrainConfig  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_model_config(**overrides) -> ModelConfig:
    base = dict(name="vit_tiny_demo", embed_dim=48, depth=2, num_heads=4, num_classes=10)
    base.update(overrides)
    return ModelConfig(**base)


def tiny_train_config(out, **overrides) -> TrainConfig:
    """A run of a few dozen steps. Its loss never leaves the first plateau far enough for the default
    ``--update-start plateau``, so topology updates start at the end of the LR warm-up here (tests of
    the plateau start ask for it)."""
    base = dict(out=str(out), model="vit_tiny_demo", embed_dim=48, depth=2, num_heads=4, train_size=256,
                val_size=64, batch_size=32, epochs=2, lr=2e-3, log_every=4, update_start="warmup")
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_model_config())
