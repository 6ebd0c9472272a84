"""The Patch maps page's agreement figures for one checkpoint, as a table (docs/app.md quotes it).

    python scripts/patch_agreement.py checkpoints/svite-plus.safetensors

For attention rollout and the three captum methods, every one computed with every patch present (the
selector switched off): the IoU of the kept set with the top-k attributed patches on demo image 8 and
over the first 32 demo validation images, beside the exact chance level, the centre mask and the
cross-fitted best fixed mask; the same numbers the page computes (one seed per attribution, as there).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sparsity_core  # noqa: E402,F401,I001  (before timm and torch's users)
import torch  # noqa: E402,I001

from sparsity_core import analysis  # noqa: E402
from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.data import DemoShapes  # noqa: E402

METHODS = ("attention_rollout", "integrated_gradients", "occlusion", "input_x_gradient")


def attribute(loaded, image: np.ndarray, method: str, mean, std) -> np.ndarray:
    torch.manual_seed(0)  # as app/loaders/patch_data.py: one seed per attribution
    if method == "attention_rollout":
        return analysis.attention_rollout(loaded, image, mean=mean, std=std)
    return analysis.patch_attributions(loaded, image, method=method, mean=mean, std=std)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--image", type=int, default=8, help="the single demo image reported")
    args = parser.parse_args()
    loaded = load_checkpoint(args.checkpoint)
    data = loaded.meta.get("data") or {}
    mean, std = data.get("mean"), data.get("std")
    arch = loaded.model
    demo = DemoShapes("val", size=200, img_size=int(arch.patch_embed.img_size[0]),
                      patch_size=int(arch.patch_embed.patch_size[0]), seed=0)
    images = [demo.sample(i).image for i in range(args.images)]
    kept = np.stack([analysis.patch_keep_map(loaded, im, mean, std).kept for im in images])
    k = int(kept[0].sum())
    print(f"{args.checkpoint}: keep {k} of {kept[0].size}; chance IoU {analysis.chance_iou(kept[0].size, k):.3f}")
    print(f"| attribution | demo image {args.image}: selector / best fixed / centre | mean ± sd over "
          f"{args.images} demo images: selector | best fixed mask | centre mask |")
    print("| --- | --- | --- | --- | --- |")
    for method in METHODS:
        attrs = np.stack([attribute(loaded, im, method, mean, std) for im in images])
        table = analysis.agreement_over_images(kept, attrs)
        i = args.image
        others = [j for j in range(len(attrs)) if j != i]
        single = (analysis.keep_attribution_iou(kept[i], attrs[i]),
                  analysis.keep_attribution_iou(analysis.fixed_mask(attrs[others], k), attrs[i]),
                  analysis.keep_attribution_iou(analysis.centre_mask(kept[i].shape, k), attrs[i]))
        cells = [f"{table[c].mean():.3f} ± {table[c].std():.3f}" for c in ("selector", "best_fixed_mask", "centre_mask")]
        print(f"| {method.replace('_', ' ')} | {' / '.join(f'{v:.3f}' for v in single)} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
