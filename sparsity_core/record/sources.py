"""Where a researcher's masks live, read as one kind of thing: ``(name, bool mask)`` per masked weight,
named as the weight is in the model's plain state dict (``blocks.0.attn.qkv.weight``).

One small adapter per source, each a function ``(model) -> {name: mask}``, read fresh at every snapshot
(a sparsifier or a pruning call may add masks at any point of training):

* :func:`ao_masks` -- ``torch.ao.pruning`` sparsifiers: a ``FakeSparsity`` parametrization on the weight
  (its ``mask`` buffer); state-dict keys ``...parametrizations.weight.original`` name ``....weight``;
* :func:`prune_masks` -- ``torch.nn.utils.prune``: the ``weight_mask`` buffer beside ``weight_orig``;
* :func:`given_masks` -- a mapping the caller holds, name -> bool or float tensor (the SViTE reference's
  and sparselearning's ``Masking.masks``), names checked against the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from ..errors import SviteError

#: what ``meta["method"]`` and the Runs page call a run whose masks came from each source
SOURCE_METHODS = {"ao": "torch.ao.pruning", "prune": "torch.nn.utils.prune", "given": "masks"}


def logical_name(key: str) -> str:
    """A state-dict key of a reparametrized weight -> the weight's own name: ``x.parametrizations.weight.original``
    and ``x.weight_orig`` -> ``x.weight``; a DDP ``module.`` prefix dropped; anything else as it is."""
    key = key.removeprefix("module.")
    head, sep, tail = key.partition(".parametrizations.")
    if sep and tail.endswith(".original"):
        return f"{head}.{tail[:-len('.original')]}"
    if key.endswith("_orig"):
        return key[:-len("_orig")]
    return key


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


def pruned_tensors(module: nn.Module) -> list[str]:
    """The tensor names ``torch.nn.utils.prune`` reparametrized on ``module`` (``weight``, ...)."""
    return [hook._tensor_name for hook in module._forward_pre_hooks.values()
            if isinstance(hook, prune.BasePruningMethod) and hasattr(module, f"{hook._tensor_name}_mask")]


def ao_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks of every ``FakeSparsity`` parametrization (torch.ao.pruning's sparsifiers)."""
    out = {}
    for mname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tname, plist in module.parametrizations.items():
            masks = [p.mask for p in plist if isinstance(getattr(p, "mask", None), torch.Tensor)]
            if masks:
                out[_prefix(mname) + tname] = masks[-1]
    return out


def prune_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``<tensor>_mask`` buffers of ``torch.nn.utils.prune`` (one per pruned tensor, however often pruned)."""
    return {_prefix(mname) + t: getattr(module, f"{t}_mask")
            for mname, module in model.named_modules() for t in pruned_tensors(module)}


def given_masks(masks: Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]],
                shapes: Mapping[str, tuple[int, ...]]) -> Callable[[nn.Module], dict[str, torch.Tensor]]:
    """An adapter over the caller's mapping (or a function returning one, read at every snapshot): keys
    may be parameter names or reparametrized state-dict keys; each must name a weight of the model with
    its shape (:class:`SviteError` naming the key otherwise)."""

    def read(model: nn.Module) -> dict[str, torch.Tensor]:
        current = masks() if callable(masks) else masks
        if not isinstance(current, Mapping):
            raise SviteError(f"Recorder masks: expected a mapping of name -> tensor, got {type(current).__name__}")
        out = {}
        for key, mask in current.items():
            name = logical_name(str(key))
            if name not in shapes:
                raise SviteError(f"Recorder masks: '{key}' names no weight of the model (e.g. {next(iter(shapes), '?')})")
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shapes[name]:
                what = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise SviteError(f"Recorder masks: '{key}' is {what}, the weight is {list(shapes[name])}")
            out[name] = mask
        return out

    return read


def find_masks(model: nn.Module) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(source, masks) found on the model: torch.ao.pruning's, then torch.nn.utils.prune's; (None, {})."""
    for source, read in (("ao", ao_masks), ("prune", prune_masks)):
        found = read(model)
        if found:
            return source, found
    return None, {}


def as_bool(mask: torch.Tensor) -> torch.Tensor:
    """A mask as bool on the CPU (a float mask: its nonzero entries), one layer at a time."""
    mask = mask.detach()
    return (mask if mask.dtype == torch.bool else mask != 0).to("cpu")


def iter_masks(masks: Mapping[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, mask in masks.items():
        yield name, as_bool(mask)
