"""Animated GIFs of mask evolution and keep maps, drawn with PIL from numpy frames (no browser).

Made to be projected: the frame is scaled to ``size`` px (640 by default), captions use a 20 px font,
and every GIF carries its colour key (swatches such as kept/pruned, or the ramp with its end values),
so a frame means something without the page around it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# A perceptually ordered dark-to-light ramp (viridis anchors) for single-channel frames in [0, 1].
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
FONT_PX = 20
CAPTION_HEIGHT = FONT_PX + 14
KEY_HEIGHT = FONT_PX + 24
#: The key of a mask frame: 0 = pruned (dark end of the ramp), 1 = kept (light end).
MASK_KEY: tuple[tuple[str, tuple[int, int, int]], ...] = (("kept", (253, 231, 37)), ("pruned", (68, 1, 84)))

Key = Sequence[tuple[str, tuple[int, int, int]]]


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


def _font(px: int = FONT_PX) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError):  # a Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _draw_key(draw: ImageDraw.ImageDraw, y: int, width: int, key: Key | str, font) -> None:
    """Swatches with labels, or (``key`` = a label such as "tile density") the ramp from 0 to 1."""
    x, box = 6, FONT_PX
    if isinstance(key, str):
        draw.text((x, y + 4), f"{key}: 0", fill=(0, 0, 0), font=font)
        x0 = x + int(draw.textlength(f"{key}: 0", font=font)) + 8
        x1 = max(x0 + 40, width - 30)
        ramp = colorize(np.linspace(0, 1, x1 - x0)[None, :])[0]
        for i, c in enumerate(ramp):
            draw.line([(x0 + i, y + 4), (x0 + i, y + 4 + box)], fill=tuple(int(v) for v in c))
        draw.text((x1 + 4, y + 4), "1", fill=(0, 0, 0), font=font)
        return
    for label, color in key:
        draw.rectangle([x, y + 4, x + box, y + 4 + box], fill=color, outline=(0, 0, 0))
        draw.text((x + box + 6, y + 4), label, fill=(0, 0, 0), font=font)
        x += box + 18 + int(draw.textlength(label, font=font))


def frames_to_gif(frames: Sequence[np.ndarray], captions: Sequence[str] | None = None, size: int = 640,
                  duration_ms: int = 700, key: Key | str = MASK_KEY) -> bytes:
    """One looping GIF: each frame scaled (nearest, aspect kept) to fit ``size`` px, its caption above and
    the colour key below (``key``: swatches, a ramp label, or empty for none)."""
    if not frames:
        raise ValueError("no frames to animate")
    captions = list(captions) if captions is not None else [""] * len(frames)
    if len(captions) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(captions)} captions")
    font = _font()
    key_h = KEY_HEIGHT if key else 0
    images = []
    for frame, caption in zip(frames, captions, strict=True):
        rgb = colorize(frame)
        h, w = rgb.shape[:2]
        scale = max(1, size // max(h, w)) if max(h, w) < size else size / max(h, w)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        body = Image.fromarray(rgb).resize(new, Image.Resampling.NEAREST)
        width = max(new[0], size)
        canvas = Image.new("RGB", (width, new[1] + CAPTION_HEIGHT + key_h), (255, 255, 255))
        canvas.paste(body, (0, CAPTION_HEIGHT))
        draw = ImageDraw.Draw(canvas)
        draw.text((6, 6), caption, fill=(0, 0, 0), font=font)
        if key:
            _draw_key(draw, CAPTION_HEIGHT + new[1], width, key, font)
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
