"""The shipped demo checkpoints are what checkpoints/README.md promises: the four methods, each with at
least 10 history snapshots, at most 5 MB, masks really applied, and their recorded training config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hostile import format_1
from safetensors import safe_open

from sparsity_core.analysis import integrity_check, neuron_survival
from sparsity_core.analysis.report import inspect_checkpoint
from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.cli import main

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
    assert loaded.meta["train_config"]["epochs"] == 40 and loaded.meta["train_config"]["data"] == "demo"
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
# format 2: keyframes + deltas, decoding to what was trained; `svite convert` loses nothing
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


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_demo_checkpoints_decode_to_their_final_masks_and_survive_a_format_round_trip(name, tmp_path):
    """The keyframe + delta chain decodes to the right masks: the last snapshot (the end of training) equals
    the checkpoint's final masks and units, which are stored whole, outside the history. And nothing is
    lost between the formats: the file rewritten as format 1 and converted back by `svite convert` holds the
    same content, bit for bit (the demos were remade in format 2 after the format-1 originals were retired;
    their conversion was checked then against the originals' digests, commit e5817cf's version of this test)."""
    path = CHECKPOINTS / f"{name}.safetensors"
    loaded = load_checkpoint(path)
    last = loaded.history[len(loaded.history) - 1]
    assert last.epoch == loaded.meta["train_config"]["epochs"]
    final = dict(loaded.masks) if loaded.masks is not None else {}
    decoded = dict(last.masks.unpack())
    assert decoded.keys() == final.keys() and (name == "dense") == (not final)
    for layer, mask in decoded.items():
        assert torch.equal(mask, final[layer]), layer
    for unit, alive in last.units.unpack().items():
        assert torch.equal(alive, loaded.units[unit]), unit
    old = format_1(path, tmp_path / "old.safetensors")
    assert main(["convert", str(old), str(tmp_path / "new.safetensors")]) == 0
    assert content_digest(old) == content_digest(path) == content_digest(tmp_path / "new.safetensors")
