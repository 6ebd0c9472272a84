"""S2ViTE: structured dynamic sparse training over attention heads and MLP neurons.

A composition like SViTE's (``unstructured.py``) over other units: heads and neurons (``models/units.py``
says which weight entries each stands for), exact per-block budgets (:func:`.budgets.unit_budgets`),
the SViTE schedule (cosine prune rate, update frequency, start and ``t_end``), scores per unit kind
(:mod:`.scorers`, captured by :mod:`.capture`), one selection rule (:func:`.select.select_units`) and
one policy for the optimizer state of grown units (:mod:`.optim_state`). State lives beside the model:
``units`` (bool per head / neuron), ``masks`` (the weight-level masks they stand for, held as bits and
applied after every optimizer step) and ``fired`` (units ever active). Compaction of a
finished run is ``models/compact.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models.vision_transformer import Attention

from ..errors import SviteError
from ..masks.bits import BitMaskSet
from ..masks.maskset import MaskSet, head_unit_name, neuron_unit_name
from ..models.units import attention_of, head_rows, mlp_of, unit_weight_masks, units_from_masks
from .budgets import unit_budgets
from .capture import UnitCapture
from .engine import EngineContext, SparsityEngine, register
from .head_shadow import ShadowHeads
from .neuron_shadow import INIT_STD, ShadowNeurons
from .optim_state import reset_grown_state
from .schedule import PruneSchedule, UpdateClock
from .scorers import neuron_magnitude, random_scores
from .select import select_units


def prune_and_grow(active: torch.Tensor, prune_score: torch.Tensor, grow_score: torch.Tensor,
                   n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's update: drop the ``n`` active units with the lowest ``prune_score``, then activate
    the ``n`` units with the highest ``grow_score`` among all inactive ones (the ones just dropped
    included, as the reference does). Returns ``(new_active, dropped, added)`` where dropped/added
    are the *net* changes (a unit dropped and grown back in the same update keeps its weights)."""
    active = active.to("cpu", torch.bool)
    n = max(0, min(int(n), int(active.sum())))
    pruned = select_units(prune_score, active, n, largest=False)
    after_prune = active & ~pruned
    grown = select_units(grow_score, ~after_prune, n, largest=True)
    new = after_prune | grown
    return new, active & ~new, new & ~active


@register("s2vite")
class StructuredEngine(SparsityEngine):
    """S2ViTE prune-and-grow over heads and neurons at exact per-block budgets.

    Scores, and why each is what it is:

    * **Prune heads by Taylor importance** ``s_h = mean_b |sum_{tokens,dims} a_h * dL/da_h|`` with
      ``a_h`` the head's attention output (before ``proj``): the first-order change of the loss if
      ``a_h`` were set to zero, i.e. if the head were removed (Molchanov et al.); the absolute value per
      image, then the batch mean, so opposite-signed images do not cancel. A magnitude score would not
      do: a head's q/k weights act through a softmax and can be large and useless.
    * **Grow heads by alignment** (``--head-growth alignment``, the default): the gradient their
      ``proj`` columns would get, per unit of output, with an inactive head's output taken through
      *shadow* q/k/v rows (``head_shadow.py``). The former rule, ``mean_b ||dL/da_h||_1``
      (``--head-growth gradient-norm``), ranked a dead head by ``proj`` columns that stopped learning
      when it died, so every pruned head was grown straight back and no head ever moved.
    * **Prune neurons by magnitude** ``||W1[j,:]||_1 + ||W2[:,j]||_1``: a neuron's contribution is
      bounded by its in- and out-weights, and it is free (no activations needed).
    * **Grow neurons by the gradient their fc2 column would get** ``||dL/dW2[:,j]||_1``, taken
      through *shadow* fc1 weights kept for every inactive neuron (``neuron_shadow.py``). With the
      fc1 row, bias and fc2 column all zero an inactive neuron's real gradient is exactly zero (the
      reference's weakness, docs/reference.md §2), so plain gradient growth could only re-pick the
      neurons it had just pruned. ``--growth random`` explores at random instead.

    Grown units can learn and leave the output unchanged at the moment of growth:

    * a grown **head** gets its shadow q/k/v rows back and its ``proj`` columns at 0 (alignment), or
      (gradient-norm) fresh q and k rows (timm's ``trunc_normal(0.02)``, biases 0) with v rows and bias
      at 0; either way it outputs exactly 0 at growth. With q = k = 0, as pruning leaves them, dL/dq and
      dL/dk would be exactly zero for ever: the head could only average all tokens;
    * a grown **neuron** gets its shadow fc1 row and bias, its fc2 column stays 0.

    Their optimizer moments follow ``--grown-moments`` (``optim_state.py``; default: kept).

    Activations are captured only for the forward/backward of a step that precedes an update
    (``capture.py``), so ordinary steps pay nothing. Under DDP the head and neuron scores are averaged
    over ranks before deciding, so every rank takes the same decision without broadcasting masks.
    """

    method = "s2vite"

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.model = ctx.model
        self.cfg = cfg
        self.blocks = list(self.model.blocks)
        self.head_dims = [attention_of(b, i).head_dim for i, b in enumerate(self.blocks)]
        self.num_heads = [attention_of(b, i).num_heads for i, b in enumerate(self.blocks)]
        self.hidden = [mlp_of(b, i).fc1.out_features for i, b in enumerate(self.blocks)]
        self.head_budget, self.neuron_budget = unit_budgets(self.model, cfg.atten_density, cfg.other_density)
        self.clock = UpdateClock.from_config(cfg, ctx.total_steps, ctx.steps_per_epoch,
                                            getattr(ctx.model, "num_classes", None))
        self.schedule = self.clock.schedule
        self.grown_moments = str(cfg.grown_moments)  # checked with the flags (training/config.py)
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        units = self._units_from_init(ctx.init_masks) if ctx.init_masks is not None else None
        if units is None:
            units = self._random_units()
        self._set_units(units)
        self.shadow = ShadowNeurons([b.mlp for b in self.blocks], self.generator,  # before the masks zero fc1
                                    lambda i: self._units[neuron_unit_name(i)])
        self.head_growth = str(getattr(cfg, "head_growth", "alignment"))
        self.head_shadow = None
        if self.head_growth == "alignment":  # before the masks zero the inactive heads' q/k/v rows
            self.head_shadow = ShadowHeads([b.attn for b in self.blocks], self._head_units(), self.generator)
        self._fired = MaskSet({n: m.clone() for n, m in units.items()})
        self.steps_done = 0
        self.updates = 0
        self.last_info: dict[str, Any] = {}
        self.capture = UnitCapture(self.blocks, self.shadow, lambda i: self._units[neuron_unit_name(i)],
                                   self.head_shadow, lambda i: self._units[head_unit_name(i)])
        self._masks.apply(self.model)
        self._follow_masks()
        self.capture.arm(self.schedule.is_update_step(1))

    # --- state (masks / units / fired: SparsityEngine's properties over _masks / _units / _fired) -----
    @property
    def armed(self) -> bool:
        """True while activation-capture hooks are registered (only before an update step)."""
        return self.capture.armed

    @property
    def head_scores(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per block ``(taylor, grad_norm)`` captured from the last armed backward (local rank)."""
        return dict(self.capture.heads)

    def budgets_of(self) -> tuple[MaskSet | None, Mapping[str, int]]:
        budgets = {}
        for i in range(len(self.blocks)):
            budgets[head_unit_name(i)] = self.head_budget[i]
            budgets[neuron_unit_name(i)] = self.neuron_budget[i]
        return self._units, budgets

    def _head_units(self) -> list[torch.Tensor]:
        return [self._units[head_unit_name(i)] for i in range(len(self.blocks))]

    def _set_units(self, units: MaskSet) -> None:
        self._units = units
        self._masks = unit_weight_masks(self.model, units, BitMaskSet)  # as bits (masks/bits.py)

    def _random_units(self) -> MaskSet:
        units = MaskSet()
        for i in range(len(self.blocks)):
            for name, total, keep in ((head_unit_name(i), self.num_heads[i], self.head_budget[i]),
                                      (neuron_unit_name(i), self.hidden[i], self.neuron_budget[i])):
                alive = torch.zeros(total, dtype=torch.bool)
                alive[torch.randperm(total, generator=self.generator)[:keep]] = True
                units[name] = alive
        return units

    def _units_from_init(self, masks: MaskSet) -> MaskSet | None:
        """Units of an ``--init`` checkpoint's masks when they are head/neuron structured and fit the
        budgets; None when they mask none of qkv/fc1/fc2 (start from a random choice)."""
        src = f"--init {self.cfg.init}"
        units = units_from_masks(self.model, masks, src)
        if units is None:
            return None
        for i in range(len(self.blocks)):
            heads, neurons = units[head_unit_name(i)], units[neuron_unit_name(i)]
            if int(heads.sum()) != self.head_budget[i] or int(neurons.sum()) != self.neuron_budget[i]:
                raise SviteError(f"block {i} keeps {int(heads.sum())} heads and {int(neurons.sum())} neurons, "
                                 f"but --atten-density/--other-density ask for {self.head_budget[i]} and "
                                 f"{self.neuron_budget[i]}", path=src)
        return units

    # --- the hook point -------------------------------------------------------------------------
    def after_optimizer_step(self, step: int, loss: float | None = None) -> bool:
        self._masks.apply(self.model)
        self.steps_done = step + 1
        self.clock.observe(loss)
        changed = False
        if self.clock.due(self.steps_done, self.mean_over_ranks):
            self._update(self.steps_done)
            changed = True
        elif self.clock.candidate(self.steps_done):
            self.capture.take()  # captured for an update the plateau watch held back
        self.capture.arm(self.clock.candidate(self.steps_done + 1))
        return changed

    def _scores(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per block the heads' (taylor, growth) and the neurons' growth scores of the last captured
        batch, averaged over DDP ranks; head growth is the alignment or the gradient norm
        (``--head-growth``). A block with no capture (no armed forward ran) scores zeros: ties, resolved
        by index."""
        device = next(self.model.parameters()).device
        heads, neurons, aligned = self.capture.take()
        parts = []
        for i in range(len(self.blocks)):
            t, g = heads.get(i, (torch.zeros(self.num_heads[i]), torch.zeros(self.num_heads[i])))
            if self.head_shadow is not None:
                g = aligned.get(i, torch.zeros(self.num_heads[i]))
            n = neurons.get(i, torch.zeros(self.hidden[i]))
            parts += [t.to(device, torch.float32), g.to(device, torch.float32), n.to(device, torch.float32)]
        flat = torch.cat(parts)
        if self.ctx.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(flat)
            flat = flat / self.ctx.world_size
        chunks = list(flat.cpu().split([size for h, n in zip(self.num_heads, self.hidden, strict=True)
                                        for size in (h, h, n)]))
        return chunks[0::3], chunks[1::3], chunks[2::3]

    @torch.no_grad()
    def _update(self, steps_done: int) -> None:
        rate = self.schedule.rate(steps_done)
        taylor, head_grad, neuron_grow = self._scores()
        random_growth = self.cfg.growth == "random"
        new_units = MaskSet()
        added: dict[str, torch.Tensor] = {}
        removed: dict[str, torch.Tensor] = {}
        counts = dict(heads_pruned=0, heads_grown=0, heads_exchanged=0, neurons_pruned=0, neurons_grown=0,
                      neurons_exchanged=0)
        for i in range(len(self.blocks)):
            for kind, name, prune_s, grow_s in (("heads", head_unit_name(i), taylor[i], head_grad[i]),
                                                ("neurons", neuron_unit_name(i), neuron_magnitude(self.blocks[i].mlp),
                                                 neuron_grow[i])):
                old = self._units[name]
                n = PruneSchedule.n_prune(rate, int(old.sum()))
                if random_growth:
                    grow_s = random_scores(old.numel(), self.generator)
                new, dropped, grown = prune_and_grow(old, prune_s, grow_s, n)
                new_units[name] = new
                added[name] = grown
                removed[name] = dropped
                counts[f"{kind}_pruned"] += int(dropped.sum())
                counts[f"{kind}_grown"] += int(grown.sum())
                counts[f"{kind}_exchanged"] += n
        for i in range(len(self.blocks)):  # remember the input weights of units about to be masked
            self.shadow.store(i, removed[neuron_unit_name(i)])
            if self.head_shadow is not None:
                self.head_shadow.store(i, removed[head_unit_name(i)])
        old_masks = self._masks
        self._set_units(new_units)
        self._moments_moved(old_masks)  # --optimizer-state active only
        self.assert_budgets()
        self._masks.apply(self.model)  # dropped units -> exactly zero
        self._init_grown(added)
        for name, alive in new_units.items():
            self._fired[name] = self._fired[name] | alive
        self.updates += 1
        self.last_info = {"rate": float(rate), "step": steps_done, **counts}

    @torch.no_grad()
    def _init_grown(self, added: Mapping[str, torch.Tensor]) -> None:
        """Newly active units learn without changing the output at growth (class docstring): fresh q/k
        rows for a head (v stays 0), the shadow fc1 row for a neuron (fc2 column stays 0)."""
        for i, block in enumerate(self.blocks):
            attn, mlp = block.attn, block.mlp
            heads, neurons = added[head_unit_name(i)], added[neuron_unit_name(i)]
            if bool(heads.any()):
                if self.head_shadow is not None:
                    self.head_shadow.restore(i, heads)  # shadow q/k/v rows, proj columns at 0
                    columns = heads.repeat_interleave(self.head_dims[i])
                    reset_grown_state(self.ctx.optimizer, attn.proj.weight, columns[None, :], self.grown_moments)
                else:
                    self._fresh_query_key(attn, heads, self.head_dims[i])
                rows = head_rows(heads, self.head_dims[i])
                reset_grown_state(self.ctx.optimizer, attn.qkv.weight, rows[:, None], self.grown_moments)
                if attn.qkv.bias is not None:
                    reset_grown_state(self.ctx.optimizer, attn.qkv.bias, rows, self.grown_moments)
            if bool(neurons.any()):
                self.shadow.restore(i, neurons)
                reset_grown_state(self.ctx.optimizer, mlp.fc1.weight, neurons[:, None], self.grown_moments)
                if mlp.fc1.bias is not None:
                    reset_grown_state(self.ctx.optimizer, mlp.fc1.bias, neurons, self.grown_moments)
                reset_grown_state(self.ctx.optimizer, mlp.fc2.weight, neurons[None, :], self.grown_moments)

    def _fresh_query_key(self, attn: Attention, heads: torch.Tensor, head_dim: int) -> None:
        """timm's init (trunc_normal 0.02) for the q and k rows of ``heads``; their biases stay 0, as do
        the v rows and bias (masked until now), so the heads output exactly 0 at growth."""
        idx = heads.nonzero().reshape(-1)
        rows = (idx[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)
        qk_rows = torch.cat([rows, rows + attn.num_heads * head_dim])  # q block, then k block
        fresh = torch.empty(len(qk_rows), attn.qkv.in_features)
        torch.nn.init.trunc_normal_(fresh, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD, generator=self.generator)
        w = attn.qkv.weight
        w[qk_rows.to(w.device)] = fresh.to(w.device, w.dtype)

    # --- reporting / resume ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"method": self.method, "settings": {
            "atten_density": cfg.atten_density, "other_density": cfg.other_density,
            "update_frequency": cfg.update_frequency, "death_rate": cfg.death_rate,
            "decay_schedule": cfg.decay_schedule, "t_end": cfg.t_end, "growth": cfg.growth,
            "grown_moments": self.grown_moments, "head_prune": "taylor", "neuron_prune": "l1_magnitude",
            "head_growth": ("random" if cfg.growth == "random" else
                            "alignment" if self.head_shadow is not None else "gradient_norm"),
            "grown_heads": "shadow_qkv" if self.head_shadow is not None else "fresh_qk",
            "neuron_growth": "shadow_gradient" if cfg.growth == "gradient" else "random",
            "update_start": str(cfg.update_start), "update_start_step": self.schedule.start,
            "heads_per_block": self.head_budget, "neurons_per_block": self.neuron_budget,
            "num_updates": len(self.schedule.update_steps()), "total_steps": self.schedule.total_steps,
            **self.clock.describe(),
            "seed": int(cfg.seed)}}

    def snapshot_info(self) -> dict[str, Any]:
        """Updates so far and the rate of the last one; at that update's own snapshot also the net
        heads/neurons pruned and grown (summed over blocks) and ``n`` exchanged (ints), so an epoch
        snapshot does not repeat older counts."""
        info: dict[str, Any] = {"updates": self.updates, "updates_started_at": self.clock.started_at,
                                "fired_heads": sum(int(m.sum()) for n, m in self._fired.items() if n.endswith(".heads")),
                                "fired_neurons": sum(int(m.sum()) for n, m in self._fired.items()
                                                     if n.endswith(".neurons"))}
        if self.last_info:
            info["rate"] = self.last_info["rate"]
            info["last_update_step"] = self.last_info["step"]
            if self.last_info["step"] == self.steps_done:
                info.update({k: v for k, v in self.last_info.items() if k not in ("rate", "step")})
        return info

    def state_dict(self) -> dict[str, Any]:
        return {"units": {n: m.clone() for n, m in self._units.items()},
                "fired": {n: m.clone() for n, m in self._fired.items()},
                "steps_done": self.steps_done, "updates": self.updates, "generator": self.generator.get_state(),
                "last_info": dict(self.last_info), "shadow": self.shadow.state_dict(),
                "head_shadow": self.head_shadow.state_dict() if self.head_shadow is not None else None,
                "clock": self.clock.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        units = MaskSet({n: torch.as_tensor(m).to(torch.bool) for n, m in state["units"].items()})
        if set(units) != set(self._units) or any(units[n].shape != self._units[n].shape for n in units):
            raise SviteError("--resume: the saved S2ViTE head/neuron masks do not fit this model")
        self._set_units(units)
        self.assert_budgets()
        self._fired = MaskSet({n: torch.as_tensor(m).to(torch.bool) for n, m in state["fired"].items()})
        self.steps_done = int(state["steps_done"])
        self.updates = int(state["updates"])
        self.generator.set_state(state["generator"])
        self.last_info = dict(state.get("last_info") or {})
        if "shadow" in state:
            try:
                self.shadow.load_state_dict(state["shadow"])
            except (KeyError, TypeError, ValueError):
                raise SviteError("--resume: the saved S2ViTE shadow neuron weights do not fit this model") from None
        else:
            self.shadow.reset_to_model()
        if self.head_shadow is not None:
            if not state.get("head_shadow"):
                raise SviteError("--resume: the run was saved without S2ViTE shadow heads (--head-growth "
                                 "gradient-norm); resume it with that flag")
            try:
                self.head_shadow.load_state_dict(state["head_shadow"], self._head_units())
            except (KeyError, TypeError, ValueError) as err:
                raise SviteError(f"--resume: the saved S2ViTE shadow heads do not fit this model ({err})") from None
        if state.get("clock"):
            self.clock.load_state_dict(state["clock"])
        self.capture.take()
        self._masks.apply(self.model)
        self.capture.arm(self.clock.candidate(self.steps_done + 1))
