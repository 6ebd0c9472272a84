"""The models: timm ViT/DeiT and what we add to them.

* ``builder`` -- timm ViT/DeiT by name with overrides (:class:`ModelConfig`, :func:`build_model`), the
  tiny CPU preset, a state dict's architecture inferred;
* ``token_selector`` -- SViTE+: the learnable patch scorer, differentiable top-k in training, a hard
  gathered top-k at inference;
* ``units`` -- which weight entries belong to an attention head or an MLP neuron;
* ``compact`` -- a head/neuron-masked model turned into a smaller timm model;
* ``evaluate`` -- accuracy, parameters, FLOPs, measured throughput;
* ``attention`` -- each head's attention probabilities, read from timm's own modules.

Importing the package registers the selector and compaction steps with :func:`build_model`.
"""

from __future__ import annotations

from . import compact, token_selector  # noqa: F401  (they register their build_model steps)
from .builder import (
    ModelConfig,
    SelectorConfig,
    available_models,
    build_model,
    describe_model,
    infer_config_from_state_dict,
)

__all__ = ["ModelConfig", "SelectorConfig", "available_models", "build_model", "describe_model",
           "infer_config_from_state_dict"]
