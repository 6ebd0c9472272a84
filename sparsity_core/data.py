"""Datasets and loaders: a procedural demo set, ImageNet-layout folders, and resumable sampling.

The demo set ("objects on clutter") exists so that everything — training, token selection, the app —
works offline in seconds on a CPU, and so that token selectors can be scored against a known answer:
every image holds exactly one saturated shape on greyish clutter, and its patch mask is returned with it.
Real data goes through ``timm.data`` so that augmentation matches what timm users expect.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.data
from PIL import Image

# Importing this module runs sparsity_core/__init__, which makes ``import timm`` safe on CPU torch.
from sparsity_core.errors import SviteError
from sparsity_core.imagefiles import ImageFiles, class_folders, read_image_bytes, scan_images

__all__ = [
    "DEMO_MEAN",
    "DEMO_STD",
    "DataBundle",
    "DemoSample",
    "DemoShapes",
    "ResumableSampler",
    "build_data",
    "image_to_input",
    "make_loader",
    "patch_mask_from_pixels",
    "read_image_bytes",
    "sample_images",
]

DEMO_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEMO_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

_DEMO_DEFAULT_SIZES = {"train": 5000, "val": 1000}
_VAL_FRACTION = 0.1  # share of each class held out when a folder has no train/ and val/ split


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    """Reject bools, floats and out-of-range values with a message naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise SviteError(f"{name}={value!r}: must be an integer")
    if value < minimum:
        raise SviteError(f"{name}={value}: must be >= {minimum}")
    return int(value)


def _check_sizes(img_size: int, patch_size: int) -> None:
    _check_int("img_size", img_size, 1)
    _check_int("patch_size", patch_size, 1)
    if img_size % patch_size:
        raise SviteError(f"img_size={img_size} is not divisible by patch_size={patch_size}")


def patch_mask_from_pixels(pixel_mask: np.ndarray, patch_size: int, min_fraction: float = 0.1) -> np.ndarray:
    """Mark a patch as "object" when at least ``min_fraction`` of its pixels are object.

    This is the ground truth token selectors are scored against, so a patch that only grazes the
    object (a pixel or two) does not count. Accepts H×W or any batch of them (..., H, W).
    """
    mask = np.asarray(pixel_mask)
    _check_int("patch_size", patch_size, 1)
    if mask.ndim < 2:
        raise SviteError(f"pixel_mask has shape {mask.shape}: expected (..., H, W)")
    h, w = mask.shape[-2:]
    if h % patch_size or w % patch_size:
        raise SviteError(f"pixel_mask of size {h}x{w} is not divisible by patch_size={patch_size}")
    if not 0.0 < float(min_fraction) <= 1.0:
        raise SviteError(f"min_fraction={min_fraction}: must be in (0, 1]")
    blocks = mask.astype(np.float32).reshape(
        *mask.shape[:-2], h // patch_size, patch_size, w // patch_size, patch_size
    )
    # Compare counts, not float means, so that e.g. 0.1 of 16 pixels is not lost to rounding.
    counts = blocks.sum(axis=(-3, -1))
    return counts >= float(min_fraction) * patch_size * patch_size - 1e-6


# --------------------------------------------------------------------------------------------------
# Demo data: one saturated shape on greyish clutter
# --------------------------------------------------------------------------------------------------

_Shape = Callable[[np.ndarray, np.ndarray], np.ndarray]

# Each shape lives in the square |u|, |v| <= 1 (v points down). Rotations are never applied: they would
# turn a square into a diamond, a cross into an x and an hbar into a vbar.
_SHAPES: dict[str, _Shape] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    "triangle": lambda u, v: (v <= 0.85) & (np.abs(u) <= (v + 0.95) / 1.8),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.0,
    "cross": lambda u, v: (
        ((np.abs(u) <= 0.32) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 1.0))
    ),
    "xcross": lambda u, v: (
        (np.maximum(np.abs(u), np.abs(v)) <= 0.9) & ((np.abs(u - v) <= 0.45) | (np.abs(u + v) <= 0.45))
    ),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3),
    "frame": lambda u, v: (
        (np.maximum(np.abs(u), np.abs(v)) <= 0.9) & (np.maximum(np.abs(u), np.abs(v)) >= 0.45)
    ),
    "hbar": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.42),
    "vbar": lambda u, v: (np.abs(v) <= 1.0) & (np.abs(u) <= 0.42),
}

# Object half-size as a fraction of the image side: 32 px images get shapes 10-16 px across, which
# covers ~10-25% of 4x4 patches and keeps the shapes tellable apart.
_RADIUS_RANGE = (0.16, 0.25)
_N_STROKES = 3
_OBJ_SHADING = 0.5  # how much of the clutter's grain shows on the object
_BG_GREY = (0.3, 0.7)  # range of the clutter's mean grey level
_BG_BLOBS = 0.12  # amplitude of the clutter's smooth light/dark blobs


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB (all in [0, 1]); returns (..., 3)."""
    out = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h * 6.0) % 6.0
        out.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(out, axis=-1)


def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out_size, in_size) matrix that linearly interpolates a coarse grid onto pixel centres."""
    pos = (np.arange(out_size) + 0.5) / out_size * (in_size - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, in_size - 2)
    frac = pos - lo
    mat = np.zeros((out_size, in_size), dtype=np.float32)
    mat[np.arange(out_size), lo] = 1.0 - frac
    mat[np.arange(out_size), lo + 1] = frac
    return mat


def _split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


_CHUNK = 1024  # samples rendered at once: bounds the float32 temporaries to ~(1024, s, s, 3)


def _render_chunk(
    labels: np.ndarray,
    geometry: np.ndarray,
    hue: np.ndarray,
    tint: np.ndarray,
    strokes: np.ndarray,
    rngs: Sequence[np.random.Generator],
    s: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Render one chunk of samples from their parameters; returns (uint8 images, bool pixel masks)."""
    rng_lo, rng_fine, rng_chroma = rngs
    n = len(labels)

    # Object geometry in pixels; pixel centres sit at x + 0.5, and |u|,|v| <= 1 stays inside [1, s - 1].
    radius = s * (_RADIUS_RANGE[0] + (_RADIUS_RANGE[1] - _RADIUS_RANGE[0]) * geometry[:, 0])
    cx = radius + 1.0 + geometry[:, 1] * (s - 2.0 - 2.0 * radius)
    cy = radius + 1.0 + geometry[:, 2] * (s - 2.0 - 2.0 * radius)

    # Object colour: a random fully saturated, full-value hue, independent of the class. (Duller colours
    # were tried: they slow a tiny ViT's learning a lot, ~30% vs ~54% val accuracy after 8 epochs.)
    colour = _hsv_to_rgb(hue, np.ones_like(hue), np.ones_like(hue)).astype(np.float32)

    # Background: grey level + faint tint, smooth blobs, fine grain, and a few faint grey strokes.
    grey = _BG_GREY[0] + (_BG_GREY[1] - _BG_GREY[0]) * tint[:, 0]
    tints = 0.08 * (tint[:, 1:] - 0.5)
    grid = max(3, s // 8 + 1)
    interp = _bilinear_matrix(s, grid)
    coarse = rng_lo.standard_normal((n, grid, grid), dtype=np.float32)
    blobs = np.einsum("ij,njk,lk->nil", interp, coarse, interp, optimize=True)
    texture = _BG_BLOBS * blobs + 0.05 * rng_fine.standard_normal((n, s, s), dtype=np.float32)
    lum = grey[:, None, None] + texture

    px = (np.arange(s, dtype=np.float32) + 0.5)[None, None, :]
    py = (np.arange(s, dtype=np.float32) + 0.5)[None, :, None]
    for k in range(_N_STROKES):
        x0, y0, x1, y1 = (strokes[:, k, j, None, None] * s for j in range(4))
        width = (0.6 + 0.8 * strokes[:, k, 4, None, None]) * (s / 32.0)
        shade = 0.5 * (strokes[:, k, 5, None, None] - 0.5)  # +-0.25 grey
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy + 1e-6), 0.0, 1.0)
        dist2 = (px - x0 - t * dx) ** 2 + (py - y0 - t * dy) ** 2
        lum += shade * (dist2 <= width * width)

    rgb = lum[..., None] + tints[:, None, None, :]
    rgb += 0.02 * rng_chroma.standard_normal((n, s, s, 3), dtype=np.float32)

    # Draw the shapes, one class at a time (vectorised over that class's samples).
    pixel_masks = np.zeros((n, s, s), dtype=bool)
    coords = np.arange(s, dtype=np.float32) + 0.5
    for c, name in enumerate(DemoShapes.CLASSES):
        idx = np.flatnonzero(labels == c)
        if idx.size == 0:
            continue
        r = radius[idx, None, None]
        u = (coords[None, None, :] - cx[idx, None, None]) / r
        v = (coords[None, :, None] - cy[idx, None, None]) / r
        pixel_masks[idx] = _SHAPES[name](u, v)
    shading = 1.0 + _OBJ_SHADING * texture  # a little of the grain (not the strokes) shows on the object
    obj = colour[:, None, None, :] * shading[..., None]
    rgb = np.where(pixel_masks[..., None], obj, rgb)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), pixel_masks


@functools.lru_cache(maxsize=6)
def _generate_demo(split: str, size: int, img_size: int, patch_size: int, seed: int) -> dict[str, Any]:
    """Render ``size`` demo samples (vectorised, in chunks).

    Every random quantity comes from its own stream of a SeedSequence keyed by (seed, split), consumed
    in sample order (per-sample parameters in one draw, per-pixel noise chunk by chunk, which yields the
    same numbers). So sample i depends only on (seed, split, i, img_size): a smaller set is a prefix of
    a larger one, and the same scene (shape, colour, position) is drawn at every resolution. Arrays are
    returned read-only because this result is cached and shared.
    """
    n, s = size, img_size
    streams = [np.random.default_rng(c) for c in np.random.SeedSequence([seed, _split_key(split)]).spawn(8)]
    rng_label, rng_param, rng_colour, rng_tint, rng_lo, rng_fine, rng_chroma, rng_stroke = streams
    n_classes = len(DemoShapes.CLASSES)

    # Labels: each block of n_classes consecutive samples is a permutation of the classes -> balanced.
    n_blocks = -(-n // n_classes)
    labels = np.argsort(rng_label.random((n_blocks, n_classes)), axis=1).reshape(-1)[:n].astype(np.int64)
    geometry = rng_param.random((n, 3), dtype=np.float32)  # scale, x, y
    hue = rng_colour.random(n, dtype=np.float32)
    tint = rng_tint.random((n, 4), dtype=np.float32)  # grey level, RGB tint
    strokes = rng_stroke.random((n, _N_STROKES, 6), dtype=np.float32)  # ends, width, shade

    images = np.empty((n, s, s, 3), dtype=np.uint8)
    pixel_masks = np.empty((n, s, s), dtype=bool)
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(n, lo + _CHUNK))
        images[sl], pixel_masks[sl] = _render_chunk(
            labels[sl], geometry[sl], hue[sl], tint[sl], strokes[sl], (rng_lo, rng_fine, rng_chroma), s
        )

    patch_masks = patch_mask_from_pixels(pixel_masks, patch_size)
    chw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    for arr in (images, labels, pixel_masks, patch_masks):
        arr.setflags(write=False)
    return {
        "images": images,
        "labels": labels,
        "pixel_masks": pixel_masks,
        "patch_masks": patch_masks,
        "chw": chw,
    }


@dataclass(frozen=True)
class DemoSample:
    """One demo image with its ground truth, for the app and for scoring token selectors."""

    image: np.ndarray  # uint8 H×W×3
    label: int
    pixel_mask: np.ndarray  # bool H×W, True where the object is
    patch_mask: np.ndarray  # bool (H/p)×(W/p), True for patches holding the object


class DemoShapes(torch.utils.data.Dataset):
    """Procedural 'objects on clutter' demo dataset, deterministic by (seed, split, index).

    The class is the *shape*; colour, position, scale and clutter are random and independent of it,
    so a model has to look at the object — and the object's patches are known (``patch_masks``).
    Generated arrays are cached per (split, size, img_size, patch_size, seed) and are read-only.
    """

    CLASSES: tuple[str, ...] = tuple(_SHAPES)

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        img_size: int = 32,
        patch_size: int = 4,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        if split not in _DEMO_DEFAULT_SIZES:
            raise SviteError(f"demo split {split!r}: must be one of {sorted(_DEMO_DEFAULT_SIZES)}")
        size = _DEMO_DEFAULT_SIZES[split] if size is None else _check_int("size", size, 1)
        _check_sizes(img_size, patch_size)
        seed = _check_int("seed", seed, 0)
        self.split = split
        self.img_size = int(img_size)
        self.patch_size = int(patch_size)
        self.seed = seed
        self.normalize = bool(normalize)
        self.mean = DEMO_MEAN
        self.std = DEMO_STD
        arrays = _generate_demo(split, size, self.img_size, self.patch_size, seed)
        self.images: np.ndarray = arrays["images"]
        self.labels: np.ndarray = arrays["labels"]
        self.pixel_masks: np.ndarray = arrays["pixel_masks"]
        self.patch_masks: np.ndarray = arrays["patch_masks"]
        self._chw: torch.Tensor = arrays["chw"]
        self._mean_t = torch.tensor(DEMO_MEAN, dtype=torch.float32).view(3, 1, 1)
        self._std_t = torch.tensor(DEMO_STD, dtype=torch.float32).view(3, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    @property
    def class_names(self) -> list[str]:
        return list(self.CLASSES)

    def __len__(self) -> int:
        return len(self.labels)

    def _index(self, i: int) -> int:
        n = len(self.labels)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for DemoShapes of length {n}")
        return int(i) % n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = self._index(i)
        x = self._chw[i].to(torch.float32).div_(255.0)
        if self.normalize:
            x = x.sub_(self._mean_t).div_(self._std_t)
        return x, int(self.labels[i])

    def sample(self, i: int) -> DemoSample:
        """The raw image with its label and masks (what the app shows and selectors are scored on)."""
        i = self._index(i)
        return DemoSample(
            image=self.images[i],
            label=int(self.labels[i]),
            pixel_mask=self.pixel_masks[i],
            patch_mask=self.patch_masks[i],
        )


# --------------------------------------------------------------------------------------------------
# ImageNet-layout folders through timm.data
# --------------------------------------------------------------------------------------------------


@dataclass
class DataBundle:
    """Everything a training run needs to know about its data, in one place."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    num_classes: int
    class_names: list[str]
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str  # "demo" or the (resolved) ImageFolder path


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
        raise SviteError(f"{path}: no class folders (expected {path}/<class>/<image files>)")
    exts = get_img_extensions(as_set=True)
    samples = scan_images(path, folders, exts, _natural_key)
    if not samples:
        raise SviteError(f"{path}: no images found in its class folders (looked for {' '.join(sorted(exts))})")
    present = sorted({target for _, target in samples})
    if len(present) != len(folders):  # drop empty class folders, keep indices contiguous
        remap = {old: new for new, old in enumerate(present)}
        samples = [(f, remap[t]) for f, t in samples]
    return samples, [folders[k] for k in present]


def _subset(n_total: int, n_keep: int | None, seed: int, tag: str) -> list[int] | None:
    """A seeded random subset of at most n_keep indices (sorted), or None for 'all'."""
    if n_keep is None or n_keep >= n_total:
        return None
    rng = np.random.default_rng([seed, _split_key(tag)])
    return sorted(rng.choice(n_total, size=n_keep, replace=False).tolist())


def _build_folder(
    root: Path, img_size: int, seed: int, train_size: int | None, val_size: int | None,
    auto_augment: str | None = None,
) -> DataBundle:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

    mean = tuple(float(m) for m in IMAGENET_DEFAULT_MEAN)
    std = tuple(float(s) for s in IMAGENET_DEFAULT_STD)
    try:
        train_tf = create_transform(img_size, is_training=True, mean=mean, std=std, auto_augment=auto_augment)
    except (AssertionError, ValueError, KeyError) as err:
        raise SviteError(f"--aa {auto_augment!r}: not a timm auto-augment policy ({err})") from None
    val_tf = create_transform(img_size, is_training=False, mean=mean, std=std)

    train_dir, val_dir = root / "train", root / "val"
    if train_dir.is_dir() != val_dir.is_dir():
        have, missing = ("train", "val") if train_dir.is_dir() else ("val", "train")
        raise SviteError(f"{root}: has a {have}/ folder but no {missing}/ folder (need both, or neither)")

    if train_dir.is_dir():
        train_samples, classes = _scan_split(train_dir)
        val_samples, val_classes = _scan_split(val_dir)
        if classes != val_classes:
            only_train = sorted(set(classes) - set(val_classes))[:5]
            only_val = sorted(set(val_classes) - set(classes))[:5]
            raise SviteError(
                f"{root}: train/ and val/ have different classes "
                f"(only in train: {only_train or '-'}, only in val: {only_val or '-'})"
            )
        train_base = ImageFiles(train_samples, train_tf)
        val_base = ImageFiles(val_samples, val_tf)
        train_idx = _subset(len(train_base), train_size, seed, "train-subset")
        val_idx = _subset(len(val_base), val_size, seed, "val-subset")
    else:
        samples, classes = _scan_split(root)
        # Deterministic stratified 90/10 split, so every class with >= 2 images appears in both halves.
        rng = np.random.default_rng([seed, _split_key("folder-split")])
        targets = np.array([t for _, t in samples], dtype=np.int64)
        train_all: list[int] = []
        val_all: list[int] = []
        for c in range(len(classes)):
            members = rng.permutation(np.flatnonzero(targets == c))
            n_val = (
                0 if len(members) < 2 else min(len(members) - 1, max(1, round(_VAL_FRACTION * len(members))))
            )
            val_all.extend(members[:n_val].tolist())
            train_all.extend(members[n_val:].tolist())
        if not val_all:
            raise SviteError(f"{root}: too few images to split into train and val (need >= 2 in some class)")
        train_all.sort()
        val_all.sort()
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


def build_data(
    data: str,
    img_size: int = 32,
    patch_size: int = 4,
    seed: int = 0,
    train_size: int | None = None,
    val_size: int | None = None,
    auto_augment: str | None = None,
) -> DataBundle:
    """Turn the user's ``--data`` value ("demo" or a folder) into train/val datasets and their metadata.

    A folder is either ImageNet-style (DIR/train/<class>/*, DIR/val/<class>/*) or plain class folders
    (DIR/<class>/*), which are split 90/10 per class by ``seed``. For folders, train_size/val_size cap
    the number of images (a seeded random subset); for the demo they are the number generated.
    ``auto_augment`` is a timm policy string (e.g. DeiT's ``rand-m9-mstd0.5-inc1``) for folder data.
    """
    _check_sizes(img_size, patch_size)
    seed = _check_int("seed", seed, 0)
    if train_size is not None:
        train_size = _check_int("train_size", train_size, 1)
    if val_size is not None:
        val_size = _check_int("val_size", val_size, 1)
    if not isinstance(data, str | Path) or not str(data):
        raise SviteError(f"data={data!r}: expected 'demo' or a folder path")
    if str(data) == "demo":
        train = DemoShapes("train", train_size, img_size, patch_size, seed)
        val = DemoShapes("val", val_size, img_size, patch_size, seed)
        return DataBundle(
            train=train,
            val=val,
            num_classes=train.num_classes,
            class_names=list(DemoShapes.CLASSES),
            img_size=int(img_size),
            mean=DEMO_MEAN,
            std=DEMO_STD,
            source="demo",
        )
    root = Path(data).expanduser()
    if not root.exists():
        raise SviteError(f"{root}: data folder does not exist (use 'demo' for the built-in demo set)")
    if not root.is_dir():
        raise SviteError(f"{root}: is not a directory (expected a folder of class folders, or 'demo')")
    return _build_folder(root.resolve(), int(img_size), seed, train_size, val_size, auto_augment)


# --------------------------------------------------------------------------------------------------
# Sampling and loading
# --------------------------------------------------------------------------------------------------


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Wraps torch.utils.data.DistributedSampler (works with num_replicas=1, rank=0 without an
    initialised process group) so that a run resumed in the middle of an epoch sees exactly the
    batches an uninterrupted run would: set_epoch(e) reseeds the permutation, skip(n_samples) drops the
    first n samples of this rank's order for the current epoch only (reset by the next set_epoch)."""

    def __init__(
        self,
        dataset_len: int,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        dataset_len = _check_int("dataset_len", dataset_len, 0)
        world_size = _check_int("world_size", world_size, 1)
        rank = _check_int("rank", rank, 0)
        if rank >= world_size:
            raise SviteError(f"rank={rank}: must be < world_size={world_size}")
        seed = _check_int("seed", seed, 0)
        self._inner = torch.utils.data.DistributedSampler(
            range(dataset_len),  # type: ignore[arg-type]  (only len() is used)
            num_replicas=world_size,
            rank=rank,
            shuffle=bool(shuffle),
            seed=seed,
            drop_last=bool(drop_last),
        )
        self._skip = 0

    @property
    def epoch(self) -> int:
        return int(self._inner.epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank sees in a full epoch (before any skip)."""
        return int(self._inner.num_samples)

    @property
    def skipped(self) -> int:
        return self._skip

    def set_epoch(self, epoch: int) -> None:
        """Reseed the order for ``epoch`` and forget any skip from the previous epoch."""
        self._inner.set_epoch(_check_int("epoch", epoch, 0))
        self._skip = 0

    def skip(self, n_samples: int) -> None:
        """Resume mid-epoch: the next iteration starts after the first n_samples of this epoch's order."""
        n_samples = _check_int("n_samples", n_samples, 0)
        if n_samples > self.num_samples:
            raise SviteError(
                f"cannot skip {n_samples} samples: this rank only has {self.num_samples} per epoch"
            )
        self._skip = n_samples

    def __iter__(self):  # type: ignore[override]
        order = list(iter(self._inner))
        return iter(order[self._skip :])

    def __len__(self) -> int:
        return self.num_samples - self._skip


def make_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader whose order depends only on (seed, epoch), so runs can be resumed batch-exactly.

    The sampler is reachable as ``loader.sampler``: call ``set_epoch`` every epoch and ``skip`` when
    resuming. ``drop_last`` applies both to the rank split and to the final short batch.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    num_workers = _check_int("num_workers", num_workers, 0)
    sampler = ResumableSampler(len(dataset), shuffle, seed, rank, world_size, drop_last)  # type: ignore[arg-type]
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        # Its own generator: otherwise every new iterator draws its base seed from the global RNG,
        # and a run resumed mid-epoch would see different dropout/Gumbel noise than an uninterrupted one.
        generator=torch.Generator().manual_seed(seed),
    )


# --------------------------------------------------------------------------------------------------
# Photos for the app
# --------------------------------------------------------------------------------------------------

# Only images shipped inside the scikit-image wheel: others (eagle, lily, ...) need a pooch download.
# Read straight from the wheel's data folder with Pillow: importing skimage.data takes a second or more
# on a busy machine, and the app shows these photos on a click; skimage.data is the fallback.
_SKIMAGE_PHOTOS: dict[str, tuple[str, Callable[[Any], np.ndarray]]] = {
    "astronaut": ("astronaut.png", lambda d: d.astronaut()),
    "chelsea": ("chelsea.png", lambda d: d.chelsea()),
    "coffee": ("coffee.png", lambda d: d.coffee()),
    "rocket": ("rocket.jpg", lambda d: d.rocket()),
    "motorcycle": ("motorcycle_left.png", lambda d: d.stereo_motorcycle()[0]),
    "camera": ("camera.png", lambda d: d.camera()),
}


def _skimage_data_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(roots[0]) / "data" if roots else None


def _read_photo(name: str) -> np.ndarray:
    file, fallback = _SKIMAGE_PHOTOS[name]
    folder = _skimage_data_dir()
    if folder is not None and (folder / file).is_file():
        with Image.open(folder / file) as im:
            return np.asarray(im.convert("RGB"))
    import skimage.data

    return np.asarray(fallback(skimage.data))


@functools.cache
def sample_images() -> dict[str, np.ndarray]:
    """A few natural photos that work offline (from scikit-image's bundled data), as uint8 H×W×3 RGB.

    An image that fails to load (e.g. a scikit-image build without its data files) is left out rather
    than breaking the app; an error is raised only if none load. The arrays are shared: read-only.
    """
    out: dict[str, np.ndarray] = {}
    for name in _SKIMAGE_PHOTOS:
        try:
            img = _read_photo(name)
        except Exception:  # a missing optional photo must not break the app
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = np.ascontiguousarray(img[..., :3].astype(np.uint8))
        img.setflags(write=False)
        out[name] = img
    if not out:
        raise SviteError("no sample photos available: scikit-image's bundled data files are missing")
    return out


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise SviteError(f"image of shape {arr.shape}: expected H×W, H×W×3 or H×W×4")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise SviteError("image contains NaN or infinite values")
        scale = 255.0 if arr.max() <= 1.0 else 1.0  # floats in [0, 1] or already in [0, 255]
        arr = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    elif arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer):
            raise SviteError(f"image of dtype {arr.dtype}: expected uint8 (or float in [0, 1])")
        # 16-bit data is scaled from its 0-65535 range (clipping at 255 would turn it white); a wider
        # integer type holding 8- or 16-bit values is read by the values' range
        hi = int(arr.max(initial=0))
        full = 255 if hi <= 255 and arr.dtype != np.uint16 else 65535 if hi <= 65535 else int(np.iinfo(arr.dtype).max)
        arr = np.clip(np.rint(arr.astype(np.float64) * (255.0 / full)), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:  # composite on white, so transparent areas do not turn black
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        rgb = arr[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return arr


def fit_image(image: np.ndarray, img_size: int) -> np.ndarray:
    """Any photo -> the uint8 img_size×img_size×3 RGB the model sees: centre-cropped to a square (the
    longer side's excess cut off, half on each side), then resized with bicubic interpolation.

    ``image_to_input`` starts with exactly this, so fitting first and passing the result gives the same
    input (the app fits a large photo once, then hashes a small array for its caches)."""
    img_size = _check_int("img_size", img_size, 1)
    rgb = _to_rgb_uint8(image)
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    pil = Image.fromarray(np.ascontiguousarray(rgb[top : top + side, left : left + side]))
    if side != img_size:
        pil = pil.resize((img_size, img_size), Image.Resampling.BICUBIC)
    return np.asarray(pil, dtype=np.uint8)


def image_to_input(
    image: np.ndarray,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Turn any photo into a model input: centre-crop to a square, resize, normalise -> 1×3×S×S float32.

    Accepts uint8 H×W×3, H×W (grey) or H×W×4 (RGBA, composited on white); uint16 is scaled from
    0-65535, floats in [0, 1] also work.
    """
    if len(mean) != 3 or len(std) != 3 or any(float(s) <= 0 for s in std):
        raise SviteError(f"mean={tuple(mean)}, std={tuple(std)}: need 3 values each, std > 0")
    fitted = fit_image(image, img_size)
    x = torch.from_numpy(np.array(fitted, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32).view(3, 1, 1)
    return ((x - m) / s).unsqueeze(0).contiguous()
