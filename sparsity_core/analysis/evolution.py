"""Mask evolution across a run: densities, churn, fired rate, topology distances, unit survival.

Everything here reads a :class:`~sparsity_core.history.lazy.MaskHistory` lazily. Densities, churn and
the fired rate come from the counts every history entry records (no mask is decoded); one layer at
one snapshot decodes only that layer; distances between many snapshots use the history's stored
systematic sample when it has one (large models) and every weight otherwise, and
:func:`distance_basis` says which, so a page can state it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import SviteError
from ..history.entry import GroupStats
from ..history.lazy import MaskHistory, as_history
from ..masks.maskset import MaskSet, Snapshot, head_unit_name, neuron_unit_name
from .masks import (
    _BLOCK_RE,
    _is_weight,
    _num_blocks,
    block_type,
    density_table_from_counts,
    layer_depth,
    mask_matrix,
)

__all__ = [
    "history_table",
    "snapshot_density_table",
    "snapshot_masks",
    "snapshot_layer_mask",
    "history_layer_mask",
    "density_evolution",
    "snapshot_distances",
    "distance_basis",
    "mask_churn",
    "fired_rate",
    "young_pruning",
    "head_survival",
    "neuron_survival",
    "layer_frames",
]

HistoryLike = MaskHistory | Sequence[Snapshot]


def _weights(history: MaskHistory) -> tuple[GroupStats, list[int]]:
    """The masks' counts and the columns that are weights (matrices, convs; not 1-D biases)."""
    stats = history.stats("masks")
    return stats, [j for j, layer in enumerate(stats.layers) if _is_weight(layer.shape)]


def _base(history: MaskHistory, i: int) -> dict[str, Any]:
    return {"snapshot": i, "step": history.steps[i], "epoch": history.epochs[i],
            "event": history.infos[i].get("event", "")}


def history_table(history: HistoryLike) -> pd.DataFrame:
    """One row per snapshot: snapshot index, step, epoch, event, overall density (snapshots with
    masks), and the engine's own facts (prune rate, pruned/grown counts, ...) as extra columns."""
    h = as_history(history)
    stats, cols = _weights(h)
    overall = {}
    if cols:
        total = int(stats.numel[cols].sum())
        overall = dict(zip(stats.index.tolist(), (stats.ones[:, cols].sum(axis=1) / max(total, 1)).tolist(),
                           strict=True))
    rows = []
    for i in range(len(h)):
        row = _base(h, i)
        if i in overall:
            row["overall_density"] = overall[i]
        for k, v in h.infos[i].items():
            if k not in row and (v is None or isinstance(v, (int, float, str, bool))):
                row[k] = v
        rows.append(row)
    return pd.DataFrame(rows)


def snapshot_density_table(history: HistoryLike, i: int) -> pd.DataFrame:
    """:func:`~sparsity_core.analysis.layer_density_table` of snapshot ``i``, from its counts."""
    h = as_history(history)
    stats, cols = _weights(h)
    rows = np.flatnonzero(stats.index == i)
    if not len(rows):
        raise SviteError(f"snapshot {i} holds no weight masks")
    counts = {stats.layers[j].name: (int(stats.ones[rows[0], j]), stats.layers[j].numel, stats.layers[j].shape)
              for j in cols}
    return density_table_from_counts(counts)


def snapshot_masks(snapshot: Snapshot) -> MaskSet:
    """All weight masks of one snapshot, unpacked."""
    return snapshot.masks.unpack()


def history_layer_mask(history: MaskHistory, i: int, layer: str) -> torch.Tensor:
    """One layer's mask at snapshot ``i``, decoding that layer only."""
    if not history.has(i, "masks"):
        raise SviteError(f"snapshot {i} holds no masks")
    return history.layer(i, layer)


def snapshot_layer_mask(snapshot: Snapshot, layer: str) -> torch.Tensor:
    """One layer's mask at a snapshot (a history's snapshot decodes only that layer)."""
    history = getattr(snapshot, "history", None)
    if isinstance(history, MaskHistory):
        return history_layer_mask(history, snapshot.index, layer)
    if layer not in snapshot.masks.data:
        raise SviteError(f"snapshot at step {snapshot.step} has no mask for '{layer}'")
    return snapshot.masks.unpack()[layer]


def density_evolution(history: HistoryLike) -> pd.DataFrame:
    """Long table of density per layer per snapshot: snapshot, step, epoch, event, layer, block_type,
    depth, nonzeros, numel, density (empty when the history holds no weight masks)."""
    h = as_history(history)
    stats, cols = _weights(h)
    columns = ["snapshot", "step", "epoch", "event", "layer", "block_type", "depth", "nonzeros", "numel", "density"]
    if not cols or not len(stats.index):
        return pd.DataFrame(columns=columns)
    names = [stats.layers[j].name for j in cols]
    depth = _num_blocks(names)
    numel = stats.numel[cols]
    base = pd.DataFrame([_base(h, int(i)) for i in stats.index])
    out = base.loc[base.index.repeat(len(cols))].reset_index(drop=True)
    out["layer"] = np.tile(names, len(stats.index))
    out["block_type"] = np.tile([block_type(n) for n in names], len(stats.index))
    out["depth"] = np.tile([layer_depth(n, depth) for n in names], len(stats.index))
    out["nonzeros"] = stats.ones[:, cols].reshape(-1)
    out["numel"] = np.tile(numel, len(stats.index))
    out["density"] = np.where(out["numel"] > 0, out["nonzeros"] / out["numel"].clip(lower=1), 1.0)
    return out[columns]


def distance_basis(history: HistoryLike) -> dict[str, Any]:
    """How :func:`snapshot_distances` measures: ``exact`` over every masked weight, or on a
    systematic sample (every ``stride``-th weight) that the history stores or, for a large history
    that stores none, that is taken while decoding; with the worst-case standard error of a
    distance, 0.5 / sqrt(sampled)."""
    h = as_history(history)
    stats, cols = _weights(h)
    total = int(stats.numel[cols].sum()) if cols else 0
    stored = _stored_sample(h)
    stride = h.sample_stride if stored else h.stride_for()
    if stride == 1:
        return {"exact": True, "sampled": total, "of": total, "stride": 1, "stderr": 0.0,
                "text": f"exact: every one of the {total:,} masked weights"}
    sampled = h.layers["sample"][0].numel if stored else sum(len(p) for p in h.sample_positions(stride=stride))
    stderr = 0.5 / np.sqrt(max(sampled, 1))
    where = "stored with the history" if stored else "taken while decoding: this history stores no sample"
    return {"exact": False, "sampled": sampled, "of": total, "stride": stride, "stderr": stderr,
            "text": f"estimated on a systematic sample: every {stride}th of the {total:,} masked weights "
                    f"({sampled:,} positions, {where}); standard error at most {stderr:.4f}"}


def _rows_decoded(h: MaskHistory, names: list[str], stride: int) -> tuple[list[int], np.ndarray, int]:
    """Packed topology (selected layers concatenated; every ``stride``-th weight) of every masked
    snapshot, decoded layer by layer, and its bit count."""
    positions = dict(zip([la.name for la in h.layers["masks"]], h.sample_positions(stride=stride), strict=True))
    per_layer = []
    for name in names:
        take = positions[name] if stride > 1 else slice(None)
        per_layer.append({t: np.packbits(state[take]) for t, state in h.walk("masks", name)})
    idx = sorted(per_layer[0]) if per_layer else []
    rows = [np.concatenate([layer[t] for layer in per_layer]) for t in idx]
    total = sum(len(positions[n]) if stride > 1 else h.layers["masks"][h.layer_index("masks", n)].numel
                for n in names)
    return idx, np.stack(rows) if rows else np.zeros((0, 0), np.uint8), total


def _rows_sampled(h: MaskHistory, names: list[str]) -> tuple[list[int], np.ndarray, int]:
    """Packed sample bits (restricted to the selected layers) of every masked snapshot."""
    wanted = set(names)
    keep = np.concatenate([np.full(len(p), layer.name in wanted) for p, layer in
                           zip(h.sample_positions(), h.layers["masks"], strict=True)])
    idx, rows = [], []
    for t, state in h.walk("sample", "sample"):
        idx.append(t)
        rows.append(np.packbits(state[keep]))
    return idx, np.stack(rows) if rows else np.zeros((0, 0), np.uint8), int(keep.sum())


def snapshot_distances(history: HistoryLike, metric: str = "jaccard",
                       layers: Sequence[str] | None = None) -> tuple[np.ndarray, list[int]]:
    """Pairwise topology distance between snapshots and the snapshot indices it covers.

    ``jaccard``: 1 - |A∩B| / |A∪B| of the active weights; ``hamming``: fraction of weights whose
    mask bit differs. Only snapshots with weight masks take part; ``layers`` restricts to some layers.
    Exact, or on a systematic sample of the weights (see :func:`distance_basis`).
    """
    if metric not in ("jaccard", "hamming"):
        raise SviteError(f"snapshot_distances: metric must be 'jaccard' or 'hamming', got {metric!r}")
    h = as_history(history)
    stats, cols = _weights(h)
    names = [stats.layers[j].name for j in cols]
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise SviteError(f"snapshot_distances: unknown layers {unknown[:3]}")
        names = [n for n in names if n in set(layers)]
    idx = stats.index.tolist()
    if not idx or not names:
        return np.zeros((len(idx), len(idx))), idx
    if _stored_sample(h):
        got, packed, total = _rows_sampled(h, names)
    else:
        got, packed, total = _rows_decoded(h, names, h.stride_for())
    if got != idx:
        raise SviteError("the history's masks and their distance rows disagree", path=h.source)
    return _pairwise(packed, metric, total), idx


def _stored_sample(h: MaskHistory) -> bool:
    """Whether the history stores a distance sample at every snapshot that has masks (a run resumed
    from a format-1 checkpoint starts storing one midway, and is then sampled while decoding)."""
    if not (h.sample_stride and "sample" in h.layers):
        return False
    return all((m is None) == (s is None) for m, s in zip(h.entries["masks"], h.entries["sample"], strict=True))


def _pairwise(packed: np.ndarray, metric: str, total: int) -> np.ndarray:
    """All pairs from one AND per pair of *distinct* rows (a snapshot that changed nothing repeats
    its predecessor): |A∪B| = |A| + |B| - |A∩B|, |A xor B| = |A| + |B| - 2|A∩B|."""
    width = -(-packed.shape[1] // 8) * 8
    words = np.zeros((len(packed), width), dtype=np.uint8)
    words[:, :packed.shape[1]] = packed
    words = words.view(np.uint64)
    same = np.r_[False, (words[1:] == words[:-1]).all(axis=1)]
    distinct = np.flatnonzero(~same)
    group = np.cumsum(~same) - 1  # row -> its distinct topology
    uniq = words[distinct]
    ones = np.bitwise_count(uniq).sum(axis=1, dtype=np.int64)
    small = np.zeros((len(uniq), len(uniq)))
    for a in range(len(uniq) - 1):
        inter = np.bitwise_count(uniq[a + 1:] & uniq[a]).sum(axis=1, dtype=np.int64)
        both = ones[a] + ones[a + 1:]
        if metric == "jaccard":
            union = both - inter
            d = np.where(union > 0, 1.0 - inter / np.maximum(union, 1), 0.0)
        else:
            d = (both - 2 * inter) / max(total, 1)
        small[a, a + 1:] = d
        small[a + 1:, a] = d
    return small[np.ix_(group, group)]


def mask_churn(history: HistoryLike, per_layer: bool = False) -> pd.DataFrame:
    """Weights grown / pruned / kept between consecutive masked snapshots, from the recorded counts.

    One row per transition (``snapshot`` is the later one), or one per transition and layer with
    ``per_layer``. ``churn`` = (grown + pruned) / numel.
    """
    h = as_history(history)
    stats, cols = _weights(h)
    extra = ["layer"] if per_layer else []
    columns = ["snapshot", "step", "epoch", "event", *extra, "grown", "pruned", "kept", "numel", "churn"]
    if len(stats.index) < 2 or not cols:
        return pd.DataFrame(columns=columns)
    grown = stats.grown[1:, cols]
    pruned = stats.flips[1:, cols] - grown
    kept = stats.ones[:-1, cols] - pruned
    numel = np.broadcast_to(stats.numel[cols], grown.shape)
    base = pd.DataFrame([_base(h, int(i)) for i in stats.index[1:]])
    if per_layer:
        base = base.loc[base.index.repeat(len(cols))].reset_index(drop=True)
        base["layer"] = np.tile([stats.layers[j].name for j in cols], len(stats.index) - 1)
        values = {"grown": grown.reshape(-1), "pruned": pruned.reshape(-1), "kept": kept.reshape(-1),
                  "numel": numel.reshape(-1)}
    else:
        values = {"grown": grown.sum(1), "pruned": pruned.sum(1), "kept": kept.sum(1), "numel": numel.sum(1)}
    for key, v in values.items():
        base[key] = v
    base["churn"] = (base["grown"] + base["pruned"]) / base["numel"].clip(lower=1)
    return base[columns]


def fired_rate(history: HistoryLike) -> pd.DataFrame:
    """Ever-active ("fired") fraction of the sparsified weights up to each snapshot, next to the
    density: the reference's exploration rate RS. fired >= density, and it never decreases."""
    h = as_history(history)
    stats, cols = _weights(h)
    columns = ["snapshot", "step", "epoch", "event", "density", "fired"]
    if not cols or not len(stats.index):
        return pd.DataFrame(columns=columns)
    total = max(int(stats.numel[cols].sum()), 1)
    out = pd.DataFrame([_base(h, int(i)) for i in stats.index])
    out["density"] = stats.ones[:, cols].sum(axis=1) / total
    out["fired"] = stats.fired[:, cols].sum(axis=1) / total
    return out[columns]


def young_pruning(history: HistoryLike) -> pd.DataFrame:
    """How much of each topology update undoes the one before: per update after the first, the weights it
    pruned, the share of them grown at the previous update (``young_share_of_pruned``) beside the share of
    the active weights those young ones were (``young_share_of_active``: what a prune blind to age would
    take), and the share of the previous update's new connections pruned again (``young_pruned_again``).
    Decodes the weight masks of the snapshots around each update, one layer at a time."""
    h = as_history(history)
    _, cols = _weights(h)
    names = [h.layers["masks"][j].name for j in cols] if cols else []
    columns = ["snapshot", "step", "epoch", "event", "pruned", "young_share_of_pruned", "young_share_of_active",
               "young_pruned_again"]
    masked = [i for i in range(len(h)) if h.has(i, "masks")]
    before = {i: masked[k - 1] for k, i in enumerate(masked) if k > 0}  # the masked snapshot before each
    updates = [i for i in masked[1:] if h.infos[i].get("event") == "update"]
    pairs = list(zip(updates, updates[1:], strict=False))
    counts = np.zeros((len(pairs), 4), dtype=np.int64)  # pruned, young, young pruned, active
    for name in names:
        decoded: dict[int, torch.Tensor] = {}  # this layer at the snapshots still ahead: each decoded once
        for k, (prev_update, update) in enumerate(pairs):
            for i in (before[prev_update], prev_update, before[update], update):
                if i not in decoded:
                    decoded[i] = h.layer(i, name)
            grown = decoded[prev_update] & ~decoded[before[prev_update]]
            now_before = decoded[before[update]]
            cut = now_before & ~decoded[update]
            counts[k] += [int(cut.sum()), int(grown.sum()), int((grown & cut).sum()), int(now_before.sum())]
            for i in [i for i in decoded if i < prev_update]:  # never needed again
                del decoded[i]
    rows = []
    for (_, update), (pruned, young, young_pruned, active) in zip(pairs, counts.tolist(), strict=True):
        rows.append({**_base(h, update), "pruned": pruned,
                     "young_share_of_pruned": young_pruned / pruned if pruned else 0.0,
                     "young_share_of_active": young / active if active else 0.0,
                     "young_pruned_again": young_pruned / young if young else 0.0})
    return pd.DataFrame(rows, columns=columns)


def _unit_timeline(history: HistoryLike, fn: Any) -> tuple[MaskHistory, list[tuple[int, str]]]:
    h = as_history(history)
    names = [layer.name for layer in h.layers.get("units", [])]
    blocks = sorted({int(m.group(1)) for n in names if (m := _BLOCK_RE.search(n))})
    return h, [(b, fn(b)) for b in blocks if fn(b) in names]


def head_survival(history: HistoryLike) -> pd.DataFrame | None:
    """Head × block alive timeline of a structured run (long table: snapshot, step, epoch, event,
    block, head, alive), or None when the history has no head masks."""
    h, named = _unit_timeline(history, head_unit_name)
    if not named:
        return None
    rows = []
    for b, name in named:
        for t, alive in h.walk("units", name):
            rows += [{**_base(h, t), "block": b, "head": k, "alive": bool(v)} for k, v in enumerate(alive.tolist())]
    return pd.DataFrame(rows).sort_values(["snapshot", "block", "head"], kind="stable").reset_index(drop=True)


def neuron_survival(history: HistoryLike) -> pd.DataFrame | None:
    """Per block and snapshot: MLP neurons alive, total, and the fraction of the first snapshot's
    alive neurons still alive ("survived"), or None when the history has no neuron masks."""
    h, named = _unit_timeline(history, neuron_unit_name)
    if not named:
        return None
    rows = []
    for b, name in named:
        first = None
        for t, alive in h.walk("units", name):
            first = alive.copy() if first is None else first
            init = int(first.sum())
            rows.append({**_base(h, t), "block": b, "alive": int(alive.sum()), "total": len(alive),
                         "fraction_alive": float(alive.mean()),
                         "survived": int((alive & first).sum()) / init if init else 0.0})
    return pd.DataFrame(rows).sort_values(["snapshot", "block"], kind="stable").reset_index(drop=True)


def layer_frames(history: HistoryLike, layer: str, max_size: int = 128) -> list[tuple[Snapshot, np.ndarray]]:
    """One layer's (downsampled) mask at every snapshot that has it: the frames of an evolution GIF
    (one forward pass over that layer's deltas)."""
    h = as_history(history)
    if layer not in {la.name for la in h.layers.get("masks", [])}:
        return []
    shape = h.layers["masks"][h.layer_index("masks", layer)].shape
    return [(h[t], mask_matrix(state.reshape(shape), max_size)) for t, state in h.walk("masks", layer)]
