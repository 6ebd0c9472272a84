"""What the optimizer remembers about an entry that a topology update has just grown.

The forward pass uses plain dense matmuls, so every masked weight gets a real gradient at every
step, and AdamW keeps updating ``exp_avg`` / ``exp_avg_sq`` of masked entries too (their value is
re-zeroed by the mask after each step). When an entry is grown, its moments are therefore already
running averages of that very entry's gradients: keeping them is sound, and it is what the
reference does.

Zeroing them is not: torch's AdamW keeps one ``step`` counter per *tensor*, so a zeroed
``exp_avg_sq`` at a grown entry gets no bias correction (it is ~1 after a few hundred steps) and
stays far too small for ~1/(1-beta2) steps. Its first update is then about 3x the learning rate
instead of at most ~1x (``tests/test_optim_state.py`` measures both), and the next magnitude prune
keeps that noise. That was our first default; docs/reference.md §7 records the correction.

Policies (``--grown-moments``):

* ``keep`` (default): leave the moments as they are.
* ``zero-avg``: zero the first moment only (``exp_avg``, SGD's ``momentum_buffer``), so a grown
  entry forgets the direction it drifted in while masked but keeps a sane step size.
* ``zero``: zero every per-entry buffer (our former default; kept for ablations only).
"""

from __future__ import annotations

import torch

from ..errors import FlagError

GROWN_MOMENTS = ("keep", "zero-avg", "zero")
_FIRST_MOMENTS = ("exp_avg", "momentum_buffer")
_ALL_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def check_policy(policy: str) -> str:
    if policy not in GROWN_MOMENTS:
        raise FlagError("--grown-moments",
                        f"--grown-moments: unknown policy '{policy}' (choose {', '.join(GROWN_MOMENTS)})")
    return policy


@torch.no_grad()
def reset_grown_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, where: torch.Tensor,
                      policy: str) -> None:
    """Apply ``policy`` to ``param``'s per-entry optimizer buffers at the grown entries ``where``:
    a bool tensor broadcastable to ``param`` or a 1-D tensor of flat indices. Scalar state such as
    AdamW's ``step`` is never touched."""
    if policy == "keep" or where.numel() == 0:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    keys = _FIRST_MOMENTS if policy == "zero-avg" else _ALL_MOMENTS
    for key in keys:
        buf = state.get(key)
        if not (isinstance(buf, torch.Tensor) and buf.shape == param.shape):
            continue
        if where.dtype == torch.bool:
            buf.masked_fill_(where.to(buf.device), 0)
        else:
            buf.view(-1).index_fill_(0, where.to(buf.device), 0)
