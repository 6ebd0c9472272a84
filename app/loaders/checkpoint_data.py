"""Cached loaders: every expensive thing the pages show, computed once per checkpoint file.

Models are cached with ``st.cache_resource`` (one shared object, never pickled); tables and arrays
with ``st.cache_data``. Every key includes the file's (mtime, size) stamp, so a checkpoint that a run
rewrites is reloaded instead of served stale. Everything here calls ``sparsity_core`` (analysis,
report, evaluate, data); nothing reaches into the model's modules.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
import torch

from sparsity_core import analysis
from sparsity_core.analysis.report import inspect_checkpoint
from sparsity_core.checkpoint import LoadedCheckpoint, load_checkpoint
from sparsity_core.errors import SviteError
from sparsity_core.masks.maskset import MaskSet

from ..figures.gif import MASK_KEY, frames_to_gif

# Sessions run in threads and share the cached models; analyses that run a model briefly change its
# state (eval mode, attention flags, hooks, the selector's last keep indices), so they take turns.
MODEL_LOCK = threading.RLock()
Stamp = tuple[int, int]


def stamp(path: str) -> Stamp:
    """(mtime_ns, size) of a file: part of every cache key, so rewritten checkpoints reload."""
    try:
        st_ = Path(path).stat()
    except OSError:
        return (0, 0)
    return (st_.st_mtime_ns, st_.st_size)


@st.cache_resource(max_entries=6, show_spinner="Loading checkpoint…")
def _load(path: str, stamp_: Stamp) -> LoadedCheckpoint:
    return load_checkpoint(path)


def load(path: str) -> LoadedCheckpoint:
    """The checkpoint at ``path`` (cached; raises CheckpointError with a one-line message)."""
    return _load(path, stamp(path))


def _masks_at(loaded: LoadedCheckpoint, snapshot: int | None) -> MaskSet:
    """Weight masks of the final checkpoint (None) or of history snapshot ``snapshot``."""
    if snapshot is None:
        return analysis.checkpoint_masks(loaded)
    if not 0 <= snapshot < len(loaded.history):
        raise SviteError(f"snapshot {snapshot}: the checkpoint has {len(loaded.history)} snapshots")
    if not loaded.history.has(snapshot, "masks"):
        return analysis.checkpoint_masks(loaded)  # dense snapshots hold no masks: the weights' own
    return loaded.history.masks_at(snapshot)  # decodes every layer: only for whole-model diffs


def _layer_at(loaded: LoadedCheckpoint, snapshot: int | None, layer: str) -> torch.Tensor:
    """One layer's mask, final or at a snapshot, decoding that layer only."""
    if snapshot is not None and 0 <= snapshot < len(loaded.history) and loaded.history.has(snapshot, "masks"):
        return analysis.history_layer_mask(loaded.history, snapshot, layer)
    masks = _masks_at(loaded, snapshot)
    if layer not in masks:
        raise SviteError(f"the checkpoint has no mask for '{layer}'")
    return masks[layer]


# ----------------------------------------------------------------------------------------------
# summaries
@st.cache_data(max_entries=32, show_spinner=False)
def _inspect(path: str, stamp_: Stamp) -> dict[str, Any]:
    return inspect_checkpoint(load(path))


def inspect_doc(path: str) -> dict[str, Any]:
    """The ``svite inspect --json`` document of a checkpoint."""
    return _inspect(path, stamp(path))


@st.cache_data(max_entries=32, show_spinner="Checking that the masks were applied…")
def _integrity(path: str, stamp_: Stamp) -> analysis.IntegrityReport:
    with MODEL_LOCK:
        return analysis.integrity_check(load(path))


def integrity(path: str) -> analysis.IntegrityReport:
    return _integrity(path, stamp(path))


@st.cache_data(max_entries=32, show_spinner="Counting FLOPs…")
def _flops(path: str, stamp_: Stamp) -> dict[str, float] | None:
    loaded = load(path)
    if not loaded.is_vit:  # a Recorder run of a model only its own code can build: nothing to run here
        return None
    with MODEL_LOCK:
        return analysis.flops_summary(loaded)


def flops(path: str) -> dict[str, float] | None:
    """FLOPs per image of this checkpoint and its dense twin (None for a model that is not a ViT we can build)."""
    return _flops(path, stamp(path))


@st.cache_data(max_entries=16, show_spinner="Measuring throughput…")
def _speed(path: str, stamp_: Stamp, batch_size: int) -> pd.DataFrame:
    with MODEL_LOCK:
        torch.manual_seed(0)
        return analysis.speed_comparison(load(path), batch_size=batch_size)


def speed(path: str, batch_size: int = 32) -> pd.DataFrame:
    return _speed(path, stamp(path), int(batch_size))


def read_metrics(path: Path) -> pd.DataFrame:
    """The scalar fields of every record: nested ones (the end line repeats the final metrics as a dict)
    are left out, so the frame can be hashed for Streamlit's cache (pandas cannot hash a dict cell)."""
    records = []
    try:
        text = path.read_text()
    except OSError:
        return pd.DataFrame()
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append({k: v for k, v in rec.items() if not isinstance(v, (dict, list))})
    return pd.DataFrame.from_records(records)


# ----------------------------------------------------------------------------------------------
# layer density and mask evolution
@st.cache_data(max_entries=64, show_spinner=False)
def _density_table(path: str, stamp_: Stamp, snapshot: int | None) -> pd.DataFrame:
    loaded = load(path)
    if snapshot is not None and loaded.history.has(snapshot, "masks"):
        return analysis.snapshot_density_table(loaded.history, snapshot)  # recorded counts: no decoding
    return analysis.layer_density_table(_masks_at(loaded, snapshot))


def density_table(path: str, snapshot: int | None = None) -> pd.DataFrame:
    """Per-layer density of the final masks (or of one snapshot)."""
    return _density_table(path, stamp(path), snapshot)


@st.cache_data(max_entries=64, show_spinner=False)
def _mask_image(path: str, stamp_: Stamp, layer: str, snapshot: int | None, max_size: int) -> np.ndarray:
    return analysis.mask_matrix(_layer_at(load(path), snapshot, layer), max_size)


def mask_image(path: str, layer: str, snapshot: int | None = None, max_size: int = 256) -> np.ndarray:
    """One layer's mask (downsampled to at most ``max_size`` per side) for a heatmap."""
    return _mask_image(path, stamp(path), layer, snapshot, int(max_size))


def density_by_group(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """Weighted density per ``block_type`` or per ``stage`` of a :func:`density_table`."""
    return analysis.density_by_group(table, by)


def unit_alive(path: str) -> tuple[np.ndarray | None, pd.DataFrame | None]:
    """The final head/neuron masks: a blocks × heads alive grid and a per-block neuron table (None for
    each kind the checkpoint does not have)."""
    return analysis.unit_alive(load(path).units)


@st.cache_data(max_entries=16, show_spinner=False)
def _history(path: str, stamp_: Stamp) -> pd.DataFrame:
    return analysis.history_table(load(path).history)


def history(path: str) -> pd.DataFrame:
    return _history(path, stamp(path))


@st.cache_data(max_entries=16, show_spinner="Reading the mask history…")
def _evolution(path: str, stamp_: Stamp) -> pd.DataFrame:
    return analysis.density_evolution(load(path).history)


def evolution(path: str) -> pd.DataFrame:
    return _evolution(path, stamp(path))


@st.cache_data(max_entries=16, show_spinner="Comparing snapshots…")
def _distances(path: str, stamp_: Stamp, metric: str) -> tuple[np.ndarray, list[int]]:
    return analysis.snapshot_distances(load(path).history, metric)


def distances(path: str, metric: str = "jaccard") -> tuple[np.ndarray, list[int]]:
    return _distances(path, stamp(path), metric)


def distance_basis(path: str) -> dict[str, Any]:
    """Whether :func:`distances` are exact or measured on the history's stored sample (and its size)."""
    return analysis.distance_basis(load(path).history)


@st.cache_data(max_entries=16, show_spinner=False)
def _churn(path: str, stamp_: Stamp, per_layer: bool) -> pd.DataFrame:
    return analysis.mask_churn(load(path).history, per_layer=per_layer)


def churn(path: str, per_layer: bool = False) -> pd.DataFrame:
    return _churn(path, stamp(path), per_layer)


@st.cache_data(max_entries=16, show_spinner="Decoding the masks around every update…")
def _young(path: str, stamp_: Stamp) -> pd.DataFrame:
    return analysis.young_pruning(load(path).history)


def young_pruning(path: str) -> pd.DataFrame:
    """Per update, the pruned weights that were grown at the update before (decodes every update's masks)."""
    return _young(path, stamp(path))


@st.cache_data(max_entries=16, show_spinner=False)
def _fired(path: str, stamp_: Stamp) -> pd.DataFrame:
    return analysis.fired_rate(load(path).history)


def fired(path: str) -> pd.DataFrame:
    return _fired(path, stamp(path))


@st.cache_data(max_entries=16, show_spinner=False)
def _units(path: str, stamp_: Stamp) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    h = load(path).history
    return analysis.head_survival(h), analysis.neuron_survival(h)


def units(path: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(head survival, neuron survival) timelines, each None when the history has no such masks."""
    return _units(path, stamp(path))


@st.cache_data(max_entries=16, show_spinner="Rendering the GIF…")
def _evolution_gif(path: str, stamp_: Stamp, layer: str, max_size: int) -> bytes:
    frames = analysis.layer_frames(load(path).history, layer, max_size)
    if not frames:
        raise SviteError(f"the mask history has no snapshots of '{layer}'")
    binary = all(np.isin(m, (0.0, 1.0)).all() for _, m in frames)  # else tiles averaged: a density ramp
    return frames_to_gif([m for _, m in frames],
                         [f"{layer}  step {s.step}  ({s.info.get('event', '')})  density {m.mean():.3f}"
                          for s, m in frames], key=MASK_KEY if binary else "tile density")


def evolution_gif(path: str, layer: str, max_size: int = 128) -> bytes:
    return _evolution_gif(path, stamp(path), layer, int(max_size))


# ----------------------------------------------------------------------------------------------
# two topologies
def _masks_of(path: str, snapshot: int | None) -> MaskSet:
    return _masks_at(load(path), snapshot)


@st.cache_data(max_entries=16, show_spinner="Comparing masks…")
def _diff(path_a: str, stamp_a: Stamp, snap_a: int | None, path_b: str, stamp_b: Stamp,
          snap_b: int | None) -> pd.DataFrame:
    return analysis.mask_diff(_masks_of(path_a, snap_a), _masks_of(path_b, snap_b))


def mask_diff(path_a: str, snap_a: int | None, path_b: str, snap_b: int | None) -> pd.DataFrame:
    """Kept / grown / pruned per common layer from A to B (checkpoints or snapshots)."""
    return _diff(path_a, stamp(path_a), snap_a, path_b, stamp(path_b), snap_b)


@st.cache_data(max_entries=32, show_spinner=False)
def _diff_image(path_a: str, stamp_a: Stamp, snap_a: int | None, path_b: str, stamp_b: Stamp,
                snap_b: int | None, layer: str, max_size: int) -> np.ndarray:
    return analysis.mask_diff_matrix(_layer_at(load(path_a), snap_a, layer), _layer_at(load(path_b), snap_b, layer),
                                     max_size)


def diff_image(path_a: str, snap_a: int | None, path_b: str, snap_b: int | None, layer: str,
               max_size: int = 256) -> np.ndarray:
    return _diff_image(path_a, stamp(path_a), snap_a, path_b, stamp(path_b), snap_b, layer, int(max_size))
