"""Shadow input weights for MLP neurons, so that S2ViTE can grow a neuron that was never active.

A pruned neuron has its fc1 row, fc1 bias and fc2 column masked. With all three at zero it sits at
a saddle: ``GELU(0) = 0`` and ``W2[:, j] = 0`` make every gradient of that neuron exactly zero, so
gradient growth can only re-pick the neurons that were alive in the last batch, and the MLP half of
S2ViTE becomes a fixed random structured mask (docs/reference.md §2: the reference has the same
weakness). We keep, beside the model, a *shadow* fc1 row and bias for every neuron: its initial
weights while it has never been active, its last weights once it has been pruned. The shadow never
reaches the model's output (the fc2 column stays masked), but it says what the neuron *would*
compute, ``h_j = act(x . w_j + b_j)``, and so which gradient its fc2 column would get if opened:

    dL/dW2[:, j] = sum over images and tokens of dL/dy (x) h_j

That is RigL's criterion (the gradient of a missing connection) at the level of a unit, and for an
active neuron it is exactly its real fc2 gradient, so active and inactive neurons are ranked on one
scale. A grown neuron gets its shadow row as fc1 weights and its fc2 column at 0: the model's output
is unchanged at the moment of growth, and the column starts learning at the next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import Mlp

# std of timm's ViT Linear init (trunc_normal_(std=.02)): a shadow row that would be all zero (an
# --init checkpoint whose pruned neurons were stored as zeros) is drawn afresh with it.
INIT_STD = 0.02


class ShadowNeurons:
    """Per block, a shadow fc1 weight matrix and bias (the model's shapes) for the MLP neurons."""

    def __init__(self, mlps: Sequence[Mlp], generator: torch.Generator) -> None:
        self.mlps = list(mlps)
        self.weight = [m.fc1.weight.detach().clone() for m in self.mlps]
        self.bias = [m.fc1.bias.detach().clone() if m.fc1.bias is not None else None for m in self.mlps]
        for w in self.weight:  # rows stored as zeros carry no direction: give them timm's init
            dead = (w == 0).all(dim=1)
            if bool(dead.any()):
                fresh = torch.empty(int(dead.sum()), w.shape[1])
                torch.nn.init.trunc_normal_(fresh, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD,
                                            generator=generator)
                w[dead.to(w.device)] = fresh.to(w.device, w.dtype)

    @torch.no_grad()
    def effective(self, i: int, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fc1 weight and bias as every neuron of block ``i`` would have them: the model's for alive
        neurons, the shadow's for the others."""
        fc1 = self.mlps[i].fc1
        keep = alive.to(fc1.weight.device)
        w = torch.where(keep[:, None], fc1.weight, self.weight[i].to(fc1.weight.dtype))
        b = None
        if fc1.bias is not None:
            b = torch.where(keep, fc1.bias, self.bias[i].to(fc1.bias.dtype))
        return w, b

    @torch.no_grad()
    def grow_scores(self, i: int, x: torch.Tensor, grad_out: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """||dL/dW2[:, j]||_1 for every neuron ``j`` of block ``i``, from the MLP input ``x`` (B, N, D)
        and the loss gradient at the MLP output (B, N, D_out) of one minibatch (float32, CPU)."""
        w, b = self.effective(i, alive)
        mlp = self.mlps[i]
        h = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
        h = mlp.norm(mlp.act(h))  # timm's Mlp: fc1 -> act -> drop -> norm -> fc2 (drop is 0 at scoring)
        g = grad_out.float()
        grad_w2 = torch.einsum("bno,bnh->oh", g, h)  # the fc2 weight gradient, every column opened
        return grad_w2.abs().sum(dim=0).cpu()

    @torch.no_grad()
    def store(self, i: int, pruned: torch.Tensor) -> None:
        """Remember the fc1 rows (and biases) of the neurons of block ``i`` about to be masked."""
        fc1 = self.mlps[i].fc1
        idx = pruned.nonzero().reshape(-1).to(fc1.weight.device)
        self.weight[i][idx] = fc1.weight[idx].to(self.weight[i].dtype)
        if fc1.bias is not None:
            self.bias[i][idx] = fc1.bias[idx].to(self.bias[i].dtype)

    @torch.no_grad()
    def restore(self, i: int, grown: torch.Tensor) -> None:
        """Give the neurons of block ``i`` just grown their shadow fc1 rows (their fc2 columns stay 0)."""
        fc1 = self.mlps[i].fc1
        idx = grown.nonzero().reshape(-1).to(fc1.weight.device)
        fc1.weight[idx] = self.weight[i][idx].to(fc1.weight.dtype)
        if fc1.bias is not None:
            fc1.bias[idx] = self.bias[i][idx].to(fc1.bias.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"weight": [w.detach().cpu().clone() for w in self.weight],
                "bias": [None if b is None else b.detach().cpu().clone() for b in self.bias]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights, biases = list(state["weight"]), list(state["bias"])
        if len(weights) != len(self.weight) or any(a.shape != b.shape for a, b in zip(weights, self.weight, strict=True)):
            raise ValueError("shadow neuron weights do not fit this model")
        self.weight = [w.to(old.device, old.dtype).clone() for w, old in zip(weights, self.weight, strict=True)]
        self.bias = [None if b is None else b.to(old.device, old.dtype).clone()
                     for b, old in zip(biases, self.bias, strict=True)]
