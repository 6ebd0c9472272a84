"""Which weight entries a sparsity unit stands for: single weights (the sparsified parameters) or the
heads and MLP neurons of timm's ``Attention`` and ``Mlp``.

Below the engines (``dst/``) and compaction (``models/compact.py``), which both need the layout and nothing
else of each other. A head *h* of a block is its q, k and v rows of ``attn.qkv.weight`` (timm's layout:
all q heads, then k, then v) **and** the same entries of ``attn.qkv.bias``: the reference leaves the
value bias of a pruned head alive, so its "pruned" head still adds ``proj . b_v`` to every token. A
neuron *j* is row *j* of ``mlp.fc1.weight`` with ``fc1.bias[j]`` and column *j* of ``mlp.fc2.weight``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import torch
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from ..errors import SviteError
from ..masks.maskset import MaskSet, default_sparsifiable, head_unit_name, neuron_unit_name


def sparsifiable_names(model: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Names of the parameters a run sparsifies, in ``named_parameters()`` order.

    Without ``include`` this is the reference's rule (:func:`masks.default_sparsifiable`). ``include``
    globs replace it: every parameter with ndim >= 2 matching one of them (so ``'blocks.*'`` picks the
    block weights, never their biases or norms; ``pos_embed`` can be named explicitly). ``exclude``
    globs are then removed. A glob that matches no parameter at all is almost always a typo, so it is
    an error rather than a silent no-op.
    """
    params = dict(model.named_parameters())
    for flag, patterns in (("--include", include), ("--exclude", exclude)):
        for pat in patterns:
            if not any(fnmatchcase(n, pat) for n in params):
                raise SviteError(f"{flag} {pat!r}: matches no parameter of the model")
    if include:
        names = [n for n, p in params.items() if p.ndim >= 2 and any(fnmatchcase(n, pat) for pat in include)]
    else:
        names = default_sparsifiable(model)
    names = [n for n in names if not any(fnmatchcase(n, pat) for pat in exclude)]
    if not names:
        raise SviteError("--include/--exclude: no parameter (with ndim >= 2) is left to sparsify")
    return names


def attention_of(block: nn.Module, index: int) -> Attention:
    attn = getattr(block, "attn", None)
    if not isinstance(attn, Attention) or not isinstance(getattr(attn, "qkv", None), nn.Linear):
        raise SviteError(f"S2ViTE needs timm ViT blocks with a standard Attention (qkv + proj); block {index} has "
                         f"{type(attn).__name__}")
    return attn


def mlp_of(block: nn.Module, index: int) -> Mlp:
    mlp = getattr(block, "mlp", None)
    if (not isinstance(mlp, Mlp) or not isinstance(getattr(mlp, "fc1", None), nn.Linear)
            or not isinstance(getattr(mlp, "fc2", None), nn.Linear)):
        raise SviteError(f"S2ViTE needs timm ViT blocks with a plain Mlp (fc1 -> act -> fc2); block {index} has "
                         f"{type(mlp).__name__}")
    return mlp


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """bool[3*H*d_h]: the q, k and v rows of ``qkv`` (timm's layout: q heads, then k, then v)."""
    per_head = heads.to(torch.bool).repeat_interleave(head_dim)
    return per_head.repeat(3)


def unit_weight_masks(model: nn.Module, units: Mapping[str, torch.Tensor], kind: type[MaskSet] = MaskSet) -> MaskSet:
    """The weight-level masks a set of head/neuron units stands for, as a ``kind`` (a MaskSet, or a
    subclass such as the bit-packed one S2ViTE trains with, filled one mask at a time).

    Per block: ``attn.qkv.weight`` (q/k/v rows of each head) and ``attn.qkv.bias`` (same entries, so a
    pruned head contributes exactly nothing), ``mlp.fc1.weight`` (rows) and ``mlp.fc1.bias``,
    ``mlp.fc2.weight`` (columns). Blocks without a unit entry are not masked.
    """
    masks = kind()
    for i, block in enumerate(model.blocks):
        heads = units.get(head_unit_name(i))
        if heads is not None:
            attn = attention_of(block, i)
            rows = head_rows(heads.cpu(), attn.head_dim)
            masks[f"blocks.{i}.attn.qkv.weight"] = rows[:, None].expand(-1, attn.qkv.in_features).clone()
            if attn.qkv.bias is not None:
                masks[f"blocks.{i}.attn.qkv.bias"] = rows.clone()
        neurons = units.get(neuron_unit_name(i))
        if neurons is not None:
            mlp = mlp_of(block, i)
            alive = neurons.cpu().to(torch.bool)
            masks[f"blocks.{i}.mlp.fc1.weight"] = alive[:, None].expand(-1, mlp.fc1.in_features).clone()
            if mlp.fc1.bias is not None:
                masks[f"blocks.{i}.mlp.fc1.bias"] = alive.clone()
            masks[f"blocks.{i}.mlp.fc2.weight"] = alive[None, :].expand(mlp.fc2.out_features, -1).clone()
    return masks



def units_from_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], source: str) -> MaskSet | None:
    """The head/neuron units that weight-level ``masks`` stand for, or None when they mask none of qkv,
    fc1 and fc2. Masks that are not head/neuron structured are an error naming ``source``."""
    if not any(name.endswith((".attn.qkv.weight", ".mlp.fc1.weight", ".mlp.fc2.weight")) for name in masks):
        return None
    units = MaskSet()
    for i, block in enumerate(model.blocks):
        attn = attention_of(block, i)
        mlp_of(block, i)  # a plain Mlp, or a clear error
        qkv = masks.get(f"blocks.{i}.attn.qkv.weight")
        fc1 = masks.get(f"blocks.{i}.mlp.fc1.weight")
        fc2 = masks.get(f"blocks.{i}.mlp.fc2.weight")
        if qkv is None or fc1 is None or fc2 is None:
            raise SviteError(f"its masks do not cover qkv, fc1 and fc2 of block {i}", path=source)
        rows = qkv.reshape(3, attn.num_heads, attn.head_dim, -1)
        heads = rows.all(dim=(0, 2, 3))
        neurons = fc1.all(dim=1)
        if not (torch.equal(rows.any(dim=(0, 2, 3)), heads) and torch.equal(fc1.any(dim=1), neurons)
                and torch.equal(fc2.all(dim=0), neurons) and torch.equal(fc2.any(dim=0), neurons)):
            raise SviteError(f"its masks are not head/neuron structured (block {i}); --method s2vite "
                             "starts from a dense or an S2ViTE checkpoint", path=source)
        units[head_unit_name(i)] = heads.cpu()
        units[neuron_unit_name(i)] = neurons.cpu()
    return units
