"""What the heads look at: attention read from timm's modules, pruned heads uniform, the S²ViTE importance
by the engine's own scorer, object IoU with its chance level, the same head across snapshots, and the head
probe recorded during training (which must change nothing that training computes)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_model_config, tiny_train_config  # noqa: E402

from sparsity_core import analysis  # noqa: E402
from sparsity_core.analysis import heads as heads_mod  # noqa: E402
from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.data import DEMO_MEAN, DEMO_STD, DemoShapes, image_to_input  # noqa: E402
from sparsity_core.dst import capture, scorers  # noqa: E402
from sparsity_core.errors import SviteError  # noqa: E402
from sparsity_core.history.probe import HeadProbe, probe_count, probe_layer  # noqa: E402
from sparsity_core.masks.maskset import MaskSet, head_unit_name  # noqa: E402
from sparsity_core.models.builder import ModelConfig, SelectorConfig, build_model  # noqa: E402
from sparsity_core.models.units import unit_weight_masks  # noqa: E402
from sparsity_core.training.loop import train  # noqa: E402

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def _demo(n: int = 16, img: int = 32, patch: int = 4) -> tuple[DemoShapes, torch.Tensor, torch.Tensor]:
    demo = DemoShapes("val", size=n, img_size=img, patch_size=patch, seed=0)
    x = torch.cat([image_to_input(demo.sample(i).image, img, DEMO_MEAN, DEMO_STD) for i in range(n)])
    return demo, x, torch.tensor([demo.sample(i).label for i in range(n)])


def _pruned_model(dead: int = 1) -> tuple[torch.nn.Module, MaskSet]:
    """The tiny ViT with head ``dead`` of block 0 pruned as S²ViTE prunes it (q, k, v rows and biases 0)."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    heads = torch.ones(4, dtype=torch.bool)
    heads[dead] = False
    units = MaskSet({head_unit_name(0): heads})
    unit_weight_masks(model, units).apply(model)
    return model.eval(), units


def test_class_token_attention_is_what_the_first_block_computes():
    """The map read through the hook is softmax(q k^T / sqrt(d)) of block 0, computed here by hand."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config()).eval()
    demo, x, _ = _demo(1)
    maps = analysis.head_maps(model, demo.sample(0).image)
    with torch.no_grad():
        tokens = model._pos_embed(model.patch_embed(x))
        attn = model.blocks[0].attn
        qkv = attn.qkv(model.blocks[0].norm1(tokens)).reshape(1, -1, 3, attn.num_heads, attn.head_dim)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        probs = (q @ k.transpose(-2, -1) * attn.head_dim ** -0.5).softmax(-1)[0, :, 0, 1:]
    assert np.allclose(maps.cls[0].reshape(4, -1), probs.numpy(), atol=1e-6)
    assert not np.allclose(maps.cls[0, 0], maps.cls[0, 1])
    assert np.allclose(maps.rollout.reshape(2, 4, -1).sum(-1) < 1, True)  # the class token keeps a share
    assert attn.fused_attn is True and not attn.attn_drop._forward_hooks  # left as found


def test_a_pruned_head_attends_uniformly_scores_zero_and_gets_no_iou():
    model, units = _pruned_model(dead=1)
    demo, x, y = _demo(8)
    maps = analysis.head_maps(model, demo.sample(0).image).cls[0]
    assert np.allclose(maps[1], 1 / 65, atol=1e-7) and heads_mod.is_uniform(maps[1])
    assert not any(heads_mod.is_uniform(maps[h]) for h in (0, 2, 3))
    frame = analysis.head_object_iou(maps, demo.sample(0).patch_mask)
    assert np.isnan(frame.loc[1, "iou"]) and frame.loc[1, "uniform"]
    assert frame.drop(index=1)["iou"].notna().all()
    imp = analysis.head_importance(model, x, y)
    assert imp[0, 1] == 0.0 and (imp[0, [0, 2, 3]] > 0).all() and (imp[1] > 0).all()
    assert all(p.grad is None for p in model.parameters())  # the scores leave .grad alone


def test_head_importance_is_the_engines_taylor_score():
    """The same scorer object the engine's capture uses, fed the attention output (timm's attn.norm input)
    and its gradient: checked against the output of attn.proj's input hook and an explicit backward."""
    assert heads_mod.head_taylor is scorers.head_taylor is capture.head_taylor
    model, _ = _pruned_model(dead=2)
    _, x, y = _demo(6)
    seen = {}
    hooks = [b.attn.proj.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0]))
             for i, b in enumerate(model.blocks)]
    try:
        out = model(x)
        for t in seen.values():
            t.retain_grad()
        F.cross_entropy(out, y).backward()
    finally:
        for h in hooks:
            h.remove()
    for i in range(len(model.blocks)):
        a = seen[i].detach().reshape(6, 65, 4, 12)
        g = seen[i].grad.reshape(6, 65, 4, 12)
        expected = (a * g).sum(dim=(1, 3)).abs().mean(dim=0).numpy()
        assert np.allclose(analysis.head_importance(model, x, y)[i], expected, rtol=1e-5, atol=1e-9)


def test_object_iou_has_its_chance_level_and_ignores_uniform_maps():
    obj = np.zeros((8, 8), bool)
    obj[2:4, 2:5] = True  # 6 patches
    grid = np.zeros((8, 8))
    grid[2:4, 2:5] = 1.0
    assert heads_mod.object_iou(grid, obj) == 1.0
    assert heads_mod.object_iou(-grid, obj) == 0.0
    assert np.isnan(heads_mod.object_iou(np.full((8, 8), 1 / 64), obj))
    frame = analysis.head_object_iou(np.stack([grid, -grid]), obj)
    assert frame["chance"].iloc[0] == pytest.approx(analysis.chance_iou(64, 6)) and frame["object_patches"].iloc[0] == 6


def test_alive_heads_of_the_shipped_s2vite_demo_look_at_the_object_and_pruned_ones_at_nothing():
    loaded = load_checkpoint(CHECKPOINTS / "s2vite.safetensors")
    alive = analysis.head_alive(loaded)
    assert alive.sum() < alive.size and alive.any(axis=1).all()
    demo, x, _ = _demo(32)
    over = analysis.heads_over_images(loaded, x, np.stack([demo.sample(i).patch_mask for i in range(32)]))
    over["alive"] = [bool(alive[b, h]) for b, h in zip(over["block"], over["head"], strict=True)]
    assert over.loc[~over["alive"], "uniform"].all() and over.loc[~over["alive"], "iou"].isna().all()
    live = over[over["alive"]]
    assert not live["uniform"].any() and live["iou"].mean() > 1.5 * live["chance"].mean()
    assert (analysis.head_alive(load_checkpoint(CHECKPOINTS / "dense.safetensors"))).all()


def test_the_same_head_across_snapshots_from_masks():
    s2 = load_checkpoint(CHECKPOINTS / "s2vite.safetensors")
    timeline = analysis.head_mask_history(s2.history, s2, 3)
    assert set(timeline["kept"].unique()) <= {0.0, 1.0} and timeline["snapshot"].nunique() == len(s2.history)
    last = timeline[timeline["snapshot"] == timeline["snapshot"].max()].sort_values("head")
    assert (last["kept"].to_numpy() == analysis.head_alive(s2)[3]).all()
    sv = load_checkpoint(CHECKPOINTS / "svite.safetensors")
    timeline = analysis.head_mask_history(sv.history, sv, 1)
    mask = sv.history.layer(5, "blocks.1.attn.qkv.weight").reshape(3, 6, 16, 96)
    at5 = timeline[timeline["snapshot"] == 5].sort_values("head")["kept"].to_numpy()
    assert np.allclose(at5, mask.float().mean(dim=(0, 2, 3)).numpy()) and 0 < at5.min() < at5.max() < 1
    dense = load_checkpoint(CHECKPOINTS / "dense.safetensors")
    assert analysis.head_mask_history(dense.history, dense, 0).empty
    assert (analysis.probe_history(sv, 0) is None) == (not sv.meta.get("head_probe"))


# ----------------------------------------------------------------------------------------------
# the head probe
def test_training_records_the_head_probe_at_every_snapshot(tmp_path):
    path = train(tiny_train_config(tmp_path / "r", method="s2vite", atten_density=0.5, other_density=0.6,
                                   update_frequency=3, warmup_epochs=0.5), show_progress=False, echo_metrics=False)
    loaded = load_checkpoint(path)
    assert loaded.meta["head_probe"]["count"] == 4 and loaded.meta["head_probe"]["images"] == "demo"
    snaps, maps = analysis.probe_history(loaded, 0)
    assert snaps == list(range(len(loaded.history))) and maps.shape == (len(snaps), 4, 4, 8, 8)
    for s, per_snapshot in zip(snaps, maps, strict=True):
        alive = loaded.history.layer(s, head_unit_name(0), "units").numpy()
        uniform = [all(heads_mod.is_uniform(per_snapshot[i, h]) for i in range(4)) for h in range(4)]
        assert uniform == [not a for a in alive]  # pruned heads at that snapshot, and only they
    probe = DemoShapes("val", size=4, img_size=32, patch_size=4, seed=0)
    for i in range(4):  # the last snapshot's probe is the saved model's attention on the probe images
        now = analysis.head_maps(loaded, probe.sample(i).image).cls[0]
        assert np.allclose(maps[-1, i], now, atol=2e-4)
    frame = analysis.probe_object_iou(loaded, 1, np.stack([probe.sample(i).patch_mask for i in range(4)]))
    assert len(frame) == len(snaps) * 4 and frame["chance"].between(0, 1).all()


def test_recording_the_probe_changes_nothing_in_the_model_or_the_random_streams():
    torch.manual_seed(0)
    model = build_model(tiny_model_config(selector=SelectorConfig(keep_ratio=0.5, scorer="mlp"))).train()
    model.blocks[1].mlp.eval()  # a submodule deliberately in eval mode must come back so
    model.blocks[0].attn.fused_attn = False
    probe = HeadProbe(model, DEMO_MEAN, DEMO_STD)
    flags = [(n, m.training) for n, m in model.named_modules()]
    fused = [b.attn.fused_attn for b in model.blocks]
    states = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    out = probe(model)
    assert set(out) == {probe_layer(0), probe_layer(1)} and out[probe_layer(0)].shape == (4, 4, 64)
    assert [(n, m.training) for n, m in model.named_modules()] == flags
    assert [b.attn.fused_attn for b in model.blocks] == fused
    assert not any(b.attn.attn_drop._forward_hooks for b in model.blocks) and model.token_selector.keep == 32
    assert torch.equal(torch.get_rng_state(), states[0]) and np.array_equal(np.random.get_state()[1], states[1])
    assert random.getstate() == states[2]
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_probe_size_is_capped_for_large_models():
    assert probe_count(build_model(tiny_model_config())) == 4
    deit_s = ModelConfig(name="deit_small_patch16_224", num_classes=10)
    with torch.device("meta"):
        assert probe_count(build_model(deit_s)) == 2  # 12 blocks x 6 heads x 196 patches x 2 bytes = 28 kB each
        assert probe_count(build_model(ModelConfig(name="deit_small_patch16_224", img_size=640, num_classes=10))) == 0


def test_a_probe_that_does_not_fit_the_model_is_refused_in_one_line(tmp_path):
    path = train(tiny_train_config(tmp_path / "r", epochs=1), show_progress=False, echo_metrics=False)
    loaded = load_checkpoint(path)
    other = build_model(tiny_model_config(num_heads=2))
    with pytest.raises(SviteError, match="head probe of block 0"):
        analysis.probe_history(type(loaded)(**{**vars(loaded), "model": other}), 0)
