"""Recording a run from a researcher's own loop: :class:`Recorder` (``recorder``), the mask sources it
reads (``sources``: torch.ao.pruning, torch.nn.utils.prune, a mapping) and the model it saves (``weights``:
the plain state dict under pruning's reparametrizations, and whether it is a ViT we can rebuild)."""

from __future__ import annotations

from .recorder import Recorder
from .sources import ao_masks, find_masks, logical_name, prune_masks

__all__ = ["Recorder", "ao_masks", "find_masks", "logical_name", "prune_masks"]
