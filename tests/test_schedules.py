"""PruneSchedule: the reference's update rule and cosine death rate (SVITE_REFERENCE.md §1)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsity_core.dst.schedule import PruneSchedule
from sparsity_core.errors import SviteError
from sparsity_core.train import TrainConfig


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
