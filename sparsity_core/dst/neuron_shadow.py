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

Only inactive neurons have a shadow row worth keeping (an active neuron's is overwritten when it is
pruned and read only after that), and S2ViTE's budgets fix how many are inactive in each block, so the
shadow holds exactly those rows: ``slots[i][s]`` is the neuron whose row is ``weight[i][s]``. At
``--other-density 0.6`` that is 40% of fc1 instead of all of it (on a DeiT-S, 0.6 instead of 1.5 bytes
per masked weight). An update stores the rows of the neurons it prunes (:meth:`ShadowNeurons.store`)
and hands them the slots of the neurons it grows (:meth:`ShadowNeurons.restore`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.layers import Mlp

# std of timm's ViT Linear init (trunc_normal_(std=.02)): a shadow row that would be all zero (an
# --init checkpoint whose pruned neurons were stored as zeros) is drawn afresh with it.
INIT_STD = 0.02


class ShadowNeurons:
    """Per block, the shadow fc1 rows and biases of the inactive MLP neurons (``alive(i)``: block ``i``'s
    neuron mask, bool)."""

    def __init__(self, mlps: Sequence[Mlp], generator: torch.Generator,
                 alive: Callable[[int], torch.Tensor]) -> None:
        self.mlps = list(mlps)
        self.alive = alive
        self.slots: list[torch.Tensor] = []
        self.weight: list[torch.Tensor] = []
        self.bias: list[torch.Tensor | None] = []
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for i, m in enumerate(self.mlps):
            w = m.fc1.weight.detach()
            dead = (w == 0).all(dim=1)  # rows stored as zeros carry no direction: give them timm's init
            if bool(dead.any()):
                fresh = torch.empty(int(dead.sum()), w.shape[1])
                torch.nn.init.trunc_normal_(fresh, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD,
                                            generator=generator)
                w = w.clone()
                w[dead.to(w.device)] = fresh.to(w.device, w.dtype)
            slots = (~alive(i).to(torch.bool)).nonzero().reshape(-1).to(w.device)
            self.slots.append(slots)
            self.weight.append(w[slots].clone())
            self.bias.append(m.fc1.bias.detach()[slots].clone() if m.fc1.bias is not None else None)

    @torch.no_grad()
    def effective(self, i: int, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """fc1 weight and bias as every neuron of block ``i`` would have them: the model's for alive
        neurons, the shadow's for the others (``alive`` must be the mask the slots were kept for)."""
        fc1 = self.mlps[i].fc1
        slots = self.slots[i]
        if bool(alive.to(slots.device)[slots].any()) or slots.numel() != int((~alive).sum()):
            raise RuntimeError(f"shadow neurons of block {i} are out of step with its neuron mask")
        w = fc1.weight.detach().clone()
        w[slots] = self.weight[i].to(w.dtype)
        b = None
        if fc1.bias is not None:
            b = fc1.bias.detach().clone()
            b[slots] = self.bias[i].to(b.dtype)
        return w, b

    @torch.no_grad()
    def grow_scores(self, i: int, x: torch.Tensor, grad_out: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """||dL/dW2[:, j]||_1 for every neuron ``j`` of block ``i``, from the MLP input ``x`` (B, N, D)
        and the loss gradient at the MLP output (B, N, D_out) of one minibatch (float32, CPU)."""
        w, b = self.effective(i, alive)
        mlp = self.mlps[i]
        h = torch.nn.functional.linear(x.float(), w.float(), None if b is None else b.float())
        del w, b  # this runs inside the backward pass, beside its activations: hold one layer-sized buffer at a time
        h = mlp.norm(mlp.act(h))  # timm's Mlp: fc1 -> act -> drop -> norm -> fc2 (drop is 0 at scoring)
        grad_w2 = torch.einsum("bno,bnh->oh", grad_out.float(), h)  # the fc2 weight gradient, every column opened
        del h
        return grad_w2.abs_().sum(dim=0).cpu()

    @torch.no_grad()
    def store(self, i: int, pruned: torch.Tensor) -> None:
        """Remember the fc1 rows (and biases) of the neurons of block ``i`` about to be masked; they take
        the slots of the neurons :meth:`restore` grows next."""
        fc1 = self.mlps[i].fc1
        idx = pruned.nonzero().reshape(-1).to(fc1.weight.device)
        bias = fc1.bias[idx].detach().clone() if fc1.bias is not None else None
        self._pending[i] = (idx, fc1.weight[idx].detach().clone(), bias)

    @torch.no_grad()
    def restore(self, i: int, grown: torch.Tensor) -> None:
        """Give the neurons of block ``i`` just grown their shadow fc1 rows (their fc2 columns stay 0);
        the rows stored for the neurons pruned in the same update take their slots."""
        fc1 = self.mlps[i].fc1
        idx = grown.nonzero().reshape(-1).to(fc1.weight.device)
        slot_of = torch.full((fc1.out_features,), -1, dtype=torch.long, device=idx.device)
        slot_of[self.slots[i]] = torch.arange(self.slots[i].numel(), device=idx.device)
        pos = slot_of[idx]
        pruned, rows, bias = self._pending.pop(i, (idx[:0], self.weight[i][:0], None))
        if bool((pos < 0).any()) or pruned.numel() != idx.numel():  # an internal invariant, not user input
            raise RuntimeError(f"block {i}: grown neurons without a shadow row, or not as many as were pruned")
        fc1.weight[idx] = self.weight[i][pos].to(fc1.weight.dtype)
        self.weight[i][pos] = rows.to(self.weight[i].dtype)
        self.slots[i][pos] = pruned
        if fc1.bias is not None:
            fc1.bias[idx] = self.bias[i][pos].to(fc1.bias.dtype)
            self.bias[i][pos] = bias.to(self.bias[i].dtype)

    @torch.no_grad()
    def reset_to_model(self) -> None:
        """Slots for the neurons inactive now, holding the model's fc1 rows for them (a resume state from
        before shadow weights: the masked rows are zero, as that version grew them)."""
        self.slots = [(~self.alive(i).to(torch.bool)).nonzero().reshape(-1).to(m.fc1.weight.device)
                      for i, m in enumerate(self.mlps)]
        self.weight = [m.fc1.weight.detach()[s].clone() for m, s in zip(self.mlps, self.slots, strict=True)]
        self.bias = [None if m.fc1.bias is None else m.fc1.bias.detach()[s].clone()
                     for m, s in zip(self.mlps, self.slots, strict=True)]
        self._pending.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"weight": [w.detach().cpu().clone() for w in self.weight],
                "bias": [None if b is None else b.detach().cpu().clone() for b in self.bias],
                "slots": [s.cpu().clone() for s in self.slots]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rows saved by :meth:`state_dict`, or by earlier versions (a row for every neuron, no slots);
        ValueError when they do not fit the model and its current neuron masks."""
        weights, biases = list(state["weight"]), list(state["bias"])
        saved_slots = state.get("slots")
        if len(weights) != len(self.mlps) or len(biases) != len(self.mlps):
            raise ValueError("shadow neuron weights do not fit this model")
        slots, rows, bias_rows = [], [], []
        for i, (w, b, mlp) in enumerate(zip(weights, biases, self.mlps, strict=True)):
            inactive = (~self.alive(i).to(torch.bool)).nonzero().reshape(-1)
            s = inactive if saved_slots is None else saved_slots[i]
            if not isinstance(s, torch.Tensor) or s.dtype != torch.long or s.ndim != 1 or \
                    not torch.equal(torch.sort(s).values, inactive):
                raise ValueError(f"shadow slots of block {i} are not its inactive neurons")
            full = saved_slots is None
            want = (mlp.fc1.out_features if full else s.numel(), mlp.fc1.in_features)
            if not isinstance(w, torch.Tensor) or tuple(w.shape) != want or (b is None) != (mlp.fc1.bias is None) \
                    or (b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != want[:1])):
                raise ValueError(f"shadow neuron weights of block {i} do not fit this model")
            slots.append(s.to(self.slots[i].device).clone())
            rows.append((w[s] if full else w).to(self.weight[i].device, self.weight[i].dtype).clone())
            bias_rows.append(None if b is None else (b[s] if full else b).to(rows[-1].device, rows[-1].dtype).clone())
        self.slots, self.weight, self.bias = slots, rows, bias_rows
        self._pending.clear()
