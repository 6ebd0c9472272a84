"""SViTE (unstructured DST) and its static / one-shot baselines: budgets, scorers, schedule wiring,
optimizer-state handling, resume, and the ERK distribution against the reference's numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_model_config, tiny_train_config
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.dst import EngineContext, build_engine
from sparsity_core.dst.budgets import layer_budgets, layer_densities
from sparsity_core.dst.schedule import PruneSchedule
from sparsity_core.dst.scorers import WEIGHT_GROWTH
from sparsity_core.dst.unstructured import OneShotEngine, SViTEEngine
from sparsity_core.dst.weights import exchange
from sparsity_core.errors import FlagError, SviteError
from sparsity_core.masks.maskset import MaskSet
from sparsity_core.models.builder import ModelConfig, build_model
from sparsity_core.models.units import sparsifiable_names
from sparsity_core.training.config import TrainConfig, check_method_flags
from sparsity_core.training.loop import train


class Layers(nn.Module):
    """Bare parameters of arbitrary 2-D / 4-D shapes (names ``w.0``, ``w.1``, ...)."""

    def __init__(self, shapes):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(s)) for s in shapes])


def make_engine(model, method="svite", total_steps=100, lr=1e-2, init_masks=None, **cfg):
    config = TrainConfig(method=method, **{"update_start": "warmup", **cfg})  # fed no loss: plateau would refuse
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ctx = EngineContext(model=model, optimizer=opt, total_steps=total_steps, steps_per_epoch=10, config=config,
                        init_masks=init_masks)
    return build_engine(ctx), opt


def named(model):
    return dict(model.named_parameters())


def assert_exact(engine, model):
    """Each layer's nonzero count is its budget; masked weights are exactly zero; fired covers masks."""
    params = named(model)
    for name, mask in engine.masks.items():
        assert int(mask.sum()) == engine.budgets[name], name
        assert torch.count_nonzero(params[name].detach()[~mask]) == 0, name
        assert bool((engine.fired[name] | ~mask).all()), name


# ----------------------------------------------------------------------------------------------
# distribution
def deit_small_shapes():
    shapes = {"patch_embed.proj.weight": (384, 3, 16, 16)}
    for i in range(12):
        shapes.update({f"blocks.{i}.attn.qkv.weight": (1152, 384), f"blocks.{i}.attn.proj.weight": (384, 384),
                       f"blocks.{i}.mlp.fc1.weight": (1536, 384), f"blocks.{i}.mlp.fc2.weight": (384, 1536)})
    shapes["head.weight"] = (1000, 384)
    return shapes


def test_erk_densities_match_the_reference_for_deit_small_at_0_4():
    model = build_model(ModelConfig(name="deit_small_patch16_224"))
    params = named(model)
    names = sparsifiable_names(model)
    shapes = {n: tuple(params[n].shape) for n in names}
    assert shapes == deit_small_shapes()  # the reference's rule picks exactly these weights
    d = layer_densities(shapes, 0.4, "fixed_ERK")
    expected = {"patch_embed.proj.weight": 0.165, "attn.qkv": 0.403, "attn.proj": 0.604, "mlp.fc1": 0.378,
                "mlp.fc2": 0.378, "head.weight": 0.418}
    for name, density in d.items():
        key = next(k for k in expected if k in name)
        assert density == pytest.approx(expected[key], abs=0.01), name
    budgets = layer_budgets(shapes, d)
    total = sum(math.prod(s) for s in shapes.values())
    assert abs(sum(budgets.values()) - 0.4 * total) <= len(shapes)  # overall density is the target


def test_erk_caps_layers_at_dense_and_resolves_like_the_reference():
    """§1: at d=0.7 attn.proj becomes dense for DeiT-S; the others share the remaining budget."""
    shapes = deit_small_shapes()
    d = layer_densities(shapes, 0.7, "fixed_ERK")
    assert all(d[f"blocks.{i}.attn.proj.weight"] == 1.0 for i in range(12))
    assert all(v < 1.0 for n, v in d.items() if "attn.proj" not in n)
    total = sum(math.prod(s) for s in shapes.values())
    assert sum(d[n] * math.prod(s) for n, s in shapes.items()) == pytest.approx(0.7 * total, rel=1e-9)
    assert set(layer_densities(shapes, 1.0, "fixed_ERK").values()) == {1.0}


def test_er_uniform_and_erk_differ_only_where_they_should():
    linear_only = {"a": (64, 32), "b": (32, 128), "c": (10, 32)}
    assert layer_densities(linear_only, 0.3, "ER") == pytest.approx(layer_densities(linear_only, 0.3, "fixed_ERK"))
    with_conv = {"conv": (96, 3, 4, 4), **linear_only}
    er, erk = layer_densities(with_conv, 0.3, "ER"), layer_densities(with_conv, 0.3, "fixed_ERK")
    # ER treats the conv as its (C_out x C_in*kh*kw) matrix; ERK counts kh, kw as dimensions
    assert er["conv"] != pytest.approx(erk["conv"])
    for dens in (er, erk):
        mean = sum(dens[n] * math.prod(s) for n, s in with_conv.items()) / sum(math.prod(s) for s in with_conv.values())
        assert mean == pytest.approx(0.3)
    assert set(layer_densities(with_conv, 0.3, "uniform").values()) == {0.3}


def test_custom_densities_from_a_json_file(tmp_path):
    model = Layers([(8, 8), (4, 16)])
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"w.0": 0.25, "w.1_mask": 0.5}))  # the reference's '<param>_mask' keys work too
    engine, _ = make_engine(model, method="static", sparse_init="custom", mask_path=str(path))
    assert engine.budgets == {"w.0": 16, "w.1": 32}
    assert_exact(engine, model)
    assert engine.describe()["settings"]["layer_densities"] == {"w.0": 0.25, "w.1": 0.5}


@pytest.mark.parametrize("content,message", [
    (None, "needs --mask-path"),
    ("{not json", "not a JSON file"),
    ('{"w.0": 0.5}', "no density for"),
    ('{"w.0": 0.5, "w.1": 0.5, "w.9": 0.5}', "'w.9' is not a sparsified parameter"),
    ('{"w.0": 0.0, "w.1": 0.5}', "must be a number in"),
    ('[0.5, 0.5]', "expected a JSON object"),
])
def test_custom_densities_reject_bad_files(tmp_path, content, message):
    path = None
    if content is not None:
        path = tmp_path / "d.json"
        path.write_text(content)
    with pytest.raises(SviteError, match=message):
        make_engine(Layers([(8, 8), (4, 16)]), sparse_init="custom", mask_path=str(path) if path else None)


def test_selection_rule_and_include_exclude(tiny_model):
    default = sparsifiable_names(tiny_model)
    assert default == ["patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                       "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight", "blocks.1.attn.qkv.weight",
                       "blocks.1.attn.proj.weight", "blocks.1.mlp.fc1.weight", "blocks.1.mlp.fc2.weight", "head.weight"]
    assert sparsifiable_names(tiny_model, exclude=["head.*", "patch_embed.*"]) == default[1:-1]
    assert sparsifiable_names(tiny_model, include=["blocks.1.*"]) == default[5:9]  # weights only, no bias/norm
    assert sparsifiable_names(tiny_model, include=["pos_embed", "head.weight"]) == ["pos_embed", "head.weight"]
    with pytest.raises(SviteError, match="--exclude 'blocks.9.*'"):
        sparsifiable_names(tiny_model, exclude=["blocks.9.*"])
    with pytest.raises(SviteError, match="no parameter"):
        sparsifiable_names(tiny_model, include=["blocks.0.norm1.*"])  # 1-D only


# ----------------------------------------------------------------------------------------------
# scorers
def test_exchange_prunes_smallest_magnitude_and_grows_largest_gradient():
    w = torch.tensor([5.0, -1.0, 3.0, 0.0, 0.0, 2.0], requires_grad=True)
    mask = torch.tensor([1, 1, 1, 0, 0, 1], dtype=torch.bool)
    w.grad = torch.tensor([0.0, 9.0, 0.0, 1.0, 7.0, 0.0])
    pruned, grown, revived = exchange(w, mask, 2, WEIGHT_GROWTH["gradient"])
    assert sorted(pruned.tolist()) == [1, 5]  # |-1| and |2|
    assert sorted(grown.tolist()) == [1, 4]  # just-pruned 1 comes straight back; 3 (|g|=1) loses to 4
    assert dict(zip(grown.tolist(), revived.tolist(), strict=True)) == {1: True, 4: False}
    assert mask.tolist() == [True, True, True, False, True, False]  # applied in place


@pytest.mark.parametrize("growth", ["gradient", "random"])
@pytest.mark.parametrize("grad", ["zero", "none"])
def test_exchange_is_exact_with_ties_and_zero_gradients(growth, grad):
    w = torch.ones(50, requires_grad=True)  # every active magnitude tied
    w.grad = torch.zeros(50) if grad == "zero" else None
    mask = torch.zeros(50, dtype=torch.bool)
    mask[::2] = True
    before = mask.clone()
    pruned, grown, revived = exchange(w, mask, 7, WEIGHT_GROWTH[growth], None, torch.Generator().manual_seed(0))
    assert len(set(pruned.tolist())) == 7 and all(before[pruned])
    eligible = ~before
    eligible[pruned] = True
    assert len(set(grown.tolist())) == 7 and all(eligible[grown])
    assert int(mask.sum()) == 25 and torch.equal(revived, before[grown])


def test_revived_weights_keep_their_value_and_moments():
    """A weight pruned and grown straight back never left: value and AdamW moments untouched."""
    model = Layers([(1, 8)])
    p = model.w[0]
    engine, opt = make_engine(model, total_steps=100, update_frequency=1, sparse_init="uniform", density=0.5,
                              death_rate=0.3, decay_schedule="constant")
    p.grad = torch.ones(1, 8)
    opt.step()
    with torch.no_grad():
        p.copy_(torch.arange(1.0, 9.0).view(1, 8))
    active = engine.masks["w.0"].view(-1).nonzero().squeeze(1)
    smallest = int(active[0])  # arange: the lowest active index has the smallest magnitude
    grad = (~engine.masks["w.0"]).float() * 0.1  # the inactive weights beat the other pruned one (0) ...
    grad.view(-1)[smallest] = 50.0  # ... and the smallest active weight has by far the largest gradient
    p.grad = grad
    moments = {k: opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")}
    assert engine.after_optimizer_step(0)
    assert engine.snapshot_info()["revived"] == {"w.0": 1}
    assert bool(engine.masks["w.0"].view(-1)[smallest])
    assert float(p.detach().view(-1)[smallest]) == smallest + 1.0
    for k, v in moments.items():
        assert float(opt.state[p][k].view(-1)[smallest]) == float(v.view(-1)[smallest])


SHAPES = st.one_of(st.tuples(st.integers(1, 12), st.integers(1, 12)),
                   st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
UPDATES_PER_EXAMPLE = 10


@st.composite
def scenarios(draw):
    return dict(shapes=draw(st.lists(SHAPES, min_size=1, max_size=4)), density=draw(st.floats(0.02, 1.0)),
                sparse_init=draw(st.sampled_from(["fixed_ERK", "ER", "uniform"])),
                growth=draw(st.sampled_from(["gradient", "random"])), death_rate=draw(st.floats(0.0, 0.99)),
                decay=draw(st.sampled_from(["cosine", "constant"])),
                policy=draw(st.sampled_from(["keep", "zero-avg", "zero"])),
                weights=draw(st.sampled_from(["random", "tied", "zero"])),
                grads=draw(st.sampled_from(["random", "tied", "zero", "none"])), seed=draw(st.integers(0, 2**16)))


def _run_scenario(sc) -> int:
    torch.manual_seed(sc["seed"])
    model = Layers(sc["shapes"])
    total = UPDATES_PER_EXAMPLE + 1
    engine, opt = make_engine(model, total_steps=total, update_frequency=1, t_end=1.0, density=sc["density"],
                              sparse_init=sc["sparse_init"], growth=sc["growth"], death_rate=sc["death_rate"],
                              decay_schedule=sc["decay"], grown_moments=sc["policy"], seed=sc["seed"])
    params = named(model)
    assert_exact(engine, model)
    updates = 0
    for step in range(UPDATES_PER_EXAMPLE):
        before = engine.masks.clone()
        for p in params.values():
            p.grad = {"random": lambda s: torch.randn(s), "tied": lambda s: torch.randint(-1, 2, s).float(),
                      "zero": torch.zeros, "none": lambda s: None}[sc["grads"]](p.shape)
        opt.step()
        with torch.no_grad():  # what the step left, made adversarial: ties everywhere, masked entries nonzero
            for p in params.values():
                if sc["weights"] == "tied":
                    p.copy_(torch.randint(-2, 3, p.shape).float() / 10)
                elif sc["weights"] == "zero":
                    p.zero_()
        changed = engine.after_optimizer_step(step)
        assert changed == engine.schedule.is_update_step(step + 1)
        updates += int(changed)
        assert_exact(engine, model)
        rate = engine.schedule.rate(step + 1)
        for name, mask in engine.masks.items():
            new = mask & ~before[name]
            n = PruneSchedule.n_prune(rate, engine.budgets[name]) if engine.budgets[name] < mask.numel() else 0
            assert int(new.sum()) <= n
            assert engine.snapshot_info().get("pruned", {}).get(name, 0) == n
            state = opt.state.get(params[name], {})
            assert torch.count_nonzero(params[name].detach()[new]) == 0  # new connections start at zero
            if sc["policy"] != "keep" and state:
                assert torch.count_nonzero(state["exp_avg"][new]) == 0
            if sc["policy"] == "zero" and state:
                assert torch.count_nonzero(state["exp_avg_sq"][new]) == 0
    return updates


def test_budgets_stay_exact_over_1000_random_prune_grow_steps():
    """Random shapes, densities, distributions, growth modes, tied / all-zero weights and gradients:
    after every one of >= 1000 updates each layer holds exactly its budget and masked weights are 0."""
    done = {"updates": 0}

    @settings(max_examples=100, deadline=None, database=None)
    @given(sc=scenarios())
    def run(sc):
        done["updates"] += _run_scenario(sc)

    run()
    assert done["updates"] >= 1000


def _stepped_engine(policy):
    """One 8x8 layer at density 0.5 whose AdamW moments are nonzero everywhere, then an update step
    with a gradient that is huge at three inactive positions."""
    torch.manual_seed(0)
    model = Layers([(8, 8)])
    p = model.w[0]
    engine, opt = make_engine(model, total_steps=20, update_frequency=2, sparse_init="uniform", density=0.5,
                              grown_moments=policy, update_start="0")
    p.grad = torch.randn(8, 8)
    opt.step()
    assert not engine.after_optimizer_step(0)
    targets = (~engine.masks["w.0"]).reshape(-1).nonzero().squeeze(1)[:3]
    grad = torch.randn(8, 8) * 1e-3
    grad.view(-1)[targets] = 100.0
    p.grad = grad
    opt.step()
    kept_before = engine.masks["w.0"].clone()
    assert engine.after_optimizer_step(1)  # steps_done 2: an update
    return engine, opt, p, targets, kept_before


def test_regrown_weights_start_at_zero_with_zeroed_moments_when_asked():
    engine, opt, p, targets, before = _stepped_engine("zero")
    mask = engine.masks["w.0"].reshape(-1)
    assert bool(mask[targets].all())  # the largest gradients were grown
    new = (engine.masks["w.0"] & ~before).reshape(-1)
    assert int(new.sum()) >= 3
    assert torch.count_nonzero(p.detach().reshape(-1)[new]) == 0
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.count_nonzero(opt.state[p][key].reshape(-1)[new]) == 0
        assert torch.count_nonzero(opt.state[p][key].reshape(-1)[mask & ~new]) > 0  # the others are untouched
    kept = (engine.masks["w.0"] & before).reshape(-1)
    assert torch.count_nonzero(p.detach().reshape(-1)[kept]) == int(kept.sum())  # survivors keep their values


def test_default_keeps_the_moments_of_grown_weights_like_the_reference():
    engine, opt, p, targets, before = _stepped_engine("keep")
    new = (engine.masks["w.0"] & ~before).reshape(-1)
    assert torch.count_nonzero(p.detach().reshape(-1)[new]) == 0  # still start at zero
    assert torch.count_nonzero(opt.state[p]["exp_avg"].reshape(-1)[new]) == int(new.sum())
    assert torch.count_nonzero(opt.state[p]["exp_avg_sq"].reshape(-1)[new]) == int(new.sum())
    assert TrainConfig().grown_moments == "keep"


def test_momentum_growth_ranks_by_the_optimizers_first_moment():
    """--growth momentum grows where |exp_avg| is largest, not where the last minibatch's |grad| is."""
    torch.manual_seed(0)
    model = Layers([(8, 8)])
    p = model.w[0]
    engine, opt = make_engine(model, total_steps=20, update_frequency=1, sparse_init="uniform", density=0.5,
                              growth="momentum", death_rate=0.1, decay_schedule="constant")
    inactive = (~engine.masks["w.0"]).reshape(-1).nonzero().squeeze(1)
    by_moment, by_grad = inactive[:4], inactive[4:8]
    p.grad = torch.zeros(8, 8)
    opt.step()  # creates the AdamW state
    with torch.no_grad():
        opt.state[p]["exp_avg"].zero_()
        opt.state[p]["exp_avg"].view(-1)[by_moment] = 50.0
    p.grad = torch.zeros(8, 8)
    p.grad.view(-1)[by_grad] = 100.0
    engine.update(1)
    grown = engine.masks["w.0"].reshape(-1)
    assert bool(grown[by_moment].all()) and not bool(grown[by_grad].any())


def test_zero_avg_zeroes_only_the_first_moment_of_grown_weights():
    engine, opt, p, targets, before = _stepped_engine("zero-avg")
    new = (engine.masks["w.0"] & ~before).reshape(-1)
    assert torch.count_nonzero(opt.state[p]["exp_avg"].reshape(-1)[new]) == 0
    assert torch.count_nonzero(opt.state[p]["exp_avg_sq"].reshape(-1)[new]) == int(new.sum())


def test_fully_dense_layers_are_skipped_and_the_rate_is_recorded():
    torch.manual_seed(0)
    model = Layers([(4, 4), (16, 16)])
    engine, opt = make_engine(model, total_steps=10, update_frequency=1, density=0.5)
    assert engine.budgets["w.0"] == 16  # ERK makes the small layer dense
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    assert engine.after_optimizer_step(0)
    info = engine.snapshot_info()
    assert "w.0" not in info["pruned"] and info["pruned"]["w.1"] == math.ceil(engine.schedule.rate(1) * engine.budgets["w.1"])
    assert info["rate"] == pytest.approx(engine.schedule.rate(1)) and info["last_update_step"] == 1
    assert bool(engine.masks["w.0"].all())


def test_topology_decisions_are_rank_independent():
    """DDP ranks hold identical weights and averaged gradients: with the same seed they must take the
    same decisions (random growth included) without any broadcast."""
    engines = []
    for rank in (0, 1):
        torch.manual_seed(0)
        model = Layers([(16, 8), (2, 3, 4, 4)])
        config = TrainConfig(method="svite", growth="random", update_frequency=1, seed=7, density=0.3,
                             update_start="warmup")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        engine = build_engine(EngineContext(model=model, optimizer=opt, total_steps=10, steps_per_epoch=5,
                                            config=config, world_size=2, rank=rank))
        torch.manual_seed(123)  # the global stream differs from the engine's private generator
        for step in range(4):
            for p in model.parameters():
                p.grad = torch.ones_like(p)
            opt.step()
            engine.after_optimizer_step(step)
        engines.append(engine)
    assert engines[0].masks.equal(engines[1].masks) and engines[0].fired.equal(engines[1].fired)


def test_engine_state_restores_random_growth_exactly():
    """The private generator's state travels in state_dict, so SET growth after a resume draws exactly
    what an uninterrupted run draws."""
    def fresh():
        torch.manual_seed(0)
        model = Layers([(12, 10), (3, 2, 4, 4)])
        return model, *make_engine(model, total_steps=20, update_frequency=1, growth="random", density=0.4, seed=3)

    def steps(model, engine, opt, start, stop):
        for step in range(start, stop):
            torch.manual_seed(100 + step)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            opt.step()
            engine.after_optimizer_step(step)

    model_a, engine_a, opt_a = fresh()
    steps(model_a, engine_a, opt_a, 0, 6)
    model_b, engine_b, opt_b = fresh()
    steps(model_b, engine_b, opt_b, 0, 3)
    model_c, engine_c, opt_c = fresh()
    engine_c.load_state_dict(engine_b.state_dict())
    model_c.load_state_dict(model_b.state_dict())
    opt_c.load_state_dict(opt_b.state_dict())
    steps(model_c, engine_c, opt_c, 3, 6)
    assert engine_c.masks.equal(engine_a.masks) and engine_c.fired.equal(engine_a.fired)
    assert all(torch.equal(a, c) for a, c in zip(model_a.parameters(), model_c.parameters(), strict=True))
    assert engine_c.updates_done == engine_a.updates_done == 6
    with pytest.raises(SviteError, match="budgets"):
        engine_d = make_engine(Layers([(12, 10), (3, 2, 4, 4)]), total_steps=20, density=0.6)[0]
        engine_d.load_state_dict(engine_b.state_dict())


def test_static_masks_never_change_and_oneshot_prunes_once():
    torch.manual_seed(0)
    model = Layers([(16, 16), (8, 32)])
    static, opt = make_engine(model, method="static", total_steps=10, update_frequency=1, density=0.3)
    assert isinstance(static, SViTEEngine) and static.schedule is None
    init = static.masks.clone()
    for step in range(5):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        assert not static.after_optimizer_step(step)
        assert static.masks.equal(init)
        assert_exact(static, model)

    torch.manual_seed(0)
    model = Layers([(16, 16), (8, 32)])
    oneshot, opt = make_engine(model, method="oneshot", total_steps=10, density=0.3, oneshot_at=0.4)
    assert isinstance(oneshot, OneShotEngine) and oneshot.masks.overall_density() == 1.0
    events = []
    for step in range(10):
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        if step + 1 == 4:
            magnitudes = {n: p.detach().abs().clone() for n, p in model.named_parameters()}
        events.append(oneshot.after_optimizer_step(step))
    assert events == [False] * 3 + [True] + [False] * 6  # pruned once, right after step 4 = 0.4 * T
    for name, mask in oneshot.masks.items():
        assert int(mask.sum()) == oneshot.budgets[name]
        kept = magnitudes[name][mask]
        assert kept.min() >= magnitudes[name][~mask].max()  # kept the largest magnitudes at the prune step
        assert torch.count_nonzero(named(model)[name].detach()[~mask]) == 0


@pytest.mark.parametrize("overrides,message", [
    (dict(method="oneshot", oneshot_at=1.0), "--oneshot-at"),
    (dict(growth="lottery"), "--growth"),
    (dict(death="SET"), "--death"),
    (dict(sparse_init="snip"), "--sparse-init"),
])
def test_bad_settings_raise_one_line_errors(overrides, message):
    with pytest.raises(FlagError, match=message) as caught:  # checked with the flags, before any model exists
        check_method_flags(TrainConfig(**{"method": "svite", **overrides}))
    assert caught.value.flag == message


def test_an_include_glob_that_matches_nothing_is_a_one_line_error():
    with pytest.raises(SviteError, match="--include"):  # needs the model: checked by the engine
        make_engine(Layers([(8, 8)]), include=["nothing.*"])


def test_flags_can_be_checked_before_any_model_exists(tmp_path):
    check_method_flags(TrainConfig(method="svite"))
    for overrides, message in [(dict(method="oneshot", oneshot_at=0.0), "--oneshot-at"),
                               (dict(sparse_init="custom"), "needs --mask-path"),
                               (dict(sparse_init="custom", mask_path=str(tmp_path / "nope.json")), "no such file")]:
        with pytest.raises(SviteError, match=message):
            check_method_flags(TrainConfig(**{"method": "svite", **overrides}))


def test_init_masks_are_used_and_rescaled_to_the_budget():
    torch.manual_seed(0)
    model = Layers([(10, 10), (10, 10)])
    m0 = torch.zeros(10, 10, dtype=torch.bool)
    m0[:5] = True  # 50 active: exactly the uniform-0.5 budget -> kept as is
    m1 = torch.zeros(10, 10, dtype=torch.bool)
    m1[:8] = True  # 80 active: too many -> keep the 50 largest |w| among them
    engine, _ = make_engine(model, method="static", sparse_init="uniform", density=0.5,
                            init_masks=MaskSet({"w.0": m0, "w.1": m1}))
    assert torch.equal(engine.masks["w.0"], m0)
    assert not bool((engine.masks["w.1"] & ~m1).any())
    assert engine.init_topology == {"source": "init", "adjusted_layers": ["w.1"]}
    assert_exact(engine, model)
    with pytest.raises(SviteError, match="has shape"):
        make_engine(Layers([(10, 10), (10, 10)]), init_masks=MaskSet({"w.0": m0, "w.1": torch.ones(5, 20)}))
    with pytest.raises(SviteError, match="do not cover 'w.1'"):
        make_engine(Layers([(10, 10), (10, 10)]), init_masks=MaskSet({"w.0": m0}))


# ----------------------------------------------------------------------------------------------
# through the training loop
def _run(path, **overrides):
    base = dict(method="svite", train_size=64, val_size=16, batch_size=16, update_frequency=2)  # 4 steps/epoch, T=8
    base.update(overrides)
    return train(tiny_train_config(path, **base), show_progress=False, echo_metrics=False)


def test_resumed_svite_run_is_bit_identical(tmp_path):
    """2 epochs in one go vs 1 epoch + --resume: same weights, masks, fired masks and history, bit for bit."""
    growth = "gradient"
    full = load_checkpoint(_run(tmp_path / "full", growth=growth))
    _run(tmp_path / "part", growth=growth, max_steps=4)  # stops at the end of epoch 1
    resumed = load_checkpoint(_run(tmp_path / "part", growth=growth, resume=str(tmp_path / "part")))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.masks.equal(resumed.masks) and full.fired.equal(resumed.fired)
    assert [(s.step, s.info) for s in full.history] == [(s.step, s.info) for s in resumed.history]
    assert all(x.masks.unpack().equal(y.masks.unpack()) for x, y in zip(full.history, resumed.history, strict=True))
    # what the run recorded: an update snapshot at steps 2, 4, 6 (< 0.8 * 8), epoch ends at 4 and 8
    assert [(s.step, s.info["event"]) for s in full.history] == [
        (0, "init"), (2, "update"), (4, "update"), (4, "epoch"), (6, "update"), (8, "epoch")]
    budgets = full.meta["settings"]["layer_budgets"]
    assert full.masks.nonzeros() == budgets
    assert all(s.masks.unpack().nonzeros() == budgets for s in full.history)
    params = full.model.state_dict()
    assert all(torch.count_nonzero(params[n][~m]) == 0 for n, m in full.masks.items())
    assert full.method == "svite" and full.meta["settings"]["growth"] == growth
    assert full.meta["settings"]["num_updates"] == 3
    assert 0.5 <= full.fired.overall_density() <= 1.0


def test_oneshot_run_records_its_prune_step_in_history(tmp_path):
    loaded = load_checkpoint(_run(tmp_path / "run", method="oneshot", oneshot_at=0.5))
    events = [(s.step, s.info["event"], round(s.info["overall_density"], 2)) for s in loaded.history]
    assert events == [(0, "init", 1.0), (4, "update", 0.5), (4, "epoch", 0.5), (8, "epoch", 0.5)]
    assert loaded.masks.nonzeros() == loaded.meta["settings"]["layer_budgets"]
    params = loaded.model.state_dict()
    assert all(torch.count_nonzero(params[n][~m]) == 0 for n, m in loaded.masks.items())


def test_svite_engine_is_built_for_the_tiny_vit():
    model = build_model(tiny_model_config())
    engine, _ = make_engine(model, total_steps=50, density=0.4)
    settings_ = engine.describe()["settings"]
    assert engine.describe()["method"] == "svite"
    assert settings_["overall_density"] == pytest.approx(0.4, abs=0.01)
    assert set(settings_) >= {"density", "sparse_init", "update_frequency", "death_rate", "decay_schedule", "t_end",
                              "growth", "death", "grown_moments", "update_start", "update_start_step",
                              "layer_densities"}
    assert_exact(engine, model)


def test_plateau_start_holds_updates_until_the_loss_falls_and_resumes_alike():
    """--update-start plateau, on the engine: the losses the loop feeds decide when updates start; an engine
    restored from a state saved while waiting decides exactly as the one that never stopped."""
    def engine():
        torch.manual_seed(0)
        model = Layers([(12, 10)])
        return make_engine(model, total_steps=200, update_frequency=5, t_end=1.0, density=0.5,
                           update_start="plateau")

    (a, _), (b, _) = engine(), engine()
    events = []
    for step in range(120):
        loss = 2.3 if step < 60 else 1.0
        for p in list(a.ctx.model.parameters()) + list(b.ctx.model.parameters()):
            p.grad = torch.ones_like(p)
        changed = a.after_optimizer_step(step, loss=loss)
        events.append(changed)
        if step == 40:
            b.load_state_dict(a.state_dict())
        if step > 40:
            assert b.after_optimizer_step(step, loss=loss) == changed
    first = events.index(True) + 1
    assert 60 < first <= 120 and first % 5 == 0
    assert all(events[s - 1] for s in range(first, 121, 5))
    assert a.snapshot_info()["updates_started_at"] == first == b.clock.started_at
    assert a.describe()["settings"]["updates_started_at"] == first


def test_mature_death_prunes_last_update_growth_only_after_every_older_weight():
    """--death magnitude-mature: the new connections of one update (at 0, the smallest weights) are not
    pruned at the next while older weights remain to prune; budgets stay exact; a resumed engine decides
    exactly as an uninterrupted one. The reference rule prunes most of them straight away."""
    def run(death, stop=6, state=None):
        torch.manual_seed(0)
        model = Layers([(12, 10), (16, 8)])
        engine, opt = make_engine(model, total_steps=40, update_frequency=1, density=0.4, seed=3, death=death,
                                  death_rate=0.3, t_end=1.0)
        start = 0
        if state is not None:
            engine.load_state_dict(state[0])
            model.load_state_dict(state[1])
            opt.load_state_dict(state[2])
            start = state[3]
        young_pruned = young_total = 0
        previous = None
        for step in range(start, stop):
            torch.manual_seed(100 + step)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            before = {n: m.clone() for n, m in engine.masks.items()}
            opt.step()
            engine.after_optimizer_step(step)
            after = {n: m.clone() for n, m in engine.masks.items()}
            assert_exact(engine, model)
            if previous is not None:
                for n in after:
                    grown = previous[1][n] & ~previous[0][n]
                    young_total += int(grown.sum())
                    young_pruned += int((grown & before[n] & ~after[n]).sum())
            previous = (before, after)
        return engine, model, opt, young_pruned, young_total

    engine, _, _, young_pruned, young_total = run("magnitude-mature")
    assert young_total > 0 and young_pruned == 0
    _, _, _, reference_pruned, _ = run("magnitude")
    assert reference_pruned > 0  # the reference prunes fresh zeros first: the mechanism this rule removes
    half = run("magnitude-mature", stop=3)
    resumed = run("magnitude-mature", stop=6, state=(half[0].state_dict(), half[1].state_dict(),
                                                      half[2].state_dict(), 3))[0]
    assert resumed.masks.equal(engine.masks)
