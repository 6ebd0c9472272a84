"""Choosing an image for a page that looks inside the model (Patch maps, Heads): a demo image with its
object mask, one of the offline sample photos, an upload, or an image of the run's own data folder (when
it is still there), fitted to the model's input as the page states. One picker for both pages, so they read images the same way; each page keeps its own widget
keys (``prefix``), so choosing an image on one page does not move the other."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from ..errors import SviteError
from ..loaders import images, patch_data
from ..settings import IMAGE_SUFFIXES, IMAGE_UPLOAD_MB
from . import ui

SOURCES = ["Demo dataset", "Sample photos", "Upload"]


@dataclass
class Picked:
    """The chosen image (before fitting), its object mask and class on demo images, and notes on how the
    file was read."""

    image: np.ndarray
    source: str
    object_mask: np.ndarray | None = None
    truth: str | None = None
    demo_index: int | None = None
    notes: list[str] = field(default_factory=list)


def pick_image(path: str, prefix: str, trained_on: str | None) -> Picked:
    """Widgets (inside the caller's controls) for the image source and the image; stops the page with a
    sentence when an upload is missing, too large or unreadable."""
    key = f"{prefix}_source"
    folder = patch_data.folder_data(path)  # the run's own image folder, classes matched by name; None if absent
    sources = SOURCES + ([patch_data.FOLDER_SOURCE] if folder is not None else [])
    if key not in st.session_state:  # the model's own data when there is some, else photos
        st.session_state[key] = ("Demo dataset" if trained_on == "demo" else
                                 patch_data.FOLDER_SOURCE if folder is not None else "Sample photos")
    ui.keep_valid(key, sources)
    source = st.radio("Image", sources, horizontal=True, key=key)
    if source == patch_data.FOLDER_SOURCE:
        ui.keep_valid(f"{prefix}_folder_index", range(len(folder)), 0)
        index = int(st.slider(f"Image of {trained_on} (the run's validation split)", 0, len(folder) - 1,
                              key=f"{prefix}_folder_index"))
        image, truth = patch_data.folder_sample(folder, index)
        return Picked(image, source, truth=truth)
    if source == "Demo dataset":
        demo = patch_data.demo_for(path)
        ui.keep_valid(f"{prefix}_demo_index", range(len(demo)), 8)
        index = int(st.slider("Demo image (validation split)", 0, len(demo) - 1, key=f"{prefix}_demo_index"))
        sample = demo.sample(index)
        return Picked(sample.image, source, sample.patch_mask, demo.class_names[sample.label], index)
    if source == "Sample photos":
        photos = patch_data.photos()
        ui.keep_valid(f"{prefix}_photo", sorted(photos))
        return Picked(photos[st.selectbox("Photo", sorted(photos), key=f"{prefix}_photo")], source)
    up = st.file_uploader(f"An image ({', '.join(IMAGE_SUFFIXES)}; ≤ {IMAGE_UPLOAD_MB} MB)", key=f"{prefix}_upload")
    if up is None:
        st.info("Upload an image to see its maps.")
        st.stop()
    if up.size > IMAGE_UPLOAD_MB * 2**20:
        st.warning(f"{up.name}: {up.size / 2**20:.0f} MB is over the {IMAGE_UPLOAD_MB} MB image limit.")
        st.stop()
    try:
        decoded = images.decode_image(up.getvalue(), up.name)
    except SviteError as err:
        st.warning(str(err))
        st.stop()
    notes = [f"{up.name}: {decoded.original_size[0]}×{decoded.original_size[1]} px, {decoded.mode}."] + decoded.notes
    return Picked(decoded.rgb, source, notes=notes)


def fitted(picked: Picked, img_size: int) -> np.ndarray:
    """The image as the model sees it (centre crop, resize): small arrays to hash for the caches."""
    return images.fit(picked.image, img_size)


def describe(picked: Picked, img_size: int, patch: int, trained_on: str | None) -> None:
    """A caption saying how the image was read and fitted and, for a photo on a model trained on the demo
    shapes, a warning that its label means little. Above the maps normally; below them in talk mode, where
    the first screen is for the headline chart."""
    st.caption(" ".join(picked.notes + [images.fit_description(picked.image.shape, img_size, patch)]))
    if picked.source not in ("Demo dataset", patch_data.FOLDER_SOURCE) and trained_on == "demo":
        st.warning(f"This model was trained on {img_size} px synthetic shapes (10 classes), so a photo is far outside "
                   "what it learnt: its label for the photo means little, and its maps show where it looks, not what "
                   "it recognises.")
