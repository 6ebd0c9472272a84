"""The procedural demo set, "objects on clutter".

It exists so that everything -- training, token selection, the app -- works offline in seconds on a
CPU, and so that token selectors can be scored against a known answer: every image holds exactly one
saturated shape on greyish clutter, and its patch mask is returned with it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

from ..errors import SviteError
from .bundle import DataBundle, check_int, check_sizes, split_key

DEMO_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
DEMO_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

_DEMO_DEFAULT_SIZES = {"train": 5000, "val": 1000}


def patch_mask_from_pixels(pixel_mask: np.ndarray, patch_size: int, min_fraction: float = 0.1) -> np.ndarray:
    """Mark a patch as "object" when at least ``min_fraction`` of its pixels are object.

    This is the ground truth token selectors are scored against, so a patch that only grazes the
    object (a pixel or two) does not count. Accepts H×W or any batch of them (..., H, W).
    """
    mask = np.asarray(pixel_mask)
    check_int("patch_size", patch_size, 1)
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
    streams = [np.random.default_rng(c) for c in np.random.SeedSequence([seed, split_key(split)]).spawn(8)]
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
        size = _DEMO_DEFAULT_SIZES[split] if size is None else check_int("size", size, 1)
        check_sizes(img_size, patch_size)
        seed = check_int("seed", seed, 0)
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


def demo_bundle(img_size: int, patch_size: int, seed: int, train_size: int | None, val_size: int | None
                ) -> DataBundle:
    """``--data demo``: ``train_size`` / ``val_size`` images generated (5000 / 1000 by default)."""
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
