"""The head probe: each head's class-token attention on a few fixed images, recorded with every snapshot.

The mask history keeps masks, not weights, so what a head attended to earlier in training cannot be
recomputed from a finished checkpoint, and a pruned head's q/k rows are exactly zero in the final
weights (lifting its mask shows uniform attention, not what it once looked at). So the trainer
records, at every snapshot, what each head of each block attends to from the class token, over the
patches, on ``count`` fixed images: the first demo validation images at the model's geometry (seed 0,
whatever data the run trains on, so the app can regenerate them together with their object masks).
One float16 tensor per block, ``count × heads × patches``: 12 kB per snapshot for the demo ViT before
the history's XOR + zlib, and at most :data:`PROBE_BYTES` for any model (fewer images for larger ones,
none for models too large to probe cheaply).

Recording changes nothing that training computes: no random number is drawn (the demo images come
from their own seeded generators), the forward pass runs without gradients with every patch present
(``token_selector.every_patch``), and the model comes back with every module's training flag and
``fused_attn`` as they were (``attention``). ``tests/test_golden_runs.py`` holds the trainer to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..data import DemoShapes, image_to_input
from ..models.attention import attention_maps
from ..models.builder import grid_size, model_input_size
from ..models.token_selector import every_patch

PROBE_IMAGES = 4
PROBE_BYTES = 64 << 10  # float16 bytes per snapshot, all blocks, before compression
MAX_TOKENS = 1024  # the probe materialises B×H×T×T attention per block: skip models with longer sequences
SPLIT, SEED = "val", 0

__all__ = ["PROBE_IMAGES", "HeadProbe", "probe_count", "probe_images", "probe_layer"]


def probe_layer(block: int) -> str:
    """The history layer (group ``probe``) of block ``block``: ``count × heads × patches`` float16."""
    return f"blocks.{block}.attn.cls_attention"


def probe_count(model: nn.Module) -> int:
    """How many probe images fit :data:`PROBE_BYTES` for this model (0: no probe)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed") or int(getattr(model, "num_prefix_tokens", 1)) < 1:
        return 0
    gh, gw = grid_size(model)
    if gh * gw + 1 > MAX_TOKENS:
        return 0
    per_image = 2 * gh * gw * sum(int(getattr(b.attn, "num_heads", 0)) for b in blocks)
    return min(PROBE_IMAGES, PROBE_BYTES // max(per_image, 1))


def probe_images(img_size: int, patch_size: int, count: int) -> DemoShapes:
    """The probe's images with their object masks: the first ``count`` demo validation images (seed 0)."""
    return DemoShapes(SPLIT, size=count, img_size=img_size, patch_size=patch_size, seed=SEED)


class HeadProbe:
    """Built once per run (renders the images); calling it returns the snapshot's probe tensors."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], count: int | None = None) -> None:
        self.count = probe_count(model) if count is None else int(count)
        self.img_size, self.patch_size = model_input_size(model), int(model.patch_embed.patch_size[0])
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.x = None
        if self.count > 0:
            images = probe_images(self.img_size, self.patch_size, self.count)
            self.x = torch.cat([image_to_input(images.sample(i).image, self.img_size, self.mean, self.std)
                                for i in range(self.count)])

    def describe(self) -> dict[str, Any]:
        """What the checkpoint's metadata says about the probe (the app regenerates the images from it)."""
        return {"images": "demo", "split": SPLIT, "seed": SEED, "count": self.count, "img_size": self.img_size,
                "patch_size": self.patch_size, "mean": self.mean, "std": self.std,
                "tensor": "blocks.<i>.attn.cls_attention: images x heads x patches, class token's attention"}

    def __call__(self, model: nn.Module) -> dict[str, torch.Tensor]:
        if self.x is None:
            return {}
        device = next(model.parameters()).device
        with every_patch(model):
            maps = attention_maps(model, self.x.to(device), cls_only=True)
        prefix = int(getattr(model, "num_prefix_tokens", 1))
        return {probe_layer(i): m[:, :, prefix:].to("cpu", torch.float16).contiguous() for i, m in enumerate(maps)}
