"""The shipped demo checkpoints are what checkpoints/README.md promises: the four methods, each with at
least 10 history snapshots, at most 5 MB, masks really applied, and their recorded training config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from sparsity_core.analysis import integrity_check, neuron_survival
from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.report import inspect_checkpoint

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
EXPECTED = {  # file -> (method, has a token selector, has head/neuron masks)
    "dense": ("dense", False, False),
    "svite": ("svite", False, False),
    "svite-plus": ("svite", True, False),
    "s2vite": ("s2vite", False, True),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_demo_checkpoint_meets_its_spec(name):
    path = CHECKPOINTS / f"{name}.safetensors"
    assert path.stat().st_size <= 5 * 1024 * 1024
    loaded = load_checkpoint(path)
    doc = inspect_checkpoint(loaded)
    method, selector, units = EXPECTED[name]
    assert doc["method"] == method
    assert (doc["token_selector"] is not None) == selector
    assert (doc["heads"] is not None) == units
    assert len(doc["history"]) >= 10
    assert loaded.meta.get("complete") is True
    assert loaded.meta["train_config"]["epochs"] == 20 and loaded.meta["train_config"]["data"] == "demo"
    assert integrity_check(loaded).ok


def test_shipped_s2vite_heads_can_attend_and_its_neurons_moved():
    """The fidelity fixes, visible in the shipped S²ViTE demo: every alive head has nonzero q and k rows
    (a head regrown with q = k = 0 could never learn to attend), and in every block more MLP neurons were
    alive at some point than are alive at the end (neuron growth picked neurons outside the initial
    random choice), which the mask-evolution page's survival timeline shows as a fall below 1."""
    loaded = load_checkpoint(CHECKPOINTS / "s2vite.safetensors")
    for i, block in enumerate(loaded.model.blocks):
        attn = block.attn
        w = attn.qkv.weight.detach().reshape(3, attn.num_heads, attn.head_dim, -1)
        alive = loaded.units[f"blocks.{i}.attn.heads"]
        assert alive.any()
        for part in (0, 1):  # q, k
            assert (w[part][alive] != 0).flatten(1).any(dim=1).all(), f"block {i}: an alive head with zero q or k"
        neurons = f"blocks.{i}.mlp.neurons"
        assert int(loaded.fired[neurons].sum()) > int(loaded.units[neurons].sum()), f"block {i}: neurons never moved"
    survival = neuron_survival(loaded.history)
    final = survival[survival.snapshot == survival.snapshot.max()]
    assert len(final) == len(loaded.model.blocks) and (final.survived < 1.0).all()


# ----------------------------------------------------------------------------------------------
# format 2: the shipped files were re-encoded from format 1 with `svite convert`, losing nothing
def content_digest(path: Path) -> str:
    """sha256 of everything a checkpoint holds, read independently of its history's storage format: the
    weight, mask, unit and fired tensors byte for byte, the metadata (less ``format_version``, the history's
    index and the head probe's description) and, per snapshot, step, epoch, info and every decoded mask, unit
    and state tensor. The head probe (recorded since, or grafted from an identical rerun) is left out."""
    tensors = safetensors.torch.load(path.read_bytes())
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["svite_explorer"])
    digest = hashlib.sha256()
    for name in sorted(k for k in tensors if not k.startswith("history/")):
        t = tensors[name].contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    digest.update(json.dumps({k: v for k, v in header.items() if k not in ("format_version", "history", "head_probe")},
                             sort_keys=True).encode())
    for snap in load_checkpoint(path).history:
        digest.update(json.dumps([snap.step, snap.epoch, snap.info], sort_keys=True).encode())
        for group in (dict(snap.masks.unpack()), dict(snap.units.unpack()), snap.state):
            for name in sorted(group):
                digest.update(f"{name}:{tuple(group[name].shape)}".encode())
                digest.update(group[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


#: name -> (sha256 of the shipped file as `svite convert` wrote it, content digest of its format-1 original).
#: The S²ViTE and SViTE+ files then got the head probe of identical reruns (scripts/graft_head_probe.py).
CONVERTED = {
    "dense": ("da776c2315787f385245224c56f8d956c11b7c5372447f88d6c14c737e92d4ef",
              "27a8b600e586e32e48f32e21b10dfbb8870877c6c4a02744b08640a56e9c79a3"),
    "s2vite": ("ac0b5561d557498294ecf269db8a56c59e67f314da47383d8c2ba0753f8b7ee4",
               "dd5bc0d4166948c21c89c54a1d2eb11993597572297e4fc34ea2e983a1a70ab6"),
    "svite-plus": ("c1bb243eee47798484ce2ed7944cb65c10f41a8fbf996300d378098429d0269b",
                   "479277a77286440f63b96b49bc8643a55848f83b9f71c8414cdcfd65cfb04a0e"),
    "svite": ("98b53b7788c32b6016267a8c4bf0a7f3b23a264fa3855862336429a47056c543",
              "a9bd15c5a4c1cf02f75f1aeb341804bf6a3b5443bdf63188d484701cf47415a5"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_demo_checkpoints_are_format_2(name):
    path = CHECKPOINTS / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["svite_explorer"])
        keys = list(fh.keys())
    assert header["format_version"] == 2 and header["history"]["encoding"] == "svite-keyframe-delta-1"
    assert not any(k.count("/") > 2 for k in keys if k.startswith("history/"))  # format 1: history/<i>/mask/<name>
    kinds = [s["masks"]["kind"] for s in header["history"]["snapshots"] if "masks" in s]
    assert name == "dense" or ("delta" in kinds or "same" in kinds)  # not every snapshot stored whole


@pytest.mark.parametrize("name", sorted(CONVERTED))
def test_shipped_demo_checkpoints_decode_as_their_format_1_originals(name):
    """Bit for bit: weights, masks, metadata and every snapshot's decoded masks, units and selector weights
    equal what the format-1 file held (its digest was taken before `svite convert` rewrote it). A demo
    remade later by scripts/make_demo_checkpoints.py is a new training run, with nothing to compare."""
    path = CHECKPOINTS / f"{name}.safetensors"
    converted, original = CONVERTED[name]
    if hashlib.sha256(path.read_bytes()).hexdigest() != converted:
        pytest.skip(f"{path.name} was remade after its conversion from format 1: drop it from CONVERTED")
    assert content_digest(path) == original
