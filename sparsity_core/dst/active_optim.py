"""``--optimizer-state active``: AdamW moments for the active weights only, an opt-in memory mode.

By default AdamW keeps ``exp_avg`` and ``exp_avg_sq`` for every entry of every parameter (8 bytes per
weight), masked ones included: the forward pass is dense, so a masked weight has a real gradient and its
moments are running averages of it, which is what lets a grown weight keep them (``optim_state.py``).
At density d that is 8·(1 - d) bytes per masked weight spent on weights that do not exist, e.g. 4.8 of
the 8 at d = 0.4, or 0.33 GB for a DeiT-B. :class:`ActiveAdamW` keeps, for each masked parameter,
moments for its active entries only, in the order of their flat indices; every other parameter steps
exactly as in ``torch.optim.AdamW``.

* A step gathers the active entries' gradients and weights, applies torch's single-tensor AdamW
  arithmetic to them (the same operations in the same order, so a run whose masks never change steps
  its active weights bit for bit as AdamW does), and scatters the weights back; masked entries stay 0.
* When a topology update moves the masks, :func:`move_moments` re-indexes the moments: kept and revived
  entries keep theirs; a grown entry starts like ``--grown-moments zero-avg``: its first moment at 0 and
  its second moment at its own squared gradient of the update's minibatch, floored at the mean second
  moment of the tensor's kept entries (a single minibatch can be near zero: a grown q/k row of an
  S2ViTE head has exactly zero gradient, and a tiny second moment makes the next steps several
  learning rates long, the failure ``optim_state.py`` measured for zeroed moments).
* ``--growth momentum`` ranks inactive weights by their first moment, which this mode does not keep; the
  flag check refuses that combination.

This module imports nothing of ours: the engines tell the optimizer which entries are active
(:meth:`ActiveAdamW.follow`) and call :func:`move_moments`; with a plain AdamW both are no-ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

OPTIMIZER_STATES = ("full", "active")


class ActiveAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` whose masked parameters keep moments for their active entries only."""

    def __init__(self, params: Any, **defaults: Any) -> None:
        super().__init__(params, **defaults)
        for group in self.param_groups:
            if group["amsgrad"] or group["maximize"] or group["capturable"] or group["differentiable"] \
                    or group["fused"]:
                raise ValueError("--optimizer-state active supports plain AdamW (no amsgrad, maximize, capturable, "
                                 "differentiable or fused)")
        self._positions: dict[torch.Tensor, Callable[[], torch.Tensor]] = {}

    @classmethod
    def like(cls, optimizer: torch.optim.Optimizer) -> ActiveAdamW:
        """The same parameter groups and settings as ``optimizer`` (an AdamW with no state yet)."""
        defaults = {k: v for k, v in optimizer.defaults.items() if k != "decoupled_weight_decay"}  # AdamW's own
        return cls(optimizer.param_groups, **defaults)

    def follow(self, param: torch.Tensor, positions: Callable[[], torch.Tensor]) -> None:
        """Keep ``param``'s moments for the entries ``positions()`` returns (int64 flat indices, ascending)."""
        if not param.is_contiguous():
            raise ValueError("--optimizer-state active needs contiguous parameters")
        self._positions[param] = positions

    def follows(self, param: torch.Tensor) -> bool:
        return param in self._positions

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        masked = {p: p.grad for p in self._positions if p.grad is not None}
        for p in masked:  # torch's AdamW skips parameters without a gradient: it steps all the others
            p.grad = None
        try:
            super().step()
        finally:
            for p, grad in masked.items():
                p.grad = grad
        for group in self.param_groups:
            for p in group["params"]:
                if p in masked:
                    self._active_step(p, group)
        return loss

    def _active_step(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        """``_single_tensor_adamw`` (torch 2.x, decoupled weight decay) on the active entries of ``p``."""
        idx = self._positions[p]()
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros(idx.numel(), dtype=p.dtype, device=p.device)
            state["exp_avg_sq"] = torch.zeros(idx.numel(), dtype=p.dtype, device=p.device)
        exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        if exp_avg.numel() != idx.numel() or exp_avg_sq.numel() != idx.numel():
            raise RuntimeError(f"active-entry moments hold {exp_avg.numel()} entries, the mask {idx.numel()}")
        lr, weight_decay, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        flat = p.view(-1)
        grad = p.grad.reshape(-1).index_select(0, idx)
        param = flat.index_select(0, idx)
        step_t += 1
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(step_t.item())
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
        flat.index_copy_(0, idx, param)

    def check(self, param: torch.Tensor, name: str) -> str | None:
        """Why ``param``'s saved moments do not fit its mask now (None when they do, or there are none)."""
        state = self.state.get(param)
        if not state or param not in self._positions:
            return None
        want = self._positions[param]().numel()
        for key in ("exp_avg", "exp_avg_sq"):
            buf = state.get(key)
            if not isinstance(buf, torch.Tensor) or buf.ndim != 1 or buf.numel() != want:
                return f"'{name}' {key} holds {getattr(buf, 'shape', None)}, its {want} active entries need ({want},)"
        return None


def follows(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> bool:
    """True when ``optimizer`` keeps active-entry moments for ``param`` (``--optimizer-state active``)."""
    return isinstance(optimizer, ActiveAdamW) and optimizer.follows(param)


@torch.no_grad()
def move_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, old: torch.Tensor, new: torch.Tensor,
                 buf: torch.Tensor | None = None) -> None:
    """After an update moved ``param``'s active entries from positions ``old`` to ``new`` (int64 flat
    indices, ascending): re-index its moments under ``--optimizer-state active`` (module docstring for
    grown entries); nothing otherwise. ``buf``: scratch of ``param.numel()`` entries of its dtype."""
    if not follows(optimizer, param):
        return
    state = optimizer.state.get(param)
    if not state:
        return
    buf = torch.empty(param.numel(), dtype=param.dtype, device=param.device) if buf is None else buf
    old, new = old.to(param.device), new.to(param.device)
    buf.zero_()
    buf.index_copy_(0, old, state["exp_avg"])
    state["exp_avg"] = buf.index_select(0, new)
    kept_sq = state["exp_avg_sq"]
    if param.grad is not None:
        torch.mul(param.grad.reshape(-1), param.grad.reshape(-1), out=buf)
    else:
        buf.zero_()
    if kept_sq.numel():
        buf.clamp_(min=float(kept_sq.mean()))
    buf.index_copy_(0, old, kept_sq)
    state["exp_avg_sq"] = buf.index_select(0, new)
