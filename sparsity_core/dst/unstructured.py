"""SViTE: unstructured dynamic sparse training at a fixed per-layer budget, and the ``static`` and
``oneshot`` baselines that share its constructor.

A method is a composition (docs/architecture.md, "Sparse training: where prune and grow happen"):

* **units** -- single weights of the sparsified parameters (:func:`units.sparsifiable_names`: the
  reference's rule, or ``--include`` / ``--exclude`` globs); one layer's prune-and-grow is
  :func:`.weights.exchange`;
* **distribution** -- how much each layer keeps (:mod:`.budgets`: ``fixed_ERK``, ``ER``, ``uniform``,
  ``custom``, as exact counts);
* **schedule** -- when and how much changes (:class:`.schedule.PruneSchedule`);
* **scorers** -- magnitude prune; gradient, momentum or random growth (:mod:`.scorers`);
* **selection** -- one top-k with one tie rule (:func:`.select.choose`): each layer holds exactly its
  budget after initialisation and after every update (checked by the base class);
* **optimizer state** of grown weights (:mod:`.optim_state`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import SviteError
from ..masks.bits import BitMaskSet, flat_positions
from ..masks.maskset import MaskSet
from ..models.units import sparsifiable_names
from .active_optim import follows, move_moments
from .budgets import layer_budgets, layer_densities, load_custom_densities
from .engine import EngineContext, SparsityEngine, register
from .optim_state import reset_grown_state
from .schedule import NoUpdates, PruneSchedule, UpdateClock
from .scorers import WEIGHT_GROWTH
from .weights import (
    Scratch,
    exchange,
    flat,
    masks_from_state,
    masks_state,
    one_thread,
    random_mask,
    seeded_generator,
)


class WeightEngine(SparsityEngine):
    """What the weight-level methods share: the sparsified parameters and their exact per-layer budgets
    (the same for svite, static and oneshot, so the three differ only in how the topology is chosen)."""

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.names = sparsifiable_names(ctx.model, cfg.include or (), cfg.exclude or ())
        params = dict(ctx.model.named_parameters())
        self._params = [params[n] for n in self.names]
        self.shapes = {n: tuple(p.shape) for n, p in zip(self.names, self._params, strict=True)}
        custom = load_custom_densities(cfg.mask_path, self.names) if cfg.sparse_init == "custom" else None
        self.densities = layer_densities(self.shapes, float(cfg.density), cfg.sparse_init, custom)
        self.budgets = layer_budgets(self.shapes, self.densities)
        self.steps_done = 0

    def budgets_of(self) -> tuple[MaskSet | None, Mapping[str, int]]:
        return self._masks, self.budgets

    def _budget_settings(self) -> dict[str, Any]:
        cfg = self.ctx.config
        total = sum(math.prod(s) for s in self.shapes.values())
        return {"density": float(cfg.density), "sparse_init": cfg.sparse_init, "mask_path": cfg.mask_path,
                "include": list(cfg.include or []), "exclude": list(cfg.exclude or []),
                "overall_density": sum(self.budgets.values()) / total,
                "layer_densities": {n: self.budgets[n] / math.prod(self.shapes[n]) for n in self.names},
                "layer_budgets": dict(self.budgets)}


@register("svite")
class SViTEEngine(WeightEngine):
    """``svite``: prune-and-grow on the schedule. Masks (and ever-active masks) are held as bits and
    multiplied into the weights after every optimizer step. :class:`StaticEngine` is the same on a
    schedule that never updates."""

    method = "svite"

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self._grow = WEIGHT_GROWTH[str(cfg.growth)]
        self.grown_moments = str(cfg.grown_moments)  # checked with the flags (training/config.py)
        # --death magnitude-mature: per layer, the new connections of the last update (flat, as bits)
        self._young: BitMaskSet | None = BitMaskSet() if str(cfg.death) == "magnitude-mature" else None
        self.clock = self._clock(ctx)
        self.schedule = self.clock.schedule
        self._generator = seeded_generator(cfg.seed)
        self._masks, self.init_topology = self._initial_masks(ctx.init_masks)
        self._fired = self._masks.clone()
        self.updates_done = 0
        self._last: dict[str, Any] = {}
        self._masks.apply_to(self._params)
        self._follow_masks()

    @staticmethod
    def _clock(ctx: EngineContext) -> UpdateClock | NoUpdates:
        """When topology updates happen: ``--update-frequency`` / ``--update-start`` / ``--t-end``."""
        return UpdateClock.from_config(ctx.config, ctx.total_steps, ctx.steps_per_epoch,
                                       getattr(ctx.model, "num_classes", None))

    def _initial_masks(self, init_masks: MaskSet | None) -> tuple[BitMaskSet, dict[str, Any]]:
        """Masks as bits (one layer unpacked at a time, here and in every update: see masks/bits.py)."""
        masks = BitMaskSet()
        if init_masks is None or not len(init_masks):
            for name, p in zip(self.names, self._params, strict=True):
                masks[name] = random_mask(self.shapes[name], self.budgets[name], self._generator, p.device)
            return masks, {"source": "random"}
        missing = [n for n in self.names if n not in init_masks]
        if missing:
            raise SviteError(f"--init: its masks do not cover '{missing[0]}' (sparsified here); train from its weights "
                             "with a checkpoint without masks, or match --include/--exclude")
        wrong = [n for n in self.names if tuple(init_masks[n].shape) != self.shapes[n]]
        if wrong:
            raise SviteError(f"--init: mask of '{wrong[0]}' has shape {tuple(init_masks[wrong[0]].shape)}, the model's "
                             f"weight has {self.shapes[wrong[0]]}")
        adjusted = []
        for name, p in zip(self.names, self._params, strict=True):
            m = init_masks[name].to(device=p.device, dtype=torch.bool).clone().contiguous()
            have, want = int(m.sum()), self.budgets[name]
            if have > want:  # keep the largest |w| among the active
                score = p.detach().abs().reshape(-1).masked_fill(~flat(m), -1.0)
                keep = torch.topk(score, want, sorted=False).indices
                m = torch.zeros_like(m)
                flat(m)[keep] = True
                adjusted.append(name)
            elif have < want:  # add random inactive positions (their weights are zero: no magnitude to rank)
                score = torch.rand(m.numel(), generator=self._generator).to(p.device).masked_fill_(flat(m), -1.0)
                flat(m)[torch.topk(score, want - have, sorted=False).indices] = True
                adjusted.append(name)
            masks[name] = m
        return masks, {"source": "init", "adjusted_layers": adjusted}

    def after_optimizer_step(self, step: int, loss: float | None = None) -> bool:
        """Zero masked weights (the masks' multiply), then, on schedule, update the topology: the weights
        have just stepped and ``param.grad`` still holds this minibatch's dense gradient."""
        self._masks.apply_to(self._params)
        self.steps_done = step + 1
        self.clock.observe(loss)
        if self.clock.due(step + 1, self.mean_over_ranks):
            self.update(step + 1)
            return True
        return False

    def update(self, steps_done: int) -> dict[str, Any]:
        """One prune-and-grow update (:meth:`_update`) on one torch thread: what is left of it in torch is
        short per-layer index work, where a parallel region costs more than it saves and, on a loaded
        machine, waits for its slowest thread (measured on a DeiT-S at load 5: 1690 ms with 2 threads,
        135 ms with 1)."""
        with one_thread():
            return self._update(steps_done)

    @torch.no_grad()
    def _update(self, steps_done: int) -> dict[str, Any]:
        """One prune-and-grow update of every layer (fully dense layers are skipped), then the budgets
        checked.

        A weight pruned and grown back in the same update (``revived``) simply stays: it keeps its value
        and its optimizer moments, as in the reference and RigL. Only new connections (inactive
        before the update) start at zero, their moments as ``grown_moments`` says (optim_state.py)."""
        rate = self.schedule.rate(steps_done)
        pruned_n: dict[str, int] = {}
        revived_n: dict[str, int] = {}
        scratch = Scratch()  # the largest layer's buffers, for this update only (freed when it returns)
        for name, param in zip(self.names, self._params, strict=True):
            budget = self.budgets[name]
            n = PruneSchedule.n_prune(rate, budget)
            if budget >= param.numel() or n == 0:
                continue
            revived_n[name] = self._update_layer(name, param, n, scratch)
            pruned_n[name] = n
        self.updates_done += 1
        self.assert_budgets()
        self._last = {"step": int(steps_done), "rate": float(rate), "pruned": pruned_n, "grown": dict(pruned_n),
                      "revived": revived_n}
        return self._last

    def _update_layer(self, name: str, param: torch.nn.Parameter, n: int, scratch: Scratch) -> int:
        """One layer's update, as named steps: prune ``n`` and grow ``n`` (``weights.exchange``), carry the
        optimizer state of the moved positions, remember the new connections (``--death magnitude-mature``),
        start new connections at zero, then store the mask and its ever-active bits. Returns how many
        pruned positions were grown straight back."""
        optimizer = self.ctx.optimizer
        mask = self._masks.unpack_into(name, scratch.mask_bytes(param.numel(), param.device))
        young = None
        if self._young is not None and name in self._young:
            young = self._young.unpack_into(name, scratch.mask_bytes(param.numel(), param.device, 1))
        old = flat_positions(mask) if follows(optimizer, param) else None  # --optimizer-state active
        pruned, grown, revived = exchange(param, mask, n, self._grow, optimizer, self._generator,
                                          active=self.budgets[name], scratch=scratch, young=young)
        if old is not None:
            buf = scratch.get(param.numel(), param.device)[0] if param.dtype == torch.float32 else None
            move_moments(optimizer, param, old, flat_positions(mask), buf)
        if self._young is not None:
            self._remember_young(name, param, grown, revived, scratch)
        self._start_new_connections_at_zero(param, pruned, grown, revived)
        if self.grown_moments != "keep":
            reset_grown_state(optimizer, param, grown[~revived], self.grown_moments)
        self._masks.store(name, mask)
        self._fired.bits(name).bitwise_or_(self._masks.bits(name))  # ever active: grown ones join
        return int(torch.count_nonzero(revived))

    def _remember_young(self, name: str, param: torch.nn.Parameter, grown: torch.Tensor, revived: torch.Tensor,
                        scratch: Scratch) -> None:
        """The layer's new connections of this update, pruned last at the next (``magnitude-mature``)."""
        fresh = scratch.mask_bytes(param.numel(), param.device, 1)[:param.numel()].zero_()
        self._young[name] = fresh.index_fill_(0, grown[~revived], 1).view(torch.bool)

    @staticmethod
    def _start_new_connections_at_zero(param: torch.nn.Parameter, pruned: torch.Tensor, grown: torch.Tensor,
                                       revived: torch.Tensor) -> None:
        """Pruned weights become zero now (not after the next step) and new connections start at exactly
        0, while a revived position keeps its value: the grown positions' values are gathered (zeroed
        unless revived) before pruning and written back afterwards, without set arithmetic over the
        index lists."""
        w = flat(param.data)
        grown_values = w.index_select(0, grown).mul_(revived)
        w.index_fill_(0, pruned, 0)
        w.index_copy_(0, grown, grown_values)

    def snapshot_info(self) -> dict[str, Any]:
        """The rate of the last update, and its per-layer pruned/grown/revived counts when this snapshot
        is taken at that update's step (so an epoch snapshot does not repeat older counts)."""
        if not self.clock.updates:
            return {}
        info: dict[str, Any] = {"updates": self.updates_done, "updates_started_at": self.clock.started_at,
                                "fired_density": round(self._fired.overall_density(), 6)}
        if self._last:
            info["rate"] = self._last["rate"]
            info["last_update_step"] = self._last["step"]
            if self._last["step"] == self.steps_done:
                info.update(pruned=self._last["pruned"], grown=self._last["grown"], revived=self._last["revived"])
        return info

    def describe(self) -> dict[str, Any]:
        cfg = self.ctx.config
        settings = {**self._budget_settings(), "init_topology": self.init_topology, "seed": int(cfg.seed)}
        if self.clock.updates:
            settings.update({"update_frequency": int(cfg.update_frequency), "death_rate": float(cfg.death_rate),
                             "decay_schedule": cfg.decay_schedule, "t_end": float(cfg.t_end), "growth": str(cfg.growth),
                             "death": cfg.death, "grown_moments": self.grown_moments,
                             "update_start": str(cfg.update_start), "update_start_step": self.schedule.start,
                             "num_updates": self.schedule.num_updates(), **self.clock.describe()})
        return {"method": self.method, "settings": settings}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "names": list(self.names), "budgets": dict(self.budgets),
                "masks": masks_state(self._masks), "fired": masks_state(self._fired),
                "generator": self._generator.get_state(), "updates_done": self.updates_done,
                "steps_done": self.steps_done, "last": dict(self._last),
                "clock": self.clock.state_dict(),
                **({"young": masks_state(self._young)} if self._young is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method or list(state.get("names", [])) != self.names:
            raise SviteError(f"--resume: the saved {state.get('method')} engine does not match this --method "
                             f"{self.method} (different method or sparsified parameters)")
        if dict(state["budgets"]) != self.budgets:
            raise SviteError("--resume: the saved layer budgets differ from this run's (--density / --sparse-init "
                             "changed?)")
        shapes, device = [self.shapes[n] for n in self.names], self._params[0].device
        self._masks = masks_from_state(state["masks"], self.names, shapes, device)
        self._fired = masks_from_state(state["fired"], self.names, shapes, device, "ever-active masks")
        self.assert_budgets()
        self._generator.set_state(state["generator"])
        self.updates_done = int(state["updates_done"])
        self.steps_done = int(state["steps_done"])
        self._last = dict(state.get("last") or {})
        if state.get("clock"):
            self.clock.load_state_dict(state["clock"])
        if self._young is not None:
            young = state.get("young") or {}
            if not isinstance(young, Mapping) or any(n not in self.shapes for n in young):
                raise SviteError("--resume: the saved young-weight masks do not fit this model")
            self._young = masks_from_state(young, list(young), [(math.prod(self.shapes[n]),) for n in young],
                                           device, "young-weight masks")
        self._masks.apply_to(self._params)


@register("static")
class StaticEngine(SViTEEngine):
    """``static``: SViTE on a schedule that never updates: its initial masks (the same per-layer budgets),
    kept for the whole run."""

    method = "static"

    @staticmethod
    def _clock(ctx: EngineContext) -> NoUpdates:
        return NoUpdates()


@register("oneshot")
class OneShotEngine(WeightEngine):
    """Baseline: train dense until ``oneshot_at * T`` steps, then magnitude-prune each layer to the same
    per-layer budget SViTE and static use (``--sparse-init``, fixed_ERK by default) and fine-tune
    with the masks fixed. Per-layer rather than global magnitude, so that the three baselines keep
    exactly the same number of weights in every layer and differ only in *how* the topology is chosen."""

    method = "oneshot"

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        self.prune_step = max(1, round(float(ctx.config.oneshot_at) * ctx.total_steps))
        self.pruned = False
        self._masks = BitMaskSet()  # dense phase: every weight active
        for name, p in zip(self.names, self._params, strict=True):
            self._masks[name] = torch.ones_like(p, dtype=torch.bool)
        self._fired = self._masks.clone()
        self._follow_masks()

    def budgets_of(self) -> tuple[MaskSet | None, Mapping[str, int]]:
        return (self._masks, self.budgets) if self.pruned else (None, {})

    def after_optimizer_step(self, step: int, loss: float | None = None) -> bool:
        self.steps_done = step + 1
        if self.pruned:
            self._masks.apply_to(self._params)
            return False
        if step + 1 >= self.prune_step:
            self.prune()
            self.assert_budgets()
            return True
        return False

    @torch.no_grad()
    def prune(self) -> None:
        """Keep the ``budget`` largest |w| of every layer; zero the rest."""
        masks, old = BitMaskSet(), self._masks
        for name, param in zip(self.names, self._params, strict=True):
            keep = torch.topk(param.detach().abs().reshape(-1), self.budgets[name], sorted=False).indices
            m = torch.zeros(param.numel(), dtype=torch.bool, device=param.device)
            m[keep] = True
            masks[name] = m.view(param.shape)
        self._masks = masks
        self._moments_moved(old)
        self._masks.apply_to(self._params)
        self.pruned = True

    def snapshot_info(self) -> dict[str, Any]:
        if not self.pruned:
            return {"pruned": False}
        info: dict[str, Any] = {"pruned": True, "prune_step": self.prune_step}
        if self.steps_done == self.prune_step:
            info["removed"] = {n: math.prod(self.shapes[n]) - self.budgets[n] for n in self.names}
        return info

    def describe(self) -> dict[str, Any]:
        cfg = self.ctx.config
        return {"method": self.method, "settings": {
            **self._budget_settings(), "oneshot_at": float(cfg.oneshot_at), "prune_step": self.prune_step,
            "prune_scope": "per-layer magnitude", "pruned": self.pruned}}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "names": list(self.names), "pruned": self.pruned,
                "steps_done": self.steps_done, "masks": masks_state(self._masks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method or list(state.get("names", [])) != self.names:
            raise SviteError(f"--resume: the saved {state.get('method')} engine does not match this --method oneshot")
        self.pruned = bool(state["pruned"])
        self.steps_done = int(state["steps_done"])
        self._masks = masks_from_state(state["masks"], self.names, [self.shapes[n] for n in self.names],
                                       self._params[0].device)
        self.assert_budgets()
        if self.pruned:
            self._masks.apply_to(self._params)
