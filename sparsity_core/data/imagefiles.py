"""Image files a user points us at (an ImageFolder tree, an upload): read exactly, or refused with one
sentence naming the file.

Each rule answers something that once hung or crashed a run or the app:

* A FIFO (or a device) named ``*.jpg`` blocks ``open()`` forever: only regular files are opened, and
  they are opened with ``O_NONBLOCK`` so the check itself cannot block.
* A symlink loop (``ln -s . a``) made timm's ``os.walk(followlinks=True)`` walk forever. We list each
  class folder's own files (the only ones timm's class map kept anyway) and refuse a directory
  symlink that leads back to the folder or above it.
* A decompression bomb (a small file declaring a gigapixel image) raises PIL's
  ``DecompressionBombError``, which is neither an ``OSError`` nor a ``ValueError``; images over
  PIL's ``MAX_IMAGE_PIXELS`` are refused before any pixel is decoded.
* Decoding errors are ours to report, once: timm's dataset logged a warning and silently used the
  next image instead.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch.utils.data
from PIL import Image

from ..errors import SviteError

MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def _kind(path: str | Path) -> str:
    """What a non-regular path is, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return {40: "a symlink loop", 2: "a broken symlink"}.get(err.errno or 0, err.strerror or "unreadable")
    for test, word in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return word
    return "not a regular file"


def decode_image(source: BinaryIO, name: str) -> Image.Image:
    """Decode ``source`` to an RGB PIL image, refusing decompression bombs before decoding pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over MAX_PIXELS: refuse
            with Image.open(source) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:  # PIL checks on open; this also covers a raised MAX_IMAGE_PIXELS
                    raise Image.DecompressionBombError(f"Image size ({w * h} pixels) exceeds limit")
                return im.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise SviteError(f"{name}: refused: the image declares {size}, over the {MAX_PIXELS:,}-pixel limit "
                         "(a decompression bomb?)") from None
    except Exception as err:  # PIL's decoders raise many types for bad bytes; all mean "cannot read"
        reason = str(err).replace(f"'{name}'", "").replace(name, "").strip() or type(err).__name__
        raise SviteError(f"{name}: cannot read image ({reason.splitlines()[0][:160]})") from None


def open_image(path: str | Path) -> Image.Image:
    """A regular image file as an RGB PIL image (FIFOs, devices and bombs refused, never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise SviteError(f"cannot open image ({err.strerror})", path=path) from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SviteError(f"not a regular file ({_kind(path)}); refused", path=path)
        return decode_image(fh, str(path))


def read_image_bytes(data: bytes, name: str) -> np.ndarray:
    """An uploaded image as uint8 H x W x 3 RGB (the app's patch-maps upload)."""
    return np.asarray(decode_image(io.BytesIO(data), name))


# ----------------------------------------------------------------------------------------------
# ImageFolder trees
def _refuse_loop(link: Path, inside: Iterable[Path]) -> None:
    """Refuse a directory symlink that leads back to one of ``inside`` (the folder or an ancestor)."""
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's "Symlink loop"
        raise SviteError("symlink loop; remove it", path=link) from None
    if any(target == p for p in inside):
        raise SviteError(f"symlink loop (leads back to {target}); remove it", path=link)


def class_folders(root: Path, sort_key: Callable[[str], Any]) -> list[str]:
    """Names of ``root``'s class folders (hidden ones skipped), symlink loops refused."""
    real = root.resolve()
    names = []
    for entry in os.scandir(root):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            _refuse_loop(Path(entry.path), [real, *real.parents])
        try:
            is_dir = entry.is_dir()
        except OSError:
            continue
        if is_dir:
            names.append(entry.name)
    return sorted(names, key=sort_key)


def scan_images(root: Path, classes: list[str], extensions: Iterable[str],
                sort_key: Callable[[str], Any]) -> list[tuple[str, int]]:
    """(file, class index) for every image file directly inside ``root/<class>/``, sorted by path.

    Sub-folders are not read (timm's class map dropped their files too), so nothing here can walk
    forever; a directory symlink pointing back up is still refused, and so is a non-regular file
    (FIFO, device, broken link) with an image extension."""
    exts = {e.lower() for e in extensions}
    real_root = root.resolve()
    samples = []
    for idx, cls in enumerate(classes):
        folder = root / cls
        real = folder.resolve()
        for entry in os.scandir(folder):
            path = Path(entry.path)
            if entry.is_symlink() and os.path.isdir(path):
                _refuse_loop(path, [real, real_root, *real.parents])
            if os.path.splitext(entry.name)[1].lower() not in exts:
                continue
            if not os.path.isfile(path):
                raise SviteError(f"not a regular file ({_kind(path)}); remove it or replace it with an image", path=path)
            samples.append((str(path), idx))
    return sorted(samples, key=lambda s: sort_key(s[0]))


class ImageFiles(torch.utils.data.Dataset):
    """(transformed image, class index) for a list of image files; unreadable files raise SviteError."""

    def __init__(self, samples: list[tuple[str, int]], transform: Callable[[Image.Image], Any] | None) -> None:
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def filename(self, i: int) -> str:
        return self.samples[i][0]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, target = self.samples[i]
        img = open_image(path)
        return (self.transform(img) if self.transform is not None else img), target
