"""The weight unit of SViTE and its baselines: random initial masks, one layer's prune-and-grow
(:func:`exchange`: magnitude prune, scored growth, one selection rule), and copies of mask state.

A prune-and-grow update of one layer happens here; :mod:`.unstructured` decides when and how much.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..masks import MaskSet
from .scorers import WeightScorer, magnitude_into
from .select import choose

# magnitude: the reference's. magnitude-mature: the same, but a weight grown at the previous update is pruned
# only after every older one (measured on the demo runs: 62-78% of each update's pruned weights had been
# grown at the update before, while they were 10-29% of the active weights: grown at 0, they rarely reach
# an old weight's magnitude in one update period, so about half of every exploration was undone unseen).
DEATHS = ("magnitude", "magnitude-mature")


def flat(t: torch.Tensor) -> torch.Tensor:
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


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator private to the engine: identical on every rank, independent of the global
    stream that initialised the weights (same seed, different constant)."""
    return torch.Generator().manual_seed((int(seed) * 0x9E3779B1 + 0x5EED) % (2**63))


def masks_state(masks: MaskSet) -> dict[str, torch.Tensor]:
    return {n: m.detach().to("cpu").clone() for n, m in masks.items()}


def masks_from_state(state: Mapping[str, torch.Tensor], names: Sequence[str], params: Sequence[torch.Tensor]
                      ) -> MaskSet:
    """Own copies on the parameters' devices (updates edit masks in place; the state must not change)."""
    return MaskSet({n: state[n].to(device=p.device, dtype=torch.bool).clone().contiguous()
                    for n, p in zip(names, params, strict=True)})


@torch.no_grad()
def exchange(weight: torch.Tensor, mask: torch.Tensor, n: int, grow: WeightScorer,
             optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None,
             active: int | None = None, scratch: Scratch | None = None, young: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's prune-and-grow, applied to ``mask`` in place; returns flat indices ``(pruned, grown)``,
    each of length ``n``, and ``revived`` (bool, aligned with ``grown``: grown straight back after being
    pruned in this same call).

    Prune: the ``n`` active weights of smallest |w|. Grow: ``n`` positions inactive *after* pruning
    (so a just-pruned weight may come straight back, as in the reference) with the largest ``grow``
    score. Ineligible positions get a score that can never be selected (+inf for pruning, -1 below
    every |grad| or uniform draw for growth), so exactly ``n`` go and ``n`` come whatever the ties.
    ``active`` (the layer's budget, when the caller knows it) saves a count over the mask. ``young``
    (flat bool, ``--death magnitude-mature``): positions pruned only after every other active weight.
    """
    m = flat(mask)
    if active is None:
        active = int(torch.count_nonzero(m))
    if not 0 <= n <= active:
        raise ValueError(f"cannot prune {n} of {active} active weights")
    buf, flags = (scratch or Scratch()).get(m.numel(), m.device)
    magnitude_into(buf, weight, m)
    if young is not None:  # above every older active weight, below +inf (inactive): still exact counts
        buf.add_(young.to(buf.dtype), alpha=float(buf.masked_fill(~m, 0).max()) + 1.0)
    pruned = choose(buf, n, largest=False)
    m.index_fill_(0, pruned, False)  # the mask after pruning: growth candidates are where it is False
    grow(buf, weight, optimizer, generator)
    buf.masked_fill_(m, -1.0)
    grown = choose(buf, n, largest=True)
    flags.index_fill_(0, pruned, True)
    revived = flags.index_select(0, grown)
    flags.index_fill_(0, pruned, False)
    m.index_fill_(0, grown, True)
    return pruned, grown, revived
