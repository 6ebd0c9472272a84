"""Builders of hostile inputs for the bad-input catalogue (test_bad_input*.py): checkpoints that lie
about their sizes or masks, official-format files with bad args, folders with FIFOs, symlink loops and
decompression bombs. Each builder writes small files (all well under 2 MB)."""

from __future__ import annotations

import argparse
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from conftest import tiny_model_config
from PIL import Image
from safetensors import safe_open

from sparsity_core.checkpoint import load_checkpoint, save_checkpoint
from sparsity_core.masks.maskset import (
    MaskSet,
    Snapshot,
    default_sparsifiable,
    head_unit_name,
    neuron_unit_name,
)
from sparsity_core.models.builder import build_model

QKV = "blocks.0.attn.qkv.weight"  # [144, 48] in the tiny model (embed 48, 4 heads)
HEADS = head_unit_name(0)


def tiny_sparse_checkpoint(path: Path) -> Path:
    """A valid tiny checkpoint with final, unit and fired masks and a 3-entry history."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    g = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    masks = MaskSet({n: torch.rand(params[n].shape, generator=g) < 0.5 for n in default_sparsifiable(model)})
    masks.apply(model)
    units = MaskSet({HEADS: torch.tensor([True, False, True, True]), neuron_unit_name(0): torch.rand(192) < 0.5})
    history = [Snapshot.take(i * 4, i / 2, masks=MaskSet({n: m ^ (torch.rand(m.shape, generator=g) < 0.05 * i)
                                                         for n, m in masks.items()}), units=units, event="update")
               for i in range(3)]  # snapshots 1 and 2 flip a few bits: deltas
    return save_checkpoint(path, model, tiny_model_config(), masks=masks, units=units, fired=masks.clone(),
                           history=history, meta={"method": "svite", "step": 8, "epoch": 1.0})


def read_ours(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = safetensors.torch.load(path.read_bytes())
    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["svite_explorer"])
    return tensors, header


def write_ours(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, Any] | str) -> Path:
    text = header if isinstance(header, str) else json.dumps(header)
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
                                metadata={"svite_explorer": text})
    return path


def variant(base: Path, out: Path, edit: Callable[[dict[str, torch.Tensor], dict[str, Any]], Any]) -> Path:
    """A copy of ``base`` after ``edit(tensors, header)``; an edit may return a replacement header string."""
    tensors, header = read_ours(base)
    replaced = edit(tensors, header)
    return write_ours(out, tensors, replaced if isinstance(replaced, str) else header)


def format_1(base: Path, out: Path) -> Path:
    """``base`` with its history as format 1 wrote it (every snapshot's masks packed whole)."""
    tensors, header = read_ours(base)
    tensors = {k: v for k, v in tensors.items() if not k.startswith("history/")}
    entries = []
    for i, snap in enumerate(load_checkpoint(base).history):
        entries.append({"step": snap.step, "epoch": snap.epoch, "info": snap.info, "state": sorted(snap.state),
                        "mask_shapes": {n: list(s) for n, s in snap.masks.shapes.items()},
                        "unit_shapes": {n: list(s) for n, s in snap.units.shapes.items()}})
        tensors.update({f"history/{i}/mask/{n}": t for n, t in snap.masks.data.items()})
        tensors.update({f"history/{i}/unit/{n}": t for n, t in snap.units.data.items()})
        tensors.update({f"history/{i}/state/{n}": t for n, t in snap.state.items()})
    header.update(format_version=1, history=entries)
    return write_ours(out, tensors, header)


def _first_delta(h: dict) -> dict:
    return next(s["masks"] for s in h["history"]["snapshots"] if s.get("masks", {}).get("kind") == "delta")


def _set(mapping: dict, key: str, value: Any) -> None:
    mapping[key] = value


def ours_variants(base: Path, root: Path) -> None:
    """Checkpoints in our format whose metadata or masks lie (one file per case, named by the case)."""
    n_qkv = 144 * 48 // 8
    edits: dict[str, Callable[[dict, dict], Any]] = {
        # silent misreads
        "mask-truncated": lambda t, h: _set(t, f"mask/{QKV}", t[f"mask/{QKV}"][: n_qkv - 1]),
        "mask-padded": lambda t, h: _set(t, f"mask/{QKV}", torch.cat([t[f"mask/{QKV}"], torch.zeros(1, dtype=torch.uint8)])),
        "mask-float": lambda t, h: _set(t, f"mask/{QKV}", t[f"mask/{QKV}"].float()),
        "mask-transposed": lambda t, h: _set(h["mask_shapes"], QKV, [48, 144]),
        "mask-unknown-param": lambda t, h: (_set(h["mask_shapes"], "blocks.7.attn.qkv.weight", [144, 48]),
                                            _set(t, "mask/blocks.7.attn.qkv.weight", t[f"mask/{QKV}"].clone())),
        "unit-spare-bits": lambda t, h: _set(t, f"unit/{HEADS}", t[f"unit/{HEADS}"] | 0x0F),
        "unit-wrong-length": lambda t, h: _set(h["unit_shapes"], HEADS, [6]),
        "fired-truncated": lambda t, h: _set(t, f"fired/{QKV}", t[f"fired/{QKV}"][:10]),
        # format 2 histories (keyframes + deltas): the index is checked at load, the bytes by `check`
        "history2-bytes-truncated": lambda t, h: _set(t, "history/1/masks", t["history/1/masks"][:-1]),
        "history2-method-7": lambda t, h: _first_delta(h)["method"].__setitem__(1, 7),
        "history2-delta-first": lambda t, h: _set(h["history"]["snapshots"][0]["masks"], "kind", "delta"),
        "history2-shape-1e5": lambda t, h: _set(h["history"]["groups"]["masks"]["layers"][1], 1, [100000, 100000]),
        "history2-20000-snapshots": lambda t, h: _set(h["history"], "snapshots", [{"step": 0, "epoch": 0.0}] * 20000),
        "history2-segment-scrambled": lambda t, h: _set(t, "history/1/masks", t["history/1/masks"] ^ 0x5A),
        # declared sizes
        "config-depth-10000": lambda t, h: _set(h["model_config"], "depth", 10000),
        "config-embed-1e6": lambda t, h: _set(h["model_config"], "embed_dim", 10**6),
        "config-img-1e5": lambda t, h: _set(h["model_config"], "img_size", 10**5),
        "config-gigantic": lambda t, h: _set(h, "model_config", {"name": "vit_gigantic_patch14_224"}),
        "config-extra-depth": lambda t, h: _set(h["model_config"], "extra", {"depth": 5000}),
        "mask-shape-1e5": lambda t, h: _set(h["mask_shapes"], QKV, [100000, 100000]),
        # metadata of the wrong type or nesting
        "config-num-heads-0": lambda t, h: _set(h["model_config"], "num_heads", 0),
        "config-depth-string": lambda t, h: _set(h["model_config"], "depth", "2"),
        "history-an-int": lambda t, h: _set(h, "history", 5),
        "mask-shapes-a-list": lambda t, h: _set(h, "mask_shapes", [1, 2]),
        "format-version-string": lambda t, h: _set(h, "format_version", "x"),
        "metadata-nested-1e5": lambda t, h: "[" * 100_000 + "]" * 100_000,
        "metadata-not-object": lambda t, h: "[1, 2, 3]",
    }
    legacy = format_1(base, root / "sparse-format1.safetensors")
    legacy_edits: dict[str, Callable[[dict, dict], Any]] = {  # format 1: every snapshot packed whole
        "history-mask-truncated": lambda t, h: _set(t, f"history/1/mask/{QKV}", t[f"history/1/mask/{QKV}"][:-1]),
        "history-mask-missing": lambda t, h: t.pop(f"history/2/mask/{QKV}"),
        "history-shape-1e5": lambda t, h: _set(h["history"][0]["mask_shapes"], QKV, [100000, 100000]),
        "history-20000-entries": lambda t, h: _set(h, "history", [{"step": i, "epoch": 0.0} for i in range(20000)]),
        "history-step-string": lambda t, h: _set(h["history"][0], "step", "abc"),
    }
    for name, edit in edits.items():
        variant(base, root / f"{name}.safetensors", edit)
    for name, edit in legacy_edits.items():
        variant(legacy, root / f"{name}.safetensors", edit)


def plain_variants(model: torch.nn.Module, root: Path) -> None:
    """Plain state dicts (timm layout) that lie through their key names or strides."""
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file({**sd, "blocks.99999.norm1.weight": torch.ones(48)}, str(root / "blocks-99999.safetensors"))
    safetensors.torch.save_file({**sd, "blocks.abc.norm1.weight": torch.ones(48)}, str(root / "blocks-abc.safetensors"))
    safetensors.torch.save_file({"weight": torch.ones(3)}, str(root / "not-a-vit.safetensors"))
    # a 4-byte storage viewed as 1e5 x 1e5 (zero strides): 40 GB "of data" in a tiny pickle
    torch.save({**model.state_dict(), "head.weight": torch.ones(1).expand(100000, 100000)}, root / "stride0.pth")


def official_variants(model: torch.nn.Module, root: Path) -> None:
    """The official SViTE format (docs/reference.md §4) with bad args and bad masks."""
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    masks = {f"module.{n}_{index[n]}": torch.ones_like(p) for n, p in model.named_parameters() if p.ndim == 2}
    base_args = dict(model="deit_tiny_patch16_224", pruning_type="unstructure", atten_head=4, token_number=None)

    def save(name: str, **changes: Any) -> None:
        ckpt = {"model": model.state_dict(), "args": argparse.Namespace(**base_args), "mask": dict(masks),
                "atten_mask": {}, "other_mask": {}}
        ckpt.update(changes)
        torch.save(ckpt, root / f"{name}.pth")

    save("official-token-number-abc", args=argparse.Namespace(**{**base_args, "token_number": "abc"}),
         model={**model.state_dict(), **{f"gumbel.{k}": v for k, v in {"weight": torch.ones(1, 48)}.items()}})
    save("official-atten-head-x", args=argparse.Namespace(**{**base_args, "atten_head": "x"}))
    qkv_key = f"module.{QKV}_{index[QKV]}"
    save("official-mask-wrong-shape", mask={**masks, qkv_key: torch.ones(48, 144)})
    save("official-mask-a-tensor", mask=torch.ones(3))
    save("official-atten-mask-wrong-shape", mask={}, atten_mask={f"module.{QKV}_mask": torch.ones(10, 10)},
         args=argparse.Namespace(**{**base_args, "pruning_type": "structure_new"}))
    save("official-mask-stride0", mask={**masks, qkv_key: torch.ones(1).expand(100000, 100000)})


def png_bomb(path: Path, side: int = 30000) -> Path:
    """A ~100-byte PNG whose header declares side x side pixels (PIL refuses it on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> Path:
    """A tiny ImageFolder with train/ and val/ splits of good 8x8 PNGs."""
    for split in ("train", "val"):
        for c, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (40 * i, 80 * c, 0)).save(folder / f"{cls}{i}.png")
    return root


def hostile_folders(root: Path) -> None:
    """ImageFolders that hung or crashed training: a FIFO named .jpg, symlink loops, a decompression bomb."""
    os.mkfifo(image_folder(root / "fifo") / "train" / "cat" / "stuck.jpg")
    os.symlink(".", image_folder(root / "loop-self") / "train" / "cat" / "a")
    os.symlink("..", image_folder(root / "loop-parent") / "train" / "dog" / "b")
    os.symlink(".", image_folder(root / "loop-root") / "train" / "again")
    png_bomb(image_folder(root / "bomb-train") / "train" / "dog" / "bomb.png")
    png_bomb(image_folder(root / "bomb-val") / "val" / "cat" / "bomb.png")
    os.mkfifo(root / "fifo.safetensors")
