"""A few natural photos that work offline (scikit-image's bundled data), for the patch-map page."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sparsity_core.errors import SviteError

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
