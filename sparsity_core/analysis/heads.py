"""What each attention head looks at: per-head class-token attention and rollout, each head's S²ViTE
importance, its overlap with the object, and the same head across training.

* **Attention** is read from timm's own modules (``attention.py``: a hook on ``attn_drop`` with
  ``fused_attn`` off for the call) with every patch present (the token selector keeps all patches), in
  eval mode. ``cls`` is the class token's attention over the patches; ``rollout`` mixes that head's
  attention with the rollout of the blocks below it (heads fused by mean, the identity added for the
  residual, as in :func:`.attribution.attention_rollout`), which says where the head's inputs came from.
* **Pruned heads.** A head pruned by S²ViTE has its q, k and v rows (and biases) exactly zero, so with
  its mask lifted its scores are all 0 and its attention is uniform: it no longer looks at anything.
  Its map is computed like every other one and reported as uniform, never given an IoU; what it looked
  at while it was alive can only come from the head probe recorded during training (``history.probe``).
* **Importance** is the Taylor score the S²ViTE engine prunes heads by, computed by the engine's own
  scorer (:func:`~sparsity_core.dst.scorers.head_taylor`) from each head's attention output and its
  gradient under plain cross-entropy, over the images given. A pruned head outputs 0 and scores exactly 0.
* **Object IoU**: the IoU of the head's ``k`` most-attended patches with the object's ``k`` patches
  (demo images carry object masks), beside its exact chance level (:func:`.attribution.chance_iou`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..dst.scorers import head_taylor
from ..errors import SviteError
from ..history.probe import probe_layer
from ..masks.maskset import head_unit_name
from ..models.attention import attention_maps, eval_mode
from ..models.builder import grid_size
from ..models.token_selector import every_patch
from .attribution import chance_iou, top_k_mask
from .evolution import head_survival
from .patches import _model_of, to_model_input

__all__ = ["HeadMaps", "head_alive", "head_importance", "head_mask_history", "head_maps", "head_object_iou",
           "heads_over_images", "object_iou", "probe_history", "probe_object_iou"]

MAX_PROBE_IMAGES = 64  # a probe claiming more images than any trainer records is refused
UNIFORM_RTOL = 1e-3  # a map whose spread is below this share of its mean is uniform: no top patches


@dataclass(frozen=True)
class HeadMaps:
    """Per block and head, the class token's attention over the patches (``cls``) and the per-head
    rollout (``rollout``): arrays of blocks × heads × rows × cols (NaN pads blocks with fewer heads)."""

    cls: np.ndarray
    rollout: np.ndarray

    def of(self, kind: str) -> np.ndarray:
        if kind not in ("cls", "rollout"):
            raise SviteError(f"map kind '{kind}': use cls or rollout")
        return self.cls if kind == "cls" else self.rollout


def _mixed(a: torch.Tensor) -> torch.Tensor:
    """Attention mixed with the identity for the residual and rows renormalised (rollout's step)."""
    a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
    return a / a.sum(dim=-1, keepdim=True)


def _maps_from(attns: list[torch.Tensor], prefix: int, grid: tuple[int, int]) -> HeadMaps:
    """HeadMaps of image 0 from each block's B×H×T×T attention."""
    gh, gw = grid
    most = max(a.shape[1] for a in attns)
    cls = np.full((len(attns), most, gh, gw), np.nan, dtype=np.float32)
    roll = np.full_like(cls, np.nan)
    below = torch.eye(attns[0].shape[-1], dtype=torch.float64)
    for b, a in enumerate(attns):
        a = a[0].to(torch.float64).cpu()
        heads = a.shape[0]
        cls[b, :heads] = a[:, 0, prefix:].reshape(heads, gh, gw).numpy()
        per_head = torch.stack([_mixed(a[h]) @ below for h in range(heads)])
        roll[b, :heads] = per_head[:, 0, prefix:].reshape(heads, gh, gw).numpy()
        below = _mixed(a.mean(0)) @ below
    return HeadMaps(cls, roll)


def _prefix_tokens(model: nn.Module) -> int:
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    if prefix < 1:
        raise SviteError("per-head class-token attention needs a model with a class token")
    return prefix


def head_maps(model: Any, image: np.ndarray | torch.Tensor, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None) -> HeadMaps:
    """Every block's per-head class-token attention and rollout for one image, every patch present."""
    model = _model_of(model)
    x = to_model_input(model, image, mean, std)
    with every_patch(model):
        attns = attention_maps(model, x)
    return _maps_from(attns, _prefix_tokens(model), grid_size(model))


def head_alive(loaded: Any) -> np.ndarray:
    """Blocks × heads: True where the head is alive. Heads are pruned only by structured (S²ViTE) runs,
    whose head masks the checkpoint carries; every head of a dense, SViTE or official model is alive."""
    model = _model_of(loaded)
    units = getattr(loaded, "units", None) or {}
    most = max(int(b.attn.num_heads) for b in model.blocks)
    alive = np.zeros((len(model.blocks), most), dtype=bool)
    for i, block in enumerate(model.blocks):
        heads = int(block.attn.num_heads)
        name = head_unit_name(i)
        alive[i, :heads] = units[name].cpu().numpy().astype(bool) if name in units else True
    return alive


def is_uniform(grid: np.ndarray) -> bool:
    """True for a map with no top patches (a pruned head: q = k = 0 gives every token the same weight)."""
    grid = np.asarray(grid, dtype=np.float64)
    return bool(np.nanmax(grid) - np.nanmin(grid) <= UNIFORM_RTOL * max(abs(float(np.nanmean(grid))), 1e-12))


def object_iou(grid: np.ndarray, object_mask: np.ndarray) -> float:
    """IoU of the ``k`` most-attended patches with the object's ``k`` patches (NaN for a uniform map or
    an image without object patches)."""
    obj = np.asarray(object_mask, dtype=bool)
    k = int(obj.sum())
    if k == 0 or is_uniform(grid):
        return float("nan")
    top = top_k_mask(grid, k)
    return float((top & obj).sum() / (top | obj).sum())


def head_object_iou(maps: np.ndarray, object_mask: np.ndarray) -> pd.DataFrame:
    """Per head of one block's maps (heads × rows × cols): IoU with the object and its chance level."""
    obj = np.asarray(object_mask, dtype=bool)
    k, n = int(obj.sum()), obj.size
    chance = chance_iou(n, k) if 0 < k <= n else float("nan")
    rows = [{"head": h, "iou": object_iou(m, obj), "uniform": is_uniform(m), "chance": chance, "object_patches": k}
            for h, m in enumerate(maps) if not np.isnan(m).all()]
    return pd.DataFrame(rows)


def heads_over_images(model: Any, images: torch.Tensor, object_masks: np.ndarray, kind: str = "cls",
                      batch_size: int = 32) -> pd.DataFrame:
    """Per block and head, the object IoU over many images (normalised inputs N×C×S×S and their N×rows×cols
    object masks): mean, standard deviation and the mean chance level, over images with an object."""
    model = _model_of(model)
    prefix, grid = _prefix_tokens(model), grid_size(model)
    rows = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(next(model.parameters()).device)
        with every_patch(model):
            attns = attention_maps(model, x)
        for j in range(len(x)):
            maps = _maps_from([a[j:j + 1] for a in attns], prefix, grid).of(kind)
            for b in range(len(maps)):
                part = head_object_iou(maps[b], object_masks[start + j])
                rows += [{"image": start + j, "block": b, **r} for r in part.to_dict("records")]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    return (frame.groupby(["block", "head"]).agg(iou=("iou", "mean"), iou_sd=("iou", "std"), chance=("chance", "mean"),
                                                 images=("image", "nunique"), uniform=("uniform", "all"))
            .reset_index())


def head_importance(model: Any, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Blocks × heads Taylor importance, as the S²ViTE engine scores heads before pruning: the engine's
    own :func:`head_taylor` of each head's attention output (the input of timm's ``attn.norm``) and its
    gradient, here under plain cross-entropy over ``images`` (normalised, N×C×S×S) with ``labels``,
    every patch present, in eval mode. Parameters' ``.grad`` are left untouched."""
    model = _model_of(model)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def capture(i: int):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            captured[i] = args[0]
        return hook

    for i, block in enumerate(model.blocks):
        handles.append(block.attn.norm.register_forward_hook(capture(i)))
    try:
        with eval_mode(model), every_patch(model), torch.enable_grad():
            device = next(model.parameters()).device
            loss = F.cross_entropy(model(images.to(device)).float(), labels.to(device))
            acts = [captured[i] for i in range(len(model.blocks))]
            grads = torch.autograd.grad(loss, acts)
    finally:
        for h in handles:
            h.remove()
    most = max(int(b.attn.num_heads) for b in model.blocks)
    out = np.full((len(model.blocks), most), np.nan)
    for i, (block, act, grad) in enumerate(zip(model.blocks, acts, grads, strict=True)):
        heads, dim = int(block.attn.num_heads), int(block.attn.head_dim)
        b, n = act.shape[:2]
        scores = head_taylor(act.detach().float().reshape(b, n, heads, dim), grad.float().reshape(b, n, heads, dim))
        out[i, :heads] = scores.cpu().numpy()
    return out


def head_mask_history(history: Any, model: Any, block: int) -> pd.DataFrame:
    """The heads of one block across snapshots, from what the history keeps (masks, not weights): for a
    structured run each head alive or pruned; for an unstructured one the share of the head's q, k and v
    weights kept. Columns: snapshot, step, epoch, event, head, kept (0..1). Empty for a dense history."""
    model = _model_of(model)
    survival = head_survival(history)
    if survival is not None:
        part = survival[survival["block"] == block].copy()
        part["kept"] = part.pop("alive").astype(float)
        return part.drop(columns="block").reset_index(drop=True)
    name = f"blocks.{block}.attn.qkv.weight"
    if name not in {la.name for la in history.layers.get("masks", [])}:
        return pd.DataFrame(columns=["snapshot", "step", "epoch", "event", "head", "kept"])
    attn = model.blocks[block].attn
    heads, dim = int(attn.num_heads), int(attn.head_dim)
    shape = history.layers["masks"][history.layer_index("masks", name)].shape
    rows = []
    for t, state in history.walk("masks", name):
        kept = state.reshape(shape).reshape(3, heads, dim, -1).mean(axis=(0, 2, 3))
        rows += [{"snapshot": t, "step": history.steps[t], "epoch": history.epochs[t],
                  "event": history.infos[t].get("event", ""), "head": h, "kept": float(v)} for h, v in enumerate(kept)]
    return pd.DataFrame(rows)


def probe_history(loaded: Any, block: int) -> tuple[list[int], np.ndarray] | None:
    """The head probe of one block at every snapshot that recorded it: (snapshot indices, array of
    snapshots × images × heads × rows × cols, float32), or None when the checkpoint recorded no probe.
    The probe's shape is checked against the model (an untrusted file could claim anything)."""
    model = _model_of(loaded)
    history = loaded.history
    name = probe_layer(block)
    if name not in {la.name for la in history.layers.get("probe", [])}:
        return None
    layer = history.layers["probe"][history.layer_index("probe", name)]
    gh, gw = grid_size(model)
    heads = int(model.blocks[block].attn.num_heads)
    if len(layer.shape) != 3 or layer.shape[1:] != (heads, gh * gw) or layer.dtype != "float16" \
            or not 1 <= layer.shape[0] <= MAX_PROBE_IMAGES:
        raise SviteError(f"the head probe of block {block} is {list(layer.shape)} {layer.dtype}; this model needs "
                         f"[images (1 to {MAX_PROBE_IMAGES}), {heads}, {gh * gw}] float16")
    snaps, arrays = [], []
    for t, state in history.walk("probe", name):
        snaps.append(t)
        arrays.append(state.view(np.float16).astype(np.float32).reshape(layer.shape[0], heads, gh, gw))
    return snaps, np.stack(arrays)


def probe_object_iou(loaded: Any, block: int, object_masks: np.ndarray) -> pd.DataFrame | None:
    """Per snapshot and head of one block, the probe's object IoU (mean over the probe images) beside
    its chance level, and whether the head was uniform (pruned) on every image; None without a probe."""
    found = probe_history(loaded, block)
    if found is None:
        return None
    snaps, maps = found
    history = loaded.history
    rows = []
    for s, per_image in zip(snaps, maps, strict=True):
        parts = [head_object_iou(m, object_masks[i]).assign(image=i) for i, m in enumerate(per_image)]
        frame = pd.concat(parts)
        for h, part in frame.groupby("head"):
            rows.append({"snapshot": s, "step": history.steps[s], "epoch": history.epochs[s], "head": int(h),
                         "iou": float(part["iou"].mean()), "chance": float(part["chance"].mean()),
                         "uniform": bool(part["uniform"].all())})
    return pd.DataFrame(rows)
