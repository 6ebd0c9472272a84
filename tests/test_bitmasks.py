"""Masks as bits while training (masks/bits.py) and the linear-time weight update (select.choose_keys,
weights.exchange): the same masks, the same applied weights and the same decisions as the bool/float
forms they replace, at one bit per weight."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsity_core.dst import EngineContext, build_engine
from sparsity_core.dst.scorers import WEIGHT_GROWTH
from sparsity_core.dst.select import choose, choose_keys
from sparsity_core.dst.weights import Scratch, _exchange_keys, _exchange_topk, masks_from_state, masks_state
from sparsity_core.errors import SviteError
from sparsity_core.masks.bits import APPLY_CHUNK, BitMaskSet, _pack_torch, _popcount_torch, _unpack_torch
from sparsity_core.masks.maskset import MaskSet
from sparsity_core.training.config import TrainConfig

SHAPES = [(3, 5), (17,), (64, 33), (1,), (8, 3, 2, 2)]


def _masks(seed: int, p: float = 0.4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"l{i}": torch.rand(s, generator=g) < p for i, s in enumerate(SHAPES)}


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4099])
def test_the_torch_bit_paths_for_other_devices_agree_with_numpys(n):
    """Off the CPU the bits go through torch shifts (no numpy); run here on CPU tensors, they must give
    numpy's packbits layout exactly."""
    flat = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
    want = torch.from_numpy(np.packbits(flat.numpy()))
    got = torch.empty_like(want)
    _pack_torch(flat, got)
    assert torch.equal(got, want)
    out = torch.empty(len(want) * 8, dtype=torch.uint8)
    _unpack_torch(want, out)
    assert torch.equal(out[:n].view(torch.bool), flat) and not out[n:].any()
    assert _popcount_torch(want) == int(flat.sum())


def test_a_layer_larger_than_a_chunk_is_masked_whole():
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(3 * APPLY_CHUNK + 13, generator=g) < 0.5
    w = torch.randn(mask.shape, generator=g)
    a, b = w.clone(), w.clone()
    MaskSet({"w": mask}).apply_to([a])
    BitMaskSet({"w": mask}).apply_to([b])
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bits_hold_the_same_masks_and_apply_them_bit_for_bit(seed):
    masks = _masks(seed)
    plain, bits = MaskSet(masks), BitMaskSet(masks)
    assert bits.equal(plain) and plain.equal(bits) and bits.nonzeros() == plain.nonzeros()
    assert all(torch.equal(bits[n], m) and bits[n].dtype == torch.bool for n, m in masks.items())
    packed_a, packed_b = plain.pack(), bits.pack()  # what snapshots and checkpoints store: the same bytes
    assert all(torch.equal(packed_a.data[n], packed_b.data[n]) for n in masks)
    assert bits.nbytes() == sum(math.ceil(m.numel() / 8) for m in masks.values())  # one bit per weight
    g = torch.Generator().manual_seed(seed + 10)
    weights = [torch.randn(m.shape, generator=g) for m in masks.values()]
    a, b = [w.clone() for w in weights], [w.clone() for w in weights]
    plain.apply_to(a)
    bits.apply_to(b)
    # identical bits, sign of zero included (a masked negative weight is -0.0 either way)
    assert all(torch.equal(x.view(torch.int32), y.view(torch.int32)) for x, y in zip(a, b, strict=True))
    for name, m in masks.items():
        assert torch.equal(bits.positions(name), m.reshape(-1).nonzero().reshape(-1))
        flat = bits.unpack_into(name, torch.empty(math.ceil(m.numel() / 8) * 8, dtype=torch.uint8))
        flat[:1] = ~flat[:1]
        bits.store(name, flat)
        assert bits.count(name) == int(m.sum()) + (1 if not bool(m.reshape(-1)[0]) else -1)


def test_an_engine_keeps_masks_as_bits_and_no_float_copy():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 200), torch.nn.Linear(200, 100))
    cfg = TrainConfig(method="svite", density=0.3, update_start="0")
    engine = build_engine(EngineContext(model=model, optimizer=torch.optim.AdamW(model.parameters()), total_steps=100,
                                        steps_per_epoch=10, config=cfg))
    n = sum(p.numel() for name, p in model.named_parameters() if name in engine.masks)
    assert isinstance(engine.masks, BitMaskSet) and engine.masks.nbytes() == n // 8
    assert engine.fired.nbytes() == n // 8
    assert engine.masks.scratch.nbytes() <= 5 * APPLY_CHUNK  # a chunk unpacked (bytes) and its float factor


def test_resume_state_is_bits_and_legacy_bool_masks_still_load():
    masks = BitMaskSet(_masks(0))
    state = masks_state(masks)
    assert all(t.dtype == torch.uint8 and t.numel() == math.ceil(masks[n].numel() / 8) for n, t in state.items())
    names, shapes = list(masks), [masks.shape(n) for n in masks]
    assert masks_from_state(state, names, shapes, torch.device("cpu")).equal(masks)
    legacy = {n: masks[n].clone() for n in names}  # bool masks, as sidecars were written before
    assert masks_from_state(legacy, names, shapes, torch.device("cpu")).equal(masks)
    for bad, why in ((dict(state, l2=state["l2"][:-1]), "needs exactly"), (dict(legacy, l0=legacy["l0"].T), "shape"),
                     ({k: v for k, v in state.items() if k != "l1"}, "missing")):
        with pytest.raises(SviteError, match=rf"--resume: the saved masks of '.*' do not fit this model \(.*{why}"):
            masks_from_state(bad, names, shapes, torch.device("cpu"))


@settings(max_examples=200, deadline=None)
@given(data=st.lists(st.integers(0, 6), min_size=1, max_size=60), k=st.integers(0, 70), largest=st.booleans())
def test_choose_keys_is_choose(data, k, largest):
    """The linear-time selection picks exactly the entries of the stable top-k (ties: lower index first)."""
    keys = np.array(data, dtype=np.uint32)
    k = min(k, keys.size)
    got = choose_keys(keys, k, largest=largest, work=np.empty(keys.size, np.uint32), flags=np.empty(keys.size, bool))
    want = choose(torch.tensor(data, dtype=torch.float32), k, largest=largest)
    assert sorted(got.tolist()) == sorted(want.tolist())


@pytest.mark.parametrize("growth", sorted(WEIGHT_GROWTH))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("young", [False, True])
def test_the_key_path_and_the_topk_path_make_the_same_decisions(growth, ties, young):
    """On the CPU exchange selects on uint32 keys; elsewhere it takes the topk path over float scores. Both
    on the same weights and gradients, with and without ties: the same choices."""
    g = torch.Generator().manual_seed(3)
    shape = (40, 30)
    w = torch.randn(shape, generator=g)
    grad = torch.randn(shape, generator=g)
    if ties:  # many tied magnitudes and gradients, zeros included
        w = (w * 2).round() / 2
        grad = (grad * 2).round() / 2
    mask = torch.rand(shape, generator=g) < 0.4
    w = w * mask
    youngest = (torch.rand(shape, generator=g) < 0.3) & mask if young else None
    results = []
    for path in (_exchange_keys, _exchange_topk):
        p = torch.nn.Parameter(w.clone())
        p.grad = grad.clone()
        opt = torch.optim.AdamW([p])
        opt.state[p]["exp_avg"] = grad * 0.5  # momentum growth reads it
        m = mask.clone().reshape(-1)
        gen = torch.Generator().manual_seed(7)
        y = youngest.reshape(-1) if youngest is not None else None
        pruned, grown, revived = path(p, m, 100, WEIGHT_GROWTH[growth], opt, gen, Scratch(), y)
        order = torch.argsort(grown)
        results.append((sorted(pruned.tolist()), grown[order].tolist(), revived[order].tolist(), m.clone()))
    (p32, g32, r32, m32), (p64, g64, r64, m64) = results
    assert p32 == p64 and g32 == g64 and r32 == r64 and torch.equal(m32, m64)
    assert int(m32.sum()) == int(mask.sum())
