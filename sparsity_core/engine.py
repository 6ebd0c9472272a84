"""The interface every sparsity method plugs into the training loop through.

A method is an *engine* object that lives next to the model (like ``torch.ao.pruning`` keeps masks
outside the weights). The loop calls it at three points and never needs to know which method it is:

* ``after_backward(step)``  -- dense gradients are available: a topology update may happen here
  (returns True when the masks changed, so the loop records a snapshot);
* ``after_optimizer_step(step)`` -- re-apply the masks so masked weights are exactly zero; gradients
  are still there, so an update may happen here instead (as the reference does; also returns True
  when the masks changed);
* ``on_epoch_end(epoch, step)``.

``step`` is the 0-based index of the current optimizer step: after that step, ``step + 1`` steps are
done (the reference's 1-based counter, see ``schedules.PruneSchedule``).

Every engine exposes ``masks`` (weight-level), ``units`` (head/neuron masks, structured only),
``fired`` (ever-active), ``describe()`` (method + settings for the checkpoint) and
``state_dict()/load_state_dict()`` for exact resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .masks import MaskSet


@dataclass
class EngineContext:
    """What an engine is built from; the loop fills it in once."""

    model: nn.Module  # the unwrapped model (no DDP prefix in parameter names)
    optimizer: torch.optim.Optimizer
    total_steps: int  # T = steps_per_epoch * epochs (the reference's schedule length)
    steps_per_epoch: int
    config: Any  # the TrainConfig (all CLI flags)
    init_masks: MaskSet | None = None  # masks of an --init checkpoint, if it had any
    world_size: int = 1
    rank: int = 0


class SparsityEngine:
    """Dense training: every hook is a no-op. Sparse methods subclass this."""

    method = "dense"
    # The sparsity state a subclass keeps (weight masks, structured unit masks, ever-active masks);
    # read through the properties below, so the loop and checkpoints see one interface.
    _masks: MaskSet | None = None
    _units: MaskSet | None = None
    _fired: MaskSet | None = None

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx

    @property
    def masks(self) -> MaskSet | None:
        return self._masks

    @property
    def units(self) -> MaskSet | None:
        return self._units

    @property
    def fired(self) -> MaskSet | None:
        return self._fired

    def after_backward(self, step: int) -> bool:
        return False

    def after_optimizer_step(self, step: int) -> bool:
        return False

    def on_epoch_end(self, epoch: int, step: int) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "settings": {}}

    def snapshot_info(self) -> dict[str, Any]:
        """Extra facts recorded with each snapshot (e.g. the prune rate used)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


DenseEngine = SparsityEngine


def build_engine(ctx: EngineContext) -> SparsityEngine:
    """Pick the engine for ``ctx.config.method``; each method's module owns its own construction."""
    method = ctx.config.method
    if method == "dense":
        return DenseEngine(ctx)
    if method in ("svite", "static", "oneshot"):
        from .unstructured import build_unstructured_engine

        return build_unstructured_engine(ctx)
    if method == "s2vite":
        from .structured import build_structured_engine

        return build_structured_engine(ctx)
    from .errors import SviteError

    raise SviteError(f"--method: unknown method '{method}' (choose dense, static, oneshot, svite, s2vite)")
