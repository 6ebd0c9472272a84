from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsity_core.masks.maskset import MaskSet, Snapshot, default_sparsifiable, pack_bool, unpack_bool


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 13), min_size=1, max_size=4), seed=st.integers(0, 2**16), p=st.floats(0, 1))
def test_pack_unpack_round_trip(shape, seed, p):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < p
    packed = pack_bool(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
    assert torch.equal(unpack_bool(packed, shape), mask)


def test_density_and_fused_apply(tiny_model):
    names = default_sparsifiable(tiny_model)
    assert "pos_embed" not in names and "cls_token" not in names
    assert all(not n.endswith(".bias") and "norm" not in n for n in names)
    g = torch.Generator().manual_seed(0)
    params = dict(tiny_model.named_parameters())
    masks = MaskSet({n: torch.rand(params[n].shape, generator=g) < 0.3 for n in names})
    masks.apply(tiny_model)
    for n in names:
        w = params[n].detach()
        assert torch.all(w[~masks[n]] == 0)
        assert torch.equal(w != 0, masks[n])  # random init has no exact zeros elsewhere
    dens = masks.density()
    assert abs(masks.overall_density() - 0.3) < 0.02
    assert set(dens) == set(names) and all(0.2 < d < 0.4 for d in dens.values())
    # changing a mask invalidates the cached float copies used by the fused multiply
    first = names[0]
    masks[first] = torch.zeros_like(masks[first])
    masks.apply(tiny_model)
    assert torch.count_nonzero(params[first]) == 0
    assert MaskSet.from_weights(tiny_model, names).equal(masks)


def test_snapshot_records_packed_state(tiny_model):
    names = default_sparsifiable(tiny_model)
    masks = MaskSet.full(tiny_model, names)
    snap = Snapshot.take(5, 0.5, masks=masks, state={"w": torch.ones(3)}, event="update")
    assert snap.info["overall_density"] == 1.0 and snap.info["event"] == "update"
    assert snap.masks.unpack().equal(masks)
    assert snap.masks.nbytes() < sum(m.numel() for m in masks.values()) / 7
