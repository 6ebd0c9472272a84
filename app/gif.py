"""Animated GIFs of mask evolution and keep maps, drawn with PIL from numpy frames (no browser)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

# A perceptually ordered dark-to-light ramp (viridis anchors) for single-channel frames in [0, 1].
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
CAPTION_HEIGHT = 18


def colorize(frame: np.ndarray) -> np.ndarray:
    """H×W floats in [0, 1] -> H×W×3 uint8 (viridis-like); H×W×3 uint8 passes through."""
    arr = np.asarray(frame)
    if arr.ndim == 3 and arr.shape[2] == 3:
        return arr.astype(np.uint8)
    if arr.ndim != 2:
        raise ValueError(f"frame of shape {arr.shape}: expected H×W or H×W×3")
    v = np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return np.rint(_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).astype(np.uint8)


def frames_to_gif(frames: Sequence[np.ndarray], captions: Sequence[str] | None = None, size: int = 320,
                  duration_ms: int = 600) -> bytes:
    """One looping GIF: each frame scaled (nearest, aspect kept) to fit ``size`` px, with its caption."""
    if not frames:
        raise ValueError("no frames to animate")
    captions = list(captions) if captions is not None else [""] * len(frames)
    if len(captions) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(captions)} captions")
    images = []
    for frame, caption in zip(frames, captions, strict=True):
        rgb = colorize(frame)
        h, w = rgb.shape[:2]
        scale = max(1, size // max(h, w)) if max(h, w) < size else size / max(h, w)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        body = Image.fromarray(rgb).resize(new, Image.Resampling.NEAREST)
        canvas = Image.new("RGB", (max(new[0], 200), new[1] + CAPTION_HEIGHT), (255, 255, 255))
        canvas.paste(body, (0, CAPTION_HEIGHT))
        ImageDraw.Draw(canvas).text((3, 3), caption, fill=(0, 0, 0))
        images.append(canvas)
    width = max(im.width for im in images)
    height = max(im.height for im in images)
    padded = []
    for im in images:
        if im.size != (width, height):
            bg = Image.new("RGB", (width, height), (255, 255, 255))
            bg.paste(im, (0, 0))
            im = bg
        padded.append(im.convert("P", palette=Image.Palette.ADAPTIVE, colors=255))
    buf = io.BytesIO()
    padded[0].save(buf, format="GIF", save_all=True, append_images=padded[1:], duration=duration_ms, loop=0,
                   disposal=2)
    return buf.getvalue()
