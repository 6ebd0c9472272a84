"""Activation capture for S2ViTE's scores, armed only for the step before a topology update.

Head scores need each head's attention output and its gradient; head growth by alignment also needs the
attention input and the gradient at ``proj``'s output (``head_shadow.py``); neuron growth needs the MLP
input and the gradient at the MLP output (``neuron_shadow.py``). Forward hooks (on timm's ``attn.norm``, an
Identity in ViT/DeiT that receives the (B, N, H*d_h) attention output right before ``proj``, and on
``mlp``) register tensor hooks whose backward computes the scores at once, so no activation is kept
beyond the backward pass. The engine arms the hooks in ``after_optimizer_step`` of the step before an
update and disarms them after it: ordinary steps pay nothing, and evaluation passes (no grad) are
ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .head_shadow import ShadowHeads, alignment
from .neuron_shadow import ShadowNeurons
from .scorers import head_gradient_norm, head_taylor


class UnitCapture:
    """Per block, the heads' (taylor, gradient norm), their alignment growth scores (with ``head_shadow``)
    and the neurons' growth scores of the last armed backward (local rank)."""

    def __init__(self, blocks: list[nn.Module], shadow: ShadowNeurons,
                 alive_neurons: Callable[[int], torch.Tensor], head_shadow: ShadowHeads | None = None,
                 alive_heads: Callable[[int], torch.Tensor] | None = None) -> None:
        self.blocks = blocks
        self.shadow = shadow
        self.alive_neurons = alive_neurons
        self.head_shadow = head_shadow
        self.alive_heads = alive_heads
        self.heads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.alignment: dict[int, torch.Tensor] = {}
        self.neurons: dict[int, torch.Tensor] = {}
        self._hooks: list[Any] = []

    @property
    def armed(self) -> bool:
        return bool(self._hooks)

    def arm(self, on: bool) -> None:
        if on and not self._hooks:
            for i, block in enumerate(self.blocks):
                self._hooks.append(block.attn.norm.register_forward_hook(self._head_hook(i)))
                self._hooks.append(block.mlp.register_forward_hook(self._mlp_hook(i)))
                if self.head_shadow is not None:
                    self._hooks += self._alignment_hooks(i)
        elif not on:
            for handle in self._hooks:
                handle.remove()
            self._hooks = []

    def take(self) -> tuple[dict[int, tuple[torch.Tensor, torch.Tensor]], dict[int, torch.Tensor],
                            dict[int, torch.Tensor]]:
        """The captured (head, neuron, head alignment) scores, forgotten here (each capture serves one
        update)."""
        heads, neurons, aligned = self.heads, self.neurons, self.alignment
        self.heads, self.neurons, self.alignment = {}, {}, {}
        return heads, neurons, aligned

    def _head_hook(self, index: int) -> Callable[..., None]:
        attn = self.blocks[index].attn
        heads, head_dim = attn.num_heads, attn.head_dim

        def forward_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0]
            if not (torch.is_grad_enabled() and x.requires_grad):
                return  # evaluation passes between steps
            act = x.detach()

            def grad_hook(grad: torch.Tensor) -> None:
                b, n = act.shape[0], act.shape[1]
                a = act.float().reshape(b, n, heads, head_dim)
                g = grad.detach().float().reshape(b, n, heads, head_dim)
                self.heads[index] = (head_taylor(a, g), head_gradient_norm(g))

            x.register_hook(grad_hook)

        return forward_hook

    def _mlp_hook(self, index: int) -> Callable[..., None]:
        def forward_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and output.requires_grad):
                return
            x = inputs[0].detach()
            alive = self.alive_neurons(index)

            def grad_hook(grad: torch.Tensor) -> None:
                self.neurons[index] = self.shadow.grow_scores(index, x, grad.detach(), alive)

            output.register_hook(grad_hook)

        return forward_hook

    def _alignment_hooks(self, index: int) -> list[Any]:
        """Hooks for :func:`head_shadow.alignment`: the attention input (for the inactive heads' shadow
        outputs), ``proj``'s input (the alive heads' outputs) and the gradient at ``proj``'s output."""
        attn = self.blocks[index].attn
        heads, head_dim = attn.num_heads, attn.head_dim
        seen: dict[str, torch.Tensor] = {}

        def keep_input(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if torch.is_grad_enabled() and inputs[0].requires_grad:
                seen["x"] = inputs[0].detach()

        def at_proj(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and output.requires_grad and "x" in seen):
                return
            act, x = inputs[0].detach(), seen.pop("x")
            alive = self.alive_heads(index)

            def grad_hook(grad: torch.Tensor) -> None:
                b, n = act.shape[0], act.shape[1]
                outs = {h: act.reshape(b, n, heads, head_dim)[:, :, h] for h in alive.nonzero().reshape(-1).tolist()}
                outs.update(self.head_shadow.outputs(index, x))
                self.alignment[index] = alignment(grad, outs, heads)

            output.register_hook(grad_hook)

        return [attn.register_forward_pre_hook(keep_input), attn.proj.register_forward_hook(at_proj)]
