"""What a loaded checkpoint is, whatever file it came from, and the version of our own file format.

Our format: a single ``.safetensors`` file with
  ``model/<param>``                       weights,
  ``mask/<param>`` / ``unit/<name>``       final weight masks / head+neuron masks (bit-packed uint8),
  ``fired/<param>``                        ever-active masks (bit-packed),
  ``history/<i>/<group>``                  the mask history: keyframes and deltas (``history.fileformat``),
and JSON metadata (model config, method and settings, epoch, metrics, versions, training config,
the history's index). Format 1 files (every snapshot bit-packed in full) still load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..history.lazy import MaskHistory
from ..masks.maskset import MaskSet
from ..models.builder import ModelConfig
from ..models.stand_in import VIT

FORMAT = "svite-explorer"
FORMAT_VERSION = 2  # 2: keyframe + delta mask history (1: every snapshot packed in full)


@dataclass
class LoadedCheckpoint:
    """Everything a checkpoint holds, whatever file format it came from."""

    path: Path
    format: str  # "svite-explorer" | "timm" | "svite-official"
    model: nn.Module
    model_config: ModelConfig
    masks: MaskSet | None = None  # weight-level masks (None: dense / unknown)
    units: MaskSet | None = None  # head/neuron masks of structured runs
    fired: MaskSet | None = None
    history: MaskHistory = field(default_factory=MaskHistory)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.meta.get("method", "dense"))

    @property
    def is_vit(self) -> bool:
        """A timm ViT/DeiT (every page applies), not a Recorder run of another module (``models.stand_in``)."""
        return self.meta.get("model_kind", VIT) == VIT

    @property
    def has_selector(self) -> bool:
        return hasattr(self.model, "token_selector")
