"""Which units go and which come: every score a small function, chosen once when an engine is built.

* weights (SViTE): prune by magnitude |w|; grow by |grad| of the last minibatch (RigL, the
  reference), by |first moment| of the optimizer (AdamW ``exp_avg``: masked weights get real gradients
  at every step since the forward is dense, so it averages ~1/(1-beta1) minibatches instead of
  trusting one; as Sparse Momentum does), or at random (SET);
* heads (S2ViTE): prune by the Taylor score ``mean_b |sum_{tokens,dims} a_h * dL/da_h|`` (the
  first-order change of the loss if the head's output a_h were removed; absolute value per image, then
  the batch mean, so opposite-signed images do not cancel; a magnitude would not do, since q/k act
  through a softmax and can be large and useless); grow by ``mean_b ||dL/da_h||_1`` (an inactive head
  outputs 0, so its Taylor score is 0 by construction; the gradient says how much the loss would move
  if it produced anything; nonzero because ``proj`` stays alive); or at random;
* neurons (S2ViTE): prune by ``||W1[j,:]||_1 + ||W2[:,j]||_1`` (free, and a bound on the neuron's
  contribution); grow by the gradient of the fc2 column taken through shadow weights
  (``neuron_shadow.py``), or at random.

Weight scorers write into a reusable flat buffer: an update of a DeiT-S then allocates nothing the size
of a layer (fresh multi-megabyte tensors cost page faults on every use, which dominates on a busy CPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from timm.layers import Mlp

# (out, param, optimizer, generator) -> None: fills ``out`` (flat, param.numel()) with growth scores
WeightScorer = Callable[[torch.Tensor, torch.Tensor, torch.optim.Optimizer, torch.Generator], None]


@torch.no_grad()
def magnitude_into(out: torch.Tensor, weight: torch.Tensor, active: torch.Tensor) -> None:
    """|w| of the active entries, +inf elsewhere (never pruned)."""
    inf = torch.full((), math.inf, dtype=out.dtype, device=out.device)
    torch.where(active, weight.detach().reshape(-1).to(out.dtype), inf, out=out).abs_()


def _abs_into(out: torch.Tensor, signal: torch.Tensor | None) -> None:
    if signal is None:
        out.zero_()  # no gradient: every candidate tied at 0
    else:
        torch.abs(signal.detach().reshape(-1), out=out)


@torch.no_grad()
def grow_by_gradient(out: torch.Tensor, param: torch.Tensor, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator) -> None:
    _abs_into(out, param.grad)


@torch.no_grad()
def grow_by_momentum(out: torch.Tensor, param: torch.Tensor, optimizer: torch.optim.Optimizer,
                     generator: torch.Generator) -> None:
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "momentum_buffer"):
        if isinstance(state.get(key), torch.Tensor) and state[key].shape == param.shape:
            _abs_into(out, state[key])
            return
    _abs_into(out, param.grad)  # no optimizer state yet (the very first step)


@torch.no_grad()
def grow_at_random(out: torch.Tensor, param: torch.Tensor, optimizer: torch.optim.Optimizer,
                   generator: torch.Generator) -> None:
    if out.device.type == "cpu":
        torch.rand(out.numel(), generator=generator, out=out)
    else:  # the generator lives on the CPU so that every rank and device draws the same numbers
        out.copy_(torch.rand(out.numel(), generator=generator))


WEIGHT_GROWTH: dict[str, WeightScorer] = {"gradient": grow_by_gradient, "momentum": grow_by_momentum,
                                          "random": grow_at_random}


def head_taylor(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per head, from the attention output ``act`` and its gradient, both (B, N, H, d_h) float32."""
    return (act * grad).sum(dim=(1, 3)).abs().mean(dim=0)


def head_gradient_norm(grad: torch.Tensor) -> torch.Tensor:
    """Per head, ``mean_b ||dL/da_h||_1`` from the gradient (B, N, H, d_h)."""
    return grad.abs().sum(dim=(1, 3)).mean(dim=0)


@torch.no_grad()
def neuron_magnitude(mlp: Mlp) -> torch.Tensor:
    """Per neuron, ``||W1[j,:]||_1 + ||W2[:,j]||_1`` (float32, CPU)."""
    return (mlp.fc1.weight.abs().sum(dim=1).float() + mlp.fc2.weight.abs().sum(dim=0).float()).cpu()


def random_scores(n: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform scores for ``n`` units (random growth), from the engine's seeded CPU generator."""
    return torch.rand(n, generator=generator, dtype=torch.float64)
