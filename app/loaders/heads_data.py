"""Cached loaders for the Heads page: per-head maps of an image (every block from one forward pass, so
switching block or head costs nothing), each head's S²ViTE importance, its object IoU over demo images
beside chance, and the same heads across snapshots (the masks; the head probe when it was recorded).

Every key carries the checkpoint file's (mtime, size) stamp, as in ``loaders``; models are shared and
briefly run, so analyses take ``MODEL_LOCK``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
import torch

from sparsity_core import analysis
from sparsity_core.data import image_to_input
from sparsity_core.errors import SviteError
from sparsity_core.history.probe import probe_images

from .checkpoint_data import MODEL_LOCK, Stamp, load, stamp
from .checkpoint_data import history as _history
from .patch_data import demo_for, is_large, normalisation, predict

#: Demo validation images the importance and the object IoU are averaged over.
IMPORTANCE_IMAGES = 64
IOU_IMAGES = 32


def trained_on_demo(path: str) -> bool:
    return (load(path).meta.get("data") or {}).get("source") == "demo"


@st.cache_data(max_entries=64, show_spinner=False)
def _maps(path: str, stamp_: Stamp, image: np.ndarray) -> analysis.HeadMaps:
    with MODEL_LOCK:
        mean, std = normalisation(path)
        return analysis.head_maps(load(path), image, mean, std)


def maps(path: str, image: np.ndarray) -> analysis.HeadMaps:
    """Class-token attention and per-head rollout of every block and head for one (fitted) image."""
    return _maps(path, stamp(path), image)


@st.cache_data(max_entries=16, show_spinner=False)
def _alive(path: str, stamp_: Stamp) -> np.ndarray:
    return analysis.head_alive(load(path))


def alive(path: str) -> np.ndarray:
    """Blocks × heads, True where the head is alive (S²ViTE's head masks; every head of other models)."""
    return _alive(path, stamp(path))


def _demo_batch(path: str, n: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    demo = demo_for(path)
    n = min(n, len(demo))
    size = int(load(path).model.patch_embed.img_size[0])
    mean, std = normalisation(path)
    samples = [demo.sample(i) for i in range(n)]
    x = torch.cat([image_to_input(s.image, size, mean, std) for s in samples])
    return x, torch.tensor([s.label for s in samples]), np.stack([s.patch_mask for s in samples])


@st.cache_data(max_entries=32, show_spinner="Scoring the heads (S²ViTE's Taylor importance)…")
def _importance(path: str, stamp_: Stamp, image: np.ndarray | None) -> np.ndarray:
    with MODEL_LOCK:
        if image is None:
            x, y, _ = _demo_batch(path, IMPORTANCE_IMAGES)
        else:
            mean, std = normalisation(path)
            x = analysis.to_model_input(load(path), image, mean, std).cpu()
            y = torch.tensor([int(predict(path, image, 1)["index"].iloc[0])])
        return analysis.head_importance(load(path), x, y)


def importance(path: str, image: np.ndarray) -> tuple[np.ndarray, str]:
    """Blocks × heads Taylor importance and a sentence on what it was computed over: the first 64 demo
    validation images with their labels for a model trained on the demo data; otherwise this image with
    the model's own prediction as its label (there is no labelled data to use)."""
    if trained_on_demo(path):
        return (_importance(path, stamp(path), None),
                f"over the first {IMPORTANCE_IMAGES} demo validation images with their labels")
    return _importance(path, stamp(path), image), "on this image, with the model's prediction as its label"


@st.cache_data(max_entries=16, show_spinner="Object IoU of every head over the demo images…")
def _over_demo(path: str, stamp_: Stamp, kind: str) -> pd.DataFrame:
    with MODEL_LOCK:
        x, _, masks = _demo_batch(path, IOU_IMAGES)
        return analysis.heads_over_images(load(path), x, masks, kind)


def over_demo(path: str, kind: str) -> pd.DataFrame:
    """Per block and head, the object IoU over the first 32 demo images (mean, sd, chance)."""
    return _over_demo(path, stamp(path), kind)


def large(path: str) -> bool:
    return is_large(path)


@st.cache_data(max_entries=32, show_spinner=False)
def _mask_history(path: str, stamp_: Stamp, block: int) -> pd.DataFrame:
    loaded = load(path)
    return analysis.head_mask_history(loaded.history, loaded, block)


def mask_history(path: str, block: int) -> pd.DataFrame:
    """One block's heads at every snapshot, from the masks (alive/pruned, or the share of q/k/v kept)."""
    return _mask_history(path, stamp(path), block)


def probe_meta(path: str) -> dict | None:
    """The checkpoint's description of its head probe, or None when it recorded none."""
    meta = load(path).meta.get("head_probe")
    return meta if isinstance(meta, dict) and int(meta.get("count") or 0) > 0 else None


@st.cache_data(max_entries=32, show_spinner="Reading the head probe…")
def _probe(path: str, stamp_: Stamp, block: int) -> tuple[list[int], np.ndarray] | None:
    return analysis.probe_history(load(path), block)


def probe(path: str, block: int) -> tuple[list[int], np.ndarray] | None:
    """(snapshots, snapshots × images × heads × rows × cols) of the recorded probe, or None."""
    return _probe(path, stamp(path), block)


@st.cache_data(max_entries=8, show_spinner=False)
def _probe_images(img_size: int, patch_size: int, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    demo = probe_images(img_size, patch_size, count)
    return [demo.sample(i).image for i in range(count)], np.stack([demo.sample(i).patch_mask for i in range(count)])


def probe_images_of(path: str, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The probe's ``count`` images and their object masks, regenerated as the trainer made them."""
    model = load(path).model
    return _probe_images(int(model.patch_embed.img_size[0]), int(model.patch_embed.patch_size[0]), int(count))


@st.cache_data(max_entries=32, show_spinner=False)
def _probe_iou(path: str, stamp_: Stamp, block: int) -> pd.DataFrame | None:
    found = probe(path, block)
    if found is None:
        return None
    _, masks = probe_images_of(path, found[1].shape[1])
    return analysis.probe_object_iou(load(path), block, masks)


def probe_iou(path: str, block: int) -> pd.DataFrame | None:
    """Per snapshot and head of one block: the probe's object IoU (mean over its images) and chance."""
    return _probe_iou(path, stamp(path), block)


def head_table(maps: np.ndarray, alive: list[bool], taylor: np.ndarray, object_mask: np.ndarray | None
               ) -> pd.DataFrame:
    """Per head of one block on this image: alive, Taylor importance (and its rank among the block's
    heads), the object IoU of its top patches and chance (empty without an object mask)."""
    frame = pd.DataFrame({"head": range(len(maps)), "alive": alive, "taylor": taylor})
    frame["rank"] = frame["taylor"].rank(ascending=False, method="min").astype(int)
    if object_mask is None:
        frame["iou"], frame["chance"] = np.nan, np.nan
        return frame
    iou = analysis.head_object_iou(maps, object_mask)
    return frame.merge(iou[["head", "iou", "chance"]], on="head", how="left")


def with_demo_means(frame: pd.DataFrame, over: pd.DataFrame, block: int) -> pd.DataFrame:
    """``frame`` with the block's object IoU over the demo images (mean, sd, chance, images) added."""
    part = over[over["block"] == block][["head", "iou", "iou_sd", "chance", "images"]]
    return frame.merge(part.rename(columns={"iou": "iou_mean", "chance": "chance_mean"}), on="head", how="left")


def history(path: str) -> pd.DataFrame:
    """The snapshots' table (step, epoch, event, ...)."""
    return _history(path)


def alive_at(path: str, block: int, snapshot: int, heads: int) -> list[bool]:
    """The block's heads alive at a snapshot (every head, for a history without head masks)."""
    timeline = mask_history(path, block)
    part = timeline[timeline["snapshot"] == snapshot] if "snapshot" in timeline else timeline.iloc[0:0]
    if part.empty or not set(part["kept"].unique()) <= {0.0, 1.0}:
        return [True] * heads
    return [bool(v) for v in part.sort_values("head")["kept"]][:heads]


def spread(snapshots: list[int], most: int) -> list[int]:
    """At most ``most`` snapshots, evenly spread, the first and the last included."""
    if len(snapshots) <= most:
        return list(snapshots)
    picks = np.linspace(0, len(snapshots) - 1, most).round().astype(int)
    return [snapshots[i] for i in dict.fromkeys(picks.tolist())]


def probe_iou_or_none(path: str, block: int) -> pd.DataFrame | None:
    """:func:`probe_iou`, or None where the probe is missing or does not fit the model (the page says why
    in its over-training section)."""
    try:
        return probe_iou(path, block)
    except SviteError:
        return None
