"""What the loop calls besides the sparsity engine: small hooks at fixed points of a step, a snapshot and a
checkpoint, so that the loop itself stays about data, model, optimizer, schedule, checkpoints and metrics.

A hook implements any of

* ``before_step(step, total_steps)`` -- before the forward pass of optimizer step ``step``;
* ``snapshot_fields()`` -- extra fields of the next history snapshot (``Snapshot.take``'s ``state=``,
  ``probe=``), called once per snapshot;
* ``checkpoint_meta()`` -- extra metadata of the next checkpoint.

Two ship with the loop: SViTE+'s selector schedule (its Gumbel temperature and the keep warm-up follow the
run's progress; its weights go with every snapshot) and the head probe (each head's class-token attention
on fixed demo images, ``history.probe``, with every snapshot). ``hooks_for`` picks the ones a model needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import SviteError
from ..history.probe import HeadProbe


class LoopHook:
    """The no-op hook; subclasses override what they need."""

    def before_step(self, step: int, total_steps: int) -> None:
        return None

    def snapshot_fields(self) -> dict[str, Any]:
        return {}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {}


class SelectorSchedule(LoopHook):
    """SViTE+: the selector's temperature and kept fraction follow training progress (``set_progress``),
    and its weights are recorded with every snapshot (the Patch maps page replays them)."""

    def __init__(self, selector: nn.Module, keep_warmup: float) -> None:
        self.selector, self.keep_warmup = selector, keep_warmup

    def before_step(self, step: int, total_steps: int) -> None:
        self.selector.set_progress(step / total_steps, self.keep_warmup)

    def snapshot_fields(self) -> dict[str, Any]:
        return {"state": {f"token_selector.{k}": v for k, v in self.selector.state_dict().items()}}


class HeadProbeHook(LoopHook):
    """The head probe, made at the first snapshot (so a run's RNG draws are those of the loop alone) and
    run with every snapshot; a geometry the demo images cannot take gives an empty probe, not an error."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        self.model, self.mean, self.std = model, mean, std
        self.probe: HeadProbe | None = None

    def snapshot_fields(self) -> dict[str, Any]:
        if self.probe is None:
            try:
                self.probe = HeadProbe(self.model, self.mean, self.std)
            except SviteError:  # training goes on without a probe
                self.probe = HeadProbe(self.model, self.mean, self.std, count=0)
        probe: dict[str, torch.Tensor] = self.probe(self.model)
        return {"probe": probe}

    def checkpoint_meta(self) -> dict[str, Any]:
        recorded = self.probe is not None and self.probe.count
        return {"head_probe": self.probe.describe() if recorded else None}


def hooks_for(model: nn.Module, mean: Sequence[float], std: Sequence[float], keep_warmup: float) -> list[LoopHook]:
    """The loop's hooks for ``model``: the selector schedule when it has a token selector, and the head probe."""
    selector = getattr(model, "token_selector", None)
    hooks: list[LoopHook] = [SelectorSchedule(selector, keep_warmup)] if selector is not None else []
    return hooks + [HeadProbeHook(model, mean, std)]
