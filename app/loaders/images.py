"""Images a user brings to the Patch maps page: decoded to 8-bit RGB the way the file means it, with
a note on every conversion, and a sentence on how the photo is fitted to the model's input.

Pillow's own ``convert("RGB")`` is not enough: a 16-bit grayscale PNG (mode ``I;16``/``I``) is
clipped at 255 and turns almost white, and an alpha channel is dropped, so transparent areas show
whatever colour the pixels happen to hold. Here 16-bit data is scaled from its full 0-65535 range,
alpha is composited on a stated background, palettes are expanded (with their transparency), CMYK
goes through the embedded ICC profile when there is one, and the EXIF orientation is applied.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sparsity_core.data import fit_image
from sparsity_core.data.imagefiles import MAX_PIXELS
from sparsity_core.errors import SviteError

#: Transparent areas are composited on this colour (white, like a page or a browser).
BACKGROUND = (255, 255, 255)
BACKGROUND_NAME = "white"
#: Larger photos are shrunk (aspect kept) on decoding: the model sees at most a few hundred pixels, and a
#: smaller array keeps the cache keys (content hashes) cheap.
MAX_SIDE = 1024


@dataclass(frozen=True)
class DecodedImage:
    """An image as uint8 H×W×3 RGB, what it was, and what was done to it (sentences)."""

    rgb: np.ndarray
    original_size: tuple[int, int]  # (width, height) in the file
    mode: str  # Pillow's mode in the file, e.g. "I;16", "P", "CMYK", "RGBA"
    notes: list[str] = field(default_factory=list)


def _from_16bit(img: Image.Image, notes: list[str]) -> Image.Image:
    """Grey 16/32-bit integer or float data -> 8-bit grey, scaled from the range the data type has."""
    arr = np.asarray(img)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if lo >= 0.0 and hi <= 1.0:
            out = arr * 255.0
            notes.append("Floating-point grey values in [0, 1] were scaled to 0-255.")
        else:
            out = (arr - lo) / (hi - lo or 1.0) * 255.0
            notes.append(f"Floating-point grey values ({lo:.4g} to {hi:.4g}) were stretched to 0-255.")
    else:
        hi = int(arr.max()) if arr.size else 0
        if img.mode.startswith("I;16") or hi > 255:
            full = 65535 if hi <= 65535 else hi
            out = arr.astype(np.float64) * 255.0 / full
            notes.append(f"16-bit grey values were scaled from 0-{full} to 0-255 (brightest pixel here: {hi}).")
        else:
            out = arr.astype(np.float64)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def _composite(img: Image.Image, notes: list[str]) -> Image.Image:
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    if alpha.min() < 255:
        share = float((alpha < 255).mean())
        notes.append(f"Transparent areas ({share:.0%} of the pixels) were composited on {BACKGROUND_NAME}.")
    background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _cmyk(img: Image.Image, notes: list[str]) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            notes.append("CMYK was converted to sRGB through the file's embedded ICC profile.")
            return out
        except Exception:  # a broken profile: fall back to the plain conversion, and say so
            pass
    notes.append("CMYK was converted to RGB without colour management (the file has no usable ICC profile), "
                 "so colours may be off.")
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any Pillow image -> 8-bit RGB, with a note for every conversion that changes what is seen."""
    notes: list[str] = []
    mode = img.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _from_16bit(img, notes).convert("RGB"), notes
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        notes.append("The palette image was expanded to RGB.")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite(img, notes), notes
    if mode == "CMYK":
        return _cmyk(img, notes), notes
    if mode in ("1", "L"):
        if mode == "1":
            notes.append("The black-and-white image was read as grey.")
        return img.convert("RGB"), notes
    if mode != "RGB":
        notes.append(f"Pillow mode {mode} was converted to RGB.")
    return img.convert("RGB"), notes


def _bomb(name: str, pixels: int | None) -> SviteError:
    size = f"{pixels:,} pixels" if pixels else "too many pixels"
    return SviteError(f"{name}: refused: the image declares {size}, over the {MAX_PIXELS:,}-pixel limit "
                      "(a decompression bomb?)")


def decode_image(data: bytes, name: str = "image") -> DecodedImage:
    """Decode an uploaded file; a file that is not an image, or a decompression bomb (a small file that
    declares a gigapixel image: refused from its header, before any pixel is decoded, by the same rule as
    ``sparsity_core.data.imagefiles``), raises a one-line SviteError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.size[0] * img.size[1] > MAX_PIXELS:
                raise _bomb(name, img.size[0] * img.size[1])
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise _bomb(name, int(found.group(1)) if found else None) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise SviteError(f"{name}: not a readable image (the file is not an image Pillow can read).") from None
    size, mode = img.size, img.mode
    notes: list[str] = []
    if getattr(img, "n_frames", 1) > 1:
        notes.append(f"Only the first of its {img.n_frames} frames is used.")
    oriented = ImageOps.exif_transpose(img)
    if oriented is not None and oriented.size != img.size:
        notes.append("The EXIF orientation was applied (the photo was rotated).")
    img = oriented if oriented is not None else img
    rgb, more = to_rgb(img)
    notes += more
    if max(rgb.size) > MAX_SIDE:
        rgb = ImageOps.contain(rgb, (MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return DecodedImage(np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)), size, mode, notes)


def fit_description(shape: tuple[int, ...], img_size: int, patch_size: int) -> str:
    """How an image of ``shape`` (H×W[×C]) is fitted to the model's square input: one sentence."""
    h, w = int(shape[0]), int(shape[1])
    side = min(h, w)
    grid = img_size // patch_size
    crop = (f"centre-cropped to {side}×{side} ({max(h, w) - side} px of its longer side cut off) and "
            if h != w else "")
    scale = f"resized to {img_size}×{img_size} (bicubic)" if side != img_size else "used at its own size"
    return (f"Model input: {img_size}×{img_size} px, {grid}×{grid} patches of {patch_size} px. This image "
            f"({w}×{h} px) was {crop}{scale}.")


def fit(image: np.ndarray, img_size: int) -> np.ndarray:
    """The image fitted to the model's input (``fit_description`` says how): the exact pixels the model's
    own preprocessing would produce, so everything downstream sees the same input, and the caches hash
    a 32×32 (or 224×224) array instead of a 12-megapixel photo."""
    return fit_image(image, img_size)
