"""Masks held as bits while training: one bit per weight instead of a bool byte plus a float copy.

The paper's first promise is training memory, yet a :class:`~.masks.MaskSet` that a sparse method keeps
for the whole run costs a bool byte per weight, and its fused multiply caches a float copy (four more):
measured on a DeiT-S, sparse training held ~8 bytes per masked weight more than dense. A
:class:`BitMaskSet` stores each mask bit-packed (numpy's ``packbits`` order, exactly what snapshots and
checkpoints store) and unpacks one layer at a time into scratch buffers the size of the largest layer:

* :meth:`BitMaskSet.apply_to` multiplies the masks into the weights layer by layer (a masked weight
  becomes ``w * 0.0``, sign of zero included, exactly as the float multiply of a ``MaskSet`` did);
* engines read and write one layer's mask through :meth:`unpack_into` / :meth:`store`, count with
  :meth:`count` (a popcount, no unpacking) and OR masks into their ever-active masks with :meth:`or_into`;
* the ``Mapping`` interface still works (``masks[name]`` returns a fresh bool tensor), so checkpoints,
  analysis and tests read a BitMaskSet like any MaskSet.

On the CPU the bits go through numpy (a 256-entry table unpacks eight bits with one 8-byte load, into a
reused buffer); on other devices through torch shifts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from .maskset import MaskSet, PackedMasks

# row b: the eight bits of byte b, most significant first (packbits order), as one little-endian uint64
_UNPACK = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).copy().view(np.uint64).reshape(256)
_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)
_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


APPLY_CHUNK = 1 << 20  # entries masked per multiply (a multiple of 8, so chunks start on a byte)


def packed_len(n: int) -> int:
    return (int(n) + 7) // 8


class BitScratch:
    """Reusable unpacking buffers, grown to the largest layer: a byte per entry (0/1, readable as bool)
    and, per float dtype, a float copy for the fused multiply."""

    def __init__(self) -> None:
        self._bytes: torch.Tensor | None = None
        self._floats: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def bytes(self, n: int, device: torch.device) -> torch.Tensor:
        size = packed_len(n) * 8
        if self._bytes is None or self._bytes.numel() < size or self._bytes.device != device:
            self._bytes = torch.empty(size, dtype=torch.uint8, device=device)
        return self._bytes[:size]

    def floats(self, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._floats.get((dtype, device))
        if buf is None or buf.numel() < n:
            buf = self._floats[(dtype, device)] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]

    def nbytes(self) -> int:
        own = [self._bytes] if self._bytes is not None else []
        return sum(t.numel() * t.element_size() for t in own + list(self._floats.values()))


def unpack_bits(bits: torch.Tensor, n: int, out: torch.Tensor) -> torch.Tensor:
    """The first ``n`` bits of ``bits`` as a flat bool view of ``out`` (uint8, >= ceil(n/8)*8 entries)."""
    nb = packed_len(n)
    if bits.device.type == "cpu":
        np.take(_UNPACK, bits.numpy(), out=out[: nb * 8].numpy().view(np.uint64))
    else:
        _unpack_torch(bits, out[: nb * 8])
    return out[:n].view(torch.bool)


def _unpack_torch(bits: torch.Tensor, out: torch.Tensor) -> None:
    torch.bitwise_and(torch.bitwise_right_shift(bits[:, None], _SHIFTS.to(bits.device)), 1,
                      out=out.view(bits.numel(), 8))


def pack_bits(flat: torch.Tensor, out: torch.Tensor) -> None:
    """Pack the flat bool tensor ``flat`` into ``out`` (uint8, ceil(n/8) bytes; zero padding bits)."""
    if flat.device.type == "cpu":
        out.numpy()[:] = np.packbits(flat.numpy())
    else:
        _pack_torch(flat, out)


def _pack_torch(flat: torch.Tensor, out: torch.Tensor) -> None:
    n = flat.numel()
    padded = torch.zeros(packed_len(n) * 8, dtype=torch.uint8, device=flat.device)
    padded[:n] = flat.to(torch.uint8)
    out.copy_((padded.view(-1, 8) * _WEIGHTS.to(flat.device)).sum(dim=1, dtype=torch.uint8))


def flat_positions(flat: torch.Tensor) -> torch.Tensor:
    """Flat indices (int64, ascending) of the True entries of a flat bool tensor."""
    if flat.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(flat.numpy()))
    return flat.nonzero().reshape(-1)


def popcount(bits: torch.Tensor) -> int:
    if bits.device.type == "cpu":
        return int(np.bitwise_count(bits.numpy()).sum(dtype=np.int64))
    return _popcount_torch(bits)


def _popcount_torch(bits: torch.Tensor) -> int:
    return int(torch.bitwise_and(torch.bitwise_right_shift(bits[:, None], _SHIFTS.to(bits.device)), 1).sum())


class BitMaskSet(MaskSet):
    """A :class:`MaskSet` whose masks are stored bit-packed (1/8 byte per entry) on their device."""

    def __init__(self, masks: Mapping[str, torch.Tensor] | None = None, scratch: BitScratch | None = None) -> None:
        self._bits: dict[str, torch.Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self.scratch = scratch or BitScratch()
        for name, mask in (masks or {}).items():
            self[name] = mask

    @classmethod
    def from_packed(cls, packed: PackedMasks, device: torch.device | str = "cpu") -> BitMaskSet:
        out = cls()
        for name, data in packed.data.items():
            out.add_bits(name, data.to(device), packed.shapes[name])
        return out

    def add_bits(self, name: str, bits: torch.Tensor, shape: tuple[int, ...]) -> None:
        """Hold a copy of already packed bits (checked by the caller: ``masks.check_packed``)."""
        self._bits[name] = bits.to(torch.uint8).clone().contiguous()
        self._shapes[name] = tuple(shape)

    # --- mapping protocol: a bool tensor out, a bool tensor in ---------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        bits, shape = self._bits[name], self._shapes[name]
        out = torch.empty(packed_len(math.prod(shape)) * 8, dtype=torch.uint8, device=bits.device)
        return unpack_bits(bits, math.prod(shape), out).view(shape)

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        flat = mask.detach().to(torch.bool).reshape(-1).contiguous()
        bits = self._bits.get(name)
        if bits is None or self._shapes[name] != tuple(mask.shape) or bits.device != flat.device:
            bits = self._bits[name] = torch.empty(packed_len(flat.numel()), dtype=torch.uint8, device=flat.device)
            self._shapes[name] = tuple(mask.shape)
        pack_bits(flat, bits)

    def __iter__(self):  # noqa: ANN204 (Mapping's signature)
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    # --- engine access, one layer at a time ---------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def bits(self, name: str) -> torch.Tensor:
        """The stored bits themselves (read them; write masks through :meth:`store`)."""
        return self._bits[name]

    def unpack_into(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """Layer ``name`` as a flat bool view of the uint8 buffer ``out`` (no allocation)."""
        return unpack_bits(self._bits[name], math.prod(self._shapes[name]), out)

    def store(self, name: str, flat: torch.Tensor) -> None:
        """Replace layer ``name`` by the flat bool tensor ``flat`` (same number of entries)."""
        pack_bits(flat, self._bits[name])

    def count(self, name: str) -> int:
        return popcount(self._bits[name])

    def or_into(self, other: BitMaskSet) -> None:
        """``other |= self``, layer by layer on the bits (e.g. ever-active masks after an update)."""
        for name, bits in self._bits.items():
            other._bits[name].bitwise_or_(bits)

    def positions(self, name: str) -> torch.Tensor:
        """Flat indices (int64, ascending) of the active entries of layer ``name``."""
        n = math.prod(self._shapes[name])
        return flat_positions(self.unpack_into(name, self.scratch.bytes(n, self._bits[name].device)))

    # --- MaskSet's statistics and uses, on the bits ---------------------------------------------
    def clone(self) -> BitMaskSet:
        out = BitMaskSet()
        out._bits = {n: b.clone() for n, b in self._bits.items()}
        out._shapes = dict(self._shapes)
        return out

    def to(self, device: torch.device | str) -> BitMaskSet:
        out = self.clone()
        out._bits = {n: b.to(device) for n, b in out._bits.items()}
        return out

    def nonzeros(self) -> dict[str, int]:
        return {n: self.count(n) for n in self._bits}

    def numels(self) -> dict[str, int]:
        return {n: math.prod(s) for n, s in self._shapes.items()}

    def density(self) -> dict[str, float]:
        return {n: (self.count(n) / math.prod(s) if math.prod(s) else 1.0) for n, s in self._shapes.items()}

    def overall_density(self) -> float:
        total = sum(math.prod(s) for s in self._shapes.values())
        return sum(self.count(n) for n in self._bits) / total if total else 1.0

    def nbytes(self) -> int:
        return sum(b.numel() for b in self._bits.values())

    def equal(self, other: MaskSet) -> bool:
        if isinstance(other, BitMaskSet):  # bits compared as stored (padding bits are always zero)
            return (self._shapes == other._shapes
                    and all(torch.equal(b.cpu(), other._bits[n].cpu()) for n, b in self._bits.items()))
        return super().equal(other)

    def parameters_of(self, model: torch.nn.Module) -> list[torch.Tensor]:
        params = dict(model.named_parameters())
        missing = [n for n in self._bits if n not in params]
        if missing:
            raise KeyError(f"masks name parameters the model lacks: {missing[:3]}")
        return [params[n] for n in self._bits]

    @torch.no_grad()
    def apply_to(self, tensors: list[torch.Tensor]) -> None:
        """``tensor *= mask`` for every layer (same order as the masks), ``APPLY_CHUNK`` entries at a time:
        unpacked into the scratch, turned into the tensor's dtype, multiplied, so every entry is exactly
        what a float-mask multiply gives (a masked negative weight becomes -0.0) and the scratch stays
        small whatever the model (at most 5 MB)."""
        if not tensors:
            return
        t0 = tensors[0]
        chunk = min(APPLY_CHUNK, max(t.numel() for t in tensors))
        raw, factors = self.scratch.bytes(chunk, t0.device), self.scratch.floats(chunk, t0.dtype, t0.device)
        for name, t in zip(self._bits, tensors, strict=True):
            if self._bits[name].device != t.device:  # built on the CPU for a model elsewhere: moved once
                self._bits[name] = self._bits[name].to(t.device)
            if t.device != t0.device or t.dtype != t0.dtype:
                raw, factors = self.scratch.bytes(chunk, t.device), self.scratch.floats(chunk, t.dtype, t.device)
            bits, flat_t, n = self._bits[name], t.view(-1), t.numel()
            for start in range(0, n, chunk):
                size = min(chunk, n - start)
                unpack_bits(bits[start // 8:(start + size + 7) // 8], size, raw)
                factor = factors[:size]
                factor.copy_(raw[:size])  # 0/1 bytes: converting from uint8 is 8x faster than from bool
                flat_t[start:start + size].mul_(factor)

    def pack(self) -> PackedMasks:
        return PackedMasks({n: b.detach().to("cpu").clone() for n, b in self._bits.items()}, dict(self._shapes))


__all__ = ["BitMaskSet", "BitScratch", "flat_positions", "pack_bits", "popcount", "unpack_bits"]
