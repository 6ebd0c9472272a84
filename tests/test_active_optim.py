"""``--optimizer-state active`` (dst/active_optim.py): AdamW moments for active weights only.

What must hold: the moments of a masked parameter take one entry per active weight; active weights step
exactly as under torch's AdamW while the masks stay put; an update re-indexes the moments (kept and
revived entries keep theirs, grown ones start zero-avg with a floored second moment, so their first step
stays within ~lr); a resumed run equals an uninterrupted one; and a resume state of the other mode, or
flags the mode cannot serve, are one-line errors.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_train_config
from torch import nn

from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.dst import EngineContext, build_engine
from sparsity_core.dst.active_optim import ActiveAdamW
from sparsity_core.errors import FlagError, SviteError
from sparsity_core.training.config import TrainConfig, check_method_flags
from sparsity_core.training.loop import train

LR = 1e-3


class OneLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(48, 48) * 0.05)
        self.b = nn.Parameter(torch.zeros(48))  # not masked: plain AdamW


def _engine(model, opt, **cfg):
    config = TrainConfig(method="svite", density=0.5, sparse_init="uniform", update_start="0", warmup_epochs=0.0,
                         **{"update_frequency": 1000, "t_end": 1.0, **cfg})
    return build_engine(EngineContext(model=model, optimizer=opt, total_steps=4000, steps_per_epoch=100,
                                      config=config))


def _twins(weight_decay=0.05):
    torch.manual_seed(0)
    a = OneLayer()
    b = OneLayer()
    b.load_state_dict(a.state_dict())
    groups = lambda m: [{"params": [m.w], "weight_decay": weight_decay}, {"params": [m.b], "weight_decay": 0.0}]  # noqa: E731
    return (a, torch.optim.AdamW(groups(a), lr=LR)), (b, ActiveAdamW(groups(b), lr=LR))


def test_moments_cover_active_weights_only_and_active_weights_step_as_under_adamw():
    (full, opt_full), (act, opt_act) = _twins()
    eng_full, eng_act = _engine(full, opt_full), _engine(act, opt_act)
    assert eng_full.masks.equal(eng_act.masks)
    gen = torch.Generator().manual_seed(1)
    for step in range(50):  # no update within these steps: the masks stay put
        g = torch.randn(48, 48, generator=gen)
        for model, opt, eng in ((full, opt_full, eng_full), (act, opt_act, eng_act)):
            model.w.grad, model.b.grad = g.clone(), g[0].clone()
            opt.step()
            assert not eng.after_optimizer_step(step)
    assert torch.equal(full.w, act.w) and torch.equal(full.b, act.b)  # bit for bit
    budget = eng_act.budgets["w"]
    assert opt_act.state[act.w]["exp_avg"].shape == (budget,) == opt_act.state[act.w]["exp_avg_sq"].shape
    assert opt_act.state[act.b]["exp_avg"].shape == (48,)  # an unmasked parameter keeps full moments
    active = eng_act.masks["w"].reshape(-1)
    assert torch.equal(opt_act.state[act.w]["exp_avg"], opt_full.state[full.w]["exp_avg"].reshape(-1)[active])
    assert torch.equal(opt_act.state[act.w]["exp_avg_sq"], opt_full.state[full.w]["exp_avg_sq"].reshape(-1)[active])


def test_an_update_reindexes_the_moments_and_grown_weights_start_zero_avg():
    torch.manual_seed(0)
    model = OneLayer()
    opt = ActiveAdamW([model.w, model.b], lr=LR, weight_decay=0.0)
    engine = _engine(model, opt, update_frequency=400)
    signal = torch.randn(48, 48) * 0.1
    for step in range(400):
        model.w.grad = signal + torch.randn(48, 48)
        model.b.grad = torch.randn(48)
        opt.step()
        before = engine.masks["w"].reshape(-1).clone()  # what the update (after step 400) starts from
        m_before = opt.state[model.w]["exp_avg"].clone()
        v_before = opt.state[model.w]["exp_avg_sq"].clone()
        assert engine.after_optimizer_step(step) == (step == 399)
    after = engine.masks["w"].reshape(-1)
    grad_sq = model.w.grad.reshape(-1).square()
    full_m = torch.zeros(48 * 48).index_copy_(0, before.nonzero().reshape(-1), m_before)
    full_v = torch.zeros(48 * 48).index_copy_(0, before.nonzero().reshape(-1), v_before)
    kept, grown = before & after, after & ~before
    assert int(grown.sum()) > 100 and int(kept.sum()) > 100
    m, v = opt.state[model.w]["exp_avg"], opt.state[model.w]["exp_avg_sq"]
    assert m.shape == (engine.budgets["w"],)
    in_new = torch.zeros(48 * 48, dtype=torch.long)
    in_new[after] = torch.arange(int(after.sum()))
    k, g = in_new[kept], in_new[grown]
    assert torch.equal(m[k], full_m[kept]) and torch.equal(v[k], full_v[kept])  # kept entries keep theirs
    assert not m[g].any()  # zero-avg: the first moment starts at 0
    assert torch.equal(v[g], grad_sq[grown].clamp(min=float(v_before.mean())))
    # ... so a grown weight's first step stays within Adam's usual bound
    w0 = model.w.detach().clone()
    model.w.grad = signal + torch.randn(48, 48)
    opt.step()
    steps = ((model.w.detach() - w0).abs() / LR).reshape(-1)
    assert float(steps[grown].max()) <= 1.0
    assert float(steps[grown].median()) <= 1.5 * float(steps[kept].median())
    assert not model.w.detach().reshape(-1)[~after].any()  # masked weights were never moved


def _run(path, **overrides):
    base = dict(method="svite", train_size=64, val_size=16, batch_size=16, update_frequency=2,
                optimizer_state="active")
    return train(tiny_train_config(path, **{**base, **overrides}), show_progress=False, echo_metrics=False)


@pytest.mark.parametrize("method", ["svite", "s2vite"])
def test_resumed_active_run_is_bit_identical(tmp_path, method):
    full = load_checkpoint(_run(tmp_path / "full", method=method))
    _run(tmp_path / "part", method=method, max_steps=4)
    resumed = load_checkpoint(_run(tmp_path / "part", method=method, resume=str(tmp_path / "part")))
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.masks.equal(resumed.masks) and full.fired.equal(resumed.fired)
    assert full.meta["settings"]["num_updates"] >= 2 and full.meta["train_config"]["optimizer_state"] == "active"


def test_a_resume_state_of_the_other_mode_is_a_one_line_error(tmp_path):
    _run(tmp_path / "run", max_steps=4)  # trained with active moments
    with pytest.raises(SviteError, match=r"--resume: the saved optimizer moments do not fit --optimizer-state full"):
        _run(tmp_path / "run", optimizer_state="full", resume=str(tmp_path / "run"))
    _run(tmp_path / "dense-moments", optimizer_state="full", max_steps=4)
    with pytest.raises(SviteError, match=r"do not fit --optimizer-state active"):
        _run(tmp_path / "dense-moments", resume=str(tmp_path / "dense-moments"))


@pytest.mark.parametrize("overrides, message", [
    (dict(method="svite", growth="momentum"), "--growth momentum"),
    (dict(method="svite", grown_moments="zero"), "does not apply"),
    (dict(method="svite", optimizer_state="sparse"), "unknown mode 'sparse'"),
])
def test_flags_the_mode_cannot_serve_are_refused(overrides, message):
    cfg = TrainConfig(**{"optimizer_state": "active", **overrides})
    with pytest.raises(FlagError, match=message):
        check_method_flags(cfg)
