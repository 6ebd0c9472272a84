"""Patch analysis: keep maps, keep frequency, object recall, captum attributions and rollout with every
patch present, agreement with its chance level and content-blind baselines, snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

from sparsity_core.analysis import attribution, patches
from sparsity_core.data import DemoShapes
from sparsity_core.errors import SviteError
from sparsity_core.models.builder import SelectorConfig, build_model

GRID = (8, 8)  # 32 px images, patch 4


def _model(keep_ratio: float | None = 0.5, seed: int = 0, **selector):
    torch.manual_seed(seed)
    sel = SelectorConfig(keep_ratio=keep_ratio, **selector) if keep_ratio is not None else None
    model = build_model(tiny_model_config(selector=sel))
    if sel is not None:  # a scorer with a clear preference, so ties never decide anything
        torch.nn.init.normal_(model.token_selector.scorer.weight, std=1.0)
    return model.eval()


@pytest.fixture(scope="module")
def demo():
    return DemoShapes("val", 40)


def test_patch_keep_map_is_the_top_k_of_the_scores_and_deterministic(demo):
    model = _model()
    image = demo.sample(3).image
    a = patches.patch_keep_map(model, image)
    b = patches.patch_keep_map(model, image)
    assert a.kept.shape == GRID and a.scores.shape == GRID and a.kept.dtype == bool
    assert a.keep == 32 and a.of == 64 and a.keep_ratio == 0.5 and int(a.kept.sum()) == 32
    np.testing.assert_array_equal(a.kept, b.kept)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.scores[a.kept].min() > a.scores[~a.kept].max()
    # a normalised tensor gives the same map as the uint8 image it came from
    c = patches.patch_keep_map(model, demo[3][0])
    np.testing.assert_array_equal(a.kept, c.kept)
    np.testing.assert_allclose(a.scores, c.scores, rtol=1e-5, atol=1e-5)


def test_keep_map_leaves_the_model_as_it_was():
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    patches.patch_keep_map(model, torch.zeros(3, 32, 32))
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_keep_maps_need_a_selector_but_attributions_do_not(demo):
    model = _model(keep_ratio=None)
    with pytest.raises(SviteError, match="no token selector"):
        patches.patch_keep_map(model, demo.sample(0).image)
    with pytest.raises(SviteError, match="no token selector"):
        patches.keep_frequency(model, demo)
    attr = attribution.patch_attributions(model, demo.sample(0).image, method="occlusion")
    assert attr.shape == GRID and np.isfinite(attr).all()
    roll = attribution.attention_rollout(model, demo.sample(0).image)
    assert roll.shape == GRID and (roll > 0).all()


def test_bad_inputs_are_one_clear_error():
    model = _model()
    with pytest.raises(SviteError, match="expected C×32×32"):
        patches.patch_keep_map(model, torch.zeros(3, 16, 16))
    with pytest.raises(SviteError, match="attribution method"):
        attribution.patch_attributions(model, torch.zeros(3, 32, 32), method="magic")
    with pytest.raises(SviteError, match="differ in shape"):
        attribution.keep_attribution_iou(np.zeros((8, 8), bool), np.zeros((4, 4)))
    with pytest.raises(SviteError, match="demo data"):
        patches.keep_vs_object(model, torch.utils.data.TensorDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2)))


def test_keep_frequency_overall_and_per_class(demo):
    model = _model()
    freq = patches.keep_frequency(model, demo, batch_size=16)
    assert set(freq.columns) >= {"class", "label", "row", "col", "frequency", "images"}
    overall = patches.keep_frequency_grid(freq, "all")
    assert overall.shape == GRID
    # every image keeps exactly 32 patches, so the frequencies of a class sum to 32
    sums = freq.groupby("class")["frequency"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 32.0)
    per_class = freq[freq["class"] != "all"].groupby("class")["images"].first()
    assert per_class.sum() == len(demo) and set(per_class.index) == set(DemoShapes.CLASSES)
    # the overall grid is the image-weighted mean of the class grids
    weighted = sum(patches.keep_frequency_grid(freq, c).to_numpy() * n for c, n in per_class.items()) / len(demo)
    np.testing.assert_allclose(overall.to_numpy(), weighted)
    # and it is the mean of the individual keep maps
    maps = np.mean([patches.patch_keep_map(model, demo.sample(i).image).kept for i in range(len(demo))], axis=0)
    np.testing.assert_allclose(overall.to_numpy(), maps, atol=1e-12)


def test_object_recall_matches_a_recount_from_keep_maps(demo):
    model = _model()
    table = patches.keep_vs_object(model, demo, batch_size=16)
    assert len(table) == len(demo)
    for i in (0, 7, 31):
        sample = demo.sample(i)
        kept = patches.patch_keep_map(model, sample.image).kept
        row = table.iloc[i]
        assert row["object_patches"] == sample.patch_mask.sum() > 0
        assert row["kept_object_patches"] == (kept & sample.patch_mask).sum()
        assert row["recall"] == pytest.approx((kept & sample.patch_mask).sum() / sample.patch_mask.sum())
    recall = patches.object_patch_recall(model, demo, batch_size=16)
    assert recall == pytest.approx(table["recall"].mean()) and 0.0 <= recall <= 1.0


def test_a_scorer_that_prefers_saturated_colour_finds_the_objects(demo):
    """object_patch_recall is a real measurement: an oracle-ish scorer gets far above chance, its negation
    far below."""
    model = _model()

    def colourfulness(x: torch.Tensor) -> torch.Tensor:  # replaces the scorer: saturation of each patch
        return sat_scores[: x.shape[0]]

    images = torch.stack([demo[i][0] for i in range(len(demo))])
    pix = images.unfold(2, 4, 4).unfold(3, 4, 4)  # B,3,8,8,4,4
    sat_scores = (pix.amax(1) - pix.amin(1)).mean(dim=(-1, -2)).reshape(len(demo), 64)
    model.token_selector.score = colourfulness
    good = patches.object_patch_recall(model, demo, batch_size=len(demo))
    sat_scores = -sat_scores
    bad = patches.object_patch_recall(model, demo, batch_size=len(demo))
    assert good > 0.9 and bad < 0.1


def test_attributions_have_the_grid_shape_and_occlusion_is_a_logit_drop(demo):
    model = _model()
    image = demo[5][0]
    with torch.no_grad():
        logits = model(image[None])
    target = int(logits.argmax())
    ig = attribution.patch_attributions(model, image, method="integrated_gradients", n_steps=8)
    occ = attribution.patch_attributions(model, image, method="occlusion")
    ixg = attribution.patch_attributions(model, image, method="input_x_gradient")
    for attr in (ig, occ, ixg):
        assert attr.shape == GRID and attr.dtype == np.float32 and np.isfinite(attr).all()
    assert np.abs(ig).sum() > 0
    # occlusion of patch (2, 5) = target logit drop when that patch is replaced by the baseline (0), with
    # every patch present (selector off); the target is the prediction with the selector on
    x = image.clone()
    x[:, 8:12, 20:24] = 0
    with torch.no_grad(), patches.all_patches(model):
        drop = float(model(image[None])[0, target] - model(x[None])[0, target])
    assert occ[2, 5] == pytest.approx(drop, rel=1e-4, abs=1e-5)


def test_integrated_gradients_satisfy_completeness_without_a_selector(demo):
    """With no hard top-k in the way, IG per patch sums to f(x) - f(baseline) (captum's completeness)."""
    model = _model(keep_ratio=None)
    image = demo[2][0]
    attr = attribution.patch_attributions(model, image, method="integrated_gradients", target=3, n_steps=64)
    with torch.no_grad():
        diff = float(model(image[None])[0, 3] - model(torch.zeros_like(image)[None])[0, 3])
    assert attr.sum() == pytest.approx(diff, rel=0.05, abs=1e-3)


def test_attention_rollout_sees_every_patch_and_the_selector_pass_shows_the_artefact(demo):
    model = _model(block_index=1)
    image = demo[4][0]
    roll = attribution.attention_rollout(model, image)
    assert roll.shape == GRID and np.isfinite(roll).all() and (roll > 0).all()  # every patch present
    on = attribution.attention_rollout(model, image, with_selector=True)
    assert 0 < on.sum() < 1 and not np.allclose(on, roll)
    # the fused-attention flag and the selector's keep are restored
    assert all(b.attn.fused_attn == _model(block_index=1).blocks[0].attn.fused_attn for b in model.blocks)
    assert model.token_selector.keep == 32
    # with the selector before block 0, its own pass cannot reach a dropped patch: rollout is zero there
    # (the artefact that gave IoU 1.000); with every patch present it is not
    model0 = _model(block_index=0)
    kept0 = patches.patch_keep_map(model0, image).kept
    on0 = attribution.attention_rollout(model0, image, with_selector=True)
    assert (on0[~kept0] == 0).all() and (on0[kept0] > 0).all()
    assert attribution.keep_attribution_iou(kept0, on0) == 1.0
    assert (attribution.attention_rollout(model0, image)[~kept0] > 0).all()


def test_all_patches_is_exactly_the_backbone_without_a_selector(demo):
    model = _model(block_index=0)
    plain = build_model(tiny_model_config()).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("token_selector.")})
    x = torch.stack([demo[i][0] for i in range(4)])
    with torch.no_grad():
        with patches.all_patches(model) as full:
            assert full is model and model.token_selector.keep == 64
            torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
        assert model.token_selector.keep == 32
        assert not torch.allclose(model(x), plain(x))  # the selector is back on


@pytest.mark.parametrize("method", [*attribution.ATTRIBUTION_METHODS, "attention_rollout"])
def test_no_method_agrees_with_the_selector_by_construction(method, demo):
    """The selector sits before block 0, so on its own forward pass a dropped patch can change nothing.
    An attribution computed on that pass would be 0 on every dropped patch and the IoU 1.0 by
    construction; ours must score dropped patches too, and disagree with the kept set somewhere."""
    model = _model(block_index=0)
    ious = []
    for i in range(4):
        image = demo[i][0]
        kept = patches.patch_keep_map(model, image).kept
        attr = attribution.attribution_stack(model, [image], method, **({"n_steps": 8} if method ==
                                                                           "integrated_gradients" else {}))[0]
        assert np.abs(attr[~kept]).max() > 0, f"{method}: dropped patches get zero attribution"
        ious.append(attribution.keep_attribution_iou(kept, attr))
    assert min(ious) < 1.0, f"{method}: IoU {ious}"
    if method == "input_x_gradient":  # on the selector's own pass a dropped patch has no gradient at all
        image = demo[0][0]
        kept = patches.patch_keep_map(model, image).kept
        on = attribution.patch_attributions(model, image, method=method, with_selector=True)
        assert (on[~kept] == 0).all()


def test_chance_iou_is_exact():
    from itertools import combinations

    n, k = 7, 3
    fixed = set(range(k))
    ious = [len(fixed & set(c)) / len(fixed | set(c)) for c in combinations(range(n), k)]
    assert attribution.chance_iou(n, k) == pytest.approx(np.mean(ious), abs=1e-12)
    assert attribution.chance_iou(64, 64) == 1.0
    with pytest.raises(SviteError):
        attribution.chance_iou(4, 0)


def test_content_blind_baselines_and_cross_fitting():
    centre = attribution.centre_mask((8, 8), 4)
    assert centre[3:5, 3:5].all() and centre.sum() == 4
    rng = np.random.default_rng(0)
    attrs = rng.normal(size=(10, 8, 8)) * 0.01
    attrs[0::2, :2, :] += 5.0  # even images: the top two rows matter
    attrs[1::2, -2:, :] += 5.0  # odd images: the bottom two rows
    fixed = attribution.fixed_mask(attrs[0::2], 16)
    assert fixed[:2].all() and fixed.sum() == 16
    kept = np.broadcast_to(fixed, attrs.shape).copy()  # a "selector" that always keeps the top rows
    table = attribution.agreement_over_images(kept, attrs)
    assert list(table.columns) == ["image", "selector", "best_fixed_mask", "centre_mask", "chance"]
    assert (table.loc[0::2, "selector"] == 1.0).all() and (table.loc[1::2, "selector"] == 0.0).all()
    # cross-fitted: an even image is scored with the mask fitted on odd images (the bottom rows): 0 overlap
    assert (table["best_fixed_mask"] == 0.0).all()
    assert table["chance"].nunique() == 1 and table["chance"].iloc[0] == pytest.approx(
        attribution.chance_iou(64, 16))
    with pytest.raises(SviteError, match="at least 2 images"):
        attribution.agreement_over_images(kept[:1], attrs[:1])


def test_keep_attribution_iou():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=GRID)
    kept = np.zeros(64, bool)
    kept[np.argsort(-scores.ravel())[:16]] = True
    kept = kept.reshape(GRID)
    assert attribution.keep_attribution_iou(kept, scores) == 1.0  # the kept set is the top-16 of the scores
    assert attribution.keep_attribution_iou(kept, -scores) == 0.0  # the bottom 16 share nothing with it
    half = scores.copy()
    top = np.argsort(-scores.ravel())[:16]
    half.ravel()[top[8:]] = -100  # 8 of the 16 fall out of the top 16
    assert attribution.keep_attribution_iou(kept, half) == pytest.approx(8 / 24)
    iou = attribution.keep_attribution_iou(kept, rng.normal(size=GRID))
    assert 0.0 <= iou <= 1.0


def test_keep_map_history_equals_a_forward_pass_at_every_snapshot(demo):
    """The fast path (tokens computed once, each snapshot's scorer applied to them) gives exactly the
    keep map that running the whole model with that snapshot's selector gives."""
    from types import SimpleNamespace

    from sparsity_core.masks.maskset import Snapshot

    torch.manual_seed(0)
    model = build_model(tiny_model_config(selector=SelectorConfig(keep_ratio=0.5, block_index=1, scorer="mlp")))
    history = []
    for step in range(3):
        torch.manual_seed(step)
        for p in model.token_selector.parameters():
            torch.nn.init.normal_(p)
        state = {f"token_selector.{k}": v.clone() for k, v in model.token_selector.state_dict().items()}
        history.append(Snapshot.take(step, float(step), state=state, event="epoch"))
    loaded = SimpleNamespace(model=model, history=history)
    image = demo.sample(7).image
    frame = patches.keep_map_history(loaded, image)
    assert sorted(frame["snapshot"].unique()) == [0, 1, 2]
    for i in range(3):
        slow = patches.patch_keep_map(patches.selector_at_snapshot(loaded, i), image)
        part = frame[frame["snapshot"] == i]
        np.testing.assert_array_equal(part["kept"].to_numpy().reshape(GRID), slow.kept)
        np.testing.assert_allclose(part["score"].to_numpy().reshape(GRID), slow.scores, rtol=1e-6, atol=1e-6)
    assert not (frame[frame.snapshot == 0]["kept"].to_numpy() == frame[frame.snapshot == 1]["kept"].to_numpy()).all()


def test_fitting_a_photo_first_gives_the_same_input_and_maps():
    from app.loaders.photos import sample_images
    from sparsity_core.data import fit_image

    model = _model()
    photo = sample_images()["chelsea"]  # 451×300: cropped, then resized
    fitted = fit_image(photo, 32)
    assert fitted.shape == (32, 32, 3) and fitted.dtype == np.uint8
    torch.testing.assert_close(patches.to_model_input(model, fitted), patches.to_model_input(model, photo),
                               rtol=0, atol=0)
    np.testing.assert_array_equal(patches.patch_keep_map(model, fitted).kept, patches.patch_keep_map(model, photo).kept)
