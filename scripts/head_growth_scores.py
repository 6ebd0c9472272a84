"""Why S²ViTE's heads do not move: the head growth score of alive vs dead heads in a checkpoint.

    python scripts/head_growth_scores.py checkpoints/s2vite.safetensors

S²ViTE grows heads by ``mean_b ||dL/da_h||_1`` (a_h: the head's attention output, before ``proj``),
which equals ``||W_proj[:, h]^T dL/dy||``. Per block, this prints that score for every alive and dead
head on 128 demo training images, the norm of each head's ``proj`` columns, and the score divided by
that norm, with the smallest and largest ratio of an alive head's score to a dead head's. A ratio above
1 everywhere means a pruned (alive until then) head always outranks every dead head at growth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sparsity_core  # noqa: E402,F401,I001  (before timm and torch's users)
import torch  # noqa: E402,I001

from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.data import DemoShapes  # noqa: E402


def ratios(score: torch.Tensor, alive: torch.Tensor) -> str:
    return f"{float(score[alive].min() / score[~alive].max()):.2f}–{float(score[alive].max() / score[~alive].min()):.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=128)
    args = parser.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    if loaded.units is None:
        print(f"{args.checkpoint}: no head masks (not an S²ViTE checkpoint)")
        return 2
    model = loaded.model.eval()
    demo = DemoShapes("train", size=args.images, img_size=int(model.patch_embed.img_size[0]),
                      patch_size=int(model.patch_embed.patch_size[0]), seed=0)
    images, labels = zip(*[demo[i] for i in range(args.images)], strict=True)
    inputs: dict[int, torch.Tensor] = {}

    def keep_input(i: int):
        def hook(_module, args_):
            args_[0].retain_grad()
            inputs[i] = args_[0]
        return hook

    for i, block in enumerate(model.blocks):
        block.attn.proj.register_forward_pre_hook(keep_input(i))
    torch.nn.functional.cross_entropy(model(torch.stack(images)), torch.tensor(labels)).backward()
    print("| block | score alive | score dead | proj norm alive | proj norm dead | alive ÷ dead | per norm: alive ÷ dead |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, block in enumerate(model.blocks):
        attn = block.attn
        h, d = attn.num_heads, attn.head_dim
        score = inputs[i].grad.reshape(len(images), -1, h, d).abs().sum(dim=(1, 3)).mean(0)
        norm = attn.proj.weight.detach().reshape(-1, h, d).norm(dim=(0, 2))
        alive = loaded.units[f"blocks.{i}.attn.heads"].bool()
        if alive.all() or not alive.any():
            continue

        def fmt(t: torch.Tensor) -> str:
            return " ".join(f"{float(v):.4f}" for v in t)
        print(f"| {i} | {fmt(score[alive])} | {fmt(score[~alive])} | {fmt(norm[alive])} | {fmt(norm[~alive])} | "
              f"{ratios(score, alive)} | {ratios(score / norm, alive)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
