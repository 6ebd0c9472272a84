"""The AdamW moments of grown weights (optim_state.py): measured on a layer trained with noisy gradients.

The mechanism the former default had: torch's AdamW keeps one ``step`` per tensor, so zeroing
``exp_avg_sq`` at a grown entry leaves it without bias correction and its first update is several
times the learning rate. These tests measure the first step of grown weights against the active
weights' under every policy, so they fail if that mechanism comes back.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsity_core  # noqa: F401  (before timm)
from sparsity_core.dst import EngineContext, build_engine
from sparsity_core.dst.optim_state import GROWN_MOMENTS, reset_grown_state
from sparsity_core.training.config import TrainConfig

LR = 1e-3
WARM_STEPS = 400  # AdamW's per-tensor bias correction of the second moment is ~0.33 by then


class OneLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(48, 48) * 0.05)


def _grown_and_kept(policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = OneLayer()
    cfg = TrainConfig(method="svite", density=0.5, sparse_init="uniform", update_frequency=WARM_STEPS, t_end=1.0,
                      grown_moments=policy, update_start="0", warmup_epochs=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    engine = build_engine(EngineContext(model=model, optimizer=opt, total_steps=4 * WARM_STEPS, steps_per_epoch=100,
                                        config=cfg))
    signal = torch.randn(48, 48) * 0.1
    mask_before = None
    for step in range(WARM_STEPS):
        mask_before = engine.masks["w"].clone()
        model.w.grad = signal + torch.randn(48, 48)  # noisy gradients, as minibatches give
        opt.step()
        assert engine.after_optimizer_step(step) == (step + 1 == WARM_STEPS)
    grown = engine.masks["w"] & ~mask_before
    kept = engine.masks["w"] & mask_before
    assert int(grown.sum()) > 100 and int(kept.sum()) > 100
    w0 = model.w.detach().clone()
    model.w.grad = signal + torch.randn(48, 48)
    opt.step()
    steps = (model.w.detach() - w0).abs() / LR
    return steps[grown], steps[kept]


@pytest.mark.parametrize("policy", ["keep", "zero-avg"])
def test_a_grown_weights_first_step_is_no_larger_than_an_active_ones(policy):
    grown, kept = _grown_and_kept(policy)
    assert float(grown.max()) <= float(kept.max())
    assert float(grown.max()) <= 1.0  # Adam's step stays within ~lr when its moments are sane
    assert float(grown.median()) <= 1.5 * float(kept.median())


def test_zeroed_second_moments_inflate_the_first_step_of_grown_weights():
    """The former default: every grown weight's first step is larger than the largest active one's."""
    grown, kept = _grown_and_kept("zero")
    assert float(grown.min()) > float(kept.max())
    assert float(grown.median()) > 1.5  # ~1.6x lr after 400 steps, ~3x in the long run


def test_policies_touch_only_the_grown_entries():
    p = nn.Parameter(torch.zeros(4, 4))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(4, 4)
    opt.step()
    where = torch.zeros(4, 4, dtype=torch.bool)
    where[1, 2] = True
    for policy in GROWN_MOMENTS:
        state = {k: v.clone() for k, v in opt.state[p].items()}
        reset_grown_state(opt, p, where, policy)
        first, second = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
        assert torch.equal(first[~where], state["exp_avg"][~where])
        assert torch.equal(second[~where], state["exp_avg_sq"][~where])
        assert (float(first[1, 2]) == 0) == (policy != "keep")
        assert (float(second[1, 2]) == 0) == (policy == "zero")
        assert torch.equal(opt.state[p]["step"], state["step"])  # the per-tensor step is never touched
        opt.state[p].update(state)
    reset_grown_state(opt, p, torch.tensor([6]), "zero")  # flat indices work too
    assert float(opt.state[p]["exp_avg_sq"].view(-1)[6]) == 0 and float(opt.state[p]["exp_avg_sq"].view(-1)[5]) > 0
