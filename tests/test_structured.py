"""S2ViTE: exact head/neuron budgets, masked units without effect, Taylor scores, resume, compaction."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_model_config, tiny_train_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from timm.layers import Mlp
from timm.models.vision_transformer import Attention

from sparsity_core.checkpoint import load_checkpoint, save_checkpoint
from sparsity_core.cli import main
from sparsity_core.dst import EngineContext, build_engine
from sparsity_core.dst.select import select_units as select_top
from sparsity_core.dst.structured import prune_and_grow
from sparsity_core.errors import SviteError
from sparsity_core.masks.maskset import MaskSet, head_unit_name, neuron_unit_name
from sparsity_core.models.builder import ModelConfig, build_model
from sparsity_core.models.compact import compact_model, max_logit_diff, reshape_blocks
from sparsity_core.models.units import head_rows, unit_weight_masks
from sparsity_core.training.config import TrainConfig, check_method_flags
from sparsity_core.training.flags import unused_flags
from sparsity_core.training.loop import train


def _engine(model, total_steps=12, optimizer=None, **overrides):
    cfg = TrainConfig(method="s2vite", **{"update_start": "warmup", **overrides})  # fed no loss: plateau would refuse
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    ctx = EngineContext(model=model, optimizer=optimizer, total_steps=total_steps, steps_per_epoch=total_steps,
                        config=cfg)
    return build_engine(ctx), optimizer


def _small_model(heads=4, depth=2, mlp_ratio=2.0, seed=0, img=16):
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="vit_tiny_demo", img_size=img, patch_size=4, embed_dim=8 * heads, depth=depth,
                                   num_heads=heads, num_classes=5, mlp_ratio=mlp_ratio))


def _randomize(model, seed=0, std=0.2):
    """Every parameter random, biases included (timm zero-inits biases, which would hide bias bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)


# ----------------------------------------------------------------------------------------------
# the per-layer decision
scores = st.lists(st.sampled_from([0.0, 0.0, 1.0, 2.0, 2.0, 3.0, float("nan")]), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_prune_and_grow_keeps_the_budget_and_picks_by_score(data):
    prune_s = torch.tensor(data.draw(scores))
    n_units = prune_s.numel()
    grow_s = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0, 1.0, 5.0, float("nan")]),
                                             min_size=n_units, max_size=n_units)))
    active = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n_units, max_size=n_units)))
    n = data.draw(st.integers(0, int(active.sum())))
    new, dropped, added = prune_and_grow(active, prune_s, grow_s, n)
    assert int(new.sum()) == int(active.sum())  # exact budget whatever the ties / NaNs / zeros
    assert int(dropped.sum()) == int(added.sum()) <= n
    assert not (dropped & ~active).any() and not (added & active).any()
    assert torch.equal(new, (active & ~dropped) | added)
    # a net-dropped unit scored no higher than a kept one, unless that one was pruned too and regrown
    # ahead of it (then its grow score is no lower); NaN counts as -inf
    p = torch.nan_to_num(prune_s.double(), nan=-float("inf"))
    g = torch.nan_to_num(grow_s.double(), nan=-float("inf"))
    d, k = dropped.nonzero().reshape(-1, 1), (active & new).nonzero().reshape(1, -1)
    assert ((p[d] <= p[k]) | (g[k] >= g[d])).all()


@settings(max_examples=150, deadline=None)
@given(data=st.data(), largest=st.booleans())
def test_select_top_is_an_exact_top_k_with_index_tie_break(data, largest):
    score = torch.tensor(data.draw(scores))
    cand = torch.tensor(data.draw(st.lists(st.booleans(), min_size=score.numel(), max_size=score.numel())))
    k = data.draw(st.integers(0, score.numel() + 2))
    chosen = select_top(score, cand, k, largest=largest)
    assert int(chosen.sum()) == min(k, int(cand.sum())) and not (chosen & ~cand).any()
    key = torch.nan_to_num(score.double(), nan=-float("inf"))
    c, o = chosen.nonzero().reshape(-1, 1), (cand & ~chosen).nonzero().reshape(1, -1)
    better = key[c] > key[o] if largest else key[c] < key[o]
    assert (better | ((key[c] == key[o]) & (c < o))).all()


def test_ties_go_to_the_lower_index():
    active = torch.tensor([True, True, True, False, False, False])
    new, dropped, added = prune_and_grow(active, torch.zeros(6), torch.zeros(6), 2)
    # prune the two lowest-index active units, then grow the two lowest-index inactive ones (just-pruned included)
    assert torch.equal(new, active) and not dropped.any() and not added.any()
    new, dropped, added = prune_and_grow(active, torch.tensor([1.0, 1.0, 2.0, 0, 0, 0]),
                                         torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 2)
    assert new.tolist() == [False, False, True, True, True, False]


# ----------------------------------------------------------------------------------------------
# the engine: budgets, masks and fired after every update
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.sampled_from([1, 2, 3, 4, 6]), depth=st.integers(1, 2), mlp_ratio=st.sampled_from([0.5, 1.0, 2.5]),
       atten=st.floats(0.34, 1.0), other=st.floats(0.1, 1.0), death_rate=st.floats(0.0, 0.95),
       decay=st.sampled_from(["cosine", "constant"]), growth=st.sampled_from(["gradient", "random"]),
       freq=st.integers(1, 3), grads=st.sampled_from(["real", "zero", "tied"]), seed=st.integers(0, 2**16))
def test_budgets_are_exact_after_every_update(heads, depth, mlp_ratio, atten, other, death_rate, decay, growth, freq,
                                              grads, seed):
    model = _small_model(heads, depth, mlp_ratio, seed=seed % 7)
    if int(heads * atten) < 1 or int(model.blocks[0].mlp.fc1.out_features * other) < 1:
        with pytest.raises(SviteError, match="every block needs at least one"):
            _engine(model, atten_density=atten, other_density=other)
        return
    if grads == "tied":  # every neuron and head scores the same: ties everywhere
        with torch.no_grad():
            for b in model.blocks:
                b.mlp.fc1.weight.fill_(0.1)
                b.mlp.fc2.weight.fill_(0.1)
                b.attn.qkv.weight.fill_(0.05)
    engine, opt = _engine(model, total_steps=8, atten_density=atten, other_density=other, death_rate=death_rate,
                          decay_schedule=decay, growth=growth, update_frequency=freq, t_end=1.0, seed=seed)
    h_budget = [int(heads * atten)] * depth
    n_budget = [int(b.mlp.fc1.out_features * other) for b in model.blocks]
    gen = torch.Generator().manual_seed(seed)
    updates = 0
    for step in range(8):
        x = torch.randn(2, 3, 16, 16, generator=gen)
        out = model(x)
        loss = out.square().mean() if grads != "zero" else (out * 0).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        changed = engine.after_optimizer_step(step)
        updates += changed
        assert changed == engine.schedule.is_update_step(step + 1)
        assert engine.armed == engine.schedule.is_update_step(step + 2)  # hooks only before an update
        for i in range(depth):
            assert int(engine.units[head_unit_name(i)].sum()) == h_budget[i]
            assert int(engine.units[neuron_unit_name(i)].sum()) == n_budget[i]
            assert (engine.fired[head_unit_name(i)] | engine.units[head_unit_name(i)]).equal(engine.fired[head_unit_name(i)])
        assert engine.masks.equal(unit_weight_masks(model, engine.units))
        params = dict(model.named_parameters())
        for name, mask in engine.masks.items():
            assert not params[name][~mask].any(), name  # masked entries are exactly zero
    assert updates == len(engine.schedule.update_steps())
    info = engine.snapshot_info()
    assert info["updates"] == updates
    if updates:
        assert info["last_update_step"] == engine.schedule.update_steps()[-1]


def test_bad_densities_and_flags_are_rejected():
    with pytest.raises(SviteError, match="--atten-density 0.2 keeps 0 of 4 heads in block 0"):
        _engine(_small_model(4), atten_density=0.2)
    with pytest.raises(SviteError, match="--other-density"):
        _engine(_small_model(4, mlp_ratio=0.25), other_density=0.1)
    # --include has no effect on whole heads and neurons: not refused, the command line says so (flag_use)
    check_method_flags(TrainConfig(method="s2vite", include=["*qkv*"]))
    assert [u.message for u in unused_flags(TrainConfig(method="s2vite", include=["*qkv*"]), ["method", "include"])
            ] == ["--include has no effect with --method s2vite"]
    with pytest.raises(SviteError, match="--growth momentum"):
        check_method_flags(TrainConfig(method="s2vite", growth="momentum"))


# ----------------------------------------------------------------------------------------------
# masked units have no effect
def test_masked_heads_and_neurons_have_no_effect_on_the_output():
    model = _small_model(4, depth=2)
    _randomize(model, seed=1)
    engine, _ = _engine(model, atten_density=0.5, other_density=0.5, seed=3)
    model.eval()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    before = model(x)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            dead_heads = ~engine.units[head_unit_name(i)]
            dead_neurons = ~engine.units[neuron_unit_name(i)]
            assert dead_heads.any() and dead_neurons.any()
            rows = head_rows(dead_heads, block.attn.head_dim)
            attn, mlp = block.attn, block.mlp
            attn.qkv.weight[rows] = torch.randn(int(rows.sum()), attn.qkv.in_features, generator=gen) * 5
            attn.qkv.bias[rows] = torch.randn(int(rows.sum()), generator=gen) * 5  # value bias included
            cols = dead_heads.repeat_interleave(attn.head_dim)
            attn.proj.weight[:, cols] = torch.randn(attn.proj.out_features, int(cols.sum()), generator=gen) * 5
            mlp.fc1.weight[dead_neurons] = torch.randn(int(dead_neurons.sum()), mlp.fc1.in_features, generator=gen) * 5
            mlp.fc1.bias[dead_neurons] = torch.randn(int(dead_neurons.sum()), generator=gen) * 5
            mlp.fc2.weight[:, dead_neurons] = torch.randn(mlp.fc2.out_features, int(dead_neurons.sum()),
                                                          generator=gen) * 5
    engine.masks.apply(model)  # what the loop does after every optimizer step (proj is not masked)
    after = model(x)
    assert (after - before).abs().max() <= 1e-6
    # the reference masks weights only: a pruned head's value bias then leaks through proj
    block = model.blocks[0]
    rows = head_rows(~engine.units[head_unit_name(0)], block.attn.head_dim)
    with torch.no_grad():
        block.attn.qkv.bias[rows] = 1.0
    assert (model(x) - before).abs().max() > 1e-2


# ----------------------------------------------------------------------------------------------
# Taylor and gradient scores, checked against an independent per-head gate
def test_taylor_and_gradient_scores_match_a_per_head_gate():
    model = _small_model(4, depth=2)
    _randomize(model, seed=2, std=0.1)
    engine, _ = _engine(model, update_frequency=1, atten_density=1.0, other_density=1.0)
    assert engine.armed  # the first step precedes an update
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 5, (6,), generator=torch.Generator().manual_seed(2))
    ref = copy.deepcopy(model)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    captured = engine.head_scores
    # reference: out_h * gate_{b,h} with gate = 1; dL/dgate_{b,h} = sum_{tokens,dims} a_h * dL/da_h
    gates, outs = [], []
    for block in ref.blocks:
        h, d = block.attn.num_heads, block.attn.head_dim
        gate = torch.ones(6, h, requires_grad=True)
        gates.append(gate)

        def hook(module, inputs, output, gate=gate, h=h, d=d):
            b, n, _ = output.shape
            gated = (output.reshape(b, n, h, d) * gate[:, None, :, None]).reshape(b, n, h * d)
            gated.retain_grad()
            outs.append(gated)
            return gated

        block.attn.norm.register_forward_hook(hook)
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    for i, block in enumerate(ref.blocks):
        h, d = block.attn.num_heads, block.attn.head_dim
        taylor_ref = gates[i].grad.abs().mean(dim=0)
        grad_ref = outs[i].grad.reshape(6, -1, h, d).abs().sum(dim=(1, 3)).mean(dim=0)
        taylor, grad = captured[i]
        torch.testing.assert_close(taylor, taylor_ref, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-9)
        assert (taylor > 0).all() and (grad > 0).all()


def _train_steps(model, engine, opt, steps, start=0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for step in range(start, start + steps):
        x = torch.randn(4, 3, 16, 16, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        engine.after_optimizer_step(step)


def test_grown_neurons_get_their_shadow_row_and_can_learn():
    model = _small_model(4, depth=1)
    initial_fc1 = model.blocks[0].mlp.fc1.weight.detach().clone()
    engine, opt = _engine(model, update_frequency=2, atten_density=0.5, other_density=0.5, growth="random",
                          death_rate=0.9, decay_schedule="constant", t_end=1.0, seed=1, grown_moments="zero")
    before = engine.units[neuron_unit_name(0)].clone()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    _train_steps(model, engine, opt, 2)
    grown = engine.units[neuron_unit_name(0)] & ~before
    assert grown.any()  # random growth explores
    mlp = model.blocks[0].mlp
    # never active before: the shadow row is the model's initial fc1 row, not the zeros pruning left
    torch.testing.assert_close(mlp.fc1.weight[grown], initial_fc1[grown])
    assert not mlp.fc2.weight[:, grown].any()  # fc2 column zero: output unchanged at the moment of growth
    assert not opt.state[mlp.fc1.weight]["exp_avg"][grown].any()  # --grown-moments zero, as asked
    assert not opt.state[mlp.fc2.weight]["exp_avg_sq"][:, grown].any()
    opt.zero_grad()
    model(x).square().mean().backward()
    assert (mlp.fc2.weight.grad[:, grown] != 0).any(dim=0).all()  # it gets gradient: it can learn


def test_a_never_active_neuron_is_grown_by_the_default_gradient_rule():
    """Gradient growth (the default) scores inactive neurons through their shadow rows, so neurons outside
    the initial random choice become active, and ever-active exceeds alive."""
    model = _small_model(4, depth=2)
    engine, opt = _engine(model, total_steps=40, update_frequency=5, atten_density=0.5, other_density=0.5,
                          t_end=1.0, seed=3)
    assert engine.cfg.growth == "gradient"
    initial = {n: m.clone() for n, m in engine.units.items()}
    _train_steps(model, engine, opt, 20)
    assert engine.updates == 4
    for i in range(2):
        name = neuron_unit_name(i)
        fired, alive = engine.fired[name], engine.units[name]
        assert int(fired.sum()) > int(alive.sum())  # neurons moved
        assert (alive & ~initial[name]).any()  # some alive now were never in the initial choice
        assert int(alive.sum()) == engine.neuron_budget[i]


def test_neuron_growth_scores_are_the_fc2_gradient_through_shadow_rows():
    """For an alive neuron the score is exactly its real fc2 gradient norm; for an inactive one it is the
    gradient its fc2 column would get with the shadow fc1 row opened (checked on a dense twin)."""
    model = _small_model(4, depth=1)
    _randomize(model, seed=4, std=0.1)
    engine, _ = _engine(model, update_frequency=1, atten_density=1.0, other_density=0.5)
    alive = engine.units[neuron_unit_name(0)]
    shadow_w, shadow_b = engine.shadow.effective(0, alive)
    assert torch.equal(engine.shadow.slots[0], (~alive).nonzero().reshape(-1))  # rows for inactive neurons only
    twin = copy.deepcopy(model)
    with torch.no_grad():  # the dense twin: shadow rows in place, fc2 columns of inactive neurons at 0
        twin.blocks[0].mlp.fc1.weight[~alive] = shadow_w[~alive]
        twin.blocks[0].mlp.fc1.bias[~alive] = shadow_b[~alive]
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    twin(x).square().mean().backward()
    _, _, neuron_scores = engine._scores()
    expected = twin.blocks[0].mlp.fc2.weight.grad.abs().sum(dim=0)
    torch.testing.assert_close(neuron_scores[0], expected, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(neuron_scores[0][alive], model.blocks[0].mlp.fc2.weight.grad.abs().sum(dim=0)[alive],
                               rtol=1e-4, atol=1e-8)
    assert (neuron_scores[0][~alive] > 0).all()  # inactive neurons are not stuck at zero
    assert not model.blocks[0].mlp.fc2.weight.grad[:, ~alive].any()  # ... while their real gradient is


def test_a_regrown_head_can_learn_to_attend():
    """--head-growth gradient-norm: a grown head gets fresh q/k rows and zero v: the output is unchanged at
    growth, and once v has moved its q and k receive gradient (with q = k = 0 they never would)."""
    model = _small_model(4, depth=1)
    engine, opt = _engine(model, total_steps=40, update_frequency=3, atten_density=0.5, other_density=1.0,
                          t_end=1.0, death_rate=0.9, decay_schedule="constant", growth="random", seed=2,
                          head_growth="gradient-norm")
    before = engine.units[head_unit_name(0)].clone()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    _train_steps(model, engine, opt, 3)  # the update follows step 3
    grown = engine.units[head_unit_name(0)] & ~before
    assert grown.any()
    attn = model.blocks[0].attn
    d, h = attn.head_dim, attn.num_heads
    w = attn.qkv.weight.detach().reshape(3, h, d, -1)
    assert (w[0, grown] != 0).any() and (w[1, grown] != 0).any()  # fresh q and k
    # v rows and bias stay 0: the grown heads output exactly 0, so growth leaves the model's output as it was
    assert not w[2, grown].any() and not attn.qkv.bias.reshape(3, h, d)[2, grown].any()
    opt.zero_grad()
    loss = model(x).square().mean()
    loss.backward()
    grad = attn.qkv.weight.grad.reshape(3, h, d, -1)
    assert (grad[2, grown] != 0).any()  # v learns first ...
    opt.step()
    engine.after_optimizer_step(3)
    opt.zero_grad()
    model(x).square().mean().backward()
    grad = attn.qkv.weight.grad.reshape(3, h, d, -1)
    for g in (grad[0, grown], grad[1, grown]):  # ... then q and k get gradient: the head can attend
        assert (g.abs().sum(dim=(1, 2)) > 0).all()


def test_a_grown_head_gets_its_shadow_rows_and_zero_proj_columns_then_learns():
    """--head-growth alignment (the default): a never-active head comes back with its initial q/k/v rows
    and its proj columns at 0, so the output is unchanged at growth; its proj columns get gradient at once,
    and q/k/v once the columns have moved."""
    model = _small_model(4, depth=1)
    _randomize(model, seed=7, std=0.1)
    initial_qkv = model.blocks[0].attn.qkv.weight.detach().clone()
    engine, opt = _engine(model, total_steps=40, update_frequency=3, atten_density=0.5, other_density=1.0,
                          t_end=1.0, death_rate=0.9, decay_schedule="constant", growth="random", seed=2)
    assert engine.describe()["settings"]["grown_heads"] == "shadow_qkv"
    before = engine.units[head_unit_name(0)].clone()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    _train_steps(model, engine, opt, 3)  # the update follows step 3
    grown = engine.units[head_unit_name(0)] & ~before
    assert grown.any()
    attn = model.blocks[0].attn
    d, h = attn.head_dim, attn.num_heads
    w = attn.qkv.weight.detach().reshape(3, h, d, -1)
    torch.testing.assert_close(w[:, grown], initial_qkv.reshape(3, h, d, -1)[:, grown])  # never active: init rows
    assert not attn.proj.weight.reshape(-1, h, d)[:, grown].any()
    without = copy.deepcopy(model)
    with torch.no_grad():  # the grown heads contribute nothing yet: growth leaves the output as it was
        without.blocks[0].attn.qkv.weight.reshape(3, h, d, -1)[:, grown] = 0
        torch.testing.assert_close(model(x), without(x))
    opt.zero_grad()
    model(x).square().mean().backward()
    assert (attn.proj.weight.grad.reshape(-1, h, d)[:, grown].abs().sum(dim=(0, 2)) > 0).all()
    opt.step()
    engine.after_optimizer_step(3)
    opt.zero_grad()
    model(x).square().mean().backward()
    grad = attn.qkv.weight.grad.reshape(3, h, d, -1)
    for part in range(3):  # q, k and v all learn once the columns have moved
        assert (grad[part, grown].abs().sum(dim=(1, 2)) > 0).all()


def test_head_alignment_scores_are_the_proj_gradient_per_unit_of_output():
    """For an alive head the score is ||dL/dW_proj[:, h]||_F / ||a_h||_F with its real output; for an
    inactive head the same with the head opened through its shadow rows (a twin with those rows in place and
    the head's proj columns at 0, so the loss gradient is the same)."""
    model = _small_model(4, depth=1)
    _randomize(model, seed=4, std=0.1)
    engine, _ = _engine(model, update_frequency=1, atten_density=0.5, other_density=1.0)
    alive = engine.units[head_unit_name(0)]
    attn = model.blocks[0].attn
    d, h = attn.head_dim, attn.num_heads
    twin = copy.deepcopy(model)
    with torch.no_grad():
        tw = twin.blocks[0].attn
        for head, (rows, bias) in engine.head_shadow.rows[0].items():
            idx = torch.cat([torch.arange(head * d, (head + 1) * d) + k * h * d for k in range(3)])
            tw.qkv.weight[idx], tw.qkv.bias[idx] = rows, bias
            tw.proj.weight[:, head * d:(head + 1) * d] = 0
    outs = {}
    tw.proj.register_forward_pre_hook(lambda m, a: outs.__setitem__("a", a[0].detach()))
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    twin(x).square().mean().backward()
    _, grow, _ = engine._scores()
    a = outs["a"].reshape(-1, h, d)
    expected = tw.proj.weight.grad.reshape(-1, h, d).norm(dim=(0, 2)) / a.norm(dim=(0, 2))
    torch.testing.assert_close(grow[0], expected, rtol=1e-4, atol=1e-8)
    assert (grow[0][~alive] > 0).all()  # inactive heads are scored, not stuck at zero


def test_heads_move_under_the_default_growth():
    """The default rule grows heads that were never active: ever-active heads exceed alive heads (under
    --head-growth gradient-norm a pruned head was always grown straight back)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vit_tiny_demo", img_size=16, patch_size=4, embed_dim=48, depth=2,
                                    num_heads=6, num_classes=5))
    engine, opt = _engine(model, total_steps=60, update_frequency=5, atten_density=0.5, other_density=1.0,
                          t_end=1.0, seed=3)
    initial = {n: m.clone() for n, m in engine.units.items()}
    gen = torch.Generator().manual_seed(0)
    for step in range(30):
        x = torch.randn(8, 3, 16, 16, generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), (x.mean(dim=(1, 2, 3)) > 0).long()).backward()
        opt.step()
        engine.after_optimizer_step(step)
    assert engine.updates == 6
    for i in range(2):
        name = head_unit_name(i)
        assert int(engine.units[name].sum()) == engine.head_budget[i] == 3
        assert int(engine.fired[name].sum()) > 3  # heads moved
        assert torch.equal(engine.fired[name], engine.fired[name] | initial[name])


def test_resume_refuses_shadow_heads_that_do_not_fit():
    model = _small_model(4, depth=1)
    engine, opt = _engine(model, update_frequency=2, atten_density=0.5, other_density=1.0)
    state = engine.state_dict()
    state["head_shadow"]["heads"][0] = [0, 1, 2]
    fresh, _ = _engine(_small_model(4, depth=1), update_frequency=2, atten_density=0.5, other_density=1.0)
    with pytest.raises(SviteError, match="shadow heads"):
        fresh.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# compaction
def _units(pattern_heads, pattern_neurons):
    units = MaskSet()
    for i, (h, n) in enumerate(zip(pattern_heads, pattern_neurons, strict=True)):
        units[head_unit_name(i)] = torch.tensor(h, dtype=torch.bool)
        units[neuron_unit_name(i)] = torch.tensor(n, dtype=torch.bool)
    return units


def _random_units(model, seed, atten, other):
    gen = torch.Generator().manual_seed(seed)
    heads, neurons = [], []
    for b in model.blocks:
        h, n = b.attn.num_heads, b.mlp.fc1.out_features
        kh, kn = max(1, int(h * atten)), max(1, int(n * other))
        hm = torch.zeros(h, dtype=torch.bool)
        hm[torch.randperm(h, generator=gen)[:kh]] = True
        nm = torch.zeros(n, dtype=torch.bool)
        nm[torch.randperm(n, generator=gen)[:kn]] = True
        heads.append(hm.tolist())
        neurons.append(nm.tolist())
    return _units(heads, neurons)


@pytest.mark.parametrize("heads,depth,atten,other,seed", [
    (4, 2, None, None, 0),  # explicit: block 0 keeps a single head
    (6, 3, 0.7, 0.6, 1),  # DeiT-S ratios: 4 of 6 heads, 60% of the neurons
    (3, 2, 1.0, 0.3, 2),  # every head kept, neurons pruned
    (2, 1, 0.5, 1.0, 3),  # one head of two, every neuron kept
])
def test_compaction_gives_the_masked_models_logits(tmp_path, heads, depth, atten, other, seed):
    model = _small_model(heads, depth, mlp_ratio=2.0, seed=seed)
    _randomize(model, seed=seed)
    if atten is None:
        hidden = model.blocks[0].mlp.fc1.out_features
        units = _units([[False, False, True, False], [True, True, False, True]],
                       [[j % 3 == 0 for j in range(hidden)], [j % 2 == 1 for j in range(hidden)]])
    else:
        units = _random_units(model, seed, atten, other)
    config = ModelConfig(name="vit_tiny_demo", img_size=16, patch_size=4, embed_dim=8 * heads, depth=depth,
                         num_heads=heads, num_classes=5, mlp_ratio=2.0)
    masks = unit_weight_masks(model, units)
    small, small_cfg = compact_model(model, config, units)
    assert small_cfg.block_heads == [int(units[head_unit_name(i)].sum()) for i in range(depth)]
    assert small_cfg.block_hidden == [int(units[neuron_unit_name(i)].sum()) for i in range(depth)]
    for i, block in enumerate(small.blocks):
        assert type(block.attn) is Attention and type(block.mlp) is Mlp  # timm's own modules
        assert block.attn.num_heads == small_cfg.block_heads[i] and block.attn.head_dim == 8
        assert block.mlp.fc1.out_features == small_cfg.block_hidden[i]
    masked = copy.deepcopy(model).eval()
    masks.apply(masked)
    assert max_logit_diff(masked, small, batch=8, seed=seed) <= 1e-5
    assert max_logit_diff(model.eval(), small, batch=8, seed=seed) > 1e-3  # the masks do matter
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters()) or atten == 1.0
    # it saves and loads like any checkpoint (build_model -> reshape_blocks)
    path = save_checkpoint(tmp_path / "small.safetensors", small, small_cfg, meta={"method": "s2vite-compact"})
    loaded = load_checkpoint(path)
    assert loaded.model_config.block_heads == small_cfg.block_heads
    assert max_logit_diff(small, loaded.model, batch=4) == 0.0


def test_compaction_folds_the_value_bias_of_official_checkpoints():
    """Official SViTE masks cover qkv weights only: a pruned head keeps b_v and adds proj @ b_v."""
    model = _small_model(4, depth=2, seed=4)
    _randomize(model, seed=4)
    units = _random_units(model, 4, 0.5, 0.5)
    weight_only = MaskSet({n: m for n, m in unit_weight_masks(model, units).items() if n.endswith(".weight")})
    config = ModelConfig(name="vit_tiny_demo", img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4,
                         num_classes=5, mlp_ratio=2.0)
    small, _ = compact_model(model, config, units, masks=weight_only)
    masked = copy.deepcopy(model).eval()
    weight_only.apply(masked)
    assert max_logit_diff(masked, small, batch=8) <= 1e-5
    full, _ = compact_model(model, config, units)  # our semantics (biases masked) is a different model
    assert max_logit_diff(full, small, batch=8) > 1e-3


def test_reshape_blocks_rejects_bad_sizes():
    model = build_model(tiny_model_config())
    with pytest.raises(SviteError, match="block_heads has 3 entries but the model has 2 blocks"):
        reshape_blocks(model, [1, 2, 3], None)
    with pytest.raises(SviteError, match=">= 1"):
        reshape_blocks(model, None, [0, 4])
    reshape_blocks(model, [1, 3], [5, 7])
    assert [b.attn.num_heads for b in model.blocks] == [1, 3]
    assert [b.mlp.fc1.out_features for b in model.blocks] == [5, 7]


# ----------------------------------------------------------------------------------------------
# training, resume, CLI
S2 = dict(method="s2vite", update_frequency=3, atten_density=0.5, other_density=0.5, train_size=128, val_size=32)


@pytest.fixture(scope="module")
def s2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2") / "full"
    return train(tiny_train_config(out, **S2), show_progress=False, echo_metrics=False)


def test_training_records_units_history_and_inspect_reports_them(s2_run, capsys):
    loaded = load_checkpoint(s2_run)
    assert loaded.method == "s2vite" and loaded.meta["settings"]["atten_density"] == 0.5
    events = [(s.step, s.info["event"]) for s in loaded.history]
    assert events == [(0, "init"), (3, "update"), (4, "epoch"), (6, "update"), (8, "epoch")]
    for snap in loaded.history:
        units = snap.units.unpack()
        assert [int(units[head_unit_name(i)].sum()) for i in range(2)] == [2, 2]
        assert [int(units[neuron_unit_name(i)].sum()) for i in range(2)] == [96, 96]
    assert loaded.history[1].info["rate"] > loaded.history[-1].info["rate"] > 0
    update = loaded.history[3].info  # the update at step 6: its own counts (ints); an epoch snapshot has none
    assert update["updates"] == 2 and update["last_update_step"] == 6 and update["heads_exchanged"] == 2
    assert isinstance(update["neurons_pruned"], int) and update["neurons_pruned"] == update["neurons_grown"]
    assert "heads_pruned" not in loaded.history[-1].info and loaded.history[-1].info["updates"] == 2
    assert main(["inspect", str(s2_run), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [len(h["alive"]) for h in doc["heads"]] == [4, 4] and [sum(h["alive"]) for h in doc["heads"]] == [2, 2]
    assert doc["neurons"] == [{"block": 0, "alive": 96, "total": 192}, {"block": 1, "alive": 96, "total": 192}]


def test_resumed_s2vite_run_is_bit_identical(tmp_path, s2_run):
    part = tiny_train_config(tmp_path / "part", max_steps=5, **S2)  # stops mid-epoch, right before update 6
    train(part, show_progress=False, echo_metrics=False)
    resumed = train(tiny_train_config(tmp_path / "part", resume=str(tmp_path / "part"), **S2), show_progress=False,
                    echo_metrics=False)
    a, b = load_checkpoint(s2_run), load_checkpoint(resumed)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.units.equal(b.units) and a.fired.equal(b.fired) and a.masks.equal(b.masks)
    assert [s.units.unpack().equal(t.units.unpack()) for s, t in zip(a.history, b.history, strict=True)] == \
        [True] * len(a.history)


def test_cli_compact_round_trip(tmp_path, s2_run, capsys):
    out = tmp_path / "compact.safetensors"
    assert main(["compact", str(s2_run), str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["max_abs_logit_diff"] <= 1e-5
    assert [(r["heads_after"], r["hidden_after"]) for r in doc["blocks"]] == [(2, 96), (2, 96)]
    assert doc["params_after"] < doc["params_before"] and doc["flops_after"] < doc["flops_masked"] < doc["flops_dense"]
    small = load_checkpoint(out)
    assert small.method == "s2vite-compact" and small.model_config.block_heads == [2, 2]
    src = load_checkpoint(s2_run)
    assert max_logit_diff(src.model, small.model, masks=src.masks) <= 1e-5
    assert main(["inspect", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["architecture"]["num_heads"] == [2, 2] and doc["architecture"]["mlp_hidden"] == [96, 96]
    assert doc["method"] == "s2vite-compact" and doc["heads"] is None
    assert main(["eval", str(out), "--json", "--throughput-batch", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["flops"] == doc["flops_dense"] > 0 and 0 <= doc["top1"] <= 100
    # never overwrites
    before = out.read_bytes()
    assert main(["compact", str(s2_run), str(out)]) == 2
    assert out.read_bytes() == before and "already exists" in capsys.readouterr().err


def test_cli_compact_of_a_dense_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    model = build_model(tiny_model_config())
    dense = save_checkpoint(tmp_path / "dense.safetensors", model, tiny_model_config(), meta={"method": "dense"})
    out = tmp_path / "out.safetensors"
    assert main(["compact", str(dense), str(out)]) == 2
    err = capsys.readouterr().err
    assert str(dense) in err and "no head/neuron masks" in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_compacts_an_official_s2vite_checkpoint(tmp_path, capsys):
    """The reference's checkpoint.pth: weight-only atten/other masks, value and fc1 biases left alive."""
    import argparse

    model = _small_model(4, depth=2, seed=6)
    _randomize(model, seed=6)
    units = _random_units(model, 6, 0.5, 0.5)
    weight_masks = {n: m for n, m in unit_weight_masks(model, units).items() if n.endswith(".weight")}
    MaskSet(weight_masks).apply(model)  # saved right after a masked step
    ckpt = {"model": model.state_dict(),
            "atten_mask": {f"module.{n}_mask": m.float() for n, m in weight_masks.items() if ".attn." in n},
            "other_mask": {f"module.{n}_mask": m.float() for n, m in weight_masks.items() if ".mlp." in n},
            "mask": {}, "args": argparse.Namespace(pruning_type="structure_new", atten_head=4, model="deit_small")}
    src = tmp_path / "checkpoint.pth"
    torch.save(ckpt, src)
    out = tmp_path / "small.safetensors"
    assert main(["compact", str(src), str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["source_method"] == "s2vite" and doc["max_abs_logit_diff"] <= 1e-5
    assert [r["heads_after"] for r in doc["blocks"]] == [2, 2]
    assert max_logit_diff(model.eval(), load_checkpoint(out).model, batch=4) <= 1e-5  # b_v folded into proj.bias
