"""Compaction: a head/neuron-masked model becomes a physically smaller timm model with the same logits.

:func:`compact_model` slices the alive q/k/v rows and ``proj`` columns of every head and the alive fc1
rows/bias and fc2 columns of every neuron, per block (sizes may differ between blocks), into timm's own
``Attention(dim, num_heads=k, attn_head_dim=d_h)`` and ``Mlp(dim, hidden_features=h)``. Whatever a
pruned unit still adds is folded into a bias, which makes official S2ViTE checkpoints exact too (their
pruned heads keep a value bias). :func:`reshape_blocks` rebuilds that shape from a
:class:`~sparsity_core.models.builder.ModelConfig` (``block_heads`` / ``block_hidden``), so compacted
checkpoints save and load like any other: this module registers it with ``models.build_model``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from ..errors import SviteError
from ..masks.maskset import MaskSet, head_unit_name, neuron_unit_name
from .builder import ModelConfig, build_model, input_shape, register_extension
from .units import attention_of, mlp_of, unit_weight_masks


def _smaller_attention(attn: Attention, heads: int, index: int) -> Attention:
    if not isinstance(attn.norm, nn.Identity) or getattr(attn, "gate", None) is not None:
        raise SviteError(f"block {index}: attention with a scale norm or a gate cannot drop heads exactly")
    w = attn.qkv.weight
    new = Attention(attn.qkv.in_features, num_heads=heads, attn_head_dim=attn.head_dim,
                    dim_out=attn.proj.out_features, qkv_bias=attn.qkv.bias is not None,
                    proj_bias=attn.proj.bias is not None, attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p,
                    device=w.device, dtype=w.dtype)
    new.q_norm, new.k_norm = attn.q_norm, attn.k_norm  # per head_dim: independent of the head count
    new.fused_attn = attn.fused_attn
    new.train(attn.training)
    return new


def _smaller_mlp(mlp: Mlp, hidden: int, index: int) -> Mlp:
    if not isinstance(mlp.norm, nn.Identity):
        raise SviteError(f"block {index}: an Mlp with a hidden norm cannot drop neurons exactly")
    w = mlp.fc1.weight
    new = Mlp(mlp.fc1.in_features, hidden_features=hidden, out_features=mlp.fc2.out_features,
              bias=(mlp.fc1.bias is not None, mlp.fc2.bias is not None), drop=(mlp.drop1.p, mlp.drop2.p),
              device=w.device, dtype=w.dtype)
    new.act = mlp.act  # keep the exact activation instance (e.g. GELU's approximation)
    new.train(mlp.training)
    return new


def reshape_blocks(model: nn.Module, block_heads: list[int] | None, block_hidden: list[int] | None) -> None:
    """Give each block ``block_heads[i]`` heads (same head dim) and ``block_hidden[i]`` MLP neurons,
    replacing its ``attn``/``mlp`` with timm's own modules of that size (weights to be loaded after).
    ``models.build_model`` calls this (through :func:`_compacted_shape`) for a ModelConfig of a
    compacted model."""
    blocks = list(model.blocks)
    for label, sizes in (("block_heads", block_heads), ("block_hidden", block_hidden)):
        if sizes is None:
            continue
        if len(sizes) != len(blocks):
            raise SviteError(f"model config: {label} has {len(sizes)} entries but the model has {len(blocks)} blocks")
        if any(int(s) < 1 for s in sizes):
            raise SviteError(f"model config: {label} must be >= 1 per block, got {list(sizes)}")
    for i, block in enumerate(blocks):
        attn, mlp = attention_of(block, i), mlp_of(block, i)
        if block_heads is not None and int(block_heads[i]) != attn.num_heads:
            block.attn = _smaller_attention(attn, int(block_heads[i]), i)
        if block_hidden is not None and int(block_hidden[i]) != mlp.fc1.out_features:
            block.mlp = _smaller_mlp(mlp, int(block_hidden[i]), i)


@torch.no_grad()
def compact_model(model: nn.Module, model_config: ModelConfig, units: Mapping[str, torch.Tensor],
                  masks: MaskSet | None = None) -> tuple[nn.Module, ModelConfig]:
    """A physically smaller copy of ``model`` without its pruned heads and neurons.

    The reference model is ``model`` with ``masks`` applied (when None: the masks ``units`` stand
    for). A pruned head must have zero value rows: it then outputs its value bias ``b_v`` at every
    token (attention rows sum to 1), which is folded into ``proj.bias`` as ``proj[:, h] @ b_v`` (zero
    for our checkpoints, non-zero for official SViTE ones). A pruned neuron needs a zero fc2 column, or
    a zero fc1 row, in which case its constant ``act(b1_j)`` is folded into ``fc2.bias``.
    """
    masked = copy.deepcopy(model).float().cpu().eval()
    (masks if masks is not None else unit_weight_masks(masked, units)).apply(masked)
    blocks = list(masked.blocks)
    heads_alive, neurons_alive = [], []
    for i, block in enumerate(blocks):
        attn, mlp = attention_of(block, i), mlp_of(block, i)
        heads = units.get(head_unit_name(i))
        neurons = units.get(neuron_unit_name(i))
        heads = torch.ones(attn.num_heads, dtype=torch.bool) if heads is None else heads.cpu().to(torch.bool)
        neurons = (torch.ones(mlp.fc1.out_features, dtype=torch.bool) if neurons is None
                   else neurons.cpu().to(torch.bool))
        if heads.numel() != attn.num_heads or neurons.numel() != mlp.fc1.out_features:
            raise SviteError(f"block {i}: head/neuron masks have {heads.numel()}/{neurons.numel()} entries, the model "
                             f"{attn.num_heads}/{mlp.fc1.out_features}")
        if not bool(heads.any()) or not bool(neurons.any()):
            raise SviteError(f"block {i}: no head or no neuron survives; a block needs at least one of each")
        heads_alive.append(heads)
        neurons_alive.append(neurons)
    config = dataclasses.replace(model_config, block_heads=[int(h.sum()) for h in heads_alive],
                                 block_hidden=[int(n.sum()) for n in neurons_alive], extra=dict(model_config.extra))
    state = {k: v.clone() for k, v in masked.state_dict().items()}
    for i, block in enumerate(blocks):
        _slice_attention(state, f"blocks.{i}.attn", block.attn, heads_alive[i], i)
        _slice_mlp(state, f"blocks.{i}.mlp", block.mlp, neurons_alive[i], i)
    small = build_model(config)
    small.load_state_dict(state, strict=True)
    small.eval()
    return small, config


def _slice_attention(state: dict[str, torch.Tensor], prefix: str, attn: Attention, alive: torch.Tensor,
                     index: int) -> None:
    h, d, dim = attn.num_heads, attn.head_dim, attn.qkv.in_features
    w = state[f"{prefix}.qkv.weight"].reshape(3, h, d, dim)
    dead = ~alive
    if bool((w[2, dead] != 0).any()):
        raise SviteError(f"block {index}: a head marked pruned still has non-zero value weights; "
                         "the masks do not describe pruned heads")
    proj_w = state[f"{prefix}.proj.weight"].reshape(-1, h, d)
    bias = state.get(f"{prefix}.qkv.bias")
    if bias is not None:
        b = bias.reshape(3, h, d)
        b_v = b[2, dead]  # (dead, d): what each pruned head outputs at every token
        if bool((b_v != 0).any()):
            fold = torch.einsum("ohd,hd->o", proj_w[:, dead].double(), b_v.double())
            if f"{prefix}.proj.bias" not in state:
                raise SviteError(f"block {index}: pruned heads have a value bias but proj has no bias to fold it into")
            state[f"{prefix}.proj.bias"] = (state[f"{prefix}.proj.bias"].double() + fold).to(proj_w.dtype)
        state[f"{prefix}.qkv.bias"] = b[:, alive].reshape(-1).contiguous()
    state[f"{prefix}.qkv.weight"] = w[:, alive].reshape(-1, dim).contiguous()
    state[f"{prefix}.proj.weight"] = proj_w[:, alive].reshape(proj_w.shape[0], -1).contiguous()


def _slice_mlp(state: dict[str, torch.Tensor], prefix: str, mlp: Mlp, alive: torch.Tensor, index: int) -> None:
    w1, w2 = state[f"{prefix}.fc1.weight"], state[f"{prefix}.fc2.weight"]
    b1 = state.get(f"{prefix}.fc1.bias")
    dead = (~alive).nonzero().reshape(-1)
    live_out = (w2[:, dead] != 0).any(dim=0)
    if bool(live_out.any()):
        # the fc2 column is alive: exact only if the neuron's input is a constant act(b1_j)
        idx = dead[live_out]
        if bool((w1[idx] != 0).any()):
            raise SviteError(f"block {index}: a neuron marked pruned still has non-zero fc1 and fc2 weights; "
                             "the masks do not describe pruned neurons")
        const = mlp.act(b1[idx]) if b1 is not None else mlp.act(torch.zeros(len(idx), dtype=w1.dtype))
        fold = w2[:, idx].double() @ const.double()
        if bool((fold != 0).any()):
            if f"{prefix}.fc2.bias" not in state:
                raise SviteError(f"block {index}: pruned neurons have a constant output but fc2 has no bias")
            state[f"{prefix}.fc2.bias"] = (state[f"{prefix}.fc2.bias"].double() + fold).to(w2.dtype)
    state[f"{prefix}.fc1.weight"] = w1[alive].contiguous()
    if b1 is not None:
        state[f"{prefix}.fc1.bias"] = b1[alive].contiguous()
    state[f"{prefix}.fc2.weight"] = w2[:, alive].contiguous()


def compact(loaded: Any) -> tuple[nn.Module, ModelConfig]:
    """``compact(LoadedCheckpoint) -> (smaller model, its ModelConfig)`` for an S2ViTE checkpoint
    (ours or the official release); same logits as the masked model."""
    units = loaded.units
    if units is None or not any(n.endswith((".attn.heads", ".mlp.neurons")) for n in units):
        raise SviteError("has no head/neuron masks (not an S2ViTE checkpoint); nothing to compact", path=loaded.path)
    return compact_model(loaded.model, loaded.model_config, units, loaded.masks)


@torch.no_grad()
def max_logit_diff(a: nn.Module, b: nn.Module, *, batch: int = 4, seed: int = 0, masks: MaskSet | None = None) -> float:
    """max |a(x) - b(x)| over random inputs (fp32, eval mode); ``masks`` are applied to a copy of ``a``."""
    if masks is not None:
        a = copy.deepcopy(a)
        masks.apply(a)
    a, b = a.float().cpu().eval(), b.float().cpu().eval()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *input_shape(a)), generator=gen)
    return float((a(x) - b(x)).abs().max())



@register_extension
def _compacted_shape(model: nn.Module, config: ModelConfig) -> None:
    """``build_model`` step: per-block head counts / hidden sizes of a compacted S2ViTE model."""
    if config.block_heads is not None or config.block_hidden is not None:
        reshape_blocks(model, config.block_heads, config.block_hidden)
