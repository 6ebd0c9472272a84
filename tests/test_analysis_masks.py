"""Mask analysis (sparsity_core.analysis.masks) on real checkpoints written by the core.

The checkpoints here are made with ``save_checkpoint`` from a real tiny ViT whose weights carry real
masks and a real mask history (snapshots taken with ``Snapshot.take``); every statistic is checked
against a brute-force computation on the unpacked masks. ``build_checkpoint`` is also used by the
app tests (``tests/test_app_*.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

from sparsity_core.analysis import (
    block_type,
    checkpoint_masks,
    density_by_group,
    density_evolution,
    fired_rate,
    flops_summary,
    head_survival,
    history_table,
    integrity_check,
    layer_density_table,
    layer_depth,
    layer_frames,
    mask_churn,
    mask_diff,
    mask_diff_matrix,
    mask_matrix,
    neuron_survival,
    snapshot_distances,
    snapshot_layer_mask,
    speed_comparison,
    unit_alive,
    young_pruning,
)
from sparsity_core.checkpoint import load_checkpoint, save_checkpoint
from sparsity_core.errors import SviteError
from sparsity_core.masks.maskset import (
    MaskSet,
    Snapshot,
    default_sparsifiable,
    head_unit_name,
    neuron_unit_name,
)
from sparsity_core.models.builder import SelectorConfig, build_model


# ----------------------------------------------------------------------------------------------
# a real checkpoint with a real mask history
def _exact_mask(shape: torch.Size, density: float, gen: torch.Generator) -> torch.Tensor:
    n = int(torch.Size(shape).numel())
    keep = max(1, round(density * n))
    flat = torch.zeros(n, dtype=torch.bool)
    flat[torch.randperm(n, generator=gen)[:keep]] = True
    return flat.reshape(shape)


def _swap(mask: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Prune k random active entries and grow k random inactive ones (budget kept exactly)."""
    flat = mask.reshape(-1).clone()
    on, off = flat.nonzero().flatten(), (~flat).nonzero().flatten()
    k = min(k, len(on), len(off))
    flat[on[torch.randperm(len(on), generator=gen)[:k]]] = False
    flat[off[torch.randperm(len(off), generator=gen)[:k]]] = True
    return flat.reshape(mask.shape)


def _structured_weight_masks(model: torch.nn.Module, units: MaskSet) -> MaskSet:
    masks = MaskSet()
    for i, block in enumerate(model.blocks):
        heads, hd = units[head_unit_name(i)], block.attn.head_dim
        rows = heads.repeat_interleave(hd).repeat(3)  # q, k and v rows of each head
        masks[f"blocks.{i}.attn.qkv.weight"] = rows[:, None].expand_as(block.attn.qkv.weight).clone()
        neurons = units[neuron_unit_name(i)]
        masks[f"blocks.{i}.mlp.fc1.weight"] = neurons[:, None].expand_as(block.mlp.fc1.weight).clone()
        masks[f"blocks.{i}.mlp.fc2.weight"] = neurons[None, :].expand_as(block.mlp.fc2.weight).clone()
    return masks


def build_checkpoint(path: Path, *, method: str = "svite", density: float = 0.5, updates: int = 4,
                     swap_fraction: float = 0.1, seed: int = 0, apply_masks: bool = True,
                     zero_dead_bias: bool = True, keep_ratio: float | None = None, **model_overrides) -> dict:
    """Write a tiny checkpoint with masks (``svite``), head/neuron units (``s2vite``) or none
    (``dense``), and a history: init, ``updates`` topology updates, epoch ends; with ``keep_ratio`` the
    model has a token selector whose weights change at every snapshot. Returns the truth (masks per
    snapshot, swapped counts) for the tests to compare with."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    cfg = tiny_model_config(**model_overrides)
    if keep_ratio is not None:
        cfg.selector = SelectorConfig(keep_ratio=keep_ratio)
    model = build_model(cfg)
    selector = getattr(model, "token_selector", None)
    names = default_sparsifiable(model)
    params = dict(model.named_parameters())
    truth: dict = {"masks": [], "units": [], "swapped": []}
    history: list[Snapshot] = []
    masks = units = None
    if method == "svite":
        masks = MaskSet({n: _exact_mask(params[n].shape, density, gen) for n in names})
    elif method == "s2vite":
        units = MaskSet()
        for i, block in enumerate(model.blocks):
            units[head_unit_name(i)] = _exact_mask(torch.Size([block.attn.num_heads]), 0.75, gen)
            units[neuron_unit_name(i)] = _exact_mask(torch.Size([block.mlp.fc1.out_features]), 0.6, gen)
        masks = _structured_weight_masks(model, units)

    def snap(step: int, epoch: float, event: str, **info) -> None:
        truth["masks"].append(masks.clone() if masks is not None else None)
        truth["units"].append(units.clone() if units is not None else None)
        state = {}
        if selector is not None:
            with torch.no_grad():
                for p in selector.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.5)
            state = {f"token_selector.{k}": v for k, v in selector.state_dict().items()}
        history.append(Snapshot.take(step, epoch, masks=masks, units=units, state=state, event=event, **info))

    snap(0, 0.0, "init")
    for u in range(1, updates + 1):
        if method == "svite":
            k = {n: max(1, int(swap_fraction * int(m.sum()))) for n, m in masks.items()}
            masks = MaskSet({n: _swap(m, k[n], gen) for n, m in masks.items()})
            truth["swapped"].append(k)
            snap(10 * u, u / 2, "update", death_rate=0.5 / u)
        elif method == "s2vite":
            units = MaskSet({n: _swap(m, 1, gen) for n, m in units.items()})
            masks = _structured_weight_masks(model, units)
            snap(10 * u, u / 2, "update", death_rate=0.5 / u)
        if u % 2 == 0:
            snap(10 * u, u / 2, "epoch")
    if masks is not None and apply_masks:
        masks.apply(model)
    with torch.no_grad():  # trained biases are not zero (timm initialises them to zero)
        for name, p in params.items():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.1, generator=gen)
    if units is not None and zero_dead_bias:
        with torch.no_grad():
            for i, block in enumerate(model.blocks):
                heads = units[head_unit_name(i)].repeat_interleave(block.attn.head_dim).repeat(3)
                block.attn.qkv.bias.mul_(heads)
                block.mlp.fc1.bias.mul_(units[neuron_unit_name(i)])
    meta = {"method": method, "settings": {"density": density}, "epoch": updates / 2, "step": 10 * updates,
            "metrics": {"val_top1": 42.0, "val_top5": 80.0, "val_loss": 1.5, "density":
                        masks.overall_density() if masks is not None else 1.0}, "complete": True,
            "data": {"source": "demo", "img_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                     "class_names": [f"c{i}" for i in range(10)]}}
    save_checkpoint(path, model, cfg, masks=masks, units=units, fired=None, history=history, meta=meta)
    truth["path"] = path
    return truth


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {m: build_checkpoint(d / f"{m}.safetensors", method=m) for m in ("svite", "s2vite", "dense")}


# ----------------------------------------------------------------------------------------------
def test_block_type_and_depth_name_every_sparsified_weight(tiny_model):
    names = default_sparsifiable(tiny_model)
    types = [block_type(n) for n in names]
    assert types == ["patch", "qkv", "proj", "fc1", "fc2", "qkv", "proj", "fc1", "fc2", "head"]
    assert [layer_depth(n, 2) for n in names] == [-1, 0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert block_type("blocks.3.attn.heads") == "other" and layer_depth("blocks.3.attn.heads") == 3


def test_layer_density_table_matches_masks_and_groups_are_weighted(ckpts):
    loaded = load_checkpoint(ckpts["svite"]["path"])
    masks = checkpoint_masks(loaded)
    table = layer_density_table(masks)
    assert list(table["layer"]) == default_sparsifiable(loaded.model)  # forward order
    for row in table.itertuples():
        assert row.nonzeros == int(masks[row.layer].sum()) and row.numel == masks[row.layer].numel()
        assert row.density == pytest.approx(0.5, abs=1e-3)
    by_type = density_by_group(table, "block_type").set_index("block_type")
    qkv = table[table.block_type == "qkv"]
    assert by_type.loc["qkv", "density"] == pytest.approx(qkv.nonzeros.sum() / qkv.numel.sum())
    stages = list(density_by_group(table, "stage")["stage"])
    assert stages == ["embed", "block 0", "block 1", "head"]
    with pytest.raises(SviteError, match="by must be"):
        density_by_group(table, "nope")
    # a packed snapshot gives the same table as the unpacked masks
    packed = layer_density_table(loaded.history[-1].masks)
    assert packed["nonzeros"].tolist() == layer_density_table(ckpts["svite"]["masks"][-1])["nonzeros"].tolist()


def test_dense_checkpoint_reads_as_density_one(ckpts):
    loaded = load_checkpoint(ckpts["dense"]["path"])
    table = layer_density_table(checkpoint_masks(loaded))
    assert len(table) == 10 and (table["density"] == 1.0).all()
    assert density_evolution(loaded.history).empty
    assert snapshot_distances(loaded.history)[0].shape == (0, 0)
    assert mask_churn(loaded.history).empty and fired_rate(loaded.history).empty
    assert head_survival(loaded.history) is None and neuron_survival(loaded.history) is None
    report = integrity_check(loaded)
    assert report.ok and "stores no masks" in report.checks[0]["detail"]


def test_mask_matrix_downsamples_to_tile_densities():
    gen = torch.Generator().manual_seed(1)
    m = torch.rand(300, 70, generator=gen) > 0.5
    small = mask_matrix(m, max_size=256)
    assert small.shape == (150, 70)  # 300 rows -> tiles of 2 rows
    np.testing.assert_allclose(small, m.float().reshape(150, 2, 70).mean(1).numpy(), atol=1e-6)
    exact = mask_matrix(m[:40], max_size=256)
    np.testing.assert_array_equal(exact, m[:40].float().numpy())
    conv = torch.ones(8, 3, 4, 4, dtype=torch.bool)
    conv[0] = False
    img = mask_matrix(conv)
    assert img.shape == (8, 48) and img[0].sum() == 0 and img[1:].min() == 1
    # uneven tiles: 5 columns in tiles of 2 -> the last tile averages one column only
    odd = torch.tensor([[1, 1, 0, 0, 1]], dtype=torch.bool)
    np.testing.assert_allclose(mask_matrix(odd, max_size=3), [[1.0, 0.0, 1.0]])
    with pytest.raises(SviteError):
        mask_matrix(odd, max_size=0)


def test_density_evolution_matches_unpacked_snapshots(ckpts):
    truth = ckpts["svite"]
    loaded = load_checkpoint(truth["path"])
    evo = density_evolution(loaded.history)
    assert evo["snapshot"].nunique() == len(loaded.history) == len(truth["masks"])
    for (snap, layer), d in evo.set_index(["snapshot", "layer"])["density"].items():
        assert d == pytest.approx(truth["masks"][snap].density()[layer])
    table = history_table(loaded.history)
    assert list(table["event"][:3]) == ["init", "update", "update"]
    assert table["death_rate"].iloc[1] == pytest.approx(0.5)
    assert table["overall_density"].tolist() == pytest.approx([m.overall_density() for m in truth["masks"]])


def test_snapshot_distances_equal_brute_force(ckpts):
    truth = ckpts["svite"]
    loaded = load_checkpoint(truth["path"])
    jac, idx = snapshot_distances(loaded.history, "jaccard")
    ham, _ = snapshot_distances(loaded.history, "hamming")
    assert idx == list(range(len(truth["masks"])))
    flat = [torch.cat([m.reshape(-1) for m in ms.values()]) for ms in truth["masks"]]
    for i in range(len(flat)):
        for j in range(len(flat)):
            inter, union = int((flat[i] & flat[j]).sum()), int((flat[i] | flat[j]).sum())
            assert jac[i, j] == pytest.approx(1 - inter / union)
            assert ham[i, j] == pytest.approx(int((flat[i] ^ flat[j]).sum()) / flat[i].numel())
    assert np.allclose(jac, jac.T) and np.all(np.diag(jac) == 0)
    assert jac[0, 1] > 0  # an update changed the topology
    # the epoch snapshot right after an update has the same topology
    events = [s.info["event"] for s in loaded.history]
    e = events.index("epoch")
    assert jac[e - 1, e] == 0
    one, _ = snapshot_distances(loaded.history, "jaccard", layers=["head.weight"])
    a, b = truth["masks"][0]["head.weight"], truth["masks"][1]["head.weight"]
    assert one[0, 1] == pytest.approx(1 - int((a & b).sum()) / int((a | b).sum()))
    with pytest.raises(SviteError, match="metric"):
        snapshot_distances(loaded.history, "cosine")
    with pytest.raises(SviteError, match="unknown layers"):
        snapshot_distances(loaded.history, layers=["nope"])


def test_churn_counts_the_swapped_weights_and_fired_rate_grows(ckpts):
    truth = ckpts["svite"]
    loaded = load_checkpoint(truth["path"])
    churn = mask_churn(loaded.history)
    updates = churn[churn["event"] == "update"]
    expected = [sum(k.values()) for k in truth["swapped"]]
    assert updates["grown"].tolist() == expected and updates["pruned"].tolist() == expected
    assert (churn[churn["event"] == "epoch"][["grown", "pruned"]] == 0).all().all()
    per_layer = mask_churn(loaded.history, per_layer=True)
    first = per_layer[per_layer["snapshot"] == 1].set_index("layer")["grown"].to_dict()
    assert first == truth["swapped"][0]
    fired = fired_rate(loaded.history)
    assert (fired["fired"].diff().dropna() >= 0).all() and (fired["fired"] >= fired["density"] - 1e-12).all()
    union = truth["masks"][0].clone()
    for ms in truth["masks"]:
        for n in union:
            union[n] = union[n] | ms[n]
    assert fired["fired"].iloc[-1] == pytest.approx(union.overall_density())
    assert fired["fired"].iloc[-1] > fired["density"].iloc[-1]


def test_unit_survival_of_a_structured_run(ckpts):
    truth = ckpts["s2vite"]
    loaded = load_checkpoint(truth["path"])
    heads = head_survival(loaded.history)
    assert heads is not None and set(heads["block"]) == {0, 1} and heads["head"].max() == 3
    for snap in (0, len(truth["units"]) - 1):
        got = heads[(heads.snapshot == snap) & (heads.block == 1)].sort_values("head")["alive"].tolist()
        assert got == truth["units"][snap][head_unit_name(1)].tolist()
    neurons = neuron_survival(loaded.history)
    first = neurons[neurons.snapshot == 0]
    assert (first["survived"] == 1.0).all() and (first["alive"] == round(0.6 * 192)).all()
    last = neurons[neurons.snapshot == neurons.snapshot.max()]
    assert (last["survived"] < 1.0).all()  # a neuron was swapped at every update
    assert head_survival(load_checkpoint(ckpts["svite"]["path"]).history) is None
    grid, table = unit_alive(loaded.units)
    assert grid.shape == (2, 4) and grid.tolist() == [truth["units"][-1][head_unit_name(b)].float().tolist()
                                                      for b in (0, 1)]
    assert table["alive"].tolist() == [int(truth["units"][-1][neuron_unit_name(b)].sum()) for b in (0, 1)]
    assert unit_alive(None) == (None, None)


def test_mask_diff_counts_and_matrix(ckpts):
    truth = ckpts["svite"]
    a, b = truth["masks"][0], truth["masks"][-1]
    diff = mask_diff(a, b).set_index("layer")
    for n in a:
        assert diff.loc[n, "kept"] + diff.loc[n, "pruned"] == int(a[n].sum())
        assert diff.loc[n, "kept"] + diff.loc[n, "grown"] == int(b[n].sum())
    m = mask_diff_matrix(a["blocks.0.attn.qkv.weight"], b["blocks.0.attn.qkv.weight"])
    assert set(np.unique(m)) <= {-1.0, 0.0, 1.0}
    assert int((m == 1).sum()) == diff.loc["blocks.0.attn.qkv.weight", "grown"]
    assert int((m == -1).sum()) == diff.loc["blocks.0.attn.qkv.weight", "pruned"]
    with pytest.raises(SviteError, match="shapes differ"):
        mask_diff_matrix(a["head.weight"], a["blocks.0.attn.qkv.weight"])
    loaded = load_checkpoint(truth["path"])
    frames = layer_frames(loaded.history, "head.weight")
    assert len(frames) == len(loaded.history)
    np.testing.assert_array_equal(frames[1][1], truth["masks"][1]["head.weight"].float().numpy())
    assert torch.equal(snapshot_layer_mask(loaded.history[2], "head.weight"), truth["masks"][2]["head.weight"])


def test_integrity_passes_for_applied_masks_and_catches_unapplied_ones(ckpts, tmp_path):
    good = integrity_check(load_checkpoint(ckpts["svite"]["path"]))
    assert good.ok and len(good.checks) == 2 and (good.layers["stray_nonzeros"] == 0).all()
    bad_truth = build_checkpoint(tmp_path / "bad.safetensors", apply_masks=False)
    bad = integrity_check(load_checkpoint(bad_truth["path"]))
    assert not bad.ok
    expected = sum(int((~m).sum()) for m in bad_truth["masks"][-1].values())  # random init weights are nonzero
    assert bad.checks[0]["value"] == expected and not bad.checks[0]["passed"]
    assert not bad.checks[1]["passed"] and bad.checks[1]["value"] > 1e-3
    assert bad.to_dict()["ok"] is False


def test_integrity_of_dead_units(ckpts, tmp_path):
    good = integrity_check(load_checkpoint(ckpts["s2vite"]["path"]))
    assert good.ok and good.checks[-1]["check"] == "masked heads/neurons have no effect"
    # a dead head whose value bias was left in still adds proj·b_v to the output: caught
    leaky = build_checkpoint(tmp_path / "leaky.safetensors", method="s2vite", zero_dead_bias=False)
    report = integrity_check(load_checkpoint(leaky["path"]))
    assert report.checks[0]["passed"]  # the weights do match their masks...
    assert not report.checks[-1]["passed"] and not report.ok  # ...but the dead units still act


def test_flops_and_speed_tables(ckpts):
    loaded = load_checkpoint(ckpts["svite"]["path"])
    f = flops_summary(loaded)
    assert 0.4 < f["ratio"] < 0.75 and f["sparse"] < f["dense"]  # Linear FLOPs halve; attention matmuls stay
    dense = flops_summary(load_checkpoint(ckpts["dense"]["path"]))
    assert dense["ratio"] == pytest.approx(1.0) and dense["dense"] == f["dense"]
    speed = speed_comparison(loaded, batch_size=4, iters=1)
    assert speed["model"].tolist() == ["dense", "this checkpoint"] and (speed["images_per_s"] > 0).all()
    assert speed["speedup"].iloc[0] == 1.0
    structured = speed_comparison(load_checkpoint(ckpts["s2vite"]["path"]), batch_size=2, iters=1)
    assert structured["model"].tolist() == ["dense", "this checkpoint", "compacted"]


def test_checkpoint_masks_skip_unit_masks(ckpts):
    loaded = load_checkpoint(ckpts["s2vite"]["path"])
    masks = checkpoint_masks(loaded)
    assert {block_type(n) for n in masks} == {"qkv", "fc1", "fc2"}
    table = layer_density_table(masks).set_index("layer")
    assert table.loc["blocks.0.attn.qkv.weight", "density"] == pytest.approx(0.75)  # 3 of 4 heads


def test_young_pruning_counts_what_each_update_undid_of_the_one_before(ckpts):
    """Brute force over the truth masks: the weights each update pruned, the share of them grown at the
    update before, that share's chance level (the young ones' share of the active weights) and the share
    of the previous update's new connections pruned again."""
    truth = ckpts["svite"]
    loaded = load_checkpoint(truth["path"])
    table = young_pruning(loaded.history)
    events = [s.info.get("event") for s in loaded.history]
    ups = [i for i, e in enumerate(events) if e == "update"]
    assert len(table) == len(ups) - 1 > 0
    masks = truth["masks"]
    for row, (p, u) in zip(table.itertuples(), zip(ups, ups[1:], strict=False), strict=True):
        names = [n for n in masks[u] if masks[u][n].dim() >= 2]
        grown = {n: masks[p][n] & ~masks[p - 1][n] for n in names}
        cut = {n: masks[u - 1][n] & ~masks[u][n] for n in names}
        pruned = sum(int(cut[n].sum()) for n in names)
        young_cut = sum(int((grown[n] & cut[n]).sum()) for n in names)
        young = sum(int(grown[n].sum()) for n in names)
        active = sum(int(masks[u - 1][n].sum()) for n in names)
        assert row.snapshot == u and row.pruned == pruned > 0
        assert row.young_share_of_pruned == pytest.approx(young_cut / pruned)
        assert row.young_share_of_active == pytest.approx(young / active)
        assert row.young_pruned_again == pytest.approx(young_cut / young)
