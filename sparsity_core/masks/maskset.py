"""Masks as explicit state beside the model: one boolean tensor per sparsified parameter.

Like ``torch.ao.pruning``, the masks live outside the timm modules; :meth:`MaskSet.apply` multiplies
them into the weights in one fused call, so a masked weight is exactly zero after every optimizer
step. A :class:`Snapshot` holds one moment's masks bit-packed (eight mask bits per byte, ~2.7 MB for a
DeiT-S topology) only until the history encodes it; stored, a snapshot is a keyframe or a delta of the
positions that flipped (``history/``), a few kB for a typical update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


def count_true(mask: torch.Tensor) -> int:
    """Number of True entries. numpy counts a CPU bool tensor ~100x faster than ``mask.sum()``
    (which widens every entry to int64), which matters for the 86 M weights of a DeiT-B."""
    if mask.device.type == "cpu" and mask.dtype == torch.bool and not mask.requires_grad:
        return int(np.count_nonzero(mask.numpy()))
    return int(torch.count_nonzero(mask))


def pack_bool(mask: torch.Tensor) -> torch.Tensor:
    """Bit-pack a boolean tensor into uint8 (flattened, big-endian bit order as numpy's packbits)."""
    flat = mask.detach().to("cpu", torch.bool).reshape(-1).numpy()
    return torch.from_numpy(np.packbits(flat))


def packed_nbytes(shape: Iterable[int]) -> int:
    """Bytes that :func:`pack_bool` writes for a mask of ``shape`` (eight bits a byte, zero-padded)."""
    return (math.prod(int(s) for s in shape) + 7) // 8


def check_packed(packed: torch.Tensor, shape: Iterable[int]) -> tuple[int, ...]:
    """Check that ``packed`` is exactly what :func:`pack_bool` writes for a mask of ``shape``.

    ``np.unpackbits(count=n)`` pads a short buffer with zeros and ignores surplus bytes, so without this
    a truncated or padded mask would be read as a different mask without any error. Checked: a 1-D
    uint8 tensor, non-negative dimensions, exactly ceil(n / 8) bytes, and zero padding bits. Cheap (no
    unpacking), so loaders can call it on every stored mask, history entries included. Raises
    ValueError with a one-line reason; returns the shape as a tuple of ints.
    """
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                       for s in shape):
        raise ValueError(f"mask shape {shape!r} is not a list of integers")
    if any(s < 0 for s in shape):
        raise ValueError(f"mask shape {list(shape)} has a negative dimension")
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim != 1:
        what = f"{packed.dtype} tensor of shape {list(packed.shape)}" if isinstance(packed, torch.Tensor) else \
            type(packed).__name__
        raise ValueError(f"packed mask is a {what}, expected 1-D uint8 bits")
    need = packed_nbytes(shape)
    if packed.numel() != need:
        raise ValueError(f"packed mask holds {packed.numel()} bytes, shape {list(shape)} needs exactly {need}")
    spare = need * 8 - math.prod(shape)
    if spare and int(packed[-1]) & ((1 << spare) - 1):
        raise ValueError(f"packed mask of shape {list(shape)} has bits set past its end")
    return tuple(shape)


def unpack_bool(packed: torch.Tensor, shape: Iterable[int]) -> torch.Tensor:
    """Inverse of :func:`pack_bool`; refuses (ValueError) anything :func:`check_packed` refuses."""
    shape = check_packed(packed, list(shape) if not isinstance(shape, (list, tuple)) else shape)
    n = math.prod(shape)
    bits = np.unpackbits(packed.to("cpu").numpy(), count=n)
    return torch.from_numpy(bits.view(bool)).reshape(shape)  # 0/1 bytes are bools: no copy


@dataclass
class PackedMasks:
    """Bit-packed masks with their shapes; what snapshots and checkpoints store."""

    data: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def unpack(self) -> MaskSet:
        return MaskSet({name: unpack_bool(self.data[name], self.shapes[name]) for name in self.data})

    def __len__(self) -> int:
        return len(self.data)

    def nbytes(self) -> int:
        return sum(t.numel() for t in self.data.values())


class MaskSet(Mapping[str, torch.Tensor]):
    """Boolean masks keyed by parameter name (``blocks.0.attn.qkv.weight``), or by unit name for
    structured masks (``blocks.0.attn.heads``)."""

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None) -> None:
        self._masks: dict[str, torch.Tensor] = {}
        self._float_cache: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for name, mask in (masks or {}).items():
            self[name] = mask

    # --- mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        self._masks[name] = mask.to(torch.bool)
        self._float_cache.clear()

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        return f"MaskSet({len(self)} masks, density={self.overall_density():.4f})"

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def full(cls, model: nn.Module, names: Iterable[str]) -> MaskSet:
        params = dict(model.named_parameters())
        return cls({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})

    @classmethod
    def from_weights(cls, model_or_state: nn.Module | Mapping[str, torch.Tensor], names: Iterable[str]) -> MaskSet:
        """Masks recovered as ``weight != 0`` (valid right after a masked optimizer step)."""
        state = (dict(model_or_state.named_parameters()) if isinstance(model_or_state, nn.Module)
                 else model_or_state)
        return cls({n: state[n].detach() != 0 for n in names})

    def clone(self) -> MaskSet:
        return MaskSet({n: m.clone() for n, m in self._masks.items()})

    def to(self, device: torch.device | str) -> MaskSet:
        return MaskSet({n: m.to(device) for n, m in self._masks.items()})

    def cpu(self) -> MaskSet:
        return self.to("cpu")

    # --- statistics -------------------------------------------------------------------------
    def nonzeros(self) -> dict[str, int]:
        return {n: count_true(m) for n, m in self._masks.items()}

    def count(self, name: str) -> int:
        """Active entries of one mask."""
        return count_true(self._masks[name])

    def positions(self, name: str) -> torch.Tensor:
        """Flat indices (int64, ascending) of the active entries of one mask."""
        return self._masks[name].reshape(-1).nonzero().reshape(-1)

    def numels(self) -> dict[str, int]:
        return {n: m.numel() for n, m in self._masks.items()}

    def density(self) -> dict[str, float]:
        return {n: (count_true(m) / m.numel() if m.numel() else 1.0) for n, m in self._masks.items()}

    def overall_density(self) -> float:
        total = sum(m.numel() for m in self._masks.values())
        if total == 0:
            return 1.0
        return sum(count_true(m) for m in self._masks.values()) / total

    def equal(self, other: MaskSet) -> bool:
        return set(self) == set(other) and all(torch.equal(self[n].cpu(), other[n].cpu()) for n in self)

    # --- use ----------------------------------------------------------------------------------
    def parameters_of(self, model: nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        missing = [n for n in self._masks if n not in params]
        if missing:
            raise KeyError(f"masks name parameters the model lacks: {missing[:3]}")
        return [params[n] for n in self._masks]

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the masked entries of every masked parameter in one fused multiply."""
        self.apply_to(self.parameters_of(model))

    @torch.no_grad()
    def apply_to(self, tensors: list[torch.Tensor]) -> None:
        """Multiply masks into ``tensors`` (same order as the masks), e.g. weights or their grads."""
        if not tensors:
            return
        key = (tensors[0].dtype, tensors[0].device)
        floats = self._float_cache.get(key)
        if floats is None:
            floats = [m.to(device=key[1], dtype=key[0]) for m in self._masks.values()]
            self._float_cache[key] = floats
        torch._foreach_mul_(tensors, floats)

    def pack(self) -> PackedMasks:
        return PackedMasks({n: pack_bool(m) for n, m in self._masks.items()},
                           {n: tuple(m.shape) for n, m in self._masks.items()})


@dataclass
class Snapshot:
    """One entry of the mask history: the topology (and selector weights) at a training step."""

    step: int
    epoch: float
    masks: PackedMasks = field(default_factory=PackedMasks)  # weight-level masks
    units: PackedMasks = field(default_factory=PackedMasks)  # head / neuron masks (structured runs)
    state: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. token selector weights
    info: dict[str, Any] = field(default_factory=dict)  # event ('update'/'epoch'), density, rate, ...
    probe: dict[str, torch.Tensor] = field(default_factory=dict)  # each head's attention on fixed images

    @classmethod
    def take(cls, step: int, epoch: float, masks: MaskSet | None = None, units: MaskSet | None = None,
             state: Mapping[str, torch.Tensor] | None = None, probe: Mapping[str, torch.Tensor] | None = None,
             **info: Any) -> Snapshot:
        if masks is not None and len(masks):
            info.setdefault("overall_density", masks.overall_density())
        return cls(step=int(step), epoch=float(epoch),
                   masks=masks.pack() if masks is not None else PackedMasks(),
                   units=units.pack() if units is not None else PackedMasks(),
                   state={k: v.detach().to("cpu").clone() for k, v in (state or {}).items()},
                   info=dict(info), probe={k: v.detach().to("cpu").clone() for k, v in (probe or {}).items()})


def head_unit_name(block: int) -> str:
    """Unit-mask key of block ``block``'s attention heads (bool[num_heads])."""
    return f"blocks.{block}.attn.heads"


def neuron_unit_name(block: int) -> str:
    """Unit-mask key of block ``block``'s MLP hidden neurons (bool[hidden])."""
    return f"blocks.{block}.mlp.neurons"


def default_sparsifiable(model: nn.Module) -> list[str]:
    """The reference rule: every 2-D/4-D weight (patch embed, qkv, proj, fc1, fc2, head), never
    biases, norms, tokens, position embedding (3-D) or the token selector."""
    return [n for n, p in model.named_parameters()
            if p.ndim in (2, 4) and "token_selector" not in n and "gumbel" not in n]
