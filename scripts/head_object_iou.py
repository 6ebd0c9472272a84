"""Do the heads look at the object? Per head of a checkpoint: alive or pruned, its S²ViTE Taylor importance
(the engine's own scorer, over 64 demo validation images), and the IoU of its top-k patches with the object's
k patches, averaged over 32 demo validation images, beside chance; with a head probe, also each head's IoU
at the first and last snapshot and its best over training. The figures the docs quote:

    python scripts/head_object_iou.py checkpoints/s2vite.safetensors [--images 32] [--kind cls|rollout]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparsity_core  # noqa: E402,F401
from sparsity_core import analysis  # noqa: E402
from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.data import DEMO_MEAN, DEMO_STD, DemoShapes, image_to_input  # noqa: E402
from sparsity_core.history.probe import probe_images  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--kind", choices=["cls", "rollout"], default="cls")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_checkpoint(args.checkpoint)
    model = loaded.model
    size, patch = int(model.patch_embed.img_size[0]), int(model.patch_embed.patch_size[0])
    data = loaded.meta.get("data") or {}
    mean, std = data.get("mean") or DEMO_MEAN, data.get("std") or DEMO_STD
    demo = DemoShapes("val", size=max(64, args.images), img_size=size, patch_size=patch, seed=0)
    x = torch.cat([image_to_input(demo.sample(i).image, size, mean, std) for i in range(64)])
    y = torch.tensor([demo.sample(i).label for i in range(64)])
    alive = analysis.head_alive(loaded)
    taylor = analysis.head_importance(loaded, x, y)
    over = analysis.heads_over_images(loaded, x[:args.images],
                                      np.stack([demo.sample(i).patch_mask for i in range(args.images)]), args.kind)
    masks = None
    if loaded.meta.get("head_probe"):
        count = int(loaded.meta["head_probe"]["count"])
        probe = probe_images(size, patch, count)
        masks = np.stack([probe.sample(i).patch_mask for i in range(count)])
    print(f"{args.checkpoint}: {args.kind} maps, object IoU over {args.images} demo validation images "
          f"(chance {over['chance'].mean():.3f})")
    print("| block | head | alive | Taylor | object IoU (mean ± sd) | chance | probe: first → last (best) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for b in range(alive.shape[0]):
        trail = analysis.probe_object_iou(loaded, b, masks) if masks is not None else None
        for h in range(int(model.blocks[b].attn.num_heads)):
            r = over[(over["block"] == b) & (over["head"] == h)].iloc[0]
            iou = "uniform (no top patches)" if r["uniform"] else f"{r['iou']:.3f} ± {r['iou_sd']:.3f}"
            probe = ""
            if trail is not None:
                t = trail[trail["head"] == h]["iou"]
                probe = ("never alive" if t.isna().all() else
                         f"{t.iloc[0]:.2f} → {t.iloc[-1]:.2f} ({t.max():.2f})")
            print(f"| {b} | {h} | {'yes' if alive[b, h] else 'pruned'} | {taylor[b, h]:.2e} | {iou} | "
                  f"{r['chance']:.3f} | {probe} |")
    over["alive"] = [bool(alive[b, h]) for b, h in zip(over["block"], over["head"], strict=True)]
    live, dead = over[over["alive"]], over[~over["alive"]]
    print(f"\nalive heads ({len(live)}): object IoU {live['iou'].mean():.3f} on average (per head "
          f"{live['iou'].min():.3f} to {live['iou'].max():.3f}); chance {live['chance'].mean():.3f}")
    if len(dead):
        print(f"pruned heads ({len(dead)}): uniform attention on every image ({int(dead['uniform'].sum())} of "
              f"{len(dead)}), Taylor importance {float(np.nansum(taylor[~alive])):.1f} (exactly 0): no IoU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
