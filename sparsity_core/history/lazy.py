"""The mask history as keyframes plus deltas, encoded as training goes and decoded lazily.

A run of hundreds of topology updates on a DeiT-B (86 M masked weights) would carry 3.2 GB of
history if every snapshot were stored whole, though most snapshots change nothing and an update
flips a few percent of the positions. So each snapshot stores, per *group* (``masks``: weight masks;
``units``: head/neuron masks; ``sample``: a systematic sample of the weight masks for distances;
``state``: token-selector weights; ``probe``: the head probe) one entry:

* ``key``   -- the full state of every layer (a delta against all zeros),
* ``delta`` -- per layer, only what changed since the previous snapshot (see
  :mod:`sparsity_core.history.codec`: Rice-coded flipped positions, or an XOR of bytes),
* ``same``  -- nothing changed (no bytes at all),

or nothing when the snapshot has no such group (a dense snapshot has no masks). A keyframe is
written after ``keyframe_every`` changing snapshots, or sooner once the deltas since the last one
take ``keyframe_budget`` times its bytes, so any snapshot decodes from at most that many deltas.
Bit groups also record, per snapshot and layer, the counts every history chart needs: ``ones``
(density), ``flips`` and ``grown`` (churn: pruned = flips - grown) and ``fired`` (the ever-active
count), so those charts never decode a mask.

Decoding is lazy and per layer: a page that draws one layer at one snapshot decodes that layer's
keyframe and deltas (or walks from a neighbouring snapshot it decoded before), from compressed
bytes held in memory, never from the file. :mod:`sparsity_core.history.fileformat` reads and writes it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError, SviteError
from ..masks.maskset import MaskSet, PackedMasks, Snapshot
from .codec import apply_bits, apply_bytes
from .entry import (
    BIT_GROUPS,
    DTYPES,
    GROUPS,
    Encoder,
    Entry,
    GroupStats,
    Layer,
    byte_group,
    group_stats,
    packed_group,
)

KEYFRAME_EVERY = 32
KEYFRAME_BUDGET = 8
SAMPLE_MIN = 1 << 22  # masked weights from which the distance sample is worth its bytes
SAMPLE_TARGET = 1 << 18  # sampled positions: a distance's standard error is <= 0.5 / 512
CACHE_BYTES = 256 << 20


class MaskHistory(Sequence[Snapshot]):
    """The snapshots of a run. ``append`` encodes a :class:`Snapshot` at once (training holds only
    compressed bytes); ``history[i]`` is a lazy view; :meth:`stats`, :meth:`layer`, :meth:`masks_at`
    and :meth:`walk` are what the analysis uses."""

    def __init__(self, keyframe_every: int | None = None, keyframe_budget: float | None = None, *,
                 sample_min: int | None = None, sample_target: int | None = None,
                 source: str = "mask history") -> None:
        # defaults read at call time, so a test can shrink them for a whole training run
        self.keyframe_every = int(KEYFRAME_EVERY if keyframe_every is None else keyframe_every)
        self.keyframe_budget = float(KEYFRAME_BUDGET if keyframe_budget is None else keyframe_budget)
        if self.keyframe_every < 1 or self.keyframe_budget <= 0:
            raise SviteError("mask history: keyframe_every must be >= 1 and keyframe_budget > 0")
        self.sample_min = int(SAMPLE_MIN if sample_min is None else sample_min)
        self.sample_target = int(SAMPLE_TARGET if sample_target is None else sample_target)
        self.source = source
        self.steps: list[int] = []
        self.epochs: list[float] = []
        self.infos: list[dict[str, Any]] = []
        self.layers: dict[str, list[Layer]] = {}
        self.entries: dict[str, list[Entry | None]] = {g: [] for g in GROUPS}
        self.sample_stride = 0  # 0: no distance sample (small models: distances are exact)
        self._encoders: dict[str, Encoder] | None = {g: Encoder() for g in GROUPS}
        self._cache: OrderedDict[tuple[str, int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._lock = threading.RLock()
        self._stats: dict[str, GroupStats] = {}

    # --- sequence protocol ------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> SnapshotView:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"snapshot {i}: the history has {len(self)} snapshots")
        return SnapshotView(self, i % len(self))

    def __repr__(self) -> str:
        return f"MaskHistory({len(self)} snapshots, groups {sorted(self.layers)})"

    # --- encoding -----------------------------------------------------------------------------
    @classmethod
    def from_snapshots(cls, snapshots: Sequence[Snapshot], **kwargs: Any) -> MaskHistory:
        history = cls(**kwargs)
        for snap in snapshots:
            history.append(snap)
        return history

    def append(self, snap: Snapshot) -> None:
        """Encode one snapshot against the previous one (all groups, or none on error)."""
        encoders = self._resume_encoders()
        current = {"masks": packed_group(snap.masks), "units": packed_group(snap.units),
                   "state": byte_group(snap.state), "probe": byte_group(snap.probe)}
        if current["masks"] is not None:
            current["sample"] = self._sample_of(*current["masks"])
        staged: dict[str, tuple[Entry | None, Encoder, list[Layer] | None]] = {}
        for group in GROUPS:
            cur = current.get(group)
            if cur is None:
                was = encoders[group]
                staged[group] = (None, Encoder(prev=was.prev, fired=was.fired, gap=was.prev is not None), None)
                continue
            layers, arrays = cur
            known = self.layers.get(group)
            if known is not None and known != layers:
                raise SviteError(f"snapshot at step {snap.step} has other {group} "
                                 f"({len(layers)} tensors) than the history ({len(known)})", path=self.source)
            enc = Encoder(**vars(encoders[group]))
            entry = enc.encode(layers, arrays, group in BIT_GROUPS, self.keyframe_every, self.keyframe_budget)
            staged[group] = (entry, enc, layers)
        for group, (entry, enc, layers) in staged.items():
            self.entries[group].append(entry)
            encoders[group] = enc
            if layers is not None:
                self.layers.setdefault(group, layers)
        self.steps.append(int(snap.step))
        self.epochs.append(float(snap.epoch))
        self.infos.append(dict(snap.info))
        self._stats.clear()

    def _sample_of(self, layers: list[Layer], packed: list[np.ndarray]) -> tuple[list[Layer], list[np.ndarray]] | None:
        """The distance sample: every ``sample_stride``-th masked weight (layers concatenated)."""
        if not self.sample_stride:
            stride = self.stride_for(layers)
            if stride == 1:
                return None
            self.sample_stride = stride
        positions = self.sample_positions(layers)
        bits = [p[local >> 3] >> (7 - (local & 7)) & 1 for p, local in zip(packed, positions, strict=True)]
        flat = np.concatenate(bits).astype(bool)
        return [Layer("sample", (len(flat),))], [np.packbits(flat)]

    def sample_positions(self, layers: list[Layer] | None = None, stride: int | None = None) -> list[np.ndarray]:
        """Per masks layer, the local positions the distance sample holds (in sample order): every
        ``stride``-th weight of the layers flattened and concatenated."""
        stride = stride or self.sample_stride
        out, offset = [], 0
        for layer in layers if layers is not None else self.layers.get("masks", []):
            start = (-offset) % stride
            out.append(np.arange(start, layer.numel, stride, dtype=np.int64))
            offset += layer.numel
        return out

    def stride_for(self, layers: list[Layer] | None = None) -> int:
        """Stride of a distance sample of these masks (default: the history's): 1 (every weight, no
        sample) below ``sample_min`` masked weights, else about ``sample_target`` positions. Odd, so
        that it does not alias with the even widths of ViT matrices. Also the stride the analysis
        samples with while decoding a large history that stores no sample (format 1)."""
        total = sum(layer.numel for layer in (self.layers.get("masks", []) if layers is None else layers))
        if total < max(self.sample_min, 1) or total <= self.sample_target:
            return 1
        return -(-total // self.sample_target) | 1

    def _resume_encoders(self) -> dict[str, Encoder]:
        """Encoder state of a history read from a file: the last state of every group, the
        ever-active union (one pass over the history) and the keyframe counters."""
        if self._encoders is not None:
            return self._encoders
        encoders = {}
        for group in GROUPS:
            enc = Encoder()
            entries = self.entries[group]
            layers = self.layers.get(group, [])
            if layers and any(e is not None for e in entries):
                if group in BIT_GROUPS:
                    enc.fired = [np.packbits(self._union(group, j)) for j in range(len(layers))]
                last = max(i for i, e in enumerate(entries) if e is not None)
                enc.prev = [self._state(group, j, last) for j in range(len(layers))]
                if group in BIT_GROUPS:
                    enc.prev = [np.packbits(p) for p in enc.prev]
                enc.gap = last != len(entries) - 1
                last_key = max(i for i, e in enumerate(entries) if e is not None and e.kind == "key")
                deltas = [e for e in entries[last_key + 1:] if e is not None and e.kind == "delta"]
                enc.since_key, enc.key_bytes = len(deltas), entries[last_key].payload
                enc.bytes_since_key = sum(e.payload for e in deltas)
            encoders[group] = enc
        self._encoders = encoders
        return encoders

    def _union(self, group: str, j: int) -> np.ndarray:
        union = np.zeros(self.layers[group][j].size, dtype=bool)
        for _, state in self.walk(group, self.layers[group][j].name):
            union |= state
        return union

    # --- decoding -----------------------------------------------------------------------------
    def has(self, i: int, group: str = "masks") -> bool:
        return self.entries[group][i] is not None

    def layer_index(self, group: str, name: str) -> int:
        for j, layer in enumerate(self.layers.get(group, [])):
            if layer.name == name:
                return j
        raise SviteError(f"the mask history has no {group} tensor '{name}'")

    def _apply(self, group: str, j: int, t: int, state: np.ndarray) -> None:
        entry = self.entries[group][t]
        if entry is None or entry.kind == "same":
            return
        layer = self.layers[group][j]
        try:
            if layer.dtype:
                apply_bytes(state, entry.method[j], entry.segments[j], layer.itemsize)
            else:
                apply_bits(state, entry.method[j], entry.count[j], entry.k[j], entry.segments[j])
        except ValueError as err:
            raise CheckpointError(f"tensor history/{t}/{group} (layer {layer.name}) is damaged: "
                                  f"{err}", path=self.source) from None

    def _state(self, group: str, j: int, i: int) -> np.ndarray:
        """Flat decoded state (bool for bit layers, uint8 for byte layers) of layer ``j`` at
        snapshot ``i``; read-only, cached. Starts from the closest of: the keyframe, an earlier
        decoded snapshot after it, or a later decoded one with no keyframe in between."""
        entries = self.entries[group]
        if entries[i] is None:
            raise SviteError(f"snapshot {i} holds no {group}")
        key = i
        while entries[key].kind != "key":
            key -= 1
        stop = i + 1
        while stop < len(entries) and entries[stop] is not None and entries[stop].kind != "key":
            stop += 1
        with self._lock:
            cached = [t for (g, jj, t) in self._cache if g == group and jj == j and key <= t < stop]
            if i in cached:
                self._cache.move_to_end((group, j, i))
                return self._cache[(group, j, i)]

        def cost(a: int, b: int) -> int:
            return sum(1 for e in entries[a:b] if e.kind == "delta")

        options = [(cost(key, i + 1), key, None)]
        options += [(cost(t + 1, i + 1), t, "fwd") for t in cached if t < i]
        options += [(cost(i + 1, t + 1), t, "back") for t in cached if t > i]
        _, start, how = min(options, key=lambda o: o[0])
        if how is None:
            layer = self.layers[group][j]
            state = np.zeros(layer.size, dtype=np.uint8 if layer.dtype else bool)
            steps = range(key, i + 1)
        else:
            with self._lock:
                state = self._cache[(group, j, start)].copy()
            steps = range(start + 1, i + 1) if how == "fwd" else range(start, i, -1)
        for t in steps:
            self._apply(group, j, t, state)
        state.flags.writeable = False
        self._remember((group, j, i), state)
        return state

    def _remember(self, key: tuple[str, int, int], state: np.ndarray) -> None:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = state
                self._cache_bytes += state.nbytes
            while self._cache_bytes > CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes

    def layer(self, i: int, name: str, group: str = "masks") -> torch.Tensor:
        """One tensor at snapshot ``i`` (a fresh copy): a bool mask, or a selector weight."""
        j = self.layer_index(group, name)
        layer = self.layers[group][j]
        flat = torch.from_numpy(self._state(group, j, i).copy())
        if layer.dtype:
            return flat.view(DTYPES[layer.dtype]).reshape(layer.shape)
        return flat.reshape(layer.shape)

    def group_at(self, i: int, group: str = "masks", names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = [layer.name for layer in self.layers.get(group, [])] if names is None else list(names)
        if self.entries[group][i] is None:
            return {}
        return {n: self.layer(i, n, group) for n in wanted}

    def masks_at(self, i: int, layers: Sequence[str] | None = None) -> MaskSet:
        return MaskSet(self.group_at(i, "masks", layers))

    def walk(self, group: str, name: str) -> Iterator[tuple[int, np.ndarray]]:
        """Every snapshot holding ``group`` with layer ``name``'s state, decoded in one forward pass
        (each delta once). The yielded array is reused: copy it to keep it."""
        j = self.layer_index(group, name)
        layer = self.layers[group][j]
        state = np.zeros(layer.size, dtype=np.uint8 if layer.dtype else bool)
        for t, entry in enumerate(self.entries[group]):
            if entry is None:
                continue
            if entry.kind == "key":
                state[:] = 0
            self._apply(group, j, t, state)
            yield t, state

    def verify(self) -> None:
        """Decode every layer of every group at every snapshot once (forward walks, each delta
        once): a damaged segment raises CheckpointError naming the file and tensor. ``svite check``
        runs this; pages decode only what they draw."""
        for group, layers in self.layers.items():
            for layer in layers:
                for _ in self.walk(group, layer.name):
                    pass

    # --- statistics without decoding ----------------------------------------------------------
    def stats(self, group: str = "masks") -> GroupStats:
        """Per-snapshot counts of a bit group (density, churn, ever active), read from the entries."""
        if group not in self._stats:
            self._stats[group] = group_stats(self.entries[group], self.layers.get(group, []))
        return self._stats[group]


@dataclass
class SnapshotView:
    """Snapshot ``index`` of a :class:`MaskHistory`, shaped like :class:`Snapshot`: step, epoch and
    info at once; ``masks``, ``units``, ``state`` and ``probe`` decoded (all layers) on first use."""

    history: MaskHistory
    index: int
    _decoded: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def step(self) -> int:
        return self.history.steps[self.index]

    @property
    def epoch(self) -> float:
        return self.history.epochs[self.index]

    @property
    def info(self) -> dict[str, Any]:
        return self.history.infos[self.index]

    def _packed(self, group: str) -> PackedMasks:
        if group not in self._decoded:
            tensors = self.history.group_at(self.index, group)
            self._decoded[group] = PackedMasks({n: torch.from_numpy(np.packbits(t.reshape(-1).numpy()))
                                                for n, t in tensors.items()},
                                               {n: tuple(t.shape) for n, t in tensors.items()})
        return self._decoded[group]

    @property
    def masks(self) -> PackedMasks:
        return self._packed("masks")

    @property
    def units(self) -> PackedMasks:
        return self._packed("units")

    def _tensors(self, group: str) -> dict[str, torch.Tensor]:
        if group not in self._decoded:
            self._decoded[group] = self.history.group_at(self.index, group)
        return self._decoded[group]

    @property
    def state(self) -> dict[str, torch.Tensor]:
        return self._tensors("state")

    @property
    def probe(self) -> dict[str, torch.Tensor]:
        return self._tensors("probe")


def as_history(history: MaskHistory | Sequence[Snapshot] | None) -> MaskHistory:
    """A :class:`MaskHistory` as it is, or a list of snapshots encoded into one."""
    if isinstance(history, MaskHistory):
        return history
    return MaskHistory.from_snapshots(list(history or []))
