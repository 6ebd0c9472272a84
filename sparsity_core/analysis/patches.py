"""Patch-level analysis: token-selector keep maps, keep frequency, captum attributions, rollout.

Pure functions: they take a model (or a ``LoadedCheckpoint``) and an image or dataset, and return
numpy arrays or pandas frames; nothing is drawn here (the app does that) and the model is left as it
was found (training mode, attention settings, weights). Everything runs the model in eval mode, where
the selector is a deterministic hard top-k, so the same image always gives the same map.

Grids are ``(H/p, W/p)`` arrays in image layout: ``grid[r, c]`` is the patch in row r, column c, which
is patch token ``r * W/p + c`` (timm's flattening order).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.utils.data
from torch import nn

from ..data import DEMO_MEAN, DEMO_STD, image_to_input
from ..errors import SviteError
from ..models import grid_size, model_input_size

__all__ = [
    "ATTRIBUTION_METHODS",
    "PatchKeepMap",
    "attention_rollout",
    "keep_attribution_iou",
    "keep_frequency",
    "keep_frequency_grid",
    "keep_map_history",
    "keep_vs_object",
    "object_patch_recall",
    "patch_attributions",
    "patch_keep_map",
    "positional_prior_recall",
    "selector_at_snapshot",
    "selector_snapshots",
    "to_model_input",
]

ATTRIBUTION_METHODS = ("integrated_gradients", "occlusion", "input_x_gradient")


# ----------------------------------------------------------------------------------------------
# helpers
def _model_of(obj: Any) -> nn.Module:
    """Accept a model or anything holding one as ``.model`` (a LoadedCheckpoint)."""
    model = obj.model if not isinstance(obj, nn.Module) and hasattr(obj, "model") else obj
    if not isinstance(model, nn.Module) or not hasattr(model, "patch_embed") or not hasattr(model, "blocks"):
        raise SviteError(f"expected a timm VisionTransformer (or a loaded checkpoint), got {type(obj).__name__}")
    return model


def _selector_of(model: nn.Module) -> nn.Module:
    selector = getattr(model, "token_selector", None)
    if selector is None:
        raise SviteError("this model has no token selector: keep maps need a checkpoint trained with "
                         "--token-number K or --keep-ratio R")
    return selector


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _patch_size(model: nn.Module) -> int:
    return int(model.patch_embed.patch_size[0])


def to_model_input(model: Any, image: np.ndarray | torch.Tensor, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> torch.Tensor:
    """A 1×C×S×S float input for ``model``.

    A tensor (C×S×S or 1×C×S×S) is taken as already normalised and must match the model's input size;
    a numpy image (uint8 H×W×3, grey, RGBA or float in [0, 1]) is centre-cropped, resized and
    normalised with ``mean``/``std`` (default: the demo data's; pass ``loaded.meta['data']['mean'/'std']``
    for other checkpoints).
    """
    model = _model_of(model)
    size = model_input_size(model)
    if isinstance(image, torch.Tensor):
        x = image.detach().float()
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[0] != 1 or tuple(x.shape[-2:]) != (size, size):
            raise SviteError(f"image tensor of shape {list(image.shape)}: expected C×{size}×{size} or "
                             f"1×C×{size}×{size} for this model")
        return x.to(_device(model))
    x = image_to_input(np.asarray(image), size, mean or DEMO_MEAN, std or DEMO_STD)
    return x.to(_device(model))


@torch.no_grad()
def _select_batch(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(kept bool B×gh×gw, scores float B×gh×gw) of the selector for a batch of inputs (eval mode)."""
    selector = _selector_of(model)
    gh, gw = grid_size(model)
    with _eval_mode(model):
        selector.last_keep_indices = None
        model(x.to(_device(model)))
        idx, scores = selector.last_keep_indices, selector.last_scores
    if idx is None or scores is None:
        raise SviteError("the token selector did not run (is the model wrapped by torch.compile?)")
    kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
    b = scores.shape[0]
    return kept.reshape(b, gh, gw).cpu().numpy(), scores.reshape(b, gh, gw).cpu().numpy()


def _batches(dataset: torch.utils.data.Dataset, batch_size: int, limit: int | None
             ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(dataset indices, images, labels) in order, at most ``limit`` images."""
    if batch_size < 1:
        raise SviteError(f"batch_size={batch_size}: must be >= 1")
    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None:
        if limit < 1:
            raise SviteError(f"limit={limit}: must be >= 1")
        n = min(n, int(limit))
    for lo in range(0, n, batch_size):
        ids = np.arange(lo, min(n, lo + batch_size))
        items = [dataset[int(i)] for i in ids]
        yield ids, torch.stack([torch.as_tensor(im) for im, _ in items]), torch.as_tensor([int(t) for _, t in items])


# ----------------------------------------------------------------------------------------------
# keep maps
@dataclass(frozen=True)
class PatchKeepMap:
    """Which patches the selector keeps for one image, with its scores (both ``(H/p, W/p)`` grids)."""

    kept: np.ndarray  # bool
    scores: np.ndarray  # float32, higher = kept first
    keep: int  # patches kept
    of: int  # patches in the image

    @property
    def keep_ratio(self) -> float:
        return self.keep / self.of


def patch_keep_map(model: Any, image: np.ndarray | torch.Tensor, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> PatchKeepMap:
    """The kept/dropped grid and the selector's scores for one image (deterministic: eval-mode top-k).

    Raises SviteError for a model without a selector.
    """
    model = _model_of(model)
    selector = _selector_of(model)
    kept, scores = _select_batch(model, to_model_input(model, image, mean, std))
    return PatchKeepMap(kept=kept[0], scores=scores[0], keep=int(selector.keep), of=int(selector.num_patches))


def keep_frequency(model: Any, dataset: torch.utils.data.Dataset, batch_size: int = 64,
                   limit: int | None = None) -> pd.DataFrame:
    """How often each patch position is kept over a dataset, overall (class ``"all"``) and per class.

    Long format, one row per (class, patch): ``class, label, row, col, frequency, images`` (label is -1
    for ``"all"``). ``keep_frequency_grid`` turns one class into a grid.
    """
    model = _model_of(model)
    _selector_of(model)
    gh, gw = grid_size(model)
    names = list(getattr(dataset, "class_names", []) or [])
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    total, n_total = np.zeros((gh, gw)), 0
    for _, images, labels in _batches(dataset, batch_size, limit):
        kept, _ = _select_batch(model, images)
        total += kept.sum(axis=0)
        n_total += len(labels)
        for lab in labels.unique().tolist():
            sel = (labels == lab).numpy()
            sums[lab] = sums.get(lab, np.zeros((gh, gw))) + kept[sel].sum(axis=0)
            counts[lab] = counts.get(lab, 0) + int(sel.sum())
    if n_total == 0:
        raise SviteError("keep_frequency: the dataset is empty")
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    frames = []
    for lab, grid, n in [(-1, total, n_total)] + [(k, sums[k], counts[k]) for k in sorted(sums)]:
        name = "all" if lab < 0 else (names[lab] if lab < len(names) else str(lab))
        frames.append(pd.DataFrame({"class": name, "label": lab, "row": rows.ravel(), "col": cols.ravel(),
                                    "frequency": (grid / n).ravel(), "images": n}))
    return pd.concat(frames, ignore_index=True)


def keep_frequency_grid(frame: pd.DataFrame, class_name: str = "all") -> pd.DataFrame:
    """One class of ``keep_frequency``'s result as a rows × cols grid of frequencies."""
    part = frame[frame["class"] == class_name]
    if part.empty:
        raise SviteError(f"keep frequency has no class '{class_name}' (has: {sorted(frame['class'].unique())})")
    return part.pivot(index="row", columns="col", values="frequency")


def keep_vs_object(model: Any, dataset: torch.utils.data.Dataset, batch_size: int = 64,
                   limit: int | None = None) -> pd.DataFrame:
    """Per demo image: how many object patches there are, how many the selector keeps, and the
    recall / precision / IoU of the kept set against the object (``DemoShapes.patch_masks``)."""
    model = _model_of(model)
    _selector_of(model)
    masks = getattr(dataset, "patch_masks", None)
    if masks is None:
        raise SviteError("object-patch scores need the demo data (--data demo), which knows where each object is")
    gh, gw = grid_size(model)
    if tuple(masks.shape[1:]) != (gh, gw):
        raise SviteError(f"demo patch masks are {tuple(masks.shape[1:])} but the model's patch grid is {(gh, gw)}: "
                         "build the demo data with the model's image and patch size")
    names = list(getattr(dataset, "class_names", []) or [])
    records = []
    for ids, images, labels in _batches(dataset, batch_size, limit):
        kept, _ = _select_batch(model, images)
        obj = np.asarray(masks[ids], dtype=bool)
        n_obj = obj.sum(axis=(1, 2))
        n_kept = kept.sum(axis=(1, 2))
        hit = (kept & obj).sum(axis=(1, 2))
        union = (kept | obj).sum(axis=(1, 2))
        for j, i in enumerate(ids):
            lab = int(labels[j])
            records.append({"index": int(i), "label": lab, "class": names[lab] if lab < len(names) else str(lab),
                            "object_patches": int(n_obj[j]), "kept_patches": int(n_kept[j]),
                            "kept_object_patches": int(hit[j]),
                            "recall": hit[j] / n_obj[j] if n_obj[j] else np.nan,
                            "precision": hit[j] / n_kept[j] if n_kept[j] else np.nan,
                            "iou": hit[j] / union[j] if union[j] else np.nan})
    return pd.DataFrame.from_records(records)


def object_patch_recall(model: Any, dataset: torch.utils.data.Dataset, batch_size: int = 64,
                        limit: int | None = None) -> float:
    """Mean over demo images of the fraction of object patches the selector keeps (chance: keep ratio)."""
    table = keep_vs_object(model, dataset, batch_size=batch_size, limit=limit)
    recall = table["recall"].dropna()
    if recall.empty:
        raise SviteError("object_patch_recall: no image in the dataset has an object patch")
    return float(recall.mean())


def positional_prior_recall(reference: torch.utils.data.Dataset, dataset: torch.utils.data.Dataset,
                            keep: int) -> float:
    """Object-patch recall of the best *fixed* mask: the ``keep`` positions where objects fall most often
    in ``reference`` (e.g. the training split), scored on ``dataset``.

    This is the honest baseline for ``object_patch_recall``: the demo objects sit away from the borders,
    so a content-blind central mask already beats the keep ratio (e.g. ~0.89 at keep 32 of 64). A
    selector has to beat this to show it looks at the image.
    """
    ref, masks = getattr(reference, "patch_masks", None), getattr(dataset, "patch_masks", None)
    if ref is None or masks is None:
        raise SviteError("the positional baseline needs demo data (it knows where each object is)")
    ref, masks = np.asarray(ref, dtype=bool), np.asarray(masks, dtype=bool)
    if ref.shape[1:] != masks.shape[1:]:
        raise SviteError(f"patch grids differ: {ref.shape[1:]} vs {masks.shape[1:]}")
    n = int(np.prod(masks.shape[1:]))
    if not 1 <= keep <= n:
        raise SviteError(f"keep={keep}: must be in [1, {n}]")
    order = np.argsort(-ref.reshape(len(ref), -1).mean(axis=0), kind="stable")
    fixed = np.zeros(n, dtype=bool)
    fixed[order[:keep]] = True
    flat = masks.reshape(len(masks), -1)
    n_obj = flat.sum(axis=1)
    hit = (flat & fixed).sum(axis=1)
    valid = n_obj > 0
    if not valid.any():
        raise SviteError("positional_prior_recall: no image in the dataset has an object patch")
    return float((hit[valid] / n_obj[valid]).mean())


# ----------------------------------------------------------------------------------------------
# keep maps across training (the mask history holds the selector's weights at every snapshot)
def selector_snapshots(loaded: Any) -> list[int]:
    """Indices of the history snapshots that hold token-selector weights."""
    return [i for i, snap in enumerate(getattr(loaded, "history", []) or [])
            if any(k.startswith("token_selector.") for k in snap.state)]


def _load_selector_state(model: nn.Module, snap: Any, i: int) -> None:
    state = {k[len("token_selector."):]: v for k, v in snap.state.items() if k.startswith("token_selector.")}
    if not state:
        raise SviteError(f"snapshot {i} holds no token-selector weights")
    try:
        model.token_selector.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SviteError(f"snapshot {i}: selector weights do not fit the model ({str(err).splitlines()[0][:120]})"
                         ) from None


def selector_at_snapshot(loaded: Any, i: int) -> nn.Module:
    """A copy of ``loaded.model`` whose selector has the weights of history snapshot ``i`` (the rest of
    the model keeps its final weights); ``loaded`` itself is not changed."""
    model = _model_of(loaded)
    _selector_of(model)
    history = list(getattr(loaded, "history", []) or [])
    if not -len(history) <= i < len(history):
        raise SviteError(f"snapshot {i}: the checkpoint has {len(history)} snapshots")
    copy_ = copy.deepcopy(model)
    _load_selector_state(copy_, history[i], i % len(history))
    return copy_


def keep_map_history(loaded: Any, image: np.ndarray | torch.Tensor, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> pd.DataFrame:
    """Keep map of one image at every snapshot that holds selector weights (long format:
    ``snapshot, step, epoch, row, col, kept, score``). Only the selector changes between rows: the
    rest of the model has its final weights, so this shows how the scorer's preferences evolved."""
    model = copy.deepcopy(_model_of(loaded))
    _selector_of(model)
    history = list(getattr(loaded, "history", []) or [])
    x = to_model_input(model, image, mean, std)
    gh, gw = grid_size(model)
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    frames = []
    for i in selector_snapshots(loaded):
        _load_selector_state(model, history[i], i)
        kept, scores = _select_batch(model, x)
        frames.append(pd.DataFrame({"snapshot": i, "step": history[i].step, "epoch": history[i].epoch,
                                    "row": rows.ravel(), "col": cols.ravel(), "kept": kept[0].ravel(),
                                    "score": scores[0].ravel()}))
    if not frames:
        raise SviteError("the checkpoint's history holds no token-selector weights")
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# attributions (captum) and attention rollout
def _logits_fn(model: nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return forward


def _patch_ids(model: nn.Module, device: torch.device) -> torch.Tensor:
    """1×1×H×W map of each pixel's patch index (captum's feature mask for patch-level ablation)."""
    gh, gw = grid_size(model)
    p = _patch_size(model)
    ids = torch.arange(gh * gw, device=device).reshape(gh, gw)
    return ids.repeat_interleave(p, 0).repeat_interleave(p, 1)[None, None]


def patch_attributions(model: Any, image: np.ndarray | torch.Tensor, method: str = "integrated_gradients",
                       target: int | None = None, n_steps: int = 32, baseline: float = 0.0,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       batch_size: int = 32) -> np.ndarray:
    """Attribution of the class ``target`` (default: the predicted class) to each patch, ``(H/p, W/p)``.

    * ``integrated_gradients``: captum IntegratedGradients from a constant ``baseline`` (0 in
      normalised space = the data mean colour), summed over each patch's pixels and channels.
    * ``occlusion``: captum FeatureAblation with a patch-level feature mask: each patch in turn is
      replaced by the baseline, and its attribution is the drop in the target logit.
    * ``input_x_gradient``: captum InputXGradient summed per patch (cheap, one backward).

    Works with and without a token selector (the selector's hard top-k simply runs inside the model).
    """
    from captum.attr import FeatureAblation, InputXGradient, IntegratedGradients

    model = _model_of(model)
    if method not in ATTRIBUTION_METHODS:
        raise SviteError(f"attribution method '{method}': use one of {', '.join(ATTRIBUTION_METHODS)}")
    if n_steps < 1 or batch_size < 1:
        raise SviteError("n_steps and batch_size must be >= 1")
    x = to_model_input(model, image, mean, std)
    gh, gw = grid_size(model)
    p = _patch_size(model)
    forward = _logits_fn(model)
    with _eval_mode(model):
        if target is None:
            with torch.no_grad():
                target = int(model(x).argmax(dim=1)[0])
        if method == "integrated_gradients":
            attr = IntegratedGradients(forward).attribute(x, baselines=float(baseline), target=int(target),
                                                          n_steps=int(n_steps), internal_batch_size=int(batch_size))
        elif method == "input_x_gradient":
            attr = InputXGradient(forward).attribute(x.clone().requires_grad_(True), target=int(target))
        else:
            ids = _patch_ids(model, x.device)
            with torch.no_grad():
                attr = FeatureAblation(forward).attribute(x, baselines=float(baseline), target=int(target),
                                                          feature_mask=ids, perturbations_per_eval=int(batch_size))
            # every pixel of a patch carries that patch's whole attribution: read one pixel per patch
            return attr[0, 0].reshape(gh, p, gw, p)[:, 0, :, 0].detach().cpu().numpy().astype(np.float32)
    per_patch = attr.detach()[0].sum(dim=0).reshape(gh, p, gw, p).sum(dim=(1, 3))
    return per_patch.cpu().numpy().astype(np.float32)


def attention_rollout(model: Any, image: np.ndarray | torch.Tensor, head_fusion: str = "mean",
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) from the class token to each patch, ``(H/p, W/p)``.

    Each block's attention (heads fused by mean/max/min) is mixed with the identity for the residual,
    rows renormalised, and the blocks multiplied. With a gathering selector, blocks after it only see
    the kept tokens: their attention is placed back at the kept positions, so dropped patches receive
    rollout only through the blocks before the selector. Attention probabilities come from a forward
    hook on each timm ``Attention.attn_drop`` with ``fused_attn`` off for the call (no timm code copied).
    """
    model = _model_of(model)
    if head_fusion not in ("mean", "max", "min"):
        raise SviteError(f"head_fusion '{head_fusion}': use mean, max or min")
    x = to_model_input(model, image, mean, std)
    attns: list[torch.Tensor] = []
    handles, fused = [], []
    for block in model.blocks:
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "attn_drop") or not hasattr(attn, "fused_attn"):
            raise SviteError("attention rollout needs timm ViT blocks with a standard Attention module")
        fused.append((attn, attn.fused_attn))
        attn.fused_attn = False
        handles.append(attn.attn_drop.register_forward_hook(lambda m, a, out: attns.append(out.detach())))
    try:
        with _eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for attn, flag in fused:
            attn.fused_attn = flag
    if len(attns) != len(model.blocks):
        raise SviteError("attention rollout: did not see every block's attention")
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    n = prefix + grid_size(model)[0] * grid_size(model)[1]
    selector = getattr(model, "token_selector", None)
    positions = None
    if selector is not None and selector.gathers_at_inference:
        idx = selector.last_keep_indices[0].to(torch.long).cpu()
        positions = torch.cat([torch.arange(prefix), prefix + idx])
    rollout = torch.eye(n, dtype=torch.float64)
    for a in attns:
        a = a[0].to(torch.float64).cpu()
        fused_a = {"mean": a.mean(0), "max": a.amax(0), "min": a.amin(0)}[head_fusion]
        t = fused_a.shape[0]
        fused_a = 0.5 * fused_a + 0.5 * torch.eye(t, dtype=torch.float64)
        fused_a = fused_a / fused_a.sum(dim=-1, keepdim=True)
        if t != n:
            if positions is None or t != len(positions):
                raise SviteError(f"attention rollout: a block saw {t} tokens, expected {n}")
            full = torch.eye(n, dtype=torch.float64)
            full[positions.unsqueeze(1), positions.unsqueeze(0)] = fused_a
            fused_a = full
        rollout = fused_a @ rollout
    source = rollout[0] if prefix > 0 else rollout.mean(0)
    gh, gw = grid_size(model)
    return source[prefix:].reshape(gh, gw).numpy().astype(np.float32)


def keep_attribution_iou(kept: np.ndarray, attribution: np.ndarray, k: int | None = None) -> float:
    """IoU between the kept patches and the ``k`` most-attributed patches (``k`` = number kept).

    Ties in the attribution are broken by patch order, so the result is deterministic.
    """
    kept = np.asarray(kept, dtype=bool)
    attribution = np.asarray(attribution, dtype=np.float64)
    if kept.shape != attribution.shape:
        raise SviteError(f"kept grid {kept.shape} and attribution grid {attribution.shape} differ in shape")
    k = int(kept.sum()) if k is None else int(k)
    if not 0 <= k <= kept.size:
        raise SviteError(f"k={k}: must be in [0, {kept.size}]")
    if not np.isfinite(attribution).all():
        raise SviteError("attribution contains NaN or infinite values")
    top = np.zeros(kept.size, dtype=bool)
    top[np.argsort(-attribution.ravel(), kind="stable")[:k]] = True
    top = top.reshape(kept.shape)
    union = int((kept | top).sum())
    return float((kept & top).sum() / union) if union else 1.0
