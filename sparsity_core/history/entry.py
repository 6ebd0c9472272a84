"""One group of one snapshot in the mask history: its layers, its entry, and how an entry is built.

A *group* is the weight masks (``masks``), the head/neuron masks (``units``), the distance sample
(``sample``), the token-selector weights (``state``) or the head probe (``probe``: each head's class-token
attention on a few fixed images, ``history/probe.py``); its *layers* are its tensors, fixed for the whole
history. An :class:`Entry` holds, per layer, one segment coded by
:mod:`sparsity_core.history.codec`, the segment's header numbers, and (bit groups) the counts the
charts read without decoding. :mod:`sparsity_core.history.lazy` strings entries into a history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import SviteError
from ..masks.maskset import PackedMasks
from .codec import EMPTY, encode_bits, encode_bytes


@dataclass
class Segments:
    """A 1-D uint8 tensor given as numpy byte arrays to be written back to back: how a history entry hands
    its bytes to the checkpoint writer (``checkpoint.streaming``) without concatenating them first."""

    parts: Sequence[np.ndarray]

    @property
    def nbytes(self) -> int:
        return sum(int(p.nbytes) for p in self.parts)

GROUPS = ("masks", "units", "sample", "state", "probe")
BIT_GROUPS = ("masks", "units", "sample")
BYTE_GROUPS = ("state", "probe")
STATS = ("ones", "flips", "grown", "fired")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "int16": torch.int16,
          "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}


@dataclass(frozen=True)
class Layer:
    """One tensor of a group: a bit layer (``dtype`` empty) or a byte layer of that dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str = ""

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize if self.dtype else 1

    @property
    def size(self) -> int:
        """Length of the decoded flat state: bits for bit layers, bytes for byte layers."""
        return self.numel * self.itemsize


@dataclass
class Entry:
    """One group at one snapshot; ``segments`` are uint8 views, one per layer, in layer order."""

    kind: str  # "key" | "delta" | "same"
    method: tuple[int, ...] = ()
    count: tuple[int, ...] = ()
    k: tuple[int, ...] = ()
    nbytes: tuple[int, ...] = ()
    segments: tuple[np.ndarray, ...] = ()
    stats: dict[str, tuple[int, ...]] | None = None

    @property
    def payload(self) -> int:
        return int(sum(self.nbytes))

    def to_json(self) -> dict[str, Any]:
        if self.kind == "same":
            return {"kind": "same"}
        out: dict[str, Any] = {"kind": self.kind, "method": list(self.method), "bytes": list(self.nbytes)}
        if self.stats is not None:
            out.update(count=list(self.count), k=list(self.k), **{s: list(self.stats[s]) for s in STATS})
        return out


def popcount(a: np.ndarray) -> int:
    return int(np.bitwise_count(a).sum(dtype=np.int64))


def split_segments(blob: np.ndarray, nbytes: Sequence[int]) -> tuple[np.ndarray, ...]:
    ends = np.cumsum(nbytes, dtype=np.int64)
    return tuple(blob[e - n:e] for e, n in zip(ends.tolist(), nbytes, strict=True))


def bits_entry(kind: str, layers: list[Layer], packed: list[np.ndarray], stats: dict) -> Entry:
    rows, payloads = [], []
    for layer, p in zip(layers, packed, strict=True):
        if not p.any():
            method, count, k, data = EMPTY, 0, 0, b""
        else:
            method, count, k, data = encode_bits(np.unpackbits(p, count=layer.numel).view(bool))
        rows.append((method, count, k, len(data)))
        payloads.append(data)
    method, count, k, nbytes = (tuple(c) for c in zip(*rows, strict=True))
    blob = np.frombuffer(bytearray(b"".join(payloads)), dtype=np.uint8)
    return Entry(kind, method, count, k, nbytes, split_segments(blob, nbytes), stats)


def bytes_entry(kind: str, layers: list[Layer], xors: list[np.ndarray]) -> Entry:
    rows, payloads = [], []
    for layer, x in zip(layers, xors, strict=True):
        method, data = encode_bytes(x, layer.itemsize)
        rows.append((method, len(data)))
        payloads.append(data)
    method, nbytes = (tuple(c) for c in zip(*rows, strict=True))
    blob = np.frombuffer(bytearray(b"".join(payloads)), dtype=np.uint8)
    zeros = (0,) * len(layers)
    return Entry(kind, method, zeros, zeros, nbytes, split_segments(blob, nbytes))


def packed_group(packed: PackedMasks) -> tuple[list[Layer], list[np.ndarray]] | None:
    if not len(packed):
        return None
    layers, arrays = [], []
    for name, data in packed.data.items():
        layer = Layer(name, tuple(int(s) for s in packed.shapes[name]))
        arr = data.detach().to("cpu", torch.uint8).reshape(-1).numpy()
        if len(arr) != -(-layer.numel // 8):
            raise SviteError(f"packed mask '{name}' holds {len(arr)} bytes, shape {list(layer.shape)} needs "
                             f"{-(-layer.numel // 8)}")
        pad = 8 * len(arr) - layer.numel
        if pad and arr[-1] & ((1 << pad) - 1):
            arr = arr.copy()
            arr[-1] &= 0xFF ^ ((1 << pad) - 1)  # pad bits are not mask bits: keep them zero
        layers.append(layer)
        arrays.append(arr)
    return layers, arrays


def _unsupported(name: str, dtype: str) -> Exception:
    return SviteError(f"snapshot state '{name}' has dtype {dtype}, which the history cannot store")


def byte_group(state: Mapping[str, torch.Tensor], unsupported: Callable[[str, str], Exception] = _unsupported
               ) -> tuple[list[Layer], list[np.ndarray]] | None:
    """A snapshot's state tensors as byte layers and their raw bytes (None for no state);
    ``unsupported(name, dtype)`` is the error for a dtype the history cannot store."""
    if not state:
        return None
    layers, arrays = [], []
    for name, value in state.items():
        dtype = str(value.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise unsupported(str(name), dtype)
        layers.append(Layer(str(name), tuple(value.shape), dtype))
        arrays.append(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().copy())
    return layers, arrays


@dataclass
class Encoder:
    """A group's encoding state between snapshots: what the next entry is coded against."""

    prev: list[np.ndarray] | None = None  # last state held (packed bits / raw bytes)
    gap: bool = False  # the group was absent since ``prev``: the next entry must be a keyframe
    fired: list[np.ndarray] | None = None
    since_key: int = 0
    bytes_since_key: int = 0
    key_bytes: int = 0

    def encode(self, layers: list[Layer], cur: list[np.ndarray], bits: bool, keyframe_every: int,
               keyframe_budget: float) -> Entry:
        """The entry of state ``cur``: ``same``, a ``delta`` against the previous state, or a ``key``
        (after ``keyframe_every`` deltas, or once the deltas since the last key take ``keyframe_budget``
        times its bytes). Bit groups also count ones, flips, grown and ever-active positions."""
        stats = None
        if bits:
            self.fired = [c.copy() for c in cur] if self.fired is None else [
                f | c for f, c in zip(self.fired, cur, strict=True)]
            stats = {"ones": tuple(popcount(c) for c in cur), "fired": tuple(popcount(f) for f in self.fired),
                     "flips": (0,) * len(cur), "grown": (0,) * len(cur)}
        entry = None
        if self.prev is not None:
            xors = [c ^ p for c, p in zip(cur, self.prev, strict=True)]
            if bits:
                stats["flips"] = tuple(popcount(x) for x in xors)
                stats["grown"] = tuple(popcount(c & ~p) for c, p in zip(cur, self.prev, strict=True))
            if not self.gap and not any(x.any() for x in xors):
                self.prev = cur
                return Entry("same")
            if not self.gap and self.since_key < keyframe_every:
                entry = bits_entry("delta", layers, xors, stats) if bits else bytes_entry("delta", layers, xors)
                if self.bytes_since_key + entry.payload > keyframe_budget * max(self.key_bytes, 1):
                    entry = None
        if entry is None:
            entry = bits_entry("key", layers, cur, stats) if bits else bytes_entry("key", layers, cur)
            self.since_key, self.bytes_since_key, self.key_bytes = 0, 0, entry.payload
        else:
            self.since_key += 1
            self.bytes_since_key += entry.payload
        self.prev, self.gap = cur, False
        return entry


@dataclass(frozen=True)
class GroupStats:
    """Per-snapshot counts of a bit group, no decoding needed: rows follow ``index`` (the
    snapshots that hold the group), columns follow ``layers``."""

    index: np.ndarray
    layers: list[Layer]
    ones: np.ndarray
    flips: np.ndarray
    grown: np.ndarray
    fired: np.ndarray

    @property
    def numel(self) -> np.ndarray:
        return np.array([layer.numel for layer in self.layers], dtype=np.int64)


def group_stats(entries: Sequence[Entry | None], layers: list[Layer]) -> GroupStats:
    """The counts a bit group's entries carry, one row per snapshot that holds the group."""
    index, rows, last = [], [], None
    for t, entry in enumerate(entries):
        if entry is None:
            continue
        if entry.kind == "same":
            zero = (0,) * len(layers)
            row = {"ones": last["ones"], "fired": last["fired"], "flips": zero, "grown": zero}
        else:
            row = entry.stats
        index.append(t)
        rows.append(row)
        last = row
    arrays = {s: np.array([r[s] for r in rows], dtype=np.int64).reshape(len(rows), len(layers)) for s in STATS}
    return GroupStats(np.array(index, dtype=np.int64), layers, **arrays)
