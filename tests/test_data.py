"""Tests for sparsity_core.data: the demo set, ImageFolder loading, resumable sampling, photo inputs; and
app.loaders.photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import sparsity_core  # noqa: F401  (must come before anything that imports timm)
from app.loaders import photos
from sparsity_core import data as D
from sparsity_core.data import demo
from sparsity_core.errors import SviteError

# ------------------------------------------------------------------------------------------------
# Demo set
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train() -> D.DemoShapes:
    return D.DemoShapes("train")


@pytest.fixture(scope="module")
def val() -> D.DemoShapes:
    return D.DemoShapes("val")


def test_demo_generation_is_cached() -> None:
    first = D.DemoShapes("val", size=40, seed=7)
    second = D.DemoShapes("val", size=40, seed=7)
    assert second.images is first.images  # served from the cache, not regenerated
    assert len(first) == 40 and len(D.DemoShapes("val", size=41, seed=7)) == 41


def test_demo_deterministic_and_keyed_by_seed_and_split() -> None:
    fresh = demo._generate_demo.__wrapped__("train", 64, 32, 4, 0)
    cached = D.DemoShapes("train", size=64, seed=0)
    for key in ("images", "labels", "pixel_masks", "patch_masks"):
        np.testing.assert_array_equal(fresh[key], getattr(cached, key))
    other_seed = D.DemoShapes("train", size=64, seed=1)
    other_split = D.DemoShapes("val", size=64, seed=0)
    assert not np.array_equal(cached.images, other_seed.images)
    assert not np.array_equal(cached.images, other_split.images)
    # Sample i depends on (seed, split, i) only: a smaller set is a prefix of a larger one.
    bigger = D.DemoShapes("train", size=100, seed=0)
    np.testing.assert_array_equal(bigger.images[:64], cached.images)
    np.testing.assert_array_equal(bigger.labels[:64], cached.labels)


def test_demo_prefix_across_render_chunks(train: D.DemoShapes) -> None:
    n = demo._CHUNK + 37  # spans a chunk boundary of the renderer
    part = D.DemoShapes("train", size=n)
    np.testing.assert_array_equal(part.images, train.images[:n])
    np.testing.assert_array_equal(part.pixel_masks, train.pixel_masks[:n])


def test_demo_arrays_shapes_and_dtypes(train: D.DemoShapes) -> None:
    n = len(train)
    assert n == 5000 and len(D.DemoShapes("val", size=None)) == 1000
    assert train.images.shape == (n, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.shape == (n,) and train.labels.dtype == np.int64
    assert train.pixel_masks.shape == (n, 32, 32) and train.pixel_masks.dtype == np.bool_
    assert train.patch_masks.shape == (n, 8, 8) and train.patch_masks.dtype == np.bool_
    assert not train.images.flags.writeable  # cached arrays are shared, so they must not be mutated

    x, y = train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and y == int(train.labels[3])
    expected = (torch.from_numpy(train.images[3].copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    torch.testing.assert_close(x, expected)
    raw, _ = D.DemoShapes("train", normalize=False)[3]
    assert 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0
    with pytest.raises(IndexError):
        train[n]

    s = train.sample(3)
    assert isinstance(s, D.DemoSample)
    assert s.label == y and s.image.shape == (32, 32, 3)
    np.testing.assert_array_equal(s.pixel_mask, train.pixel_masks[3])
    np.testing.assert_array_equal(s.patch_mask, train.patch_masks[3])


def test_demo_classes_many_and_balanced(train: D.DemoShapes, val: D.DemoShapes) -> None:
    assert len(D.DemoShapes.CLASSES) >= 8 and len(set(D.DemoShapes.CLASSES)) == len(D.DemoShapes.CLASSES)
    assert train.num_classes == len(D.DemoShapes.CLASSES)
    for ds in (train, val):
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        assert len(counts) == ds.num_classes
        expected = len(ds) / ds.num_classes
        assert counts.min() >= 0.9 * expected and counts.max() <= 1.1 * expected, counts


def test_demo_object_patch_fraction(train: D.DemoShapes) -> None:
    frac = train.patch_masks[:500].mean(axis=(1, 2))
    assert 0.08 <= frac.mean() <= 0.3, frac.mean()
    assert frac.min() > 0.0 and frac.max() < 0.5  # every image has an object, never a giant one
    for c in range(train.num_classes):  # no class is much smaller or larger than the rest
        per_class = frac[train.labels[:500] == c].mean()
        assert 0.06 <= per_class <= 0.35, (train.CLASSES[c], per_class)


def test_demo_object_fully_inside_image(train: D.DemoShapes) -> None:
    m = train.pixel_masks
    border = m[:, 0, :].any() or m[:, -1, :].any() or m[:, :, 0].any() or m[:, :, -1].any()
    assert not border


def test_demo_patch_mask_matches_pixels(train: D.DemoShapes) -> None:
    np.testing.assert_array_equal(train.patch_masks, D.patch_mask_from_pixels(train.pixel_masks, 4))
    one = D.patch_mask_from_pixels(train.pixel_masks[0], 4)
    np.testing.assert_array_equal(one, train.patch_masks[0])


def _chroma(images: np.ndarray) -> np.ndarray:
    rgb = images.astype(np.float32) / 255.0
    return rgb.max(axis=-1) - rgb.min(axis=-1)


def test_demo_object_locally_visible(train: D.DemoShapes) -> None:
    """Objects are saturated, clutter is grey: per pixel and per patch, colour separates them."""
    n = 500
    chroma = _chroma(train.images[:n])
    masks = train.pixel_masks[:n]
    obj = np.array([chroma[i][masks[i]].mean() for i in range(n)])
    bg = np.array([chroma[i][~masks[i]].mean() for i in range(n)])
    assert obj.mean() > bg.mean() + 0.3
    assert (obj > bg + 0.15).mean() > 0.98

    # A single hand-made per-patch feature (mean chroma) already ranks object patches above clutter.
    patch_chroma = chroma.reshape(n, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(-1)
    labels = train.patch_masks[:n].reshape(-1)
    order = np.argsort(patch_chroma, kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    auroc = (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert auroc > 0.95, auroc


def test_demo_colour_independent_of_class(train: D.DemoShapes) -> None:
    """The class is the shape: mean object colour should look alike for every class."""
    n = 2000
    imgs = train.images[:n].astype(np.float32)
    means = np.stack([imgs[i][train.pixel_masks[i]].mean(axis=0) for i in range(n)])
    overall = means.mean(axis=0)
    for c in range(train.num_classes):
        per_class = means[train.labels[:n] == c].mean(axis=0)
        assert np.abs(per_class - overall).max() < 25, (train.CLASSES[c], per_class, overall)


@pytest.mark.parametrize(("img_size", "patch_size"), [(48, 8), (64, 4)])
def test_demo_other_sizes(img_size: int, patch_size: int) -> None:
    ds = D.DemoShapes("val", size=50, img_size=img_size, patch_size=patch_size)
    g = img_size // patch_size
    assert ds.images.shape == (50, img_size, img_size, 3)
    assert ds.patch_masks.shape == (50, g, g)
    assert ds[0][0].shape == (3, img_size, img_size)
    assert 0.05 <= ds.patch_masks.mean() <= 0.35
    # Same scene at every resolution: labels do not depend on the image size.
    np.testing.assert_array_equal(ds.labels, D.DemoShapes("val", size=50).labels)


def test_demo_bad_arguments() -> None:
    with pytest.raises(SviteError, match="img_size=30"):
        D.DemoShapes("train", size=10, img_size=30, patch_size=4)
    with pytest.raises(SviteError, match="'test'"):
        D.DemoShapes("test", size=10)
    with pytest.raises(SviteError, match="size=0"):
        D.DemoShapes("train", size=0)
    with pytest.raises(SviteError, match="seed=-1"):
        D.DemoShapes("train", size=10, seed=-1)


def test_build_data_demo() -> None:
    b = D.build_data("demo", train_size=100, val_size=30, seed=3)
    assert b.source == "demo" and b.num_classes == len(D.DemoShapes.CLASSES) >= 8
    assert b.class_names == list(D.DemoShapes.CLASSES)
    assert len(b.train) == 100 and len(b.val) == 30
    assert b.mean == D.DEMO_MEAN and b.std == D.DEMO_STD and b.img_size == 32
    assert not np.array_equal(b.train.images[:30], b.val.images)
    with pytest.raises(SviteError, match="patch_size=5"):
        D.build_data("demo", img_size=32, patch_size=5)


# ------------------------------------------------------------------------------------------------
# patch_mask_from_pixels
# ------------------------------------------------------------------------------------------------


def test_patch_mask_threshold() -> None:
    m = np.zeros((8, 8), dtype=bool)
    m[0, 0] = True  # 1/16 of patch (0, 0): below 10 %
    m[0, 4:6] = True  # 2/16 of patch (0, 1): above 10 %
    m[4:8, 4:8] = True
    out = D.patch_mask_from_pixels(m, 4)
    np.testing.assert_array_equal(out, np.array([[False, True], [False, True]]))
    np.testing.assert_array_equal(
        D.patch_mask_from_pixels(m, 4, min_fraction=1 / 16), [[True, True], [False, True]]
    )
    with pytest.raises(SviteError, match="patch_size=3"):
        D.patch_mask_from_pixels(m, 3)
    with pytest.raises(SviteError, match="min_fraction"):
        D.patch_mask_from_pixels(m, 4, min_fraction=0.0)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 4),
    st.floats(0.01, 1.0),
    st.integers(0, 2**32 - 1),
)
def test_patch_mask_matches_naive_loop(grid: int, p: int, frac: float, seed: int) -> None:
    m = np.random.default_rng(seed).random((grid * p, grid * p)) < 0.3
    out = D.patch_mask_from_pixels(m, p, frac)
    for i in range(grid):
        for j in range(grid):
            count = m[i * p : (i + 1) * p, j * p : (j + 1) * p].sum()
            assert out[i, j] == (count >= frac * p * p - 1e-6)


# ------------------------------------------------------------------------------------------------
# ImageFolder
# ------------------------------------------------------------------------------------------------


def _write_images(folder: Path, n: int, seed: int, size: tuple[int, int] = (20, 14)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{k}.jpg")


@pytest.fixture
def split_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tiny"
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            _write_images(root / split / name, 3, seed=c + (10 if split == "val" else 0))
    return root


def test_image_folder_with_train_val(split_tree: Path) -> None:
    b = D.build_data(str(split_tree), img_size=32)
    assert b.num_classes == 2 and b.class_names == ["cat", "dog"]
    assert len(b.train) == 6 and len(b.val) == 6
    assert b.source == str(split_tree.resolve())
    assert b.mean == pytest.approx((0.485, 0.456, 0.406)) and b.std == pytest.approx((0.229, 0.224, 0.225))
    x, y = b.val[4]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y == 1
    xt, yt = b.train[0]
    assert xt.shape == (3, 32, 32) and yt == 0
    # a val image is deterministic (no augmentation)
    torch.testing.assert_close(b.val[4][0], x)
    sub = D.build_data(str(split_tree), train_size=4, val_size=2)
    assert len(sub.train) == 4 and len(sub.val) == 2


def test_image_folder_flat_is_split_deterministically(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for c, name in enumerate(("a", "b")):
        _write_images(root / name, 10, seed=c)
    b = D.build_data(str(root), seed=5)
    assert b.num_classes == 2 and len(b.train) == 18 and len(b.val) == 2
    train_files = {b.train.filename(i) for i in range(len(b.train))}
    val_files = {b.val.filename(i) for i in range(len(b.val))}
    assert not train_files & val_files and len(train_files | val_files) == 20
    assert sorted(b.val.targets) == [0, 1]  # stratified: each class in val
    again = D.build_data(str(root), seed=5)
    assert val_files == {again.val.filename(i) for i in range(len(again.val))}
    other = [D.build_data(str(root), seed=s) for s in range(6, 10)]
    assert any({o.val.filename(i) for i in range(len(o.val))} != val_files for o in other)
    assert b.val[0][0].shape == (3, 32, 32)


def test_image_folder_errors(tmp_path: Path, split_tree: Path) -> None:
    with pytest.raises(SviteError, match="does not exist") as err:
        D.build_data(str(tmp_path / "nope"))
    assert "nope" in str(err.value)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(SviteError, match="not a directory"):
        D.build_data(str(a_file))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SviteError, match="no class folders"):
        D.build_data(str(empty))
    no_images = tmp_path / "noimg"
    (no_images / "cls").mkdir(parents=True)
    (no_images / "cls" / "notes.txt").write_text("not an image")
    with pytest.raises(SviteError, match="no images found"):
        D.build_data(str(no_images))
    only_train = tmp_path / "only_train"
    _write_images(only_train / "train" / "c", 2, seed=0)
    with pytest.raises(SviteError, match="no val/"):
        D.build_data(str(only_train))
    _write_images(split_tree / "val" / "bird", 1, seed=3)
    with pytest.raises(SviteError, match="different classes.*bird"):
        D.build_data(str(split_tree))


def test_image_folder_corrupt_file_names_the_file(split_tree: Path) -> None:
    bad = split_tree / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\x00garbage, not a jpeg\xff" * 10)
    b = D.build_data(str(split_tree))
    idx = next(i for i in range(len(b.train)) if b.train.filename(i).endswith("broken.jpg"))
    with pytest.raises(SviteError, match="broken.jpg") as err:
        b.train[idx]
    assert "\n" not in str(err.value)
    b.train[0]  # the others still load


# ------------------------------------------------------------------------------------------------
# Sampler and loader
# ------------------------------------------------------------------------------------------------


def test_sampler_skip_gives_tail_of_full_order() -> None:
    s = D.ResumableSampler(23, shuffle=True, seed=4)
    s.set_epoch(2)
    full = list(s)
    assert sorted(full) == list(range(23)) and full != list(range(23))
    s.skip(9)
    assert list(s) == full[9:] and len(s) == 14
    assert list(s) == full[9:]  # the skip holds for the whole current epoch
    s.set_epoch(2)
    assert list(s) == full and len(s) == 23  # set_epoch resets the skip
    with pytest.raises(SviteError, match="cannot skip 24"):
        s.skip(24)


def test_sampler_epochs_deterministic() -> None:
    a = D.ResumableSampler(50, shuffle=True, seed=1)
    b = D.ResumableSampler(50, shuffle=True, seed=1)
    orders = []
    for e in range(3):
        a.set_epoch(e)
        b.set_epoch(e)
        orders.append(list(a))
        assert orders[-1] == list(b)
    assert orders[0] != orders[1] != orders[2]
    c = D.ResumableSampler(50, shuffle=True, seed=2)
    assert list(c) != orders[0]
    assert list(D.ResumableSampler(10, shuffle=False, seed=1)) == list(range(10))


def test_sampler_ranks_partition_data() -> None:
    ranks = [D.ResumableSampler(40, shuffle=True, seed=0, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    parts = [list(s) for s in ranks]
    assert len(parts[0]) == len(parts[1]) == 20
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(40))
    with pytest.raises(SviteError, match="rank=2"):
        D.ResumableSampler(40, shuffle=True, seed=0, rank=2, world_size=2)


def test_loader_resume_mid_epoch_matches_uninterrupted() -> None:
    ds = D.DemoShapes("val", size=70)
    full = D.make_loader(ds, batch_size=8, shuffle=True, seed=11)
    assert isinstance(full.sampler, D.ResumableSampler)
    full.sampler.set_epoch(1)
    expected = [y for _, y in full]
    assert len(expected) == len(full) == 9

    resumed = D.make_loader(ds, batch_size=8, shuffle=True, seed=11)
    resumed.sampler.set_epoch(1)
    resumed.sampler.skip(3 * 8)
    got = [y for _, y in resumed]
    assert len(resumed) == 6 and len(got) == 6
    for a, b in zip(got, expected[3:], strict=True):
        torch.testing.assert_close(a, b)
    dropped = D.make_loader(ds, batch_size=8, shuffle=False, seed=0, drop_last=True)
    assert len(dropped) == 8 and all(len(y) == 8 for _, y in dropped)


# ------------------------------------------------------------------------------------------------
# App helpers
# ------------------------------------------------------------------------------------------------


def test_sample_images_offline_rgb() -> None:
    imgs = photos.sample_images()
    assert len(imgs) >= 3
    assert set(imgs) == set(photos._SKIMAGE_PHOTOS)  # every listed photo is bundled (no download needed)
    for name, img in imgs.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 100
    assert photos.sample_images() is imgs


def test_image_to_input_shapes_and_values(train: D.DemoShapes) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    for img in (rgb, rgb[..., 0], np.dstack([rgb, np.full((40, 70), 255, np.uint8)])):
        x = D.image_to_input(img, 48, D.DEMO_MEAN, D.DEMO_STD)
        assert x.shape == (1, 3, 48, 48) and x.dtype == torch.float32
    # An opaque RGBA image gives the same input as its RGB part.
    rgba = np.dstack([rgb, np.full((40, 70), 255, np.uint8)])
    torch.testing.assert_close(
        D.image_to_input(rgba, 24, (0.5,) * 3, (0.5,) * 3), D.image_to_input(rgb, 24, (0.5,) * 3, (0.5,) * 3)
    )
    # A demo image at its own size is only normalised: it matches what the dataset feeds the model.
    torch.testing.assert_close(D.image_to_input(train.images[5], 32, D.DEMO_MEAN, D.DEMO_STD)[0], train[5][0])
    photo = next(iter(photos.sample_images().values()))
    assert D.image_to_input(photo, 32, D.DEMO_MEAN, D.DEMO_STD).shape == (1, 3, 32, 32)
    with pytest.raises(SviteError, match="shape"):
        D.image_to_input(np.zeros((4, 4, 2), np.uint8), 32, D.DEMO_MEAN, D.DEMO_STD)
