"""A faithful port of the reference's unstructured prune-and-grow (SViTE ``dst_utils/core.py``,
``Masking.truncate_weights`` with ``--death magnitude --growth gradient``), for benchmarking only.

What is kept exactly as the reference does it, because it is what the timing measures:
* float32 masks, one per layer, ``gather_statistics`` (``mask.sum().item()`` per layer);
* ``magnitude_death``: a full ``torch.sort`` of |w|, threshold ``x[zeros + n - 1]``, keep ``|w| > thr``;
* ``gradient_growth``: ``grad.clone() * (mask == 0)``, a full descending ``torch.sort`` of |grad|, set
  the first ``n`` indices, masks converted byte -> float;
* ``apply_mask``: ``weight.data = weight.data * mask`` per layer (plus the SGD-only momentum buffer);
* ``fired_masks_update``: byte OR per layer, with its ``.item()`` statistics.
What is left out: CUDA placement, the rank-0 ``broadcast`` in ``synchronism_masks`` (single process
here), and printing. Mask keys are parameter names instead of ``<name>_<index>``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ReferenceMasking:
    """The reference's Masking object, reduced to the unstructured update path."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, masks: dict[str, torch.Tensor],
                 death_rate: float) -> None:
        self.model = model
        self.optimizer = optimizer
        self.masks = {n: m.float().clone() for n, m in masks.items()}
        self.fired_masks = {n: m.clone() for n, m in self.masks.items()}
        self.name2death_rate = {n: death_rate for n in self.masks}
        self.name2nonzeros: dict[str, float] = {}
        self.name2zeros: dict[str, float] = {}
        self.pruned_number: dict[str, int] = {}

    def apply_mask(self) -> None:
        for name, weight in self.model.named_parameters():
            if name in self.masks:
                weight.data = weight.data * self.masks[name]
                if "momentum_buffer" in self.optimizer.state[weight]:
                    self.optimizer.state[weight]["momentum_buffer"] = (
                        self.optimizer.state[weight]["momentum_buffer"] * self.masks[name])

    def gather_statistics(self) -> None:
        self.name2nonzeros = {}
        self.name2zeros = {}
        for name, _tensor in self.model.named_parameters():
            if name not in self.masks:
                continue
            mask = self.masks[name]
            self.name2nonzeros[name] = mask.sum().item()
            self.name2zeros[name] = mask.numel() - self.name2nonzeros[name]

    def magnitude_death(self, mask: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
        if mask.sum().item() == mask.numel():
            return mask
        num_remove = math.ceil(self.name2death_rate[name] * self.name2nonzeros[name])
        if num_remove == 0.0:
            return weight.data != 0.0
        num_zeros = self.name2zeros[name]
        x, _idx = torch.sort(torch.abs(weight.data.view(-1)))
        k = math.ceil(num_zeros + num_remove)
        threshold = x[k - 1].item()
        return torch.abs(weight.data) > threshold

    def gradient_growth(self, name: str, new_mask: torch.Tensor, total_regrowth: int, weight: torch.Tensor
                        ) -> torch.Tensor:
        if total_regrowth == 0:
            return new_mask
        grad = weight.grad.clone()
        grad = grad * (new_mask == 0).float()
        _y, idx = torch.sort(torch.abs(grad).flatten(), descending=True)
        new_mask.data.view(-1)[idx[:total_regrowth]] = 1.0
        return new_mask

    def truncate_weights(self) -> None:
        self.gather_statistics()
        for name, weight in self.model.named_parameters():
            if name not in self.masks:
                continue
            mask = self.masks[name]
            new_mask = self.magnitude_death(mask, weight, name)
            self.pruned_number[name] = int(self.name2nonzeros[name] - new_mask.sum().item())
            self.masks[name][:] = new_mask
        for name, weight in self.model.named_parameters():
            if name not in self.masks:
                continue
            new_mask = self.masks[name].data.byte()
            new_mask = self.gradient_growth(name, new_mask, self.pruned_number[name], weight)
            self.masks.pop(name)
            self.masks[name] = new_mask.float()
        self.apply_mask()

    def fired_masks_update(self) -> tuple[dict[str, float], float]:
        ntotal_fired, ntotal = 0.0, 0.0
        layer_fired = {}
        for name, _weight in self.model.named_parameters():
            if name not in self.masks:
                continue
            self.fired_masks[name] = self.masks[name].data.byte() | self.fired_masks[name].data.byte()
            ntotal_fired += float(self.fired_masks[name].sum().item())
            ntotal += float(self.fired_masks[name].numel())
            layer_fired[name] = float(self.fired_masks[name].sum().item()) / float(self.fired_masks[name].numel())
        return layer_fired, ntotal_fired / ntotal

    def at_end_of_epoch(self) -> None:
        """What the reference runs at an update step (``mask.at_end_of_epoch``), minus printing."""
        self.truncate_weights()
        self.fired_masks_update()
