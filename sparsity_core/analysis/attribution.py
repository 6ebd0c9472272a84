"""Which patches matter for the prediction (captum attributions, attention rollout), and how far the
token selector's kept set agrees with them, next to the numbers that agreement must beat.

Definition (stated on the app's page too): every attribution here is computed **with every patch
present**, i.e. on the same backbone with the selector switched off (``patches.all_patches``). On the
selector's own forward pass a dropped patch cannot change anything, so it gets zero attribution and
rollout by construction, and "the kept patches are the important ones" would be true by definition.
The class explained is the checkpoint's own prediction (selector on) unless ``target`` says otherwise.

Agreement is the IoU between the kept set and the ``k`` most-attributed patches (``k`` = patches kept).
It is only meaningful beside (a) its chance level: the expected IoU of a random set of ``k`` patches
(exact, hypergeometric), and (b) content-blind baselines: masks that never look at the image, such as
the ``k`` most central patches, or the best fixed mask: the ``k`` positions most often among the top-k
attributed patches over other images (cross-fitted, so it is never scored on the images it was fitted
on). A selector that does not beat the best fixed mask has learned a position prior, not content.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from math import comb
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import SviteError
from ..models.attention import attention_maps
from ..models.builder import grid_size
from .patches import _eval_mode, _model_of, _patch_size, all_patches, to_model_input

__all__ = [
    "ATTRIBUTION_METHODS",
    "agreement_over_images",
    "attribution_stack",
    "attention_rollout",
    "centre_mask",
    "chance_iou",
    "fixed_mask",
    "keep_attribution_iou",
    "patch_attributions",
    "top_k_mask",
]

ATTRIBUTION_METHODS = ("integrated_gradients", "occlusion", "input_x_gradient")


# ----------------------------------------------------------------------------------------------
# attributions (captum) and attention rollout, every patch present
def _patch_ids(model: nn.Module, device: torch.device) -> torch.Tensor:
    """1×1×H×W map of each pixel's patch index (captum's feature mask for patch-level ablation)."""
    gh, gw = grid_size(model)
    p = _patch_size(model)
    ids = torch.arange(gh * gw, device=device).reshape(gh, gw)
    return ids.repeat_interleave(p, 0).repeat_interleave(p, 1)[None, None]


def patch_attributions(model: Any, image: np.ndarray | torch.Tensor, method: str = "integrated_gradients",
                       target: int | None = None, n_steps: int = 32, baseline: float = 0.0,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       batch_size: int = 32, with_selector: bool = False) -> np.ndarray:
    """Attribution of the class ``target`` (default: the model's prediction) to each patch, ``(H/p, W/p)``.

    * ``integrated_gradients``: captum IntegratedGradients from a constant ``baseline`` (0 in
      normalised space = the data mean colour), summed over each patch's pixels and channels.
    * ``occlusion``: captum FeatureAblation with a patch-level feature mask: each patch in turn is
      replaced by the baseline, and its attribution is the drop in the target logit.
    * ``input_x_gradient``: captum InputXGradient summed per patch (cheap, one backward).

    Computed with every patch present (the selector switched off); ``with_selector=True`` attributes the
    selector's own forward pass instead, where dropped patches get zero by construction.
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
    with _eval_mode(model):
        if target is None:  # the checkpoint's own prediction: selector on
            with torch.no_grad():
                target = int(model(x).argmax(dim=1)[0])
        with (nullcontext(model) if with_selector else all_patches(model)):
            if method == "integrated_gradients":
                attr = IntegratedGradients(model).attribute(x, baselines=float(baseline), target=int(target),
                                                            n_steps=int(n_steps), internal_batch_size=int(batch_size))
            elif method == "input_x_gradient":
                attr = InputXGradient(model).attribute(x.clone().requires_grad_(True), target=int(target))
            else:
                with torch.no_grad():
                    attr = FeatureAblation(model).attribute(x, baselines=float(baseline), target=int(target),
                                                            feature_mask=_patch_ids(model, x.device),
                                                            perturbations_per_eval=int(batch_size))
                # every pixel of a patch carries that patch's whole attribution: read one pixel per patch
                return attr[0, 0].reshape(gh, p, gw, p)[:, 0, :, 0].detach().cpu().numpy().astype(np.float32)
    per_patch = attr.detach()[0].sum(dim=0).reshape(gh, p, gw, p).sum(dim=(1, 3))
    return per_patch.cpu().numpy().astype(np.float32)


def attention_rollout(model: Any, image: np.ndarray | torch.Tensor, head_fusion: str = "mean",
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      with_selector: bool = False) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) from the class token to each patch, ``(H/p, W/p)``.

    Each block's attention (heads fused by mean/max/min) is mixed with the identity for the residual,
    rows renormalised, and the blocks multiplied. Computed with every patch present (the selector
    switched off). ``with_selector=True`` follows the selector's gathered sequence instead: blocks after
    it only see the kept tokens, so with the selector before block 0 a dropped patch gets exactly zero,
    the artefact that made the kept-vs-rollout IoU 1.0 on every image.
    """
    model = _model_of(model)
    if head_fusion not in ("mean", "max", "min"):
        raise SviteError(f"head_fusion '{head_fusion}': use mean, max or min")
    x = to_model_input(model, image, mean, std)
    with (nullcontext(model) if with_selector else all_patches(model)):
        attns = attention_maps(model, x)  # timm's own modules, read through a hook
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    gh, gw = grid_size(model)
    n = prefix + gh * gw
    selector = getattr(model, "token_selector", None)
    positions = None
    if with_selector and selector is not None and selector.gathers_at_inference:
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
    return source[prefix:].reshape(gh, gw).numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------
# agreement, its chance level and content-blind baselines
def top_k_mask(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest entries of a grid as a boolean grid (ties broken by patch order)."""
    values = np.asarray(values, dtype=np.float64)
    if not 0 <= k <= values.size:
        raise SviteError(f"k={k}: must be in [0, {values.size}]")
    if not np.isfinite(values).all():
        raise SviteError("attribution contains NaN or infinite values")
    top = np.zeros(values.size, dtype=bool)
    top[np.argsort(-values.ravel(), kind="stable")[:k]] = True
    return top.reshape(values.shape)


def keep_attribution_iou(kept: np.ndarray, attribution: np.ndarray, k: int | None = None) -> float:
    """IoU between the kept patches and the ``k`` most-attributed patches (``k`` = number kept).

    Ties in the attribution are broken by patch order, so the result is deterministic.
    """
    kept = np.asarray(kept, dtype=bool)
    attribution = np.asarray(attribution, dtype=np.float64)
    if kept.shape != attribution.shape:
        raise SviteError(f"kept grid {kept.shape} and attribution grid {attribution.shape} differ in shape")
    k = int(kept.sum()) if k is None else int(k)
    top = top_k_mask(attribution, k)
    union = int((kept | top).sum())
    return float((kept & top).sum() / union) if union else 1.0


def chance_iou(n: int, k: int) -> float:
    """Expected IoU between a fixed set of ``k`` of ``n`` patches and a uniformly random one (exact: the
    overlap is hypergeometric): 0.336 for 32 of 64 (``k / (2n - k)`` = 0.333 approximates it)."""
    if not 0 < k <= n:
        raise SviteError(f"k={k}, n={n}: need 0 < k <= n")
    total = comb(n, k)
    return float(sum(comb(k, i) * comb(n - k, k - i) * i / (2 * k - i)
                     for i in range(max(1, 2 * k - n), k + 1)) / total)


def centre_mask(grid: tuple[int, int], k: int) -> np.ndarray:
    """The ``k`` patches nearest the image centre: a content-blind mask (objects in photos tend to sit
    there)."""
    gh, gw = grid
    r, c = np.meshgrid(np.arange(gh) - (gh - 1) / 2, np.arange(gw) - (gw - 1) / 2, indexing="ij")
    return top_k_mask(-(r ** 2 + c ** 2), k)


def fixed_mask(attributions: np.ndarray, k: int) -> np.ndarray:
    """The best fixed (content-blind) mask for a set of images: the ``k`` positions most often among the
    ``k`` most-attributed patches (N×H×W attributions in, H×W bool out)."""
    attributions = np.asarray(attributions)
    if attributions.ndim != 3 or len(attributions) == 0:
        raise SviteError(f"attributions of shape {attributions.shape}: expected N×H×W with N >= 1")
    counts = np.stack([top_k_mask(a, k) for a in attributions]).mean(axis=0)
    return top_k_mask(counts, k)


def agreement_over_images(kept: np.ndarray, attributions: np.ndarray) -> pd.DataFrame:
    """Per image: the IoU of the selector's kept set with the top-k attributed patches, and the IoU of the
    content-blind baselines with them. The best fixed mask is cross-fitted: for even-numbered images it
    is fitted on the odd ones and vice versa, so it never sees the image it is scored on.

    Columns: ``image, selector, best_fixed_mask, centre_mask, chance`` (``kept`` and ``attributions`` are
    N×H×W; every image keeps the same number of patches).
    """
    kept = np.asarray(kept, dtype=bool)
    attributions = np.asarray(attributions, dtype=np.float64)
    if kept.shape != attributions.shape or kept.ndim != 3:
        raise SviteError(f"kept {kept.shape} and attributions {attributions.shape}: expected equal N×H×W shapes")
    if len(kept) < 2:
        raise SviteError("agreement over images needs at least 2 images (the fixed mask is fitted on the others)")
    ks = kept.reshape(len(kept), -1).sum(axis=1)
    if len(set(ks.tolist())) != 1:
        raise SviteError("every image must keep the same number of patches")
    k, n = int(ks[0]), int(kept[0].size)
    idx = np.arange(len(kept))
    fixed = {parity: fixed_mask(attributions[idx % 2 != parity], k) for parity in (0, 1)}
    centre = centre_mask(kept.shape[1:], k)
    chance = chance_iou(n, k)
    rows = [{"image": int(i), "selector": keep_attribution_iou(kept[i], attributions[i]),
             "best_fixed_mask": keep_attribution_iou(fixed[i % 2], attributions[i]),
             "centre_mask": keep_attribution_iou(centre, attributions[i]), "chance": chance} for i in idx]
    return pd.DataFrame(rows)


def attribution_stack(model: Any, images: Sequence[np.ndarray | torch.Tensor], method: str,
                      progress: Callable[[int, int], None] | None = None, **kwargs: Any) -> np.ndarray:
    """N×H×W attributions (or rollout, ``method="attention_rollout"``) for a list of images, calling
    ``progress(done, total)`` after each one (the app draws a progress bar from it)."""
    out = []
    for i, image in enumerate(images):
        if method == "attention_rollout":
            out.append(attention_rollout(model, image, **kwargs))
        else:
            out.append(patch_attributions(model, image, method=method, **kwargs))
        if progress is not None:
            progress(i + 1, len(images))
    return np.stack(out)
