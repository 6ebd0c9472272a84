"""The mask history in a checkpoint file: writing, and reading with every field validated.

Format 2 (this one) stores, under the JSON metadata key ``history``::

    {"encoding": "svite-keyframe-delta-1", "keyframe_every": 32, "keyframe_budget": 8,
     "groups": {"masks": {"layers": [["blocks.0.attn.qkv.weight", [288, 96]], ...]},
                "units": {...}, "sample": {"layers": [["sample", [S]]], "stride": s},
                "state": {"layers": [["token_selector.scorer.0.weight", [96], "float32"], ...]},
                "probe": {"layers": [["blocks.0.attn.cls_attention", [8, 6, 64], "float16"], ...]}},
     "snapshots": [{"step": 0, "epoch": 0.0, "info": {...},
                    "masks": {"kind": "key", "method": [...], "bytes": [...], "count": [...], "k": [...],
                              "ones": [...], "flips": [...], "grown": [...], "fired": [...]},
                    "units": {"kind": "same"}, ...}, ...]}

and the bytes of snapshot ``i``'s group ``g`` as one uint8 tensor ``history/<i>/<g>`` (the layers'
segments back to back, ``bytes`` long each; absent when they are all empty). The README's
checkpoint-format section is the full description. Format 1 (one bit-packed tensor per layer and
snapshot, ``history/<i>/{mask,unit,state}/<name>``) is read as a history of keyframes, without
copying or re-encoding anything.

Nothing is decoded while reading: the index is checked (kinds, lengths, counts, byte totals against
the tensors) so that a damaged file fails at load with one line naming the file and the entry; the
segments themselves are checked when a page decodes them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..masks.maskset import PackedMasks, Snapshot, check_packed
from .codec import BITMAP, RAW, check_bits_header, check_bytes_header
from .entry import (
    BIT_GROUPS,
    BYTE_GROUPS,
    DTYPES,
    GROUPS,
    STATS,
    Entry,
    Layer,
    Segments,
    byte_group,
    popcount,
    split_segments,
)
from .lazy import MaskHistory

ENCODING = "svite-keyframe-delta-1"
MAX_LAYER_NUMEL = 1 << 31


def history_to_file(history: MaskHistory, *, segments: bool = False
                    ) -> tuple[dict[str, torch.Tensor | Segments], dict[str, Any]]:
    """(tensors, JSON header) of a history, ready for safetensors; with ``segments`` each blob is its
    entry's own arrays (:class:`Segments`, for a streamed write) instead of a concatenated copy."""
    tensors: dict[str, torch.Tensor | Segments] = {}
    snapshots = []
    for i in range(len(history)):
        row: dict[str, Any] = {"step": history.steps[i], "epoch": history.epochs[i], "info": history.infos[i]}
        for group in GROUPS:
            entry = history.entries[group][i]
            if entry is None:
                continue
            row[group] = entry.to_json()
            if entry.payload and segments:
                tensors[f"history/{i}/{group}"] = Segments(entry.segments)
            elif entry.payload:
                blob = np.concatenate(entry.segments) if len(entry.segments) > 1 else entry.segments[0]
                tensors[f"history/{i}/{group}"] = torch.from_numpy(np.ascontiguousarray(blob))
        snapshots.append(row)
    groups: dict[str, Any] = {}
    for group, layers in history.layers.items():
        groups[group] = {"layers": [[la.name, list(la.shape)] + ([la.dtype] if la.dtype else []) for la in layers]}
    if "sample" in groups:
        groups["sample"]["stride"] = history.sample_stride
    header = {"encoding": ENCODING, "keyframe_every": history.keyframe_every,
              "keyframe_budget": history.keyframe_budget, "groups": groups, "snapshots": snapshots}
    return tensors, header


def history_summary(history: MaskHistory) -> dict[str, Any]:
    """What ``svite inspect --json`` reports about the history: per group, how many keyframes,
    deltas and unchanged snapshots and their bytes; for the weight masks, bits per masked weight
    of the first snapshot and on average over the later ones."""
    groups = {}
    for group in history.layers:
        entries = [e for e in history.entries[group] if e is not None]
        groups[group] = {"tensors": len(history.layers[group]),
                         **{kind: sum(e.kind == kind for e in entries) for kind in ("key", "delta", "same")},
                         "bytes": sum(e.payload for e in entries)}
    out: dict[str, Any] = {"snapshots": len(history), "keyframe_every": history.keyframe_every,
                           "keyframe_budget": history.keyframe_budget, "groups": groups}
    masks = [e for e in history.entries["masks"] if e is not None]
    if masks:
        numel = sum(layer.numel for layer in history.layers["masks"])
        later = [8 * e.payload / numel for e in masks[1:]]
        out["masks_bits_per_weight"] = {"masked_weights": numel, "first": 8 * masks[0].payload / numel,
                                        "later_mean": sum(later) / len(later) if later else None}
    if history.sample_stride:
        out["distance_sample"] = {"stride": history.sample_stride, "positions": history.layers["sample"][0].numel}
    return out


# ----------------------------------------------------------------------------------------------
# reading format 2
class _Bad(Exception):
    """A reason to refuse the history; turned into one CheckpointError line."""


def _int(value: Any, what: str, low: int = 0, high: int = 1 << 62) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Bad(f"{what} must be an integer in [{low}, {high}], found {str(value)[:40]}")
    return value


def _num(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad(f"{what} must be a finite number")
    return float(value)


def _ints(row: Mapping[str, Any], key: str, n: int, what: str) -> tuple[int, ...]:
    values = row.get(key)
    if not isinstance(values, list) or len(values) != n:
        raise _Bad(f"{what}: '{key}' must list {n} integers")
    return tuple(_int(v, f"{what}: '{key}'") for v in values)


def _layers(group: str, spec: Any) -> list[Layer]:
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list) or not spec["layers"]:
        raise _Bad(f"group '{group}' lists no layers")
    layers = []
    for item in spec["layers"]:
        if not isinstance(item, list) or len(item) not in (2, 3) or not isinstance(item[0], str) \
                or not isinstance(item[1], list):
            raise _Bad(f"group '{group}': a layer must be [name, shape] or [name, shape, dtype]")
        shape = tuple(_int(s, f"shape of '{item[0]}'", 0, MAX_LAYER_NUMEL) for s in item[1])
        dtype = item[2] if len(item) == 3 else ""
        if (group in BYTE_GROUPS) != bool(dtype) or (dtype and dtype not in DTYPES):
            raise _Bad(f"group '{group}': layer '{item[0]}' has dtype {dtype!r}")
        layer = Layer(item[0], shape, dtype)
        if layer.size > MAX_LAYER_NUMEL:
            raise _Bad(f"layer '{layer.name}' declares {layer.size} entries")
        layers.append(layer)
    if len({la.name for la in layers}) != len(layers):
        raise _Bad(f"group '{group}' names a layer twice")
    return layers


def _entry(row: Any, group: str, layers: list[Layer], prev: Entry | None, i: int,
           tensors: Mapping[str, torch.Tensor], used: set[str]) -> Entry:
    name, where = f"history/{i}/{group}", f"snapshot {i} {group}"
    if not isinstance(row, dict) or row.get("kind") not in ("key", "delta", "same"):
        raise _Bad(f"{where}: kind must be key, delta or same")
    if row["kind"] != "key" and prev is None:
        raise _Bad(f"{where}: a {row['kind']} entry needs a previous snapshot of the group, and there is none")
    if row["kind"] == "same":
        return Entry("same")
    n, bits = len(layers), group in BIT_GROUPS
    method, nbytes = _ints(row, "method", n, where), _ints(row, "bytes", n, where)
    count, k = (_ints(row, "count", n, where), _ints(row, "k", n, where)) if bits else ((0,) * n, (0,) * n)
    for j, layer in enumerate(layers):
        try:
            if bits:
                check_bits_header(method[j], count[j], k[j], nbytes[j], layer.numel)
            else:
                check_bytes_header(method[j], nbytes[j], layer.size)
        except ValueError as err:
            raise _Bad(f"{where}, layer {layer.name}: {err}") from None
    stats = None
    if bits:
        stats = {s: _ints(row, s, n, where) for s in STATS}
        for j, layer in enumerate(layers):
            if not all(stats[s][j] <= layer.numel for s in STATS) or stats["grown"][j] > stats["flips"][j] \
                    or stats["ones"][j] > stats["fired"][j] \
                    or (row["kind"] == "delta" and stats["flips"][j] != count[j]) \
                    or (row["kind"] == "key" and stats["ones"][j] != count[j]):
                raise _Bad(f"{where}, layer {layer.name}: counts disagree with each other")
    total = sum(nbytes)
    blob = tensors.get(name)
    if total == 0:
        if blob is not None:
            raise _Bad(f"{where}: tensor {name} is present, the index says it is empty")
        return Entry(row["kind"], method, count, k, nbytes, tuple(np.zeros(0, np.uint8) for _ in layers), stats)
    if blob is None or blob.dtype != torch.uint8 or blob.dim() != 1 or blob.numel() != total:
        found = "missing" if blob is None else f"{blob.dtype} {list(blob.shape)}"
        raise _Bad(f"{where}: tensor {name} must be uint8 [{total}], found {found}")
    used.add(name)
    if blob.is_meta:  # header.read_header: the index alone (counts, steps, infos), no bytes to decode
        return Entry(row["kind"], method, count, k, nbytes, (), stats)
    # a view of the bytes the reader copied out of the file (validate.read_safetensors): no memory
    # map survives the load, so a file rewritten in place cannot change a loaded history
    return Entry(row["kind"], method, count, k, nbytes, split_segments(blob.numpy(), nbytes), stats)


def history_from_file(header: Any, tensors: Mapping[str, torch.Tensor], source: str) -> MaskHistory:
    """A lazy :class:`MaskHistory` over the file's compressed history tensors (held in memory)."""
    try:
        return _from_file(header, tensors, source)
    except _Bad as err:
        raise CheckpointError(f"mask history is damaged: {err}", path=source) from None


def _from_file(header: Any, tensors: Mapping[str, torch.Tensor], source: str) -> MaskHistory:
    if not isinstance(header, dict) or header.get("encoding") != ENCODING:
        raise _Bad(f"unknown history encoding {str(header.get('encoding') if isinstance(header, dict) else header)[:40]}")
    budget = _num(header.get("keyframe_budget"), "keyframe_budget")
    if budget <= 0:
        raise _Bad("keyframe_budget must be positive")
    history = MaskHistory(_int(header.get("keyframe_every"), "keyframe_every", 1), budget, source=source)
    groups = header.get("groups")
    if not isinstance(groups, dict) or set(groups) - set(GROUPS):
        raise _Bad(f"groups must be among {list(GROUPS)}")
    history.layers = {g: _layers(g, groups[g]) for g in GROUPS if g in groups}
    if "sample" in groups:
        history.sample_stride = _int(groups["sample"].get("stride"), "sample stride", 1)
        total = sum(la.numel for la in history.layers.get("masks", []))
        if history.layers["sample"] != [Layer("sample", (-(-total // history.sample_stride),))]:
            raise _Bad("the distance sample does not match the masks and its stride")
    snapshots = header.get("snapshots")
    if not isinstance(snapshots, list):
        raise _Bad("snapshots must be a list")
    used: set[str] = set()
    for i, row in enumerate(snapshots):
        if not isinstance(row, dict) or not isinstance(row.get("info", {}), dict):
            raise _Bad(f"snapshot {i} is not an object with an info object")
        history.steps.append(_int(row.get("step"), f"snapshot {i}: step"))
        history.epochs.append(_num(row.get("epoch"), f"snapshot {i}: epoch"))
        history.infos.append(dict(row.get("info", {})))
        for group in GROUPS:
            entries = history.entries[group]
            if group not in row:
                entries.append(None)
                continue
            if group not in history.layers:
                raise _Bad(f"snapshot {i} has {group}, the header declares none")
            prev = entries[-1] if entries else None
            entries.append(_entry(row[group], group, history.layers[group], prev, i, tensors, used))
    stray = [k for k in tensors if k.startswith("history/") and k not in used]
    if stray:
        raise _Bad(f"tensor {stray[0]} belongs to no snapshot")
    history._encoders = None  # rebuilt from the decoded history if anyone appends
    return history


# ----------------------------------------------------------------------------------------------
# reading format 1
def history_from_legacy(snapshots: list[Snapshot], source: str) -> MaskHistory:
    """A format-1 history (every snapshot bit-packed in full; checked by ``validate.history_entries``)
    as keyframes over its packed tensors: nothing is copied or re-encoded, only counted."""
    try:
        return _from_legacy(snapshots, source)
    except _Bad as err:
        raise CheckpointError(f"mask history is damaged: {err}", path=source) from None


def _legacy_bits(history: MaskHistory, group: str, i: int, packed_masks: PackedMasks,
                 last: list[np.ndarray] | None, fired: dict[str, list[np.ndarray]]
                 ) -> tuple[Entry | None, list[np.ndarray] | None]:
    if not len(packed_masks):
        return None, None
    layers = [Layer(n, tuple(int(s) for s in packed_masks.shapes[n])) for n in packed_masks.data]
    if history.layers.setdefault(group, layers) != layers:
        raise _Bad(f"snapshot {i}: its {group} differ from the first snapshot's")
    packed = []
    for layer in layers:
        try:  # validate.history_entries checked these already; a history built elsewhere is checked here
            check_packed(packed_masks.data[layer.name], list(layer.shape))
        except ValueError as err:
            raise _Bad(f"snapshot {i} {group} '{layer.name}': {err}") from None
        packed.append(packed_masks.data[layer.name].numpy())
    ones = tuple(popcount(p) for p in packed)
    fired[group] = packed if group not in fired else [f | p for f, p in zip(fired[group], packed, strict=True)]
    flips = grown = (0,) * len(layers)
    if last is not None:
        flips = tuple(popcount(p ^ q) for p, q in zip(packed, last, strict=True))
        grown = tuple(popcount(p & ~q) for p, q in zip(packed, last, strict=True))
    stats = {"ones": ones, "flips": flips, "grown": grown, "fired": tuple(popcount(f) for f in fired[group])}
    n = len(layers)
    entry = Entry("key", (BITMAP,) * n, ones, (0,) * n, tuple(len(p) for p in packed), tuple(packed), stats)
    return entry, packed


def _from_legacy(snapshots: list[Snapshot], source: str) -> MaskHistory:
    history = MaskHistory(source=source)
    last: dict[str, list[np.ndarray] | None] = {"masks": None, "units": None}
    fired: dict[str, list[np.ndarray]] = {}
    for i, snap in enumerate(snapshots):
        history.steps.append(int(snap.step))
        history.epochs.append(_num(snap.epoch, f"snapshot {i}: epoch"))
        history.infos.append(dict(snap.info))
        for group, packed in (("masks", snap.masks), ("units", snap.units)):
            entry, last[group] = _legacy_bits(history, group, i, packed, last[group], fired)
            history.entries[group].append(entry)
        history.entries["sample"].append(None)
        history.entries["state"].append(_legacy_state(history, i, snap.state))
        history.entries["probe"].append(None)  # format 1 recorded no head probe
    history._encoders = None
    return history


def _legacy_state(history: MaskHistory, i: int, state: Mapping[str, torch.Tensor]) -> Entry | None:
    group = byte_group(state, lambda name, dtype: _Bad(f"tensor history/{i}/state/{name} has an unsupported dtype "
                                                      f"({dtype})"))
    if group is None:
        return None
    layers, raws = group
    if history.layers.setdefault("state", layers) != layers:
        raise _Bad(f"snapshot {i}: its selector state differs from the first snapshot's")
    n = len(layers)
    return Entry("key", (RAW,) * n, (0,) * n, (0,) * n, tuple(len(r) for r in raws), tuple(raws))
