"""PruneSchedule: the reference's update rule and cosine death rate (docs/reference.md §1)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsity_core.dst.schedule import PruneSchedule, UpdateClock
from sparsity_core.errors import SviteError
from sparsity_core.training.config import TrainConfig


def test_cosine_rate_follows_its_formula():
    s = PruneSchedule(total_steps=1000, update_frequency=10)
    assert s.rate(0) == pytest.approx(0.5)
    assert s.rate(1000) == pytest.approx(0.005)
    assert s.rate(500) == pytest.approx((0.5 + 0.005) / 2)
    for t in (1, 37, 250, 777, 999):
        expected = 0.005 + (0.5 - 0.005) * (1 + math.cos(math.pi * t / 1000)) / 2
        assert s.rate(t) == pytest.approx(expected, abs=1e-12)
    rates = [s.rate(t) for t in range(0, 1001, 50)]
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))  # strictly decaying
    assert s.rate(5000) == pytest.approx(0.005)  # clamped after T, not periodic


def test_cosine_rate_equals_the_reference_cosine_annealing_stepper():
    """The reference steps CosineAnnealingLR(SGD(lr=death_rate), T, eta_min=0.005) once per iteration
    and reads the lr: our closed form must give the same numbers."""
    T = 240
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    stepper = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T, eta_min=0.005)
    s = PruneSchedule(total_steps=T, update_frequency=7)
    for t in range(1, T + 1):
        opt.step()
        stepper.step()
        assert s.rate(t) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-9), t


def test_constant_rate():
    s = PruneSchedule(total_steps=100, update_frequency=5, death_rate=0.3, decay="constant")
    assert {s.rate(t) for t in range(0, 101)} == {0.3}


def test_update_steps_follow_the_reference_rule():
    s = PruneSchedule(total_steps=100, update_frequency=15, t_end=0.8)
    assert s.update_steps() == [15, 30, 45, 60, 75]  # s % f == 0 and s < 80
    assert [t for t in range(0, 201) if s.is_update_step(t)] == s.update_steps()
    assert s.num_updates() == 5
    assert not s.is_update_step(0)
    edge = PruneSchedule(total_steps=100, update_frequency=20, t_end=0.8)
    assert edge.update_steps() == [20, 40, 60]  # 80 is not < 0.8 * 100
    info = edge.describe()
    assert info["num_updates"] == 3 and info["last_update_step"] == 60


def test_worked_imagenet_schedule_from_the_reference_notes():
    """§1: DeiT-S, 8 GPUs x bs 64 -> 2502 it/epoch, 600 epochs, update_frequency 15000: 80 updates, dr
    ~0.50 at the first and ~0.052 at the last."""
    s = PruneSchedule(total_steps=2502 * 600, update_frequency=15000)
    steps = s.update_steps()
    assert len(steps) == 80
    assert s.rate(steps[0]) == pytest.approx(0.50, abs=0.005)
    assert s.rate(steps[-1]) == pytest.approx(0.052, abs=0.002)


def test_n_prune_is_ceil_and_bounded():
    assert PruneSchedule.n_prune(0.5, 10) == 5
    assert PruneSchedule.n_prune(0.01, 10) == 1
    assert PruneSchedule.n_prune(0.0, 10) == 0
    assert PruneSchedule.n_prune(0.999, 3) == 3
    assert PruneSchedule.n_prune(0.3, 0) == 0


def test_from_config_reads_the_flags():
    cfg = TrainConfig(update_frequency=7, t_end=0.5, death_rate=0.4, decay_schedule="constant")
    s = PruneSchedule.from_config(cfg, total_steps=70, steps_per_epoch=10)
    assert (s.update_frequency, s.t_end, s.death_rate, s.decay, s.total_steps) == (7, 0.5, 0.4, "constant", 70)
    assert s.update_steps() == [7, 14, 21, 28]  # no LR warm-up: updates may start at once


@pytest.mark.parametrize("spec,start,first", [
    ("warmup", 20, 21),  # 2 warm-up epochs of 10 steps: the first multiple of 7 from step 20 on
    ("0", 0, 7), ("15", 15, 21), ("21", 21, 21), ("1.5ep", 15, 21), ("3EP", 30, 35),
])
def test_update_start_delays_the_first_update(spec, start, first):
    cfg = TrainConfig(update_frequency=7, t_end=0.9, warmup_epochs=2.0, update_start=spec)
    s = PruneSchedule.from_config(cfg, total_steps=100, steps_per_epoch=10)
    assert s.start == start
    assert s.update_steps()[0] == first
    assert all(step >= start and step % 7 == 0 for step in s.update_steps())
    assert not any(s.is_update_step(k) for k in range(1, first))
    assert s.describe()["first_update_step"] == first


@pytest.mark.parametrize("spec", ["soon", "-3", "-1ep", "nanep", "2.5", "infep", ""])
def test_bad_update_start_names_the_flag(spec):
    cfg = TrainConfig(update_start=spec)
    with pytest.raises(SviteError, match="--update-start"):
        PruneSchedule.from_config(cfg, total_steps=100, steps_per_epoch=10)


@pytest.mark.parametrize("kwargs,flag", [
    (dict(total_steps=0, update_frequency=1), "training step"),
    (dict(total_steps=10, update_frequency=0), "--update-frequency"),
    (dict(total_steps=10, update_frequency=1, decay="linear"), "--decay-schedule"),
    (dict(total_steps=10, update_frequency=1, death_rate=1.0), "--death-rate"),
    (dict(total_steps=10, update_frequency=1, t_end=0.0), "--t-end"),
])
def test_bad_settings_are_rejected(kwargs, flag):
    with pytest.raises(SviteError, match=flag):
        PruneSchedule(**kwargs)


def _clock(**overrides):
    cfg = TrainConfig(update_frequency=10, t_end=1.0, warmup_epochs=1.0, update_start="plateau", **overrides)
    return UpdateClock.from_config(cfg, total_steps=400, steps_per_epoch=20)


def test_plateau_start_waits_for_the_loss_to_leave_its_plateau():
    """At chance the loss sits at its starting value: no update however many candidate steps pass; once
    its running mean has fallen to 0.9 of the start, the next candidate step updates, and every later
    candidate too, whatever the loss does."""
    clock = _clock()
    due = []
    for step in range(1, 401):
        loss = 2.3 if step <= 150 else 1.0
        if step > 300:
            loss = 2.3  # a relapse does not stop updates once started
        clock.observe(loss)
        due.append(clock.due(step))
    steps = [s for s, d in enumerate(due, start=1) if d]
    assert clock.started_at == steps[0]
    assert 150 < steps[0] <= 200 and steps[0] % 10 == 0  # the EMA (~50-step horizon) needs a few dozen steps
    assert steps == list(range(steps[0], 401, 10))[: len(steps)] and steps[-1] == 390
    assert clock.describe() == {"update_start": "plateau", "updates_started_at": steps[0]}


def test_plateau_start_never_before_the_warm_up_ends_and_ranks_decide_on_the_mean():
    clock = _clock()
    for step in range(1, 21):
        clock.observe(0.1 if step > 10 else 5.0)  # falls at once, inside the 20-step warm-up
        assert not clock.due(step)
    seen = []

    def reduce(values):  # what a DDP all-reduce would give: here the other rank still sits at chance
        seen.append(values)
        return [values[0], values[0]]

    for step in range(21, 40):
        clock.observe(0.1)
        assert not clock.due(step, reduce)
    assert seen and clock.started_at is None


def test_plateau_clock_state_round_trips():
    a, b = _clock(), _clock()
    for step in range(1, 120):
        a.observe(2.3 - step * 0.01)
        a.due(step)
    b.load_state_dict(a.state_dict())
    for step in range(120, 400):
        loss = 2.3 - step * 0.01
        a.observe(loss)
        b.observe(loss)
        assert a.due(step) == b.due(step)
    assert a.started_at == b.started_at is not None


def test_fixed_starts_ignore_the_loss():
    clock = UpdateClock.from_config(TrainConfig(update_frequency=10, t_end=1.0, update_start="30"), 100, 10)
    clock.observe(float("nan"))
    assert [s for s in range(1, 101) if clock.due(s)] == [30, 40, 50, 60, 70, 80, 90]


def test_plateau_start_does_not_wait_when_the_model_starts_trained():
    """A fine-tune (an --init model that has learned) has no plateau to leave: its loss starts well below
    the chance loss ln C and stays flat, so updates start at the first scheduled step once the 20-step
    window is full and the warm-up is over. A model at chance (loss ln 10 flat) still waits for ever."""
    cfg = TrainConfig(update_frequency=10, t_end=1.0, warmup_epochs=1.0, update_start="plateau")
    trained = UpdateClock.from_config(cfg, total_steps=400, steps_per_epoch=20, num_classes=10)
    at_chance = UpdateClock.from_config(cfg, total_steps=400, steps_per_epoch=20, num_classes=10)
    trained_due, chance_due = [], []
    for step in range(1, 401):
        trained.observe(0.4)
        at_chance.observe(math.log(10))
        trained_due.append(trained.due(step))
        chance_due.append(at_chance.due(step))
    assert [s for s, d in enumerate(trained_due, start=1) if d][0] == 20 == trained.started_at
    assert not any(chance_due) and at_chance.started_at is None


def test_an_engine_waiting_for_the_plateau_refuses_a_step_without_a_loss():
    """Driven from a caller's loop as ``after_optimizer_step(step)`` (no ``loss=``), the default
    ``--update-start plateau`` used to wait for losses it was never given and never update; now its
    first step says so, naming both ways out. Given the loss, the same engine steps on."""
    from sparsity_core.dst import EngineContext, build_engine
    from sparsity_core.models.builder import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vit_tiny_demo", embed_dim=24, depth=1, num_heads=2, num_classes=4))
    for method in ("svite", "s2vite"):
        ctx = EngineContext(model=model, optimizer=torch.optim.AdamW(model.parameters()), total_steps=50,
                            steps_per_epoch=10, config=TrainConfig(method=method, update_frequency=5))
        engine = build_engine(ctx)
        with pytest.raises(SviteError, match=r"plateau watches the training loss.*loss=loss.item\(\).*'warmup'"):
            engine.after_optimizer_step(0)
        assert engine.after_optimizer_step(1, loss=2.3) is False  # given a loss: waits for the plateau, no error
