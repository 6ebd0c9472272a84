"""SViTE: unstructured dynamic sparse training at a fixed per-layer budget, plus the ``static`` and
``oneshot`` baselines that share its parts.

A method is a composition of small parts (ARCHITECTURE.md, "Sparse training as explicit state"):

* **selection** -- which parameters are sparsified: :func:`sparsifiable_names` (the reference's rule,
  overridable by ``--include`` / ``--exclude`` globs);
* **distribution** -- how much each layer keeps: :func:`layer_densities` (``fixed_ERK``, ``ER``,
  ``uniform``, ``custom``) turned into integer budgets by :func:`layer_budgets`;
* **schedule** -- when and how much changes: :class:`~sparsity_core.schedules.PruneSchedule`;
* **scorers** -- magnitude prune; gradient (RigL), momentum (the optimizer's first moment, as Sparse
  Momentum) or random (SET) growth: :func:`exchange`.

Every choice is a ``torch.topk`` over scores in which ineligible positions can never win, never a
threshold comparison, so ties in magnitudes and all-zero gradients cannot change a count: each
layer holds exactly its budget after initialisation and after every update (the reference draws
Bernoulli masks and prunes with ``|w| > threshold``, so its counts drift). ``topk`` is deterministic
for a given input on a given device type, so DDP ranks (identical weights, averaged gradients, the
same seeded generator) take identical decisions without any broadcast.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .engine import EngineContext, SparsityEngine
from .errors import SviteError
from .masks import MaskSet, default_sparsifiable
from .optim_state import check_policy, reset_grown_state
from .schedules import PruneSchedule

SPARSE_INITS = ("fixed_ERK", "ER", "uniform", "custom")
GROWTHS = ("gradient", "momentum", "random")
DEATHS = ("magnitude",)
UNSTRUCTURED_METHODS = ("svite", "static", "oneshot")


# ----------------------------------------------------------------------------------------------
# selection
def sparsifiable_names(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Names of the parameters a run sparsifies, in ``named_parameters()`` order.

    Without ``include`` this is the reference's rule (:func:`masks.default_sparsifiable`). ``include``
    globs replace it: every parameter with ndim >= 2 matching one of them (so ``'blocks.*'`` picks the
    block weights, never their biases or norms; ``pos_embed`` can be named explicitly). ``exclude``
    globs are then removed. A glob that matches no parameter at all is almost always a typo, so it is
    an error rather than a silent no-op.
    """
    params = dict(model.named_parameters())
    for flag, patterns in (("--include", include), ("--exclude", exclude)):
        for pat in patterns:
            if not any(fnmatchcase(n, pat) for n in params):
                raise SviteError(f"{flag} {pat!r}: matches no parameter of the model")
    if include:
        names = [n for n, p in params.items() if p.ndim >= 2 and any(fnmatchcase(n, pat) for pat in include)]
    else:
        names = default_sparsifiable(model)
    names = [n for n in names if not any(fnmatchcase(n, pat) for pat in exclude)]
    if not names:
        raise SviteError("--include/--exclude: no parameter (with ndim >= 2) is left to sparsify")
    return names


# ----------------------------------------------------------------------------------------------
# distribution
def _raw_scale(shape: Sequence[int], mode: str) -> float:
    """Erdős–Rényi scale of a layer: density ∝ this.

    ``fixed_ERK``: sum(shape)/prod(shape), kernel dims included (the reference, power 1).
    ``ER``: (rows + cols)/(rows * cols) of the layer as a matrix (C_out x C_in*kh*kw), the SET
    formulation for the linear map; it differs from ERK only for convolutions (the patch embed).
    """
    n = math.prod(shape)
    if mode == "fixed_ERK":
        return sum(shape) / n
    rows = shape[0]
    cols = n // rows
    return (rows + cols) / n


def _solve_erdos_renyi(shapes: Mapping[str, Sequence[int]], density: float, mode: str) -> dict[str, float]:
    """The reference's fixed_ERK solve: eps = (d*N_sparse - (1-d)*N_dense) / sum(raw*N); any layer with
    eps*raw > 1 (all layers tied at the current max raw) is made dense and eps is solved again."""
    raw = {n: _raw_scale(s, mode) for n, s in shapes.items()}
    dense: set[str] = set()
    eps = 0.0
    while True:
        rhs, divisor = 0.0, 0.0
        for name, shape in shapes.items():
            n_param = math.prod(shape)
            if name in dense:
                rhs -= n_param * (1 - density)
            else:
                rhs += n_param * density
                divisor += raw[name] * n_param
        live = {n: r for n, r in raw.items() if n not in dense}
        if not live:
            break
        eps = rhs / divisor
        max_raw = max(live.values())
        if max_raw * eps > 1:
            dense.update(n for n, r in live.items() if r == max_raw)
        else:
            break
    return {n: 1.0 if n in dense else min(1.0, eps * raw[n]) for n in shapes}


def load_custom_densities(path: str | Path | None, names: Iterable[str]) -> dict[str, float]:
    """``--mask-path``: a JSON object {param_name: density}; ``<param>_mask`` keys (the reference's
    naming) are accepted too. Every sparsified parameter must be listed, nothing else may be."""
    if not path:
        raise SviteError("--sparse-init custom needs --mask-path FILE (a JSON object {param_name: density})")
    p = Path(path)
    if not p.is_file():
        raise SviteError(f"--mask-path {path}: no such file")
    try:
        raw = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SviteError(f"--mask-path {path}: not a JSON file ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(raw, dict):
        raise SviteError(f"--mask-path {path}: expected a JSON object {{param_name: density}}")
    table: dict[str, float] = {}
    for key, value in raw.items():
        name = key[: -len("_mask")] if key.endswith("_mask") else key
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
            raise SviteError(f"--mask-path {path}: density of '{key}' must be a number in (0, 1], got {value!r}")
        table[name] = float(value)
    names = list(names)
    missing = [n for n in names if n not in table]
    unknown = [n for n in table if n not in names]
    if missing:
        raise SviteError(f"--mask-path {path}: no density for {len(missing)} sparsified parameter(s), e.g. "
                         f"'{missing[0]}'")
    if unknown:
        raise SviteError(f"--mask-path {path}: '{unknown[0]}' is not a sparsified parameter of this model")
    return {n: table[n] for n in names}


def layer_densities(shapes: Mapping[str, Sequence[int]], density: float, mode: str = "fixed_ERK",
                    custom: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-layer densities whose parameter-weighted mean is ``density`` (custom: as given)."""
    if not 0 < density <= 1:
        raise SviteError(f"--density must be in (0, 1], got {density}")
    if mode in ("fixed_ERK", "ER"):
        return _solve_erdos_renyi(shapes, density, mode)
    if mode == "uniform":
        return {n: float(density) for n in shapes}
    if mode == "custom":
        if custom is None:
            raise SviteError("--sparse-init custom needs --mask-path FILE")
        return {n: float(custom[n]) for n in shapes}
    raise SviteError(f"--sparse-init: unknown mode '{mode}' (choose {', '.join(SPARSE_INITS)})")


def layer_budgets(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]) -> dict[str, int]:
    """Exact nonzero counts: round(density * numel), at least one weight, at most all of them."""
    return {n: max(1, min(math.prod(s), round(densities[n] * math.prod(s)))) for n, s in shapes.items()}


# ----------------------------------------------------------------------------------------------
# scorers
def _flat(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view sharing storage (in-place edits must reach the parameter / optimizer state)."""
    if not t.is_contiguous():
        raise ValueError("sparsity engine needs contiguous tensors")
    return t.view(-1)


def random_mask(shape: Sequence[int], k: int, generator: torch.Generator, device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """Exactly ``k`` active positions, uniformly at random (a seeded permutation, so ranks agree)."""
    n = math.prod(shape)
    idx = torch.randperm(n, generator=generator)[:k]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return mask.view(tuple(shape)).to(device)


class Scratch:
    """Reusable flat buffers for :func:`exchange`, so an update allocates nothing the size of a layer
    (fresh multi-megabyte tensors cost page faults on every use; on a busy CPU that dominates)."""

    def __init__(self) -> None:
        self._float: torch.Tensor | None = None
        self._flags: torch.Tensor | None = None  # all False between calls

    def get(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._float is None or self._float.numel() < n or self._float.device != device:
            self._float = torch.empty(n, device=device)
            self._flags = torch.zeros(n, dtype=torch.bool, device=device)
        assert self._flags is not None
        return self._float[:n], self._flags[:n]


@torch.no_grad()
def exchange(weight: torch.Tensor, grad: torch.Tensor | None, mask: torch.Tensor, n: int, growth: str = "gradient",
             generator: torch.Generator | None = None, active: int | None = None, scratch: Scratch | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's prune-and-grow, applied to ``mask`` in place; returns flat indices ``(pruned, grown)``,
    each of length ``n``, and ``revived`` (bool, aligned with ``grown``: grown straight back after being
    pruned in this same call).

    Prune: the ``n`` active weights of smallest |w|. Grow: ``n`` positions inactive *after* pruning
    (so a just-pruned weight may come straight back, as in the reference) with the largest |grad|
    (RigL) or at random (SET). Ineligible positions get a score that can never be selected (+inf for
    pruning, -1 below every |grad| or uniform draw for growth), so exactly ``n`` go and ``n`` come
    whatever the ties; NaN scores only ever land on eligible positions. ``active`` (the layer's
    budget, when the caller knows it) saves a count over the mask.
    """
    m = _flat(mask)
    if active is None:
        active = int(torch.count_nonzero(m))
    if not 0 <= n <= active:
        raise ValueError(f"cannot prune {n} of {active} active weights")
    if growth not in GROWTHS:
        raise SviteError(f"--growth: unknown mode '{growth}' (choose {', '.join(GROWTHS)})")
    buf, flags = (scratch or Scratch()).get(m.numel(), m.device)
    inf = torch.full((), math.inf, dtype=buf.dtype, device=buf.device)
    torch.where(m, weight.detach().reshape(-1).to(buf.dtype), inf, out=buf).abs_()
    pruned = torch.topk(buf, n, largest=False, sorted=False).indices
    m.index_fill_(0, pruned, False)  # the mask after pruning: growth candidates are where it is False
    if growth == "random":
        if buf.device.type == "cpu":
            torch.rand(m.numel(), generator=generator, out=buf)
        else:  # the generator lives on the CPU so that every rank and device draws the same numbers
            buf.copy_(torch.rand(m.numel(), generator=generator))
    elif grad is None:
        buf.zero_()  # no gradient: every candidate tied at 0
    else:
        torch.abs(grad.detach().reshape(-1), out=buf)
    buf.masked_fill_(m, -1.0)
    grown = torch.topk(buf, n, largest=True, sorted=False).indices
    flags.index_fill_(0, pruned, True)
    revived = flags.index_select(0, grown)
    flags.index_fill_(0, pruned, False)
    m.index_fill_(0, grown, True)
    return pruned, grown, revived


def _seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator private to the engine: identical on every rank, independent of the global
    stream that initialised the weights (same seed, different constant)."""
    return torch.Generator().manual_seed((int(seed) * 0x9E3779B1 + 0x5EED) % (2**63))


def _masks_state(masks: MaskSet) -> dict[str, torch.Tensor]:
    return {n: m.detach().to("cpu").clone() for n, m in masks.items()}


def _masks_from_state(state: Mapping[str, torch.Tensor], names: Sequence[str], params: Sequence[torch.Tensor]
                      ) -> MaskSet:
    """Own copies on the parameters' devices (updates edit masks in place; the state must not change)."""
    return MaskSet({n: state[n].to(device=p.device, dtype=torch.bool).clone().contiguous()
                    for n, p in zip(names, params, strict=True)})


# ----------------------------------------------------------------------------------------------
# engines
class UnstructuredEngine(SparsityEngine):
    """``svite`` (dynamic: prune-and-grow on the schedule) and ``static`` (the same initial masks,
    never updated). Masks are re-applied after every optimizer step in one fused multiply."""

    def __init__(self, ctx: EngineContext, dynamic: bool = True) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        self.method = "svite" if dynamic else "static"
        self.dynamic = dynamic
        self.growth = str(cfg.growth)
        self.grown_moments = check_policy(str(cfg.grown_moments))
        model = ctx.model
        self.names = sparsifiable_names(model, cfg.include or (), cfg.exclude or ())
        params = dict(model.named_parameters())
        self._params = [params[n] for n in self.names]
        self.shapes = {n: tuple(p.shape) for n, p in zip(self.names, self._params, strict=True)}
        custom = load_custom_densities(cfg.mask_path, self.names) if cfg.sparse_init == "custom" else None
        self.init_densities = layer_densities(self.shapes, float(cfg.density), cfg.sparse_init, custom)
        self.budgets = layer_budgets(self.shapes, self.init_densities)
        self.schedule = PruneSchedule.from_config(cfg, ctx.total_steps, ctx.steps_per_epoch) if dynamic else None
        self._generator = _seeded_generator(cfg.seed)
        self._masks, self.init_topology = self._initial_masks(ctx.init_masks)
        self._fired = self._masks.clone()
        self.updates_done = 0
        self.steps_done = 0
        self._last: dict[str, Any] = {}
        self._scratch = Scratch()
        self._masks.apply_to(self._params)

    # --- construction -----------------------------------------------------------------------
    def _initial_masks(self, init_masks: MaskSet | None) -> tuple[MaskSet, dict[str, Any]]:
        if init_masks is None or not len(init_masks):
            masks = MaskSet({n: random_mask(self.shapes[n], self.budgets[n], self._generator, p.device)
                             for n, p in zip(self.names, self._params, strict=True)})
            return masks, {"source": "random"}
        missing = [n for n in self.names if n not in init_masks]
        if missing:
            raise SviteError(f"--init: its masks do not cover '{missing[0]}' (sparsified here); train from its weights "
                             "with a checkpoint without masks, or match --include/--exclude")
        wrong = [n for n in self.names if tuple(init_masks[n].shape) != self.shapes[n]]
        if wrong:
            raise SviteError(f"--init: mask of '{wrong[0]}' has shape {tuple(init_masks[wrong[0]].shape)}, the model's "
                             f"weight has {self.shapes[wrong[0]]}")
        masks, adjusted = {}, []
        for name, p in zip(self.names, self._params, strict=True):
            m = init_masks[name].to(device=p.device, dtype=torch.bool).clone().contiguous()
            have, want = int(m.sum()), self.budgets[name]
            if have > want:  # keep the largest |w| among the active
                score = p.detach().abs().reshape(-1).masked_fill(~_flat(m), -1.0)
                keep = torch.topk(score, want, sorted=False).indices
                m = torch.zeros_like(m)
                _flat(m)[keep] = True
                adjusted.append(name)
            elif have < want:  # add random inactive positions (their weights are zero: no magnitude to rank)
                score = torch.rand(m.numel(), generator=self._generator).to(p.device).masked_fill_(_flat(m), -1.0)
                _flat(m)[torch.topk(score, want - have, sorted=False).indices] = True
                adjusted.append(name)
            masks[name] = m
        return MaskSet(masks), {"source": "init", "adjusted_layers": adjusted}

    # --- interface (masks / fired: SparsityEngine's properties over _masks / _fired) --------------
    def after_optimizer_step(self, step: int) -> bool:
        """Zero masked weights (one fused multiply), then, on schedule, update the topology: the weights
        have just stepped and ``param.grad`` still holds this minibatch's dense gradient."""
        self._masks.apply_to(self._params)
        self.steps_done = step + 1
        if self.dynamic and self.schedule.is_update_step(step + 1):
            self.update(step + 1)
            return True
        return False

    @torch.no_grad()
    def update(self, steps_done: int) -> dict[str, Any]:
        """One prune-and-grow update of every layer (fully dense layers are skipped).

        A weight pruned and grown back in the same update (``revived``) simply stays: it keeps its value
        and its optimizer moments, as in the reference and RigL. Only new connections (inactive
        before the update) start at zero, their moments as ``grown_moments`` says (optim_state.py)."""
        assert self.schedule is not None
        rate = self.schedule.rate(steps_done)
        pruned_n: dict[str, int] = {}
        revived_n: dict[str, int] = {}
        optimizer = self.ctx.optimizer
        for name, param in zip(self.names, self._params, strict=True):
            budget = self.budgets[name]
            if budget >= param.numel():
                continue
            n = PruneSchedule.n_prune(rate, budget)
            if n == 0:
                continue
            mask = self._masks[name]
            w = _flat(param.data)
            # A position grown straight back after pruning ("revived") simply stays: it keeps its value and
            # moments. Gathering the grown positions' values (zeroed unless revived) before pruning and
            # writing them back afterwards restores the revived ones and starts new connections at exactly
            # 0, without set arithmetic (nonzero) over the index lists.
            pruned, grown, revived = exchange(param, self._growth_signal(param), mask, n, self.growth, self._generator,
                                              active=budget, scratch=self._scratch)
            grown_values = w.index_select(0, grown).mul_(revived)
            w.index_fill_(0, pruned, 0)  # pruned weights are zero now, not after the next step
            w.index_copy_(0, grown, grown_values)
            if self.grown_moments != "keep":
                reset_grown_state(optimizer, param, grown[~revived], self.grown_moments)
            _flat(self._fired[name]).index_fill_(0, grown, True)
            revived_n[name] = int(torch.count_nonzero(revived))
            self._masks[name] = mask  # same tensor: re-setting it invalidates the fused-multiply cache
            pruned_n[name] = n
        self.updates_done += 1
        self._last = {"step": int(steps_done), "rate": float(rate), "pruned": pruned_n, "grown": dict(pruned_n),
                      "revived": revived_n}
        return self._last

    def _growth_signal(self, param: torch.Tensor) -> torch.Tensor | None:
        """What gradient growth ranks by |.|: this minibatch's gradient (RigL, the reference), or for
        ``momentum`` the optimizer's running mean of the gradients (AdamW ``exp_avg``, SGD
        ``momentum_buffer``): masked weights get real gradients at every step (the forward is dense),
        so it averages ~1/(1-beta1) minibatches instead of trusting one."""
        if self.growth == "momentum":
            state = self.ctx.optimizer.state.get(param, {})
            for key in ("exp_avg", "momentum_buffer"):
                if isinstance(state.get(key), torch.Tensor) and state[key].shape == param.shape:
                    return state[key]
        return param.grad

    def snapshot_info(self) -> dict[str, Any]:
        """The rate of the last update, and its per-layer pruned/grown/revived counts when this snapshot
        is taken at that update's step (so an epoch snapshot does not repeat older counts)."""
        if not self.dynamic:
            return {}
        info: dict[str, Any] = {"updates": self.updates_done,
                                "fired_density": round(self._fired.overall_density(), 6)}
        if self._last:
            info["rate"] = self._last["rate"]
            info["last_update_step"] = self._last["step"]
            if self._last["step"] == self.steps_done:
                info.update(pruned=self._last["pruned"], grown=self._last["grown"], revived=self._last["revived"])
        return info

    def describe(self) -> dict[str, Any]:
        cfg = self.ctx.config
        total = sum(math.prod(s) for s in self.shapes.values())
        settings: dict[str, Any] = {
            "density": float(cfg.density), "sparse_init": cfg.sparse_init, "mask_path": cfg.mask_path,
            "include": list(cfg.include or []), "exclude": list(cfg.exclude or []),
            "overall_density": sum(self.budgets.values()) / total,
            "layer_densities": {n: self.budgets[n] / math.prod(self.shapes[n]) for n in self.names},
            "layer_budgets": dict(self.budgets), "init_topology": self.init_topology, "seed": int(cfg.seed),
        }
        if self.dynamic:
            assert self.schedule is not None
            settings.update({"update_frequency": int(cfg.update_frequency), "death_rate": float(cfg.death_rate),
                             "decay_schedule": cfg.decay_schedule, "t_end": float(cfg.t_end), "growth": self.growth,
                             "death": cfg.death, "grown_moments": self.grown_moments,
                             "update_start": str(cfg.update_start), "update_start_step": self.schedule.start,
                             "num_updates": self.schedule.num_updates()})
        return {"method": self.method, "settings": settings}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "names": list(self.names), "budgets": dict(self.budgets),
                "masks": _masks_state(self._masks), "fired": _masks_state(self._fired),
                "generator": self._generator.get_state(), "updates_done": self.updates_done,
                "steps_done": self.steps_done, "last": dict(self._last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method or list(state.get("names", [])) != self.names:
            raise SviteError(f"--resume: the saved {state.get('method')} engine does not match this --method "
                             f"{self.method} (different method or sparsified parameters)")
        if dict(state["budgets"]) != self.budgets:
            raise SviteError("--resume: the saved layer budgets differ from this run's (--density / --sparse-init "
                             "changed?)")
        self._masks = _masks_from_state(state["masks"], self.names, self._params)
        self._fired = _masks_from_state(state["fired"], self.names, self._params)
        self._generator.set_state(state["generator"])
        self.updates_done = int(state["updates_done"])
        self.steps_done = int(state["steps_done"])
        self._last = dict(state.get("last") or {})
        self._masks.apply_to(self._params)


class OneShotEngine(SparsityEngine):
    """Baseline: train dense until ``oneshot_at * T`` steps, then magnitude-prune each layer to the same
    per-layer budget SViTE and static use (``--sparse-init``, fixed_ERK by default) and fine-tune
    with the masks fixed. Per-layer rather than global magnitude, so that the three baselines keep
    exactly the same number of weights in every layer and differ only in *how* the topology is chosen."""

    method = "oneshot"

    def __init__(self, ctx: EngineContext) -> None:
        super().__init__(ctx)
        cfg = ctx.config
        if not 0 < float(cfg.oneshot_at) < 1:
            raise SviteError(f"--oneshot-at must be in (0, 1), got {cfg.oneshot_at}")
        model = ctx.model
        self.names = sparsifiable_names(model, cfg.include or (), cfg.exclude or ())
        params = dict(model.named_parameters())
        self._params = [params[n] for n in self.names]
        self.shapes = {n: tuple(p.shape) for n, p in zip(self.names, self._params, strict=True)}
        custom = load_custom_densities(cfg.mask_path, self.names) if cfg.sparse_init == "custom" else None
        self.target_densities = layer_densities(self.shapes, float(cfg.density), cfg.sparse_init, custom)
        self.budgets = layer_budgets(self.shapes, self.target_densities)
        self.prune_step = max(1, round(float(cfg.oneshot_at) * ctx.total_steps))
        self.pruned = False
        self.steps_done = 0
        self._masks = MaskSet.full(model, self.names)  # dense phase: every weight active
        self._fired = self._masks.clone()

    def after_optimizer_step(self, step: int) -> bool:
        self.steps_done = step + 1
        if self.pruned:
            self._masks.apply_to(self._params)
            return False
        if step + 1 >= self.prune_step:
            self.prune()
            return True
        return False

    @torch.no_grad()
    def prune(self) -> None:
        """Keep the ``budget`` largest |w| of every layer; zero the rest."""
        masks = {}
        for name, param in zip(self.names, self._params, strict=True):
            keep = torch.topk(param.detach().abs().reshape(-1), self.budgets[name], sorted=False).indices
            m = torch.zeros(param.numel(), dtype=torch.bool, device=param.device)
            m[keep] = True
            masks[name] = m.view(param.shape)
        self._masks = MaskSet(masks)
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
        total = sum(math.prod(s) for s in self.shapes.values())
        return {"method": self.method, "settings": {
            "density": float(cfg.density), "sparse_init": cfg.sparse_init, "mask_path": cfg.mask_path,
            "include": list(cfg.include or []), "exclude": list(cfg.exclude or []),
            "oneshot_at": float(cfg.oneshot_at), "prune_step": self.prune_step, "prune_scope": "per-layer magnitude",
            "overall_density": sum(self.budgets.values()) / total,
            "layer_densities": {n: self.budgets[n] / math.prod(self.shapes[n]) for n in self.names},
            "layer_budgets": dict(self.budgets), "pruned": self.pruned}}

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "names": list(self.names), "pruned": self.pruned,
                "steps_done": self.steps_done, "masks": _masks_state(self._masks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("method") != self.method or list(state.get("names", [])) != self.names:
            raise SviteError(f"--resume: the saved {state.get('method')} engine does not match this --method oneshot")
        self.pruned = bool(state["pruned"])
        self.steps_done = int(state["steps_done"])
        self._masks = _masks_from_state(state["masks"], self.names, self._params)
        if self.pruned:
            self._masks.apply_to(self._params)


def validate_config(cfg: Any) -> None:
    """Reject bad unstructured-method flags with one line naming the flag. Needs only the config, so the
    training loop can call it before it creates anything on disk."""
    if cfg.sparse_init not in SPARSE_INITS:
        raise SviteError(f"--sparse-init: unknown mode '{cfg.sparse_init}' (choose {', '.join(SPARSE_INITS)})")
    if cfg.sparse_init == "custom" and not cfg.mask_path:
        raise SviteError("--sparse-init custom needs --mask-path FILE (a JSON object {param_name: density})")
    if cfg.sparse_init == "custom" and not Path(cfg.mask_path).is_file():
        raise SviteError(f"--mask-path {cfg.mask_path}: no such file")
    if cfg.growth not in GROWTHS:
        raise SviteError(f"--growth: unknown mode '{cfg.growth}' (choose {', '.join(GROWTHS)})")
    if cfg.death not in DEATHS:
        raise SviteError(f"--death: unknown mode '{cfg.death}' (only magnitude)")
    if not 0 < float(cfg.density) <= 1:
        raise SviteError(f"--density must be in (0, 1], got {cfg.density}")
    if cfg.method == "oneshot" and not 0 < float(cfg.oneshot_at) < 1:
        raise SviteError(f"--oneshot-at must be in (0, 1), got {cfg.oneshot_at}")


def build_unstructured_engine(ctx: EngineContext) -> SparsityEngine:
    """The engine for ``ctx.config.method`` in svite / static / oneshot."""
    cfg = ctx.config
    validate_config(cfg)
    if cfg.method == "svite":
        return UnstructuredEngine(ctx, dynamic=True)
    if cfg.method == "static":
        return UnstructuredEngine(ctx, dynamic=False)
    if cfg.method == "oneshot":
        return OneShotEngine(ctx)
    raise SviteError(f"--method: '{cfg.method}' is not an unstructured method ({', '.join(UNSTRUCTURED_METHODS)})")
