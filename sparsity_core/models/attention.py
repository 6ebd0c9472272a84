"""Each head's attention probabilities, read from timm's own ``Attention`` modules.

timm computes attention with ``F.scaled_dot_product_attention`` when ``fused_attn`` is on, which never
materialises the probabilities. With ``fused_attn`` off for the duration of one forward pass, timm's
own code path computes ``softmax(q k^T * scale)`` and passes it through ``attn_drop`` (an identity in
eval mode); a forward hook on ``attn_drop`` sees exactly the probabilities the block multiplies into
``v``. Nothing of timm's forward is re-implemented here, so whatever timm changes (q/k norms, masks,
scales) is what we read.

Used by attention rollout (``analysis.attribution``), the heads view (``analysis.heads``) and the
head probe recorded with every training snapshot (``history.probe``). Every function leaves the model as
it found it: each module's training flag, ``fused_attn`` and no hook left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import SviteError

__all__ = ["attention_maps", "eval_mode", "recorded_attention"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode; afterwards every submodule's own training flag is restored (a model in
    training with one frozen submodule comes back exactly so)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise SviteError("reading attention needs a timm ViT (a model with .blocks)")
    mods = []
    for block in blocks:
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "attn_drop") or not hasattr(attn, "fused_attn"):
            raise SviteError("reading attention needs timm ViT blocks with a standard Attention module")
        mods.append(attn)
    return mods


@contextmanager
def recorded_attention(model: nn.Module, cls_only: bool = False) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass of ``model`` appends each block's attention probabilities
    (B×H×T×T, or with ``cls_only`` the class token's row, B×H×T) to the yielded list, block by block."""
    out: list[torch.Tensor] = []
    mods = _attention_modules(model)
    fused = [m.fused_attn for m in mods]
    handles = []

    def hook(module: nn.Module, args: tuple, probs: torch.Tensor) -> None:
        out.append((probs[:, :, 0] if cls_only else probs).detach())

    try:
        for attn in mods:
            attn.fused_attn = False
            handles.append(attn.attn_drop.register_forward_hook(hook))
        yield out
    finally:
        for handle in handles:
            handle.remove()
        for attn, flag in zip(mods, fused, strict=True):
            attn.fused_attn = flag


def attention_maps(model: nn.Module, x: torch.Tensor, cls_only: bool = False) -> list[torch.Tensor]:
    """Each block's attention for one forward pass of ``x`` in eval mode, without gradients."""
    depth = len(_attention_modules(model))
    with eval_mode(model), torch.no_grad(), recorded_attention(model, cls_only) as maps:
        model(x)
    if len(maps) != depth:
        raise SviteError(f"saw the attention of {len(maps)} blocks, expected {depth}")
    return maps
