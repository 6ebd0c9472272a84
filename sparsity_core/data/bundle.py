"""What a training run gets from its data (:class:`DataBundle`), and the argument checks every part of
``data/`` shares."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data

from ..errors import SviteError


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


def check_int(name: str, value: Any, minimum: int) -> int:
    """Reject bools, floats and out-of-range values with a message naming the argument."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise SviteError(f"{name}={value!r}: must be an integer")
    if value < minimum:
        raise SviteError(f"{name}={value}: must be >= {minimum}")
    return int(value)


def check_sizes(img_size: int, patch_size: int) -> None:
    check_int("img_size", img_size, 1)
    check_int("patch_size", patch_size, 1)
    if img_size % patch_size:
        raise SviteError(f"img_size={img_size} is not divisible by patch_size={patch_size}")


def split_key(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))
