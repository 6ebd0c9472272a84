"""The interface every sparsity method plugs into the training loop through, and the one place that
checks budgets.

A method is an *engine* object that lives next to the model (as ``torch.ao.pruning`` keeps masks
outside the weights). The loop calls ``after_optimizer_step(step)`` after every optimizer step and
never needs to know which method it is: the engine re-applies its masks (masked weights are exactly
zero at every forward) and, on its schedule, updates the topology while ``param.grad`` still holds the
minibatch's dense gradient, as the reference does. It returns True when the masks changed, so that the
loop records a snapshot. ``step`` is the 0-based index of the step just taken: ``step + 1`` steps are
done (the reference's 1-based counter, see ``schedule.PruneSchedule``).

Every engine exposes ``masks`` (weight level), ``units`` (head/neuron masks, structured only),
``fired`` (ever active), ``describe()`` (method and settings for the checkpoint), ``snapshot_info()``
and ``state_dict()/load_state_dict()`` for exact resume. After every topology update the base class
checks that each budgeted mask holds exactly its budget (:meth:`SparsityEngine.assert_budgets`); a
break is a bug, never user input, and stops the run.

Methods register themselves (:func:`register`); ``dst/__init__.py`` imports them, so this module
never imports the engines built on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import SviteError
from ..masks.maskset import MaskSet
from .active_optim import ActiveAdamW, move_moments


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
    """Dense training (every hook a no-op) and the base of every sparse method."""

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

    def after_optimizer_step(self, step: int, loss: float | None = None) -> bool:
        """Re-apply the masks and, on schedule, update the topology; True when the masks changed.
        ``loss`` is the step's training loss (``--update-start plateau`` watches it)."""
        return False

    def mean_over_ranks(self, values: list[float]) -> list[float]:
        """``values`` averaged over DDP ranks (as they are on one process), so all ranks decide alike."""
        if self.ctx.world_size <= 1:
            return values
        import torch.distributed as dist

        device = next(self.ctx.model.parameters()).device
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return (t / self.ctx.world_size).tolist()

    def budgets_of(self) -> tuple[MaskSet | None, Mapping[str, int]]:
        """The masks whose nonzero counts are budgeted, and each one's exact budget (none for dense)."""
        return None, {}

    def assert_budgets(self) -> None:
        """Every budgeted mask holds exactly its budget: called by every engine after every update."""
        masks, budgets = self.budgets_of()
        for name, want in budgets.items():
            have = masks.count(name)
            if have != want:  # an internal invariant, not user input
                raise RuntimeError(f"{self.method}: budget broken for {name}: {have} active, expected {want}")

    def _follow_masks(self) -> None:
        """``--optimizer-state active``: the optimizer keeps moments for the active entries of each masked
        parameter, read from the masks as they are at every step (engines replace their masks)."""
        if not isinstance(self.ctx.optimizer, ActiveAdamW) or self._masks is None:
            return
        params = dict(self.ctx.model.named_parameters())
        for name in self._masks:
            self.ctx.optimizer.follow(params[name], lambda n=name: self._masks.positions(n))

    def _moments_moved(self, old: MaskSet) -> None:
        """Re-index the active-entry moments of every masked parameter from ``old`` masks to the current
        ones (``--optimizer-state active``; nothing otherwise)."""
        if not isinstance(self.ctx.optimizer, ActiveAdamW) or self._masks is None:
            return
        params = dict(self.ctx.model.named_parameters())
        for name in self._masks:
            move_moments(self.ctx.optimizer, params[name], old.positions(name), self._masks.positions(name))

    def check_optimizer_state(self) -> None:
        """After ``--resume``: the loaded optimizer moments of every masked parameter fit this run's
        ``--optimizer-state`` and the loaded masks (one entry per active weight, or the full shape)."""
        opt, masks = self.ctx.optimizer, self._masks
        if masks is None:
            return
        params = dict(self.ctx.model.named_parameters())
        for name in masks:
            param = params[name]
            if isinstance(opt, ActiveAdamW):
                why = opt.check(param, name)
            else:
                bad = [k for k, v in opt.state.get(param, {}).items()
                       if k in ("exp_avg", "exp_avg_sq") and tuple(v.shape) != tuple(param.shape)]
                why = f"'{name}' {bad[0]} is not the parameter's shape" if bad else None
            if why:
                mode = "active" if isinstance(opt, ActiveAdamW) else "full"
                raise SviteError(f"--resume: the saved optimizer moments do not fit --optimizer-state {mode} "
                                 f"(was the run trained with the other mode?): {why}")

    def describe(self) -> dict[str, Any]:
        return {"method": self.method, "settings": {}}

    def snapshot_info(self) -> dict[str, Any]:
        """Extra facts recorded with each snapshot (e.g. the prune rate used)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


ENGINES: dict[str, Callable[[EngineContext], SparsityEngine]] = {"dense": SparsityEngine}


def register(*methods: str) -> Callable[[type[SparsityEngine]], type[SparsityEngine]]:
    """Class decorator: ``--method NAME`` builds this engine."""

    def add(cls: type[SparsityEngine]) -> type[SparsityEngine]:
        for method in methods:
            ENGINES[method] = cls
        return cls

    return add


def build_engine(ctx: EngineContext) -> SparsityEngine:
    """The engine ``ctx.config.method`` names."""
    method = ctx.config.method
    if method not in ENGINES:
        raise SviteError(f"--method: unknown method '{method}' (choose {', '.join(sorted(ENGINES))})")
    return ENGINES[method](ctx)
