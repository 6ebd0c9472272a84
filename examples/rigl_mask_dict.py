"""A hand-written RigL step over a mask dict (as the SViTE reference and sparselearning keep
``Masking.masks``), on a timm ViT, recorded: every ``update_every`` steps each masked weight drops its
smallest active entries and grows the inactive ones with the largest gradient, at a fixed density.

    python examples/rigl_mask_dict.py --out runs/rigl_vit [--tiny]
"""

from __future__ import annotations

import argparse
import math

# isort: off
import sparsity_core  # noqa: F401  (before timm: makes timm importable next to a CPU-only torch)
import timm
import torch
# isort: on

from sparsity_core import Recorder

try:
    from _demo_data import evaluate, loaders
except ImportError:
    from ._demo_data import evaluate, loaders


@torch.no_grad()
def rigl_step(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor], rate: float) -> None:
    """Prune ``rate`` of each layer's active weights by |w|, grow as many inactive ones by |grad|."""
    for name, mask in masks.items():
        w, g = params[name], params[name].grad
        n = int(rate * int(mask.sum()))
        if n == 0 or g is None:
            continue
        flat = mask.view(-1)
        drop = torch.where(flat, w.abs().view(-1), torch.inf).topk(n, largest=False).indices
        flat[drop] = False
        grow = torch.where(flat, -torch.inf, g.abs().view(-1)).topk(n).indices
        flat[grow] = True
        w.view(-1)[grow] = 0.0  # grown weights start at zero, as RigL's do


def main(out: str, epochs: int = 3, tiny: bool = False, density: float = 0.5, update_every: int = 4,
         seed: int = 0) -> str:
    torch.manual_seed(seed)
    size = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=4) if tiny else {}
    model = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=10, **size)
    train, val = loaders(size.get("img_size", 224), size.get("patch_size", 16), tiny, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    params = dict(model.named_parameters())
    masks = {n: torch.rand(p.shape) < density for n, p in params.items() if p.ndim == 2 and n.startswith("blocks.")}
    total = epochs * len(train)

    rec = Recorder(out, model, masks=masks, method="RigL (mask dict)",
                   config={"seed": seed, "epochs": epochs, "density": density, "update_every": update_every,
                           "total_steps": total})
    step = 0
    rec.snapshot(step, epoch=0)
    for epoch in range(epochs):
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % update_every == 0 and step < 0.8 * total:
                rigl_step(params, masks, rate=0.3 * (1 + math.cos(math.pi * step / total)) / 2)
                rec.snapshot(step, epoch=step / len(train))
            with torch.no_grad():
                for name, mask in masks.items():
                    params[name].mul_(mask)
            rec.log(step, loss=loss.item())
        top1, val_loss = evaluate(model, val)
        rec.log(step, epoch=epoch + 1, val_top1=top1, val_loss=val_loss)
    rec.snapshot(step, epoch=epochs)
    return str(rec.close())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    a = p.parse_args()
    print(main(a.out, a.epochs, a.tiny))
