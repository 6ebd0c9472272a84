"""Any photo -> what the model sees: RGB uint8 at the model's size, then a normalised input tensor
(the patch maps of ``analysis.patches`` and the app's uploads go through here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import SviteError
from .bundle import check_int


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
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
    img_size = check_int("img_size", img_size, 1)
    rgb = to_rgb_uint8(image)
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
