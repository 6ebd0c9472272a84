from __future__ import annotations

import argparse
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from safetensors.torch import save as safetensors_save
from safetensors.torch import save_file

from sparsity_core.checkpoint import (
    checkpoint_parts,
    load_checkpoint,
    load_resume_state,
    save_checkpoint,
    save_resume_state,
)
from sparsity_core.checkpoint.atomic import atomic_write_bytes
from sparsity_core.checkpoint.streaming import Segments, write_safetensors
from sparsity_core.errors import CheckpointError, SviteError
from sparsity_core.masks.maskset import (
    MaskSet,
    Snapshot,
    default_sparsifiable,
    head_unit_name,
    neuron_unit_name,
)
from sparsity_core.models.builder import build_model


def _random_masks(model, density, seed):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return MaskSet({n: torch.rand(params[n].shape, generator=g) < density for n in default_sparsifiable(model)})


def test_round_trip_is_exact(tmp_path, tiny_model):
    masks = _random_masks(tiny_model, 0.4, 0)
    masks.apply(tiny_model)
    units = MaskSet({head_unit_name(0): torch.tensor([True, False, True, True]),
                     neuron_unit_name(0): torch.rand(192) < 0.5})
    fired = _random_masks(tiny_model, 0.7, 1)
    history = [Snapshot.take(i * 10, i / 2, masks=_random_masks(tiny_model, 0.4, 10 + i), units=units,
                             state={"token_selector.scorer.weight": torch.randn(1, 48)}, event="update", rate=0.1 * i)
               for i in range(3)]
    meta = {"method": "svite", "settings": {"density": 0.4}, "epoch": 2, "metrics": {"val_top1": 12.5},
            "train_config": {"lr": 0.001, "include": ["a*"]}}
    path = save_checkpoint(tmp_path / "c.safetensors", tiny_model, tiny_model_config(), masks=masks, units=units,
                           fired=fired, history=history, meta=meta)
    loaded = load_checkpoint(path)
    assert loaded.format == "svite-explorer" and loaded.method == "svite"
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    assert loaded.masks.equal(masks) and loaded.units.equal(units) and loaded.fired.equal(fired)
    assert [(s.step, s.epoch, s.info) for s in loaded.history] == [(s.step, s.epoch, s.info) for s in history]
    for a, b in zip(loaded.history, history, strict=True):
        assert a.masks.unpack().equal(b.masks.unpack()) and a.units.unpack().equal(b.units.unpack())
        assert torch.equal(a.state["token_selector.scorer.weight"], b.state["token_selector.scorer.weight"])
    for key, value in meta.items():
        assert loaded.meta[key] == value
    assert loaded.meta["versions"]["torch"] == torch.__version__
    assert loaded.model_config == tiny_model_config()


def test_streamed_file_is_byte_for_byte_what_safetensors_writes(tmp_path, tiny_model):
    """The checkpoint is streamed (no copy of the model in memory): the bytes must be the library's."""
    masks = _random_masks(tiny_model, 0.4, 0)
    history = [Snapshot.take(i, i / 2, masks=_random_masks(tiny_model, 0.4, 10 + i), event="update") for i in range(3)]
    tensors, metadata = checkpoint_parts(tiny_model, tiny_model_config(), masks=masks, fired=masks, history=history,
                                         meta={"note": "ünïcode \"quoted\" \\ \n"})
    assert any(isinstance(v, Segments) and len(v.parts) > 1 for v in tensors.values())  # written unconcatenated
    odd = {"bf16": torch.randn(3, 2).to(torch.bfloat16), "scalar": torch.tensor(2.5, dtype=torch.float64),
           "empty": torch.zeros(0, 4), "flags": torch.rand(7) < 0.5, "ints": torch.arange(5)}
    buf = io.BytesIO()
    write_safetensors(buf, {**tensors, **odd}, metadata)
    plain = {k: torch.from_numpy(np.concatenate(v.parts)) if isinstance(v, Segments) else v.contiguous().clone()
             for k, v in {**tensors, **odd}.items()}
    assert buf.getvalue() == safetensors_save(plain, metadata=metadata)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"good")

    def explode(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(SviteError, match=r"ckpt.bin: cannot write \(disk full\); the previous version was left as it"):
        atomic_write_bytes(target, explode)
    assert target.read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]  # no temp file left behind


def test_resume_state_round_trip(tmp_path):
    state = {"step": 3, "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]}}
    save_resume_state(tmp_path / "r.pt", state)
    back = load_resume_state(tmp_path / "r.pt")
    assert back["step"] == 3 and torch.equal(back["optimizer"]["state"][0]["exp_avg"], torch.ones(2))


@pytest.mark.parametrize("layout", ["bare", "model", "state_dict", "module_prefix", "bin", "safetensors"])
def test_plain_timm_state_dicts_load(tmp_path, tiny_model, layout):
    sd = tiny_model.state_dict()
    if layout == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        obj = {"bare": sd, "bin": sd, "model": {"model": sd, "epoch": 3}, "state_dict": {"state_dict": sd},
               "module_prefix": {"model": {f"module.{k}": v for k, v in sd.items()}}}[layout]
        path = tmp_path / ("pytorch_model.bin" if layout == "bin" else "w.pth")
        torch.save(obj, path)
    loaded = load_checkpoint(path, num_heads=4)
    assert loaded.format == "timm" and loaded.masks is None and loaded.method == "dense"
    for k, v in sd.items():
        assert torch.equal(v, loaded.model.state_dict()[k])
    assert loaded.model.blocks[0].attn.num_heads == 4


def _official_unstructured(model, with_selector_offset=False):
    """An official SViTE checkpoint.pth as docs/reference.md §4 documents it."""
    masks = _random_masks(model, 0.35, 3)
    masks.apply(model)
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    mask_dict = {f"module.{n}_{index[n]}": m.float() for n, m in masks.items()}
    args = argparse.Namespace(model="deit_tiny_patch16_224", pruning_type="unstructure", density=0.35,
                              atten_head=4, token_number=None)
    return masks, {"model": model.state_dict(), "optimizer": {}, "epoch": 7, "args": args, "mask": mask_dict,
                   "atten_mask": {}, "other_mask": {}, "mask_step": 100}


def test_official_svite_checkpoint_with_masks(tmp_path, tiny_model):
    masks, ckpt = _official_unstructured(tiny_model)
    assert "module.patch_embed.proj.weight_2" in ckpt["mask"]  # the documented index of the patch embedding
    assert "module.blocks.0.attn.qkv.weight_6" in ckpt["mask"]
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    loaded = load_checkpoint(tmp_path / "checkpoint.pth")
    assert loaded.format == "svite-official" and loaded.method == "svite" and loaded.meta["epoch"] == 7
    assert loaded.masks.equal(masks)
    assert loaded.masks.density() == pytest.approx(masks.density())


def test_official_svite_checkpoint_masks_recovered_from_zeros(tmp_path, tiny_model):
    masks, ckpt = _official_unstructured(tiny_model)
    ckpt["mask"] = {}
    torch.save(ckpt, tmp_path / "checkpoint.pth")
    loaded = load_checkpoint(tmp_path / "checkpoint.pth")
    assert loaded.masks.equal(masks)


def test_official_structured_checkpoint(tmp_path, tiny_model):
    heads, dh, dim = 4, 12, 48
    atten, other = {}, {}
    alive_heads = {0: [True, False, True, False], 1: [False, True, True, True]}
    for i in range(2):
        qkv = torch.ones(3 * dim, dim)
        for h, alive in enumerate(alive_heads[i]):
            if not alive:
                for part in range(3):
                    qkv[part * dim + h * dh: part * dim + (h + 1) * dh] = 0
        atten[f"module.blocks.{i}.attn.qkv.weight_mask"] = qkv
        neurons = torch.zeros(192)
        neurons[: 100 + i] = 1
        other[f"module.blocks.{i}.mlp.fc1.weight_mask"] = neurons[:, None].expand(192, dim).clone()
        other[f"module.blocks.{i}.mlp.fc2.weight_mask"] = neurons[None, :].expand(dim, 192).clone()
    args = argparse.Namespace(model="deit_tiny_patch16_224", pruning_type="structure_new", atten_head=heads)
    torch.save({"model": tiny_model.state_dict(), "args": args, "mask": {}, "atten_mask": atten, "other_mask": other,
                "epoch": 1}, tmp_path / "checkpoint.pth")
    loaded = load_checkpoint(tmp_path / "checkpoint.pth")
    assert loaded.method == "s2vite"
    for i in range(2):
        assert loaded.units[head_unit_name(i)].tolist() == alive_heads[i]
        assert int(loaded.units[neuron_unit_name(i)].sum()) == 100 + i
        assert loaded.masks.density()[f"blocks.{i}.attn.qkv.weight"] == pytest.approx(sum(alive_heads[i]) / 4)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Evil(marker)}, fh)
    with pytest.raises(CheckpointError, match="evil.pth") as err:
        load_checkpoint(path)
    assert "refused" in str(err.value) or "not a readable" in str(err.value)
    assert not marker.exists()
    torch.save({"model": {"w": torch.ones(1)}, "x": _Evil(marker)}, tmp_path / "evil2.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil2.pth")
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["missing", "empty", "garbage", "truncated_safetensors", "truncated_pth",
                                  "directory", "json_not_tensors", "wrong_architecture"])
def test_bad_files_give_a_clear_error_naming_the_file(tmp_path, tiny_model, kind):
    path = tmp_path / f"bad_{kind}.safetensors"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated_safetensors":
        good = save_checkpoint(tmp_path / "good.safetensors", tiny_model, tiny_model_config())
        path.write_bytes(good.read_bytes()[:5000])
    elif kind == "truncated_pth":
        path = tmp_path / "bad.pth"
        torch.save(tiny_model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "directory":
        path.mkdir()
    elif kind == "json_not_tensors":
        path = tmp_path / "bad.pth"
        path.write_text(json.dumps({"a": 1}))
    elif kind == "wrong_architecture":
        other = build_model(tiny_model_config(depth=3))
        path = save_checkpoint(path, other, tiny_model_config(depth=3))
        sd = dict(other.state_dict())
        sd["blocks.0.attn.qkv.weight"] = torch.zeros(3, 3)
        path = tmp_path / "bad.pth"
        torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert path.name in message and "\n" not in message
