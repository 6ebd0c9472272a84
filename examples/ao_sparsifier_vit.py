"""torch.ao.pruning on a timm ViT, recorded: a ``WeightNormSparsifier`` whose sparsity rises on a cubic
schedule (``CubicSL``), every epoch's masks in the explorer's Mask evolution page.

    python examples/ao_sparsifier_vit.py --out runs/ao_vit            # DeiT-S at 224 px (hours on a CPU)
    python examples/ao_sparsifier_vit.py --out runs/ao_vit --tiny     # a 2-block ViT at 32 px (seconds)
    svite app --runs runs
"""

from __future__ import annotations

import argparse

# isort: off
import sparsity_core  # noqa: F401  (before timm: makes timm importable next to a CPU-only torch)
import timm
import torch
from torch.ao.pruning import CubicSL, WeightNormSparsifier
# isort: on

from sparsity_core import Recorder

try:
    from _demo_data import evaluate, loaders
except ImportError:  # imported as examples.ao_sparsifier_vit
    from ._demo_data import evaluate, loaders


def main(out: str, epochs: int = 3, tiny: bool = False, sparsity: float = 0.7, seed: int = 0,
         log_to: str | None = None) -> str:
    torch.manual_seed(seed)
    size = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=4) if tiny else {}
    model = timm.create_model("deit_small_patch16_224", pretrained=False, num_classes=10, **size)
    train, val = loaders(size.get("img_size", 224), size.get("patch_size", 16), tiny, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)

    sparsifier = WeightNormSparsifier(sparsity_level=sparsity, sparse_block_shape=(1, 1), zeros_per_block=1)
    linears = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")]
    sparsifier.prepare(model, [{"tensor_fqn": fqn} for fqn in linears])
    schedule = CubicSL(sparsifier, init_sl=0.0, init_t=0, delta_t=1, total_t=epochs)

    rec = Recorder(out, model, config={"seed": seed, "epochs": epochs, "sparsity": sparsity,
                                       "total_steps": epochs * len(train)}, log_to=log_to)
    step = 0
    sparsifier.step()
    rec.snapshot(step, epoch=0)
    for epoch in range(epochs):
        for x, y in train:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            rec.log(step, loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        schedule.step()      # the target sparsity of the next epoch
        sparsifier.step()    # new masks: the smallest weights by norm go
        rec.snapshot(step, epoch=epoch + 1)
        top1, val_loss = evaluate(model, val)
        rec.log(step, epoch=epoch + 1, val_top1=top1, val_loss=val_loss)
    return str(rec.close())


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--log-to", default=None, help="tensorboard, wandb or both")
    a = p.parse_args()
    print(main(a.out, a.epochs, a.tiny, log_to=a.log_to))
