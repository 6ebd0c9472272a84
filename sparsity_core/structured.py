"""S2ViTE: structured sparse training over attention heads and MLP neurons, and compaction.

A *unit* is an attention head (for head ``h`` of a block: its q, k and v rows of ``attn.qkv.weight``
**and** the same entries of ``attn.qkv.bias``) or an MLP neuron (row ``j`` of ``mlp.fc1.weight`` with
``fc1.bias[j]``, and column ``j`` of ``mlp.fc2.weight``). Each block keeps exactly
``int(H * atten_density)`` heads and ``int(hidden * other_density)`` neurons all through training
(SVITE_REFERENCE.md §2). Unlike the reference we also mask the q/k/v *biases*: the reference leaves
the value bias of a pruned head alive, so its "pruned" head still adds ``proj . b_v`` to every token.

State lives in :class:`StructuredEngine` beside the model: ``units`` (bool per head / neuron),
``masks`` (the weight-level masks derived from the units, applied after every optimizer step in one
fused multiply) and ``fired`` (units ever active). On the SViTE schedule (cosine prune rate, update
frequency, ``t_end``; :class:`~sparsity_core.schedules.PruneSchedule`) each block prunes
``n = ceil(rate * active)`` heads and neurons and grows the same number back, so budgets are exact.

:func:`compact` turns a head/neuron-masked model into a physically smaller timm model (timm's own
``Attention(dim, num_heads=k, attn_head_dim=d_h)`` and ``Mlp(dim, hidden_features=h)``, sizes per
block) whose logits match the masked model's; :func:`reshape_blocks` rebuilds that shape from a
:class:`~sparsity_core.models.ModelConfig`, so compacted checkpoints save and load like any other.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from .engine import EngineContext, SparsityEngine
from .errors import SviteError
from .masks import MaskSet, head_unit_name, neuron_unit_name
from .models import ModelConfig
from .neuron_shadow import INIT_STD, ShadowNeurons
from .optim_state import check_policy, reset_grown_state
from .schedules import PruneSchedule


# ----------------------------------------------------------------------------------------------
# layout: which weight entries belong to which unit
def _attention_of(block: nn.Module, index: int) -> Attention:
    attn = getattr(block, "attn", None)
    if not isinstance(attn, Attention) or not isinstance(getattr(attn, "qkv", None), nn.Linear):
        raise SviteError(f"S2ViTE needs timm ViT blocks with a standard Attention (qkv + proj); block {index} has "
                         f"{type(attn).__name__}")
    return attn


def _mlp_of(block: nn.Module, index: int) -> Mlp:
    mlp = getattr(block, "mlp", None)
    if (not isinstance(mlp, Mlp) or not isinstance(getattr(mlp, "fc1", None), nn.Linear)
            or not isinstance(getattr(mlp, "fc2", None), nn.Linear)):
        raise SviteError(f"S2ViTE needs timm ViT blocks with a plain Mlp (fc1 -> act -> fc2); block {index} has "
                         f"{type(mlp).__name__}")
    return mlp


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """bool[3*H*d_h]: the q, k and v rows of ``qkv`` (timm's layout: q heads, then k, then v)."""
    per_head = heads.to(torch.bool).repeat_interleave(head_dim)
    return per_head.repeat(3)


def unit_weight_masks(model: nn.Module, units: Mapping[str, torch.Tensor]) -> MaskSet:
    """The weight-level masks a set of head/neuron units stands for.

    Per block: ``attn.qkv.weight`` (q/k/v rows of each head) and ``attn.qkv.bias`` (same entries, so a
    pruned head contributes exactly nothing), ``mlp.fc1.weight`` (rows) and ``mlp.fc1.bias``,
    ``mlp.fc2.weight`` (columns). Blocks without a unit entry are not masked.
    """
    masks: dict[str, torch.Tensor] = {}
    for i, block in enumerate(model.blocks):
        heads = units.get(head_unit_name(i))
        if heads is not None:
            attn = _attention_of(block, i)
            rows = head_rows(heads.cpu(), attn.head_dim)
            masks[f"blocks.{i}.attn.qkv.weight"] = rows[:, None].expand(-1, attn.qkv.in_features).clone()
            if attn.qkv.bias is not None:
                masks[f"blocks.{i}.attn.qkv.bias"] = rows.clone()
        neurons = units.get(neuron_unit_name(i))
        if neurons is not None:
            mlp = _mlp_of(block, i)
            alive = neurons.cpu().to(torch.bool)
            masks[f"blocks.{i}.mlp.fc1.weight"] = alive[:, None].expand(-1, mlp.fc1.in_features).clone()
            if mlp.fc1.bias is not None:
                masks[f"blocks.{i}.mlp.fc1.bias"] = alive.clone()
            masks[f"blocks.{i}.mlp.fc2.weight"] = alive[None, :].expand(mlp.fc2.out_features, -1).clone()
    return MaskSet(masks)


def budgets(model: nn.Module, atten_density: float, other_density: float) -> tuple[list[int], list[int]]:
    """Exact per-block budgets, as the reference: ``int(H * atten_density)`` heads and
    ``int(hidden * other_density)`` neurons; a block left with no head or no neuron is an error."""
    heads, hidden = [], []
    for i, block in enumerate(model.blocks):
        h = _attention_of(block, i).num_heads
        n = _mlp_of(block, i).fc1.out_features
        kh, kn = int(h * atten_density), int(n * other_density)
        if kh < 1:
            raise SviteError(f"--atten-density {atten_density} keeps {kh} of {h} heads in block {i}; "
                             f"every block needs at least one head (use >= {1 / h:.3g})")
        if kn < 1:
            raise SviteError(f"--other-density {other_density} keeps {kn} of {n} MLP neurons in block {i}; "
                             f"every block needs at least one neuron (use >= {1 / n:.3g})")
        heads.append(kh)
        hidden.append(kn)
    return heads, hidden


# ----------------------------------------------------------------------------------------------
# the decision: prune n, grow n, exact budget
def select_top(score: torch.Tensor, candidates: torch.Tensor, k: int, *, largest: bool) -> torch.Tensor:
    """bool mask of the ``k`` candidates with the largest (or smallest) score.

    Ties go to the lower index (a stable sort over candidates in index order), and NaN counts as
    ``-inf`` (the first to prune, the last to grow), so exactly ``min(k, #candidates)`` units are picked whatever the
    scores are (all zero included).
    """
    score = score.detach().to("cpu", torch.float64).reshape(-1)
    candidates = candidates.to("cpu", torch.bool).reshape(-1)
    idx = candidates.nonzero().reshape(-1)
    chosen = torch.zeros_like(candidates)
    if k <= 0 or idx.numel() == 0:
        return chosen
    s = torch.nan_to_num(score[idx], nan=-math.inf)  # NaN: pruned first, grown last
    order = torch.sort(s, descending=largest, stable=True).indices
    chosen[idx[order[:k]]] = True
    return chosen


def prune_and_grow(active: torch.Tensor, prune_score: torch.Tensor, grow_score: torch.Tensor,
                   n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's update: drop the ``n`` active units with the lowest ``prune_score``, then activate
    the ``n`` units with the highest ``grow_score`` among all inactive ones (the ones just dropped
    included, as the reference does). Returns ``(new_active, dropped, added)`` where dropped/added
    are the *net* changes (a unit dropped and grown back in the same update keeps its weights)."""
    active = active.to("cpu", torch.bool)
    n = max(0, min(int(n), int(active.sum())))
    pruned = select_top(prune_score, active, n, largest=False)
    after_prune = active & ~pruned
    grown = select_top(grow_score, ~after_prune, n, largest=True)
    new = after_prune | grown
    return new, active & ~new, new & ~active


# ----------------------------------------------------------------------------------------------
# the engine
class StructuredEngine(SparsityEngine):
    """S2ViTE prune-and-grow over heads and neurons at exact per-block budgets.

    Scores, and why each is what it is:

    * **Prune heads by Taylor importance** ``s_h = mean_b |sum_{tokens,dims} a_h * dL/da_h|`` with
      ``a_h`` the head's attention output (before ``proj``): the first-order change of the loss if
      ``a_h`` were set to zero, i.e. if the head were removed (Molchanov et al.); the absolute value per
      image, then the batch mean, so opposite-signed images do not cancel. A magnitude score would not
      do: a head's q/k weights act through a softmax and can be large and useless.
    * **Grow heads by gradient norm** ``mean_b ||dL/da_h||_1``: an inactive head outputs ``a_h = 0``,
      so its Taylor score is 0 by construction; the gradient says how much the loss would move if the
      head produced anything (RigL's criterion at head level). It is non-zero for inactive heads
      because ``proj``'s columns stay alive.
    * **Prune neurons by magnitude** ``||W1[j,:]||_1 + ||W2[:,j]||_1``: a neuron's contribution is
      bounded by its in- and out-weights, and it is free (no activations needed).
    * **Grow neurons by the gradient their fc2 column would get** ``||dL/dW2[:,j]||_1``, taken
      through *shadow* fc1 weights kept for every inactive neuron (``neuron_shadow.py``). With the
      fc1 row, bias and fc2 column all zero an inactive neuron's real gradient is exactly zero (the
      reference's weakness, SVITE_REFERENCE §2), so plain gradient growth could only re-pick the
      neurons it had just pruned. ``--growth random`` explores at random instead.

    Grown units can learn and leave the output unchanged at the moment of growth:

    * a grown **head** gets fresh q and k rows (timm's ``trunc_normal(0.02)``, biases 0) while its v
      rows and bias stay 0, so it outputs exactly 0 until v moves. With q = k = 0, as pruning leaves
      them, dL/dq and dL/dk would be exactly zero for ever: the head could only average all tokens;
    * a grown **neuron** gets its shadow fc1 row and bias, its fc2 column stays 0.

    Their optimizer moments follow ``--grown-moments`` (``optim_state.py``; default: kept).

    Activations are captured only for the forward/backward of a step that precedes an update (hooks
    are armed in ``after_optimizer_step`` of the step before), so ordinary steps pay nothing. Under
    DDP the head scores are averaged over ranks before deciding, so every rank takes the same
    decision without broadcasting masks; neuron scores come from DDP-averaged weights and gradients.
    """

    method = "s2vite"

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.model = ctx.model
        self.cfg = cfg
        if cfg.include or cfg.exclude:
            raise SviteError("--include/--exclude choose weights for unstructured methods; --method s2vite "
                             "masks whole heads and neurons")
        if cfg.growth not in ("gradient", "random"):
            raise SviteError(f"--growth {cfg.growth}: S2ViTE grows heads and neurons by gradient or at random")
        self.blocks = list(self.model.blocks)
        self.head_dims = [_attention_of(b, i).head_dim for i, b in enumerate(self.blocks)]
        self.num_heads = [_attention_of(b, i).num_heads for i, b in enumerate(self.blocks)]
        self.hidden = [_mlp_of(b, i).fc1.out_features for i, b in enumerate(self.blocks)]
        self.head_budget, self.neuron_budget = budgets(self.model, cfg.atten_density, cfg.other_density)
        self.schedule = PruneSchedule.from_config(cfg, ctx.total_steps, ctx.steps_per_epoch)
        self.grown_moments = check_policy(str(cfg.grown_moments))
        self.generator = torch.Generator().manual_seed(int(cfg.seed))
        units = self._units_from_init(ctx.init_masks) if ctx.init_masks is not None else None
        if units is None:
            units = self._random_units()
        self._set_units(units)
        self.shadow = ShadowNeurons([b.mlp for b in self.blocks], self.generator)  # before the masks zero fc1
        self._fired = MaskSet({n: m.clone() for n, m in units.items()})
        self.steps_done = 0
        self.updates = 0
        self.last_info: dict[str, Any] = {}
        self._hooks: list[Any] = []
        self._captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._captured_neurons: dict[int, torch.Tensor] = {}
        self._masks.apply(self.model)
        self._arm(self.schedule.is_update_step(1))

    # --- state (masks / units / fired: SparsityEngine's properties over _masks / _units / _fired) -----
    @property
    def armed(self) -> bool:
        """True while activation-capture hooks are registered (only before an update step)."""
        return bool(self._hooks)

    @property
    def head_scores(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Per block ``(taylor, grad_norm)`` captured from the last armed backward (local rank)."""
        return dict(self._captured)

    def _set_units(self, units: MaskSet) -> None:
        self._units = units
        self._masks = unit_weight_masks(self.model, units)

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
        if not any(name.endswith((".attn.qkv.weight", ".mlp.fc1.weight", ".mlp.fc2.weight")) for name in masks):
            return None
        src = f"--init {self.cfg.init}"
        units = MaskSet()
        for i in range(len(self.blocks)):
            qkv = masks.get(f"blocks.{i}.attn.qkv.weight")
            fc1 = masks.get(f"blocks.{i}.mlp.fc1.weight")
            fc2 = masks.get(f"blocks.{i}.mlp.fc2.weight")
            if qkv is None or fc1 is None or fc2 is None:
                raise SviteError(f"{src}: its masks do not cover qkv, fc1 and fc2 of block {i}")
            rows = qkv.reshape(3, self.num_heads[i], self.head_dims[i], -1)
            heads = rows.all(dim=(0, 2, 3))
            neurons = fc1.all(dim=1)
            if not (torch.equal(rows.any(dim=(0, 2, 3)), heads) and torch.equal(fc1.any(dim=1), neurons)
                    and torch.equal(fc2.all(dim=0), neurons) and torch.equal(fc2.any(dim=0), neurons)):
                raise SviteError(f"{src}: its masks are not head/neuron structured (block {i}); --method s2vite "
                                 "starts from a dense or an S2ViTE checkpoint")
            if int(heads.sum()) != self.head_budget[i] or int(neurons.sum()) != self.neuron_budget[i]:
                raise SviteError(f"{src}: block {i} keeps {int(heads.sum())} heads and {int(neurons.sum())} neurons, "
                                 f"but --atten-density/--other-density ask for {self.head_budget[i]} and "
                                 f"{self.neuron_budget[i]}")
            units[head_unit_name(i)] = heads.cpu()
            units[neuron_unit_name(i)] = neurons.cpu()
        return units

    # --- activation capture (armed only for the step before an update) ------------------------
    def _arm(self, on: bool) -> None:
        if on and not self._hooks:
            for i, block in enumerate(self.blocks):
                self._hooks.append(block.attn.norm.register_forward_hook(self._capture_hook(i)))
                self._hooks.append(block.mlp.register_forward_hook(self._mlp_hook(i)))
        elif not on:
            for handle in self._hooks:
                handle.remove()
            self._hooks = []

    def _capture_hook(self, index: int) -> Callable[..., None]:
        heads, head_dim = self.num_heads[index], self.head_dims[index]

        def forward_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            # attn.norm (an Identity in ViT/DeiT) receives the (B, N, H*d_h) attention output right
            # before proj: that tensor is a_h for every head at once.
            x = inputs[0]
            if not (torch.is_grad_enabled() and x.requires_grad):
                return  # evaluation passes between steps
            act = x.detach()

            def grad_hook(grad: torch.Tensor) -> None:
                b, n = act.shape[0], act.shape[1]
                a = act.float().reshape(b, n, heads, head_dim)
                g = grad.detach().float().reshape(b, n, heads, head_dim)
                taylor = (a * g).sum(dim=(1, 3)).abs().mean(dim=0)
                gnorm = g.abs().sum(dim=(1, 3)).mean(dim=0)
                self._captured[index] = (taylor, gnorm)

            x.register_hook(grad_hook)

        return forward_hook

    def _mlp_hook(self, index: int) -> Callable[..., None]:
        def forward_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            x = inputs[0].detach()
            alive = self._units[neuron_unit_name(index)]

            def grad_hook(grad: torch.Tensor) -> None:
                self._captured_neurons[index] = self.shadow.grow_scores(index, x, grad.detach(), alive)

            output.register_hook(grad_hook)

        return forward_hook

    # --- hook points ----------------------------------------------------------------------------
    def after_optimizer_step(self, step: int) -> bool:
        self._masks.apply(self.model)
        self.steps_done = step + 1
        changed = False
        if self.schedule.is_update_step(self.steps_done):
            self._update(self.steps_done)
            changed = True
        self._arm(self.schedule.is_update_step(self.steps_done + 1))
        return changed

    def _scores(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per block the heads' (taylor, grad-norm) and the neurons' growth scores of the last captured
        batch, averaged over DDP ranks. A block with no capture (no armed forward ran) scores zeros:
        ties, resolved by index."""
        device = next(self.model.parameters()).device
        parts = []
        for i in range(len(self.blocks)):
            t, g = self._captured.get(i, (torch.zeros(self.num_heads[i]), torch.zeros(self.num_heads[i])))
            n = self._captured_neurons.get(i, torch.zeros(self.hidden[i]))
            parts += [t.to(device, torch.float32), g.to(device, torch.float32), n.to(device, torch.float32)]
        flat = torch.cat(parts)
        if self.ctx.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(flat)
            flat = flat / self.ctx.world_size
        chunks = list(flat.cpu().split([size for h, n in zip(self.num_heads, self.hidden, strict=True)
                                        for size in (h, h, n)]))
        self._captured, self._captured_neurons = {}, {}
        return chunks[0::3], chunks[1::3], chunks[2::3]

    @torch.no_grad()
    def _neuron_magnitude(self, i: int) -> torch.Tensor:
        mlp = self.blocks[i].mlp
        return (mlp.fc1.weight.abs().sum(dim=1).float() + mlp.fc2.weight.abs().sum(dim=0).float()).cpu()

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
                                                ("neurons", neuron_unit_name(i), self._neuron_magnitude(i),
                                                 neuron_grow[i])):
                old = self._units[name]
                n = PruneSchedule.n_prune(rate, int(old.sum()))
                if random_growth:
                    grow_s = torch.rand(old.numel(), generator=self.generator, dtype=torch.float64)
                new, dropped, grown = prune_and_grow(old, prune_s, grow_s, n)
                new_units[name] = new
                added[name] = grown
                removed[name] = dropped
                counts[f"{kind}_pruned"] += int(dropped.sum())
                counts[f"{kind}_grown"] += int(grown.sum())
                counts[f"{kind}_exchanged"] += n
        for i in range(len(self.blocks)):  # remember the input weights of neurons about to be masked
            self.shadow.store(i, removed[neuron_unit_name(i)])
        self._set_units(new_units)
        self._check_budgets()
        self._masks.apply(self.model)  # dropped units -> exactly zero
        self._init_grown(added)
        for name, alive in new_units.items():
            self._fired[name] = self._fired[name] | alive
        self.updates += 1
        self.last_info = {"rate": float(rate), "step": steps_done, **counts}

    def _check_budgets(self) -> None:
        for i in range(len(self.blocks)):
            h, n = int(self._units[head_unit_name(i)].sum()), int(self._units[neuron_unit_name(i)].sum())
            if h != self.head_budget[i] or n != self.neuron_budget[i]:  # an internal invariant, not user input
                raise RuntimeError(f"S2ViTE budget broken in block {i}: {h} heads / {n} neurons, expected "
                                   f"{self.head_budget[i]} / {self.neuron_budget[i]}")

    @torch.no_grad()
    def _init_grown(self, added: Mapping[str, torch.Tensor]) -> None:
        """Newly active units learn without changing the output at growth (class docstring): fresh q/k
        rows for a head (v stays 0), the shadow fc1 row for a neuron (fc2 column stays 0)."""
        for i, block in enumerate(self.blocks):
            attn, mlp = block.attn, block.mlp
            heads, neurons = added[head_unit_name(i)], added[neuron_unit_name(i)]
            if bool(heads.any()):
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
            "head_growth": "gradient_norm" if cfg.growth == "gradient" else "random", "grown_heads": "fresh_qk",
            "neuron_growth": "shadow_gradient" if cfg.growth == "gradient" else "random",
            "update_start": str(cfg.update_start), "update_start_step": self.schedule.start,
            "heads_per_block": self.head_budget, "neurons_per_block": self.neuron_budget,
            "num_updates": len(self.schedule.update_steps()), "total_steps": self.schedule.total_steps,
            "seed": int(cfg.seed)}}

    def snapshot_info(self) -> dict[str, Any]:
        """Updates so far and the rate of the last one; at that update's own snapshot also the net
        heads/neurons pruned and grown (summed over blocks) and ``n`` exchanged (ints), so an epoch
        snapshot does not repeat older counts."""
        info: dict[str, Any] = {"updates": self.updates,
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
                "last_info": dict(self.last_info), "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        units = MaskSet({n: torch.as_tensor(m).to(torch.bool) for n, m in state["units"].items()})
        if set(units) != set(self._units) or any(units[n].shape != self._units[n].shape for n in units):
            raise SviteError("--resume: the saved S2ViTE head/neuron masks do not fit this model")
        self._set_units(units)
        self._check_budgets()
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
        self._captured, self._captured_neurons = {}, {}
        self._masks.apply(self.model)
        self._arm(self.schedule.is_update_step(self.steps_done + 1))


def build_structured_engine(ctx: EngineContext) -> SparsityEngine:
    """The S2ViTE engine (``--method s2vite``)."""
    if ctx.config.method != "s2vite":
        raise SviteError(f"--method {ctx.config.method}: not a structured method")
    return StructuredEngine(ctx)


# ----------------------------------------------------------------------------------------------
# compaction
def _smaller_attention(attn: Attention, heads: int, index: int) -> Attention:
    if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
        raise SviteError(f"block {index}: attention with a scale norm or a gate cannot drop heads exactly")
    w = attn.qkv.weight
    new = Attention(attn.qkv.in_features, num_heads=heads, attn_head_dim=attn.head_dim,
                    dim_out=attn.proj.out_features, qkv_bias=attn.qkv.bias is not None,
                    proj_bias=attn.proj.bias is not None, attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p,
                    device=w.device, dtype=w.dtype)
    new.q_norm, new.k_norm = attn.q_norm, attn.k_norm  # per head_dim: independent of the head count
    new.fused_attn = attn.fused_attn
    new.train(attn.training)
    return new


def _smaller_mlp(mlp: Mlp, hidden: int, index: int) -> Mlp:
    if not isinstance(mlp.norm, nn.Identity):
        raise SviteError(f"block {index}: an Mlp with a hidden norm cannot drop neurons exactly")
    w = mlp.fc1.weight
    new = Mlp(mlp.fc1.in_features, hidden_features=hidden, out_features=mlp.fc2.out_features,
              bias=(mlp.fc1.bias is not None, mlp.fc2.bias is not None), drop=(mlp.drop1.p, mlp.drop2.p),
              device=w.device, dtype=w.dtype)
    new.act = mlp.act  # keep the exact activation instance (e.g. GELU's approximation)
    new.train(mlp.training)
    return new


def reshape_blocks(model: nn.Module, block_heads: list[int] | None, block_hidden: list[int] | None) -> None:
    """Give each block ``block_heads[i]`` heads (same head dim) and ``block_hidden[i]`` MLP neurons,
    replacing its ``attn``/``mlp`` with timm's own modules of that size (weights to be loaded after).
    ``build_model`` calls this for a ModelConfig of a compacted model."""
    blocks = list(model.blocks)
    for label, sizes in (("block_heads", block_heads), ("block_hidden", block_hidden)):
        if sizes is None:
            continue
        if len(sizes) != len(blocks):
            raise SviteError(f"model config: {label} has {len(sizes)} entries but the model has {len(blocks)} blocks")
        if any(int(s) < 1 for s in sizes):
            raise SviteError(f"model config: {label} must be >= 1 per block, got {list(sizes)}")
    for i, block in enumerate(blocks):
        attn, mlp = _attention_of(block, i), _mlp_of(block, i)
        if block_heads is not None and int(block_heads[i]) != attn.num_heads:
            block.attn = _smaller_attention(attn, int(block_heads[i]), i)
        if block_hidden is not None and int(block_hidden[i]) != mlp.fc1.out_features:
            block.mlp = _smaller_mlp(mlp, int(block_hidden[i]), i)


@torch.no_grad()
def compact_model(model: nn.Module, model_config: ModelConfig, units: Mapping[str, torch.Tensor],
                  masks: MaskSet | None = None) -> tuple[nn.Module, ModelConfig]:
    """A physically smaller copy of ``model`` without its pruned heads and neurons.

    The reference model is ``model`` with ``masks`` applied (when None: the masks ``units`` stand
    for). A pruned head must have zero value rows: it then outputs its value bias ``b_v`` at every
    token (attention rows sum to 1), which is folded into ``proj.bias`` as ``proj[:, h] @ b_v`` (zero
    for our checkpoints, non-zero for official SViTE ones). A pruned neuron needs a zero fc2 column, or
    a zero fc1 row, in which case its constant ``act(b1_j)`` is folded into ``fc2.bias``.
    """
    from .models import build_model

    masked = copy.deepcopy(model).float().cpu().eval()
    (masks if masks is not None else unit_weight_masks(masked, units)).apply(masked)
    blocks = list(masked.blocks)
    heads_alive, neurons_alive = [], []
    for i, block in enumerate(blocks):
        attn, mlp = _attention_of(block, i), _mlp_of(block, i)
        heads = units.get(head_unit_name(i))
        neurons = units.get(neuron_unit_name(i))
        heads = torch.ones(attn.num_heads, dtype=torch.bool) if heads is None else heads.cpu().to(torch.bool)
        neurons = (torch.ones(mlp.fc1.out_features, dtype=torch.bool) if neurons is None
                   else neurons.cpu().to(torch.bool))
        if heads.numel() != attn.num_heads or neurons.numel() != mlp.fc1.out_features:
            raise SviteError(f"block {i}: head/neuron masks have {heads.numel()}/{neurons.numel()} entries, the model "
                             f"{attn.num_heads}/{mlp.fc1.out_features}")
        if not bool(heads.any()) or not bool(neurons.any()):
            raise SviteError(f"block {i}: no head or no neuron survives; a block needs at least one of each")
        heads_alive.append(heads)
        neurons_alive.append(neurons)
    config = dataclasses.replace(model_config, block_heads=[int(h.sum()) for h in heads_alive],
                                 block_hidden=[int(n.sum()) for n in neurons_alive], extra=dict(model_config.extra))
    state = {k: v.clone() for k, v in masked.state_dict().items()}
    for i, block in enumerate(blocks):
        _slice_attention(state, f"blocks.{i}.attn", block.attn, heads_alive[i], i)
        _slice_mlp(state, f"blocks.{i}.mlp", block.mlp, neurons_alive[i], i)
    small = build_model(config)
    small.load_state_dict(state, strict=True)
    small.eval()
    return small, config


def _slice_attention(state: dict[str, torch.Tensor], prefix: str, attn: Attention, alive: torch.Tensor,
                     index: int) -> None:
    h, d, dim = attn.num_heads, attn.head_dim, attn.qkv.in_features
    w = state[f"{prefix}.qkv.weight"].reshape(3, h, d, dim)
    dead = ~alive
    if bool((w[2, dead] != 0).any()):
        raise SviteError(f"block {index}: a head marked pruned still has non-zero value weights; "
                         "the masks do not describe pruned heads")
    proj_w = state[f"{prefix}.proj.weight"].reshape(-1, h, d)
    bias = state.get(f"{prefix}.qkv.bias")
    if bias is not None:
        b = bias.reshape(3, h, d)
        b_v = b[2, dead]  # (dead, d): what each pruned head outputs at every token
        if bool((b_v != 0).any()):
            fold = torch.einsum("ohd,hd->o", proj_w[:, dead].double(), b_v.double())
            if f"{prefix}.proj.bias" not in state:
                raise SviteError(f"block {index}: pruned heads have a value bias but proj has no bias to fold it into")
            state[f"{prefix}.proj.bias"] = (state[f"{prefix}.proj.bias"].double() + fold).to(proj_w.dtype)
        state[f"{prefix}.qkv.bias"] = b[:, alive].reshape(-1).contiguous()
    state[f"{prefix}.qkv.weight"] = w[:, alive].reshape(-1, dim).contiguous()
    state[f"{prefix}.proj.weight"] = proj_w[:, alive].reshape(proj_w.shape[0], -1).contiguous()


def _slice_mlp(state: dict[str, torch.Tensor], prefix: str, mlp: Mlp, alive: torch.Tensor, index: int) -> None:
    w1, w2 = state[f"{prefix}.fc1.weight"], state[f"{prefix}.fc2.weight"]
    b1 = state.get(f"{prefix}.fc1.bias")
    dead = (~alive).nonzero().reshape(-1)
    live_out = (w2[:, dead] != 0).any(dim=0)
    if bool(live_out.any()):
        # the fc2 column is alive: exact only if the neuron's input is a constant act(b1_j)
        idx = dead[live_out]
        if bool((w1[idx] != 0).any()):
            raise SviteError(f"block {index}: a neuron marked pruned still has non-zero fc1 and fc2 weights; "
                             "the masks do not describe pruned neurons")
        const = mlp.act(b1[idx]) if b1 is not None else mlp.act(torch.zeros(len(idx), dtype=w1.dtype))
        fold = w2[:, idx].double() @ const.double()
        if bool((fold != 0).any()):
            if f"{prefix}.fc2.bias" not in state:
                raise SviteError(f"block {index}: pruned neurons have a constant output but fc2 has no bias")
            state[f"{prefix}.fc2.bias"] = (state[f"{prefix}.fc2.bias"].double() + fold).to(w2.dtype)
    state[f"{prefix}.fc1.weight"] = w1[alive].contiguous()
    if b1 is not None:
        state[f"{prefix}.fc1.bias"] = b1[alive].contiguous()
    state[f"{prefix}.fc2.weight"] = w2[:, alive].contiguous()


def compact(loaded: Any) -> tuple[nn.Module, ModelConfig]:
    """``compact(LoadedCheckpoint) -> (smaller model, its ModelConfig)`` for an S2ViTE checkpoint
    (ours or the official release); same logits as the masked model."""
    units = loaded.units
    if units is None or not any(n.endswith((".attn.heads", ".mlp.neurons")) for n in units):
        raise SviteError(f"{loaded.path}: has no head/neuron masks (not an S2ViTE checkpoint); nothing to compact")
    return compact_model(loaded.model, loaded.model_config, units, loaded.masks)


@torch.no_grad()
def max_logit_diff(a: nn.Module, b: nn.Module, *, batch: int = 4, seed: int = 0, masks: MaskSet | None = None) -> float:
    """max |a(x) - b(x)| over random inputs (fp32, eval mode); ``masks`` are applied to a copy of ``a``."""
    from .evaluate import _input_size

    if masks is not None:
        a = copy.deepcopy(a)
        masks.apply(a)
    a, b = a.float().cpu().eval(), b.float().cpu().eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *_input_size(a)), generator=gen)
    return float((a(x) - b(x)).abs().max())


_META_DROP = ("format", "format_version", "model_config", "versions", "resume_file", "mask_shapes", "unit_shapes",
              "fired_shapes", "history")


def compact_file(path: str | Path, out: str | Path) -> dict[str, Any]:
    """``svite compact PATH OUT``: load, compact, save (method ``s2vite-compact``), verify the saved file.

    Returns what the CLI prints: parameters, heads/hidden per block, FLOPs before/after and the max
    logit difference between the masked source and the reloaded compacted model on random inputs.
    """
    from .checkpoint import load_checkpoint, save_checkpoint
    from .evaluate import count_flops, count_parameters

    path, out = Path(path), Path(out)
    if out.exists() and (out.is_dir() or out.resolve() == path.resolve()):
        raise SviteError(f"{out}: output is the input or a directory; choose another OUT")
    if out.exists():
        raise SviteError(f"{out}: already exists; choose another OUT (compact never overwrites a file)")
    loaded = load_checkpoint(path)
    small, config = compact(loaded)
    masked = copy.deepcopy(loaded.model).float().cpu().eval()
    reference_masks = loaded.masks if loaded.masks is not None else unit_weight_masks(masked, loaded.units)
    reference_masks.apply(masked)
    heads_before = [int(b.attn.num_heads) for b in masked.blocks]
    hidden_before = [int(b.mlp.fc1.out_features) for b in masked.blocks]
    meta = {k: v for k, v in loaded.meta.items() if k not in _META_DROP}
    meta.update({"method": "s2vite-compact", "source_method": loaded.method, "source": str(path),
                 "source_format": loaded.format,
                 "compacted_from": {"num_heads": heads_before, "mlp_hidden": hidden_before,
                                    "heads_alive": [[int(v) for v in loaded.units[head_unit_name(i)].nonzero()
                                                     .reshape(-1)] if head_unit_name(i) in loaded.units else None
                                                    for i in range(len(heads_before))]}})
    save_checkpoint(out, small, config, meta=meta)
    reloaded = load_checkpoint(out).model
    before = count_parameters(masked, reference_masks)
    after = count_parameters(reloaded)
    flops_before = count_flops(masked, reference_masks, loaded.units)
    flops_after = count_flops(reloaded)
    return {
        "path": str(path), "out": str(out), "source_method": loaded.method,
        "params_before": before["params"], "nonzeros_before": before["nonzeros"], "params_after": after["params"],
        "flops_dense": flops_before["dense"], "flops_masked": flops_before["sparse"], "flops_after": flops_after["dense"],
        "max_abs_logit_diff": max_logit_diff(masked, reloaded),
        "blocks": [{"block": i, "heads_before": heads_before[i], "heads_after": int(b.attn.num_heads),
                    "hidden_before": hidden_before[i], "hidden_after": int(b.mlp.fc1.out_features)}
                   for i, b in enumerate(reloaded.blocks)],
    }
