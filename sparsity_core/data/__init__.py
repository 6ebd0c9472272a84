"""Datasets and loaders, one module a concern:

* ``demo`` -- the procedural demo set ("objects on clutter", with every object's patch mask);
* ``folder`` -- ImageNet-layout folders through ``timm.data``;
* ``loader`` -- resumable sampling (batch-exact resume, DDP ranks);
* ``images`` -- any photo -> a model input;
* ``bundle`` -- what a run gets from its data, and the argument checks the others share;
* ``matching`` -- where data meets a checkpoint: classes matched by name, the checkpoint's preprocessing.

:func:`build_data` turns the user's ``--data`` value into a :class:`DataBundle`.
"""

from __future__ import annotations

from pathlib import Path

# Importing this package runs sparsity_core/__init__, which makes ``import timm`` safe on CPU torch.
from ..errors import SviteError
from .bundle import DataBundle, check_int, check_sizes
from .demo import DEMO_MEAN, DEMO_STD, DemoSample, DemoShapes, demo_bundle, patch_mask_from_pixels
from .folder import folder_bundle
from .images import fit_image, image_to_input
from .loader import ResumableSampler, make_loader
from .matching import (
    CheckpointClasses,
    ClassMatch,
    MatchedDataset,
    Preprocess,
    checkpoint_classes,
    checkpoint_preprocess,
    match_classes,
)

__all__ = [
    "DEMO_MEAN",
    "DEMO_STD",
    "CheckpointClasses",
    "ClassMatch",
    "DataBundle",
    "DemoSample",
    "DemoShapes",
    "MatchedDataset",
    "Preprocess",
    "ResumableSampler",
    "build_data",
    "checkpoint_classes",
    "checkpoint_preprocess",
    "fit_image",
    "image_to_input",
    "make_loader",
    "match_classes",
    "patch_mask_from_pixels",
]


def build_data(
    data: str,
    img_size: int = 32,
    patch_size: int = 4,
    seed: int = 0,
    train_size: int | None = None,
    val_size: int | None = None,
    auto_augment: str | None = None,
    preprocess: Preprocess | None = None,
    whole: bool = False,
) -> DataBundle:
    """Turn the user's ``--data`` value ("demo" or a folder) into train/val datasets and their metadata.

    A folder is either ImageNet-style (DIR/train/<class>/*, DIR/val/<class>/*) or plain class folders
    (DIR/<class>/*), which are split 90/10 per class by ``seed``. For folders, train_size/val_size cap
    the number of images (a seeded random subset); for the demo they are the number generated.
    ``auto_augment`` is a timm policy string (e.g. DeiT's ``rand-m9-mstd0.5-inc1``) for folder data;
    ``preprocess`` and ``whole`` are how an evaluation sees a folder (``folder.folder_bundle``).
    """
    check_sizes(img_size, patch_size)
    seed = check_int("seed", seed, 0)
    if train_size is not None:
        train_size = check_int("train_size", train_size, 1)
    if val_size is not None:
        val_size = check_int("val_size", val_size, 1)
    if not isinstance(data, str | Path) or not str(data):
        raise SviteError(f"data={data!r}: expected 'demo' or a folder path")
    if str(data) == "demo":
        return demo_bundle(img_size, patch_size, seed, train_size, val_size)
    return folder_bundle(data, img_size, seed, train_size, val_size, auto_augment, preprocess, whole)
