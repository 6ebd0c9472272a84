"""A stand-in for a model we cannot rebuild: the weights of any ``nn.Module`` at their own names.

A :class:`~sparsity_core.Recorder` run of a model that is not a timm ViT/DeiT (a CNN, an MLP, a model of
the user's own) stores its weights and masks like any run of ours, but no code here can build its class
again. Loading it gives this module instead: every tensor at its dotted name (floating point ones as
parameters, the rest as buffers), so ``named_parameters()`` names the masked weights as the run did and
the mask pages, density tables and integrity counts work unchanged. It has no forward pass: the pages that
run a model (attention, patch maps, throughput) say why they do not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import SviteError

#: ``LoadedCheckpoint.meta["model_kind"]`` of a run whose model this package can build, and of one it cannot
VIT, MODULE = "vit", "module"


class TensorTree(nn.Module):
    """The tensors of a state dict, nested as the modules that held them (``features.0.weight``)."""

    def __init__(self, state: Mapping[str, torch.Tensor], class_name: str = "Module") -> None:
        super().__init__()
        self.class_name = str(class_name)
        for name, value in state.items():
            *path, leaf = str(name).split(".")
            module: nn.Module = self
            for part in path:
                child = module._modules.get(part)
                if child is None:
                    child = nn.Module()
                    module.add_module(part, child)
                module = child
            if value.is_floating_point():
                module.register_parameter(leaf, nn.Parameter(value, requires_grad=False))
            else:
                module.register_buffer(leaf, value)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise SviteError(f"this run recorded a {self.class_name}, which only its own code can rebuild and run; "
                         "its weights, masks and mask history are here, its forward pass is not")
