"""Masks as explicit state beside the model, the way ``torch.ao.pruning`` keeps them outside the weights.

* ``maskset`` -- :class:`MaskSet` (boolean masks by parameter name: apply, density, exact bit-packing),
  :class:`Snapshot` (one moment of a run's masks) and the names of head/neuron units;
* ``bits`` -- :class:`BitMaskSet`, the same masks held as bits while training (one bit per weight).
"""

from __future__ import annotations

from .bits import BitMaskSet
from .maskset import (
    MaskSet,
    PackedMasks,
    Snapshot,
    check_packed,
    count_true,
    default_sparsifiable,
    head_unit_name,
    neuron_unit_name,
)

__all__ = ["BitMaskSet", "MaskSet", "PackedMasks", "Snapshot", "check_packed", "count_true",
           "default_sparsifiable", "head_unit_name", "neuron_unit_name"]
