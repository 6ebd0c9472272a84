"""Checkpoints of other tools, one adapter per format (like timm's ``checkpoint_filter_fn``):
a plain timm/DeiT state dict (masks implied by exact zeros) and the official SViTE release
(``{'model': state_dict, 'mask' | 'atten_mask'/'other_mask', 'args', ...}``, docs/reference.md §4).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..masks.maskset import MaskSet, default_sparsifiable, head_unit_name, neuron_unit_name
from ..models.builder import SelectorConfig, infer_config_from_state_dict
from . import validate
from .loaded import LoadedCheckpoint
from .pickled import unwrap_state_dict


def load_plain(path: Path, state: dict[str, torch.Tensor], *, num_heads: int | None) -> LoadedCheckpoint:
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    validate.check_block_keys(path, state)
    config = infer_config_from_state_dict(state, num_heads=num_heads)
    model = validate.build_checked(path, config, state, _inferred_name)
    masks = MaskSet.from_weights(model, default_sparsifiable(model))
    if masks.overall_density() == 1.0:
        masks = None  # a dense model: no masks to speak of
    meta = {"method": "dense" if masks is None else "unknown", "source_format": "timm"}
    return LoadedCheckpoint(path=path, format="timm", model=model, model_config=config, masks=masks, meta=meta)


def _inferred_name(field: str) -> str:
    return "--num-heads" if field == "num_heads" else f"the {field} its weights imply"


def _official_mask_name(key: str) -> str:
    """``module.blocks.0.attn.qkv.weight_6`` -> ``blocks.0.attn.qkv.weight`` (docs/reference.md §4)."""
    name = key[len("module."):] if key.startswith("module.") else key
    base, _, idx = name.rpartition("_")
    return base if idx.isdigit() else name


def _structured_mask_name(key: str) -> str:
    """``module.blocks.0.attn.qkv.weight_mask`` -> ``blocks.0.attn.qkv.weight`` (docs/reference.md §4)."""
    name = key[len("module."):] if key.startswith("module.") else key
    return name[:-len("_mask")] if name.endswith("_mask") else name


def load_official(path: Path, ckpt: dict[str, Any], *, num_heads: int | None) -> LoadedCheckpoint:
    state = unwrap_state_dict(path, ckpt["model"])
    args = ckpt.get("args")
    args_dict = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
    selector_state = {k: state.pop(k) for k in list(state) if k.startswith("gumbel.")}
    model_name = str(args_dict.get("model", "")).replace("_gumbel", "") or None
    validate.check_block_keys(path, state)
    config = infer_config_from_state_dict(state, name_hint=model_name,
                                          num_heads=num_heads or validate.official_int(path, args_dict, "atten_head"))
    if selector_state:
        patches = (config.img_size // config.patch_size) ** 2
        config.selector = SelectorConfig(keep=min(validate.official_int(path, args_dict, "token_number") or
                                                  patches // 2, patches))
        state.update({"token_selector.scorer." + k[len("gumbel."):]: v for k, v in selector_state.items()})
    model = validate.build_checked(path, config, state, _inferred_name)
    params = dict(model.named_parameters())
    pruning_type = str(args_dict.get("pruning_type", ""))
    units = None
    raw = {key: validate.official_group(path, ckpt, key) for key in ("mask", "atten_mask", "other_mask", "fired_mask")}
    if raw["mask"]:
        masks = MaskSet(validate.official_masks(path, raw["mask"], params, _official_mask_name, "mask"))
    elif raw["atten_mask"] or raw["other_mask"]:
        atten, other = (validate.official_masks(path, raw[key], params, _structured_mask_name, key)
                        for key in ("atten_mask", "other_mask"))
        masks, units = _official_structured(model, atten, other)
    else:
        masks = MaskSet.from_weights(model, default_sparsifiable(model))  # saved right after a masked step
    method = {"unstructure": "svite", "structure_new": "s2vite"}.get(pruning_type)
    if method is None:
        method = "s2vite" if units is not None else "svite"
    if selector_state:
        method += "+"
    fired = None
    if raw["fired_mask"]:
        fired = MaskSet(validate.official_masks(path, raw["fired_mask"], params, _official_mask_name, "fired_mask"))
    meta = {"method": method, "source_format": "svite-official", "epoch": ckpt.get("epoch"),
            "settings": {k: v for k, v in args_dict.items() if isinstance(v, (int, float, str, bool, type(None)))}}
    return LoadedCheckpoint(path=path, format="svite-official", model=model, model_config=config, masks=masks,
                            units=units, fired=fired, meta=meta)


def _official_structured(model: nn.Module, atten: Mapping[str, torch.Tensor],
                         other: Mapping[str, torch.Tensor]) -> tuple[MaskSet, MaskSet]:
    """Weight and unit masks from the official structured masks (already checked against the
    parameters' shapes and keyed by parameter name); a missing mask is recovered from exact zeros."""
    masks, units = MaskSet(), MaskSet()
    params = dict(model.named_parameters())
    for i, block in enumerate(model.blocks):
        heads, dim = block.attn.num_heads, block.attn.head_dim
        qkv_name = f"blocks.{i}.attn.qkv.weight"
        m = atten.get(qkv_name)
        m = m if m is not None else (params[qkv_name].detach() != 0)
        rows = m.any(dim=1).reshape(3, heads, dim)
        units[head_unit_name(i)] = rows.any(dim=2).any(dim=0)
        masks[qkv_name] = m
        for fc in ("fc1", "fc2"):
            name = f"blocks.{i}.mlp.{fc}.weight"
            mm = other.get(name)
            masks[name] = mm if mm is not None else (params[name].detach() != 0)
        units[neuron_unit_name(i)] = masks[f"blocks.{i}.mlp.fc1.weight"].any(dim=1)
    return masks, units
