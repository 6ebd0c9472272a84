"""Image folders through ``timm.data``: ImageNet-style (DIR/train/<class>/*, DIR/val/<class>/*) or
plain class folders (DIR/<class>/*) split 90/10 per class by the seed. Augmentation is timm's, so it
matches what timm users expect; unreadable files fail loudly, naming the file (``data/imagefiles.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data

from ..errors import SviteError
from .bundle import DataBundle, split_key
from .imagefiles import ImageFiles, class_folders, scan_images
from .matching import Preprocess

_VAL_FRACTION = 0.1  # share of each class held out when a folder has no train/ and val/ split


class _CheckedImageDataset(torch.utils.data.Dataset):
    """Image files (optionally a subset of them) that fail loudly, naming the file, on an unreadable,
    non-regular or oversized image (see ``imagefiles``) instead of quietly using another one."""

    def __init__(self, base: ImageFiles, indices: Sequence[int] | None = None) -> None:
        self.base = base
        self.indices = list(indices) if indices is not None else None

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.base)

    def _base_index(self, i: int) -> int:
        if self.indices is None:
            return i
        return self.indices[i]

    def filename(self, i: int) -> str:
        """Absolute path of sample i (for error messages and the app)."""
        return self.base.filename(self._base_index(i))

    @property
    def targets(self) -> list[int]:
        samples = self.base.samples
        idx = self.indices if self.indices is not None else range(len(samples))
        return [int(samples[j][1]) for j in idx]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.base[self._base_index(i)]


def _natural_key(name: str) -> Any:
    from timm.utils.misc import natural_key

    return natural_key(name)


def _scan_split(path: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """(image file, class index) of path/<class>/*; returns the samples and the classes that hold images."""
    from timm.data.readers import get_img_extensions

    folders = class_folders(path, _natural_key)
    if not folders:
        raise SviteError(f"no class folders (expected {path}/<class>/<image files>)", path=path)
    exts = get_img_extensions(as_set=True)
    samples = scan_images(path, folders, exts, _natural_key)
    if not samples:
        raise SviteError(f"no images found in its class folders (looked for {' '.join(sorted(exts))})", path=path)
    present = sorted({target for _, target in samples})
    if len(present) != len(folders):  # drop empty class folders, keep indices contiguous
        remap = {old: new for new, old in enumerate(present)}
        samples = [(f, remap[t]) for f, t in samples]
    return samples, [folders[k] for k in present]


def _subset(n_total: int, n_keep: int | None, seed: int, tag: str) -> list[int] | None:
    """A seeded random subset of at most n_keep indices (sorted), or None for 'all'."""
    if n_keep is None or n_keep >= n_total:
        return None
    rng = np.random.default_rng([seed, split_key(tag)])
    return sorted(rng.choice(n_total, size=n_keep, replace=False).tolist())


def _stratified_split(root: Path, samples: list[tuple[str, int]], n_classes: int, seed: int
                      ) -> tuple[list[int], list[int]]:
    """Deterministic stratified 90/10 split, so every class with >= 2 images appears in both halves."""
    rng = np.random.default_rng([seed, split_key("folder-split")])
    targets = np.array([t for _, t in samples], dtype=np.int64)
    train_all: list[int] = []
    val_all: list[int] = []
    for c in range(n_classes):
        members = rng.permutation(np.flatnonzero(targets == c))
        n_val = (
            0 if len(members) < 2 else min(len(members) - 1, max(1, round(_VAL_FRACTION * len(members))))
        )
        val_all.extend(members[:n_val].tolist())
        train_all.extend(members[n_val:].tolist())
    if not val_all:
        raise SviteError("too few images to split into train and val (need >= 2 in some class)", path=root)
    train_all.sort()
    val_all.sort()
    return train_all, val_all


def folder_bundle(data: str | Path, img_size: int, seed: int, train_size: int | None, val_size: int | None,
                  auto_augment: str | None = None, preprocess: Preprocess | None = None,
                  whole: bool = False) -> DataBundle:
    """``--data DIR``: train_size / val_size cap the number of images (a seeded random subset);
    ``auto_augment`` is a timm policy string (e.g. DeiT's ``rand-m9-mstd0.5-inc1``).

    ``preprocess`` is how a checkpoint wants its images (``matching.checkpoint_preprocess``; default:
    ImageNet's normalisation and timm's crop). ``whole``: a folder without train/ and val/ is evaluated
    whole (every image in ``val``) instead of by the 90/10 split that training holds out, because
    evaluating a checkpoint on a folder it was not trained on has nothing to hold out."""
    root = Path(data).expanduser()
    if not root.exists():
        raise SviteError("data folder does not exist (use 'demo' for the built-in demo set)", path=root)
    if not root.is_dir():
        raise SviteError("is not a directory (expected a folder of class folders, or 'demo')", path=root)
    return _build_folder(root.resolve(), int(img_size), seed, train_size, val_size, auto_augment,
                         preprocess or Preprocess(), whole)


def _build_folder(
    root: Path, img_size: int, seed: int, train_size: int | None, val_size: int | None,
    auto_augment: str | None, preprocess: Preprocess, whole: bool,
) -> DataBundle:
    from timm.data import create_transform

    mean, std = preprocess.mean, preprocess.std
    try:
        train_tf = create_transform(img_size, is_training=True, mean=mean, std=std, auto_augment=auto_augment)
    except (AssertionError, ValueError, KeyError) as err:
        raise SviteError(f"--aa {auto_augment!r}: not a timm auto-augment policy ({err})") from None
    val_tf = create_transform(img_size, is_training=False, mean=mean, std=std, crop_pct=preprocess.crop_pct)

    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() != val_dir.is_dir():
        have, missing = ("train", "val") if train_dir.is_dir() else ("val", "train")
        raise SviteError(f"has a {have}/ folder but no {missing}/ folder (need both, or neither)", path=root)

    if train_dir.is_dir():
        train_samples, classes = _scan_split(train_dir)
        val_samples, val_classes = _scan_split(val_dir)
        if classes != val_classes:
            only_train = sorted(set(classes) - set(val_classes))[:5]
            only_val = sorted(set(val_classes) - set(classes))[:5]
            raise SviteError(
                f"train/ and val/ have different classes "
                f"(only in train: {only_train or '-'}, only in val: {only_val or '-'})"
            , path=root)
        train_base = ImageFiles(train_samples, train_tf)
        val_base = ImageFiles(val_samples, val_tf)
        train_idx = _subset(len(train_base), train_size, seed, "train-subset")
        val_idx = _subset(len(val_base), val_size, seed, "val-subset")
    else:
        samples, classes = _scan_split(root)
        train_all, val_all = (([], list(range(len(samples)))) if whole
                              else _stratified_split(root, samples, len(classes), seed))
        train_base = ImageFiles(samples, train_tf)
        val_base = ImageFiles(samples, val_tf)
        train_sub = _subset(len(train_all), train_size, seed, "train-subset")
        val_sub = _subset(len(val_all), val_size, seed, "val-subset")
        train_idx = train_all if train_sub is None else [train_all[k] for k in train_sub]
        val_idx = val_all if val_sub is None else [val_all[k] for k in val_sub]

    return DataBundle(
        train=_CheckedImageDataset(train_base, train_idx),
        val=_CheckedImageDataset(val_base, val_idx),
        num_classes=len(classes),
        class_names=list(classes),
        img_size=img_size,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        source=str(root),
    )
