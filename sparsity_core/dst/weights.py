"""The weight unit of SViTE and its baselines: random initial masks, one layer's prune-and-grow
(:func:`exchange`: magnitude prune, scored growth, one selection rule), and copies of mask state.

A prune-and-grow update of one layer happens here; :mod:`.unstructured` decides when and how much.
On the CPU (float32 weights) a layer's choices are made on 32-bit keys in linear time
(:func:`.select.choose_keys`); elsewhere by ``topk`` on float scores (:func:`.select.choose`). Both
apply one rule, so they choose the same entries (tested on tied data).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import SviteError
from ..masks.bits import BitMaskSet
from ..masks.maskset import MaskSet, check_packed
from .scorers import WeightScorer, magnitude_into
from .select import choose, choose_keys

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
    """Reusable flat buffers for :func:`exchange` and its caller, grown to the largest layer, so an update
    allocates nothing the size of a layer but its answers (fresh multi-megabyte tensors cost page faults
    on every use; on a busy CPU that dominates): a float score buffer that doubles as the 32-bit keys, a
    second key buffer and a flag buffer for the selection, and two byte buffers for unpacked masks."""

    def __init__(self) -> None:
        self._float: torch.Tensor | None = None
        self._flags: torch.Tensor | None = None  # all False between calls (the topk path)
        self._work: torch.Tensor | None = None
        self._bytes: list[torch.Tensor | None] = [None, None]

    def get(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._float is None or self._float.numel() < n or self._float.device != device:
            self._float = torch.empty(n, device=device)
            self._flags = torch.zeros(n, dtype=torch.bool, device=device)
            self._work = torch.empty(n, dtype=torch.int32, device=device)
        assert self._flags is not None
        return self._float[:n], self._flags[:n]

    def keys(self, n: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """CPU: the score buffer (float32), a key work buffer (uint32) and flags (bool), ``n`` long."""
        buf, flags = self.get(n, torch.device("cpu"))
        assert self._work is not None
        return buf, self._work[:n].numpy().view(np.uint32), flags.numpy()

    def mask_bytes(self, n: int, device: torch.device, which: int = 0) -> torch.Tensor:
        """Byte buffer ``which`` (0: the layer's mask, 1: its young weights) for unpacking ``n`` bits."""
        size = (n + 7) // 8 * 8
        buf = self._bytes[which]
        if buf is None or buf.numel() < size or buf.device != device:
            buf = self._bytes[which] = torch.empty(size, dtype=torch.uint8, device=device)
        return buf[:size]

    def nbytes(self) -> int:
        own = [self._float, self._flags, self._work, *self._bytes]
        return sum(t.numel() * t.element_size() for t in own if t is not None)


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread inside the block (restored after)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator private to the engine: identical on every rank, independent of the global
    stream that initialised the weights (same seed, different constant)."""
    return torch.Generator().manual_seed((int(seed) * 0x9E3779B1 + 0x5EED) % (2**63))


def masks_state(masks: MaskSet) -> dict[str, torch.Tensor]:
    """Resume state of masks: their bits (uint8, ``pack_bool`` order), one eighth of a bool copy."""
    packed = masks.pack()
    return {n: packed.data[n] for n in masks}


def masks_from_state(state: Mapping[str, torch.Tensor], names: Sequence[str], shapes: Sequence[Sequence[int]],
                     device: torch.device, what: str = "masks") -> BitMaskSet:
    """Own bit-packed copies on ``device`` of masks saved by :func:`masks_state` (packed bits) or by
    earlier versions (bool tensors of the full shape); anything else is a one-line error naming ``what``."""
    out = BitMaskSet()
    for name, shape in zip(names, shapes, strict=True):
        mask = state.get(name) if isinstance(state, Mapping) else None
        try:
            if not isinstance(mask, torch.Tensor):
                raise ValueError("missing")
            if mask.dtype == torch.bool:
                if tuple(mask.shape) != tuple(shape):
                    raise ValueError(f"shape {tuple(mask.shape)}, expected {tuple(shape)}")
                out[name] = mask.to(device)
            else:
                check_packed(mask, list(shape))
                out.add_bits(name, mask.to(device), tuple(shape))
        except ValueError as err:
            raise SviteError(f"--resume: the saved {what} of '{name}' do not fit this model ({err})") from None
    return out


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
    scratch = scratch or Scratch()
    path = _exchange_keys if m.device.type == "cpu" and weight.dtype == torch.float32 else _exchange_topk
    return path(weight, m, n, grow, optimizer, generator, scratch, young)


def _exchange_topk(weight: torch.Tensor, m: torch.Tensor, n: int, grow: WeightScorer,
                   optimizer: torch.optim.Optimizer | None, generator: torch.Generator | None, scratch: Scratch,
                   young: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`exchange` by ``topk`` over float scores (devices other than the CPU)."""
    buf, flags = scratch.get(m.numel(), m.device)
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


def _exchange_keys(weight: torch.Tensor, m: torch.Tensor, n: int, grow: WeightScorer,
                   optimizer: torch.optim.Optimizer | None, generator: torch.Generator | None, scratch: Scratch,
                   young: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`exchange` on the CPU, on uint32 keys that order exactly as the float scores do: |w| is the
    weight's bits without the sign, an inactive entry 0xFFFFFFFF (never pruned); a growth score
    s >= 0 becomes bits(s) + 1 and an entry active after pruning 0 (never grown). Every pass writes
    into the scratch; only the answers (n indices each) are allocated."""
    buf, work, flags = scratch.keys(m.numel())
    keys = buf.numpy().view(np.uint32)
    mask = m.numpy().view(np.uint8)
    if young is None:
        np.bitwise_and(flat(weight.detach()).numpy().view(np.uint32), 0x7FFFFFFF, out=keys)
        np.subtract(mask, 1, out=work, dtype=np.uint32)  # 0 where active, all ones where not
        np.bitwise_or(keys, work, out=keys)
    else:  # the float scores of the topk path (+inf inactive, young above every older weight): >= 0
        magnitude_into(buf, weight, m)
        buf.add_(young.to(buf.dtype), alpha=float(buf.masked_fill(~m, 0).max()) + 1.0)
    pruned = choose_keys(keys, n, largest=False, work=work, flags=flags)
    mask[pruned] = 0
    grow(buf, weight, optimizer, generator)  # scores >= 0 (|grad|, |moment| or uniform draws)
    np.bitwise_and(keys, 0x7FFFFFFF, out=keys)
    np.add(keys, 1, out=keys)
    np.subtract(mask, 1, out=work, dtype=np.uint32)
    np.bitwise_and(keys, work, out=keys)  # 0 where active after pruning
    grown = choose_keys(keys, n, largest=True, work=work, flags=flags)
    flags.fill(False)
    flags[pruned] = True
    revived = flags[grown]
    flags[pruned] = False  # all False again, as the topk path expects
    mask[grown] = 1
    return torch.from_numpy(pruned), torch.from_numpy(grown), torch.from_numpy(revived)
