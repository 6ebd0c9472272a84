"""Accuracy, size, FLOPs and measured speed of a (sparse) ViT.

FLOPs come from ``torch.utils.flop_counter`` (not a hand count): the model is run once under
``FlopCounterMode`` and each module's own FLOPs are then scaled by what sparsity removes -- a masked
Linear by its weight density (the multiply-adds a sparse kernel would skip), an attention's own
matmuls by the fraction of heads alive. Removed heads/neurons (compacted models) and dropped tokens
(the token selector gathers k tokens) need no correction: the counter sees the smaller tensors.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..masks.maskset import MaskSet, count_true, head_unit_name
from .builder import input_shape


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                      autocast: Callable[[], Any] = nullcontext) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) and mean cross-entropy over a loader."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = 0.0
    for images, targets in loader:
        images, targets = images.to(device), torch.as_tensor(targets).to(device)
        with autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == targets[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(dim=1).sum())
        total += targets.numel()
    model.train(was_training)
    if total == 0:
        return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan"), "count": 0}
    return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total, "loss": loss_sum / total,
            "count": total}


def count_parameters(model: nn.Module, masks: MaskSet | None = None) -> dict[str, int]:
    """All parameters, and how many are nonzero once the masks are applied."""
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    nonzeros = 0
    for name, p in params.items():
        if masks is not None and name in masks:
            nonzeros += count_true(masks[name].to(p.device) & (p.detach() != 0))
        else:
            nonzeros += count_true(p.detach() != 0)
    return {"params": total, "nonzeros": nonzeros}


@torch.no_grad()
def count_flops(model: nn.Module, masks: MaskSet | None = None, units: MaskSet | None = None,
                batch_size: int = 1) -> dict[str, Any]:
    """FLOPs of one forward pass (per ``batch_size`` images), dense and after sparsity.

    Returns ``{"dense": int, "sparse": int, "per_module": {module: (dense, sparse)}}``.
    """
    fractions = {name: float(m.float().mean()) for name, m in (masks or {}).items()}
    fractions.update({name: float(u.float().mean()) for name, u in (units or {}).items()})
    return scale_flops(module_flops(model, batch_size), fractions)


@torch.no_grad()
def module_flops(model: nn.Module, batch_size: int = 1) -> dict[str, int]:
    """Each module's own FLOPs (its total minus its children's) in one dense forward pass. Works on a
    ``meta``-device model too (shapes only), which is how the run index prices a checkpoint from its
    header without reading its weights."""
    was_training = model.training
    model.eval()
    fused = {}
    for name, module in model.named_modules():  # count attention as explicit matmuls
        if hasattr(module, "fused_attn"):
            fused[name] = module.fused_attn
            module.fused_attn = False
    try:
        device = next(model.parameters()).device
        x = torch.zeros((batch_size, *input_shape(model)), device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        modules = dict(model.named_modules())
        for name, flag in fused.items():
            modules[name].fused_attn = flag
        model.train(was_training)
    counts = {}
    prefix = type(model).__name__
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = key[len(prefix) + 1:] if key.startswith(prefix + ".") else ("" if key == prefix else key)
        counts[name] = sum(ops.values())
    return {name: total - sum(v for k, v in counts.items() if k != name and _parent(k) == name)
            for name, total in counts.items()}


def scale_flops(own: dict[str, int], fractions: dict[str, float]) -> dict[str, Any]:
    """:func:`module_flops` scaled by what sparsity removes: a module by its weight's kept fraction
    (``fractions["<module>.weight"]``), an attention's own matmuls by its block's alive heads
    (``fractions["blocks.<i>.attn.heads"]``)."""
    per_module, dense_total, sparse_total = {}, 0, 0.0
    for name, flops in own.items():
        scale = 1.0
        weight = f"{name}.weight" if name else "weight"
        if weight in fractions:
            scale = fractions[weight]
        elif name.endswith(".attn") and name.startswith("blocks."):
            block = name.split(".")[1]
            if block.isdigit():
                scale = fractions.get(head_unit_name(int(block)), 1.0)
        per_module[name] = (flops, flops * scale)
        dense_total += flops
        sparse_total += flops * scale
    return {"dense": int(dense_total), "sparse": int(round(sparse_total)), "per_module": per_module}


def _parent(name: str) -> str | None:
    if not name:
        return None
    return name.rpartition(".")[0] if "." in name else ""


@torch.inference_mode()
def measure_throughput(model: nn.Module, batch_sizes: Iterable[int] = (32,), *, device: torch.device | str = "cpu",
                       warmup: int = 3, iters: int = 10, autocast: Callable[[], Any] = nullcontext
                       ) -> list[dict[str, float]]:
    """Images per second of the forward pass, median over ``iters`` timed runs after ``warmup``."""
    was_training = model.training
    model.eval()
    device = torch.device(device)
    results = []
    for bs in batch_sizes:
        x = torch.randn((bs, *input_shape(model)), device=device)
        times = []
        for i in range(warmup + iters):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with autocast():
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        results.append({"batch_size": int(bs), "images_per_s": bs / med, "ms_per_batch": 1000 * med})
    model.train(was_training)
    return results
