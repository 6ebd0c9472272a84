"""The model a Recorder saves: its plain state dict, whatever torch's pruning did to it, and the config
that rebuilds it when it is a timm ViT/DeiT.

``torch.ao.pruning`` and ``torch.nn.utils.prune`` both reparametrize a weight (``original`` and a mask,
``weight_orig`` and ``weight_mask``), so a model being pruned has no ``weight`` in its state dict. The
checkpoint stores the weight as the model computes it (``original * mask``) under its own name, made one
layer at a time while the file is written (:class:`~sparsity_core.checkpoint.streaming.Computed`); the
masks go in the checkpoint's mask history. So the file is a plain timm state dict plus masks, loadable like
any run of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..checkpoint.limits import skeleton
from ..checkpoint.streaming import Computed
from ..errors import SviteError
from ..models.builder import ModelConfig, infer_config_from_state_dict
from ..models.stand_in import MODULE, VIT
from .sources import pruned_tensors


def _getter(module: nn.Module, name: str) -> Callable[[], torch.Tensor]:
    return lambda: getattr(module, name).detach()


def plain_state(model: nn.Module) -> dict[str, Any]:
    """The model's state dict with every reparametrized weight folded back under its own name (a
    :class:`Computed` made at write time); every other entry is the model's own tensor (no copy)."""
    state: dict[str, Any] = dict(model.state_dict(keep_vars=False))
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        if parametrize.is_parametrized(module):
            for tname, plist in module.parametrizations.items():
                for key in [k for k in state if k.startswith(f"{prefix}parametrizations.{tname}.")]:
                    del state[key]
                # FakeSparsity keeps the shape and dtype of ``original``: read them without computing the weight
                state[prefix + tname] = Computed(plist.original.dtype, tuple(plist.original.shape),
                                                 _getter(module, tname))
        for tname in pruned_tensors(module):
            state.pop(f"{prefix}{tname}_orig", None)
            state.pop(f"{prefix}{tname}_mask", None)
            state[prefix + tname] = getattr(module, tname).detach()  # prune keeps the masked weight itself
    return state


def shapes_of(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def model_kind(model: nn.Module, state: dict[str, Any], model_config: ModelConfig | None) -> tuple[str, ModelConfig]:
    """(``vit``, its config) for a model this package can rebuild exactly (a timm ViT/DeiT: inferred from its
    weights, or ``model_config`` as given), else (``module``, a config naming its class)."""
    if model_config is None and _looks_like_vit(state):
        name = str((getattr(model, "pretrained_cfg", None) or {}).get("architecture") or "")
        heads = getattr(getattr(getattr(model, "blocks", [None])[0], "attn", None), "num_heads", None)
        meta = {k: torch.empty(s, device="meta") for k, s in shapes_of(state).items()}
        try:
            model_config = infer_config_from_state_dict(meta, name_hint=name or None, num_heads=heads)
        except SviteError:
            model_config = None
    if model_config is not None and _rebuilds(model_config, state):
        return VIT, model_config
    return MODULE, ModelConfig(name=type(model).__name__)


def _looks_like_vit(state: dict[str, Any]) -> bool:
    return all(k in state for k in ("patch_embed.proj.weight", "cls_token", "pos_embed"))


def _rebuilds(config: ModelConfig, state: dict[str, Any]) -> bool:
    """``config`` builds a model with exactly these tensor names and shapes (checked on the meta device)."""
    try:
        own = skeleton(config).state_dict()
    except SviteError:
        return False
    return shapes_of(own) == shapes_of(state)
