"""The shipped demo checkpoints are what checkpoints/README.md promises: the four methods, each with at
least 10 history snapshots, at most 5 MB, masks really applied, and their recorded training config."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsity_core.analysis import integrity_check
from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.report import inspect_checkpoint

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
EXPECTED = {  # file -> (method, has a token selector, has head/neuron masks)
    "dense": ("dense", False, False),
    "svite": ("svite", False, False),
    "svite-plus": ("svite", True, False),
    "s2vite": ("s2vite", False, True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_demo_checkpoint_meets_its_spec(name):
    path = CHECKPOINTS / f"{name}.safetensors"
    assert path.stat().st_size <= 5 * 1024 * 1024
    loaded = load_checkpoint(path)
    doc = inspect_checkpoint(loaded)
    method, selector, units = EXPECTED[name]
    assert doc["method"] == method
    assert (doc["token_selector"] is not None) == selector
    assert (doc["heads"] is not None) == units
    assert len(doc["history"]) >= 10
    assert loaded.meta.get("complete") is True
    assert loaded.meta["train_config"]["epochs"] == 20 and loaded.meta["train_config"]["data"] == "demo"
    assert integrity_check(loaded).ok
