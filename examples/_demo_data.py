"""The data the examples train on: the project's procedural demo set (offline, 10 classes, a model learns
it in minutes on a CPU). In your own loop this is your own DataLoader; nothing else changes."""

from __future__ import annotations

import torch

import sparsity_core  # noqa: F401  (before timm: makes it importable next to a CPU-only torch)
from sparsity_core.data import build_data, make_loader


def loaders(img_size: int, patch_size: int, tiny: bool, seed: int = 0, batch_size: int = 32):
    data = build_data("demo", img_size=img_size, patch_size=patch_size, seed=seed,
                      train_size=256 if tiny else 5000, val_size=64 if tiny else 1000)
    train = make_loader(data.train, batch_size, shuffle=True, seed=seed, drop_last=True)
    val = make_loader(data.val, batch_size, shuffle=False, seed=seed)
    return train, val


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: torch.utils.data.DataLoader) -> tuple[float, float]:
    """(top-1 %, mean loss) on the validation split."""
    model.eval()
    correct, loss, seen = 0, 0.0, 0
    for x, y in val:
        logits = model(x)
        loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        seen += len(y)
    model.train()
    return 100.0 * correct / seen, loss / seen
