"""torch.nn.utils.prune on any model (here a small CNN), recorded: global magnitude pruning, 30% of what is
left after every epoch. The model is not a ViT, so the explorer shows its masks (Layer density, Mask
evolution, Compare) and its runs (Runs), and says why the pages that need a ViT do not apply.

    python examples/prune_global_magnitude.py --out runs/prune_cnn [--tiny]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn.utils import prune

from sparsity_core import Recorder

try:
    from _demo_data import evaluate, loaders
except ImportError:
    from ._demo_data import evaluate, loaders


def small_cnn(classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, classes))


def main(out: str, epochs: int = 3, tiny: bool = False, amount: float = 0.3, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = small_cnn()
    train, val = loaders(32, 4, tiny, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    weights = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    with Recorder(out, model, config={"seed": seed, "epochs": epochs, "amount": amount,
                                       "total_steps": epochs * len(train)}) as rec:
        step = 0
        for epoch in range(epochs):
            for x, y in train:
                loss = nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                rec.log(step, loss=loss.item())
            prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=amount)
            rec.snapshot(step, epoch=epoch + 1)    # the weight_mask buffers, found on the model
            top1, val_loss = evaluate(model, val)
            rec.log(step, epoch=epoch + 1, val_top1=top1, val_loss=val_loss)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    print(main(a.out, a.epochs, a.tiny))
