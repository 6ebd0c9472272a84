"""Cached loaders for the Patch maps page: images as the model sees them, predictions with class
names, keep maps, attributions (every patch present), their agreement with the kept set over demo
images, and the object-recall baselines.

Everything expensive is cached per checkpoint file (its (mtime, size) stamp is in every key, as in
``loaders``); attributions over the demo images are cached one image at a time, so the page can show
a progress bar while they are computed the first time and answer instantly afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st
import torch

from sparsity_core import analysis
from sparsity_core.analysis.report import evaluation_data
from sparsity_core.data import DemoShapes, MatchedDataset, checkpoint_classes, checkpoint_preprocess
from sparsity_core.data.imagefiles import open_image

from ..figures.gif import frames_to_gif
from .checkpoint_data import MODEL_LOCK, Stamp, inspect_doc, load, stamp
from .photos import sample_images

#: Demo images the agreement over a data set is averaged over (small models; large ones: on request).
AGREEMENT_IMAGES = 32
LARGE_MODEL_PARAMS = 5_000_000
FOLDER_SOURCE = "Its data folder"


def normalisation(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std the checkpoint was trained with (ImageNet's for foreign checkpoints)."""
    pre = checkpoint_preprocess(load(path).meta)
    return pre.mean, pre.std


def class_names(path: str) -> tuple[list[str], str]:
    """The checkpoint's class names and where they come from: its own metadata (our checkpoints), else
    timm's ImageNetInfo when the head has an ImageNet size (1000 classes: ImageNet-1k), else numbers. The
    core's ``checkpoint_classes``, the same names ``svite eval`` matches folders against."""
    classes = checkpoint_classes(load(path).meta, int(inspect_doc(path)["architecture"]["num_classes"]))
    return list(classes.names), classes.describe()


@st.cache_resource(max_entries=4, show_spinner="Reading the checkpoint's data folder…")
def _folder_data(path: str, stamp_: Stamp) -> MatchedDataset | None:
    loaded = load(path)
    source = (loaded.meta.get("data") or {}).get("source")
    if not isinstance(source, str) or source == "demo" or not Path(source).is_dir():
        return None
    with MODEL_LOCK:
        bundle, _, match = evaluation_data(loaded, source)
    data = MatchedDataset(bundle.val, match)
    return data if len(data) else None


def folder_data(path: str) -> MatchedDataset | None:
    """The validation images of the folder the checkpoint was trained on, when it is still there, with
    targets matched to the checkpoint's classes by name (``sparsity_core.data.matching``, as ``svite
    eval`` does) and ``class_names`` the checkpoint's; None for demo runs and foreign checkpoints."""
    return _folder_data(path, stamp(path))


def folder_sample(data: MatchedDataset, index: int) -> tuple[np.ndarray, str]:
    """(RGB image as stored, the checkpoint's name of its true class) of one folder image."""
    image = np.asarray(open_image(data.filename(index)))
    return image, data.class_names[data.targets[index]]


def is_large(path: str) -> bool:
    """Models whose attributions take seconds per image (a DeiT-S): data-set-wide work waits for a click."""
    return int(inspect_doc(path)["params"]) > LARGE_MODEL_PARAMS


@st.cache_resource(max_entries=4, show_spinner="Generating the demo images…")
def demo_dataset(img_size: int, patch_size: int, size: int = 200, split: str = "val") -> DemoShapes:
    """The demo images at a model's geometry (deterministic, seed 0)."""
    return DemoShapes(split, size=size, img_size=img_size, patch_size=patch_size, seed=0)


def demo_size(img_size: int) -> int:
    """Demo images generated for a model: 200 at the demo's 32 px; 48 at ImageNet sizes, where 200
    images take ~10 s and 1 GB to render and the shapes are not what such a model knows anyway."""
    return 200 if img_size <= 64 else 48


def demo_for(path: str) -> DemoShapes:
    arch = inspect_doc(path)["architecture"]
    img = int(arch["img_size"])
    return demo_dataset(img, int(arch["patch_size"]), demo_size(img))


@st.cache_data(show_spinner=False)
def photos() -> dict[str, np.ndarray]:
    """The offline sample photos (scikit-image's bundled data)."""
    return dict(sample_images())


@st.cache_data(max_entries=64, show_spinner=False)
def _model_view(path: str, stamp_: Stamp, image: np.ndarray) -> np.ndarray:
    """The image as the model sees it (centre crop, resize), back in uint8 RGB."""
    with MODEL_LOCK:
        mean, std = normalisation(path)
        x = analysis.to_model_input(load(path), image, mean, std)[0].cpu()
        rgb = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
        return (rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def model_view(path: str, image: np.ndarray) -> np.ndarray:
    return _model_view(path, stamp(path), image)


@st.cache_data(max_entries=64, show_spinner=False)
def _predict(path: str, stamp_: Stamp, image: np.ndarray, top: int) -> pd.DataFrame:
    with MODEL_LOCK:
        loaded = load(path)
        mean, std = normalisation(path)
        x = analysis.to_model_input(loaded, image, mean, std)
        with torch.no_grad():
            probs = loaded.model.eval()(x).float().softmax(dim=1)[0]
        values, idx = probs.topk(min(top, probs.numel()))
        names, _ = class_names(path)
        return pd.DataFrame({"class": [names[i] for i in idx.tolist()], "index": idx.tolist(),
                             "probability": values.tolist()})


def predict(path: str, image: np.ndarray, top: int = 3) -> pd.DataFrame:
    """The top classes with the selector on (the checkpoint as it is used)."""
    return _predict(path, stamp(path), image, int(top))


@st.cache_data(max_entries=64, show_spinner=False)
def _keep_map(path: str, stamp_: Stamp, image: np.ndarray, snapshot: int | None) -> analysis.PatchKeepMap:
    with MODEL_LOCK:
        loaded = load(path)
        mean, std = normalisation(path)
        model = loaded if snapshot is None else analysis.selector_at_snapshot(loaded, snapshot)
        return analysis.patch_keep_map(model, image, mean, std)


def keep_map(path: str, image: np.ndarray, snapshot: int | None = None) -> analysis.PatchKeepMap:
    """The selector's kept/dropped grid and scores for one image (final, or at a snapshot)."""
    return _keep_map(path, stamp(path), image, snapshot)


def _attribute(path: str, image: np.ndarray, method: str, target: int | None) -> np.ndarray:
    with MODEL_LOCK:
        loaded = load(path)
        mean, std = normalisation(path)
        torch.manual_seed(0)
        if method == "attention_rollout":
            return analysis.attention_rollout(loaded, image, mean=mean, std=std)
        return analysis.patch_attributions(loaded, image, method=method, target=target, mean=mean, std=std)


@st.cache_data(max_entries=64, show_spinner="Computing the attribution (every patch present)…")
def _attribution(path: str, stamp_: Stamp, image: np.ndarray, method: str, target: int | None) -> np.ndarray:
    return _attribute(path, image, method, target)


def attribution(path: str, image: np.ndarray, method: str, target: int | None = None) -> np.ndarray:
    """Per-patch attribution with every patch present (the selector switched off): captum (integrated
    gradients / occlusion / input×gradient) of the predicted class, or attention rollout."""
    return _attribution(path, stamp(path), image, method, target)


#: How many demo-image attributions were computed (cache misses), for benchmarks/bench_app.py: a widget
#: interaction that computes them shows a progress bar, and the benchmark says so beside its time.
COMPUTED = {"demo_attributions": 0}


@st.cache_data(max_entries=2048, show_spinner=False)
def _demo_attribution(path: str, stamp_: Stamp, index: int, method: str) -> np.ndarray:
    COMPUTED["demo_attributions"] += 1
    return _attribute(path, demo_for(path).sample(index).image, method, None)


@st.cache_data(max_entries=16, show_spinner=False)
def _demo_kept(path: str, stamp_: Stamp, n: int) -> np.ndarray:
    demo = demo_for(path)
    with MODEL_LOCK:
        mean, std = normalisation(path)
        return np.stack([analysis.patch_keep_map(load(path), demo.sample(i).image, mean, std).kept
                         for i in range(n)])


def demo_agreement(path: str, method: str, n: int = AGREEMENT_IMAGES,
                   progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(kept N×H×W, attributions N×H×W) for the first ``n`` demo validation images; each image's
    attribution is cached on its own, and ``progress(done, n)`` is called as they come in."""
    kept = _demo_kept(path, stamp(path), int(n))
    attrs = []
    for i in range(int(n)):
        attrs.append(_demo_attribution(path, stamp(path), i, method))
        if progress is not None:
            progress(i + 1, int(n))
    return kept, np.stack(attrs)


def agreement_this_image(kept: np.ndarray, attr: np.ndarray) -> dict[str, float]:
    """IoU of the kept set with the top-k attributed patches, its exact chance level and the centre mask's
    IoU (the best fixed mask needs other images: ``agreement_over_demo`` adds it)."""
    k = int(kept.sum())
    return {"selector": analysis.keep_attribution_iou(kept, attr),
            "centre mask": analysis.keep_attribution_iou(analysis.centre_mask(kept.shape, k), attr),
            "chance": analysis.chance_iou(int(kept.size), k)}


def agreement_over_demo(path: str, method: str, this: dict[str, float], kept: np.ndarray, attr: np.ndarray,
                        demo_index: int | None, n: int = AGREEMENT_IMAGES,
                        progress: Callable[[int, int], None] | None = None) -> tuple[pd.DataFrame, int]:
    """The agreement over the first ``n`` demo images (cross-fitted baselines), and, added to ``this``,
    the best fixed mask's IoU for the current image, fitted on the demo images that are not it. Returns
    (per-image table, number of images the fixed mask for this image was fitted on)."""
    kept_n, attrs = demo_agreement(path, method, n, progress)
    others = [i for i in range(len(attrs)) if i != demo_index]  # never fitted on the image it is scored on
    this["best fixed mask"] = analysis.keep_attribution_iou(analysis.fixed_mask(attrs[others], int(kept.sum())),
                                                            attr)
    return analysis.agreement_over_images(kept_n, attrs), len(others)


def selector_snapshots(path: str) -> list[int]:
    """History snapshots that hold token-selector weights."""
    return analysis.selector_snapshots(load(path))


def keep_frequency_grid(freq: pd.DataFrame, cls: str) -> np.ndarray:
    return analysis.keep_frequency_grid(freq, cls).to_numpy()


@st.cache_data(max_entries=16, show_spinner="Keep maps across snapshots…")
def _keep_history(path: str, stamp_: Stamp, image: np.ndarray) -> pd.DataFrame:
    with MODEL_LOCK:
        mean, std = normalisation(path)
        return analysis.keep_map_history(load(path), image, mean, std)


def keep_history(path: str, image: np.ndarray) -> pd.DataFrame:
    return _keep_history(path, stamp(path), image)


@st.cache_data(max_entries=8, show_spinner="Keep frequency over the images…")
def _keep_frequency(path: str, stamp_: Stamp, limit: int) -> pd.DataFrame:
    data = folder_data(path)
    with MODEL_LOCK:
        return analysis.keep_frequency(load(path), data if data is not None else demo_for(path), batch_size=64,
                                       limit=limit)


def keep_frequency(path: str, limit: int = 200) -> pd.DataFrame:
    """How often each patch is kept, overall and per true class: over the validation images of the folder
    the checkpoint was trained on (classes named as the checkpoint names them) when it is still there,
    else over the demo data."""
    return _keep_frequency(path, stamp(path), int(limit))


def keep_frequency_over(path: str) -> str:
    """What ``keep_frequency`` counted over, in words (the page's heading)."""
    return "its data folder's validation images" if folder_data(path) is not None else "the demo data"


@st.cache_data(max_entries=8, show_spinner="Scoring kept patches against the objects…")
def _keep_vs_object(path: str, stamp_: Stamp, limit: int) -> pd.DataFrame:
    with MODEL_LOCK:
        return analysis.keep_vs_object(load(path), demo_for(path), batch_size=64, limit=limit)


def keep_vs_object(path: str, limit: int = 200) -> pd.DataFrame:
    return _keep_vs_object(path, stamp(path), int(limit))


@st.cache_data(max_entries=8, show_spinner=False)
def _positional_recall(img_size: int, patch_size: int, keep: int) -> float:
    train = demo_dataset(img_size, patch_size, 5 * demo_size(img_size), "train")
    return analysis.positional_prior_recall(train, demo_dataset(img_size, patch_size, demo_size(img_size)), keep)


def positional_recall(path: str, keep: int) -> float:
    """Object recall of the best fixed mask: the ``keep`` positions where objects fall most often in
    the demo training images (1000 at 32 px), scored on the demo validation images (the content-blind
    baseline)."""
    arch = inspect_doc(path)["architecture"]
    return _positional_recall(int(arch["img_size"]), int(arch["patch_size"]), int(keep))


def keep_map_gif(frames: Sequence[np.ndarray], captions: Sequence[str], key: Sequence[tuple[str, tuple]] = ()
                 ) -> bytes:
    return frames_to_gif(frames, captions, key=key)
