"""Patch-level analysis: token-selector keep maps, keep frequency, object recall, keep maps across
training, and switching the selector off (``all_patches``). Attributions live in ``attribution.py``.

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
from ..models.attention import eval_mode as _eval_mode
from ..models.builder import grid_size, model_input_size
from ..models.token_selector import every_patch

__all__ = [
    "PatchKeepMap",
    "all_patches",
    "keep_frequency",
    "keep_frequency_grid",
    "keep_map_history",
    "keep_vs_object",
    "object_patch_recall",
    "patch_keep_map",
    "positional_prior_recall",
    "selector_at_snapshot",
    "selector_snapshots",
    "to_model_input",
]

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
def all_patches(model: Any) -> Iterator[nn.Module]:
    """The model with its token selector switched off: every patch token reaches every block.

    In eval mode the selector keeps the top ``keep`` of its scores; with ``keep`` = all patches that is
    every patch in its own order, so the gathered (or zeroed) sequence is the full one and the model is
    exactly its backbone without a selector (tested against one built without it). Attributions are
    computed this way: on the selector's own forward pass a dropped patch cannot affect anything, so it
    would get zero attribution by construction and any agreement score with the kept set would flatter
    the selector (attention rollout gave IoU 1.000 on every image). A model without a selector is
    returned as it is.
    """
    with every_patch(_model_of(model)) as m:
        yield m


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


def _selector_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The token tensor the selector receives for input ``x`` (eval mode): only the layers before it run."""
    selector = _selector_of(model)
    block = model.blocks[selector.block_index]
    seen: list[torch.Tensor] = []

    class _Stop(Exception):
        pass

    def grab(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())
        raise _Stop

    # registered after the selector's own pre-hook, which keeps every patch in order here: what this hook
    # sees is exactly what the selector saw; the blocks after it never run
    handle = block.register_forward_pre_hook(grab)
    try:
        with all_patches(model), _eval_mode(model), torch.no_grad():
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    if not seen:
        raise SviteError("the token selector's block did not run")
    return seen[0]


def keep_map_history(loaded: Any, image: np.ndarray | torch.Tensor, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> pd.DataFrame:
    """Keep map of one image at every snapshot that holds selector weights (long format:
    ``snapshot, step, epoch, row, col, kept, score``). Only the selector changes between rows: the
    rest of the model has its final weights, so this shows how the scorer's preferences evolved.

    The tokens entering the selector do not depend on the snapshot, so they are computed once and each
    snapshot's scorer only scores them (a few ms per snapshot instead of a forward pass each)."""
    model = _model_of(loaded)
    selector = copy.deepcopy(_selector_of(model)).eval()
    history = list(getattr(loaded, "history", []) or [])
    tokens = _selector_input(model, to_model_input(model, image, mean, std))
    gh, gw = grid_size(model)
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    frames = []
    holder = nn.Module()
    holder.token_selector = selector
    for i in selector_snapshots(loaded):
        _load_selector_state(holder, history[i], i)
        with torch.no_grad():
            scores = selector.score(tokens)
            idx, _ = selector.select(scores)
        kept = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
        frames.append(pd.DataFrame({"snapshot": i, "step": history[i].step, "epoch": history[i].epoch,
                                    "row": rows.ravel(), "col": cols.ravel(),
                                    "kept": kept[0].cpu().numpy().ravel(),
                                    "score": scores[0].cpu().numpy().ravel()}))
    if not frames:
        raise SviteError("the checkpoint's history holds no token-selector weights")
    return pd.concat(frames, ignore_index=True)
