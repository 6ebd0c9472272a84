"""Compacted S2ViTE model vs dense: measured throughput ratio against the FLOPs ratio (by hand).

    nice -n 10 python benchmarks/bench_structured.py            # DeiT-S shape, 224 px, batch 32, CPU

A DeiT-S (random weights: speed does not depend on them) gets 4 of 6 heads and 921 of 1536 MLP
neurons per block (S2ViTE at --atten-density 0.7 --other-density 0.6, seeded random choice) and is
compacted with ``sparsity_core.structured.compact_model`` (checked: same logits as the masked model).
Dense and compacted forward passes (one batch each) are timed *interleaved* in one process (pairs
alternate which goes first), so machine load hits both alike; each pair gives a speedup (dense time /
compact time = compact ips / dense ips), and the median over pairs is reported with its IQR. Target: speedup >= 0.8 x FLOPs ratio (dense FLOPs / compact FLOPs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import sparsity_core  # noqa: E402,F401  (before timm)
from sparsity_core.dst.budgets import unit_budgets  # noqa: E402
from sparsity_core.masks.maskset import MaskSet, head_unit_name, neuron_unit_name  # noqa: E402
from sparsity_core.models.builder import ModelConfig, build_model  # noqa: E402
from sparsity_core.models.compact import compact_model, max_logit_diff  # noqa: E402
from sparsity_core.models.evaluate import count_flops  # noqa: E402
from sparsity_core.models.units import unit_weight_masks  # noqa: E402


def random_units(model: torch.nn.Module, atten: float, other: float, seed: int) -> MaskSet:
    heads, hidden = unit_budgets(model, atten, other)
    gen = torch.Generator().manual_seed(seed)
    units = MaskSet()
    for i, block in enumerate(model.blocks):
        for name, total, keep in ((head_unit_name(i), block.attn.num_heads, heads[i]),
                                  (neuron_unit_name(i), block.mlp.fc1.out_features, hidden[i])):
            alive = torch.zeros(total, dtype=torch.bool)
            alive[torch.randperm(total, generator=gen)[:keep]] = True
            units[name] = alive
    return units


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--atten-density", type=float, default=0.7)
    parser.add_argument("--other-density", type=float, default=0.6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=12, help="interleaved (dense, compact) timing pairs")
    parser.add_argument("--iters", type=int, default=1, help="forward passes per model per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = ModelConfig(name=args.model, num_classes=1000)
    dense = build_model(config).eval()
    units = random_units(dense, args.atten_density, args.other_density, args.seed)
    masks = unit_weight_masks(dense, units)
    small, small_cfg = compact_model(dense, config, units)
    diff = max_logit_diff(dense, small, batch=2, masks=masks)
    f_dense = count_flops(dense)["dense"]
    f_masked = count_flops(dense, masks, units)["sparse"]
    f_small = count_flops(small)["dense"]
    p_dense = sum(p.numel() for p in dense.parameters())
    p_small = sum(p.numel() for p in small.parameters())
    flops_ratio = f_dense / f_small
    print(f"model {args.model}: heads/block {small_cfg.block_heads[0]} of {dense.blocks[0].attn.num_heads}, "
          f"hidden {small_cfg.block_hidden[0]} of {dense.blocks[0].mlp.fc1.out_features}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print(f"max |logit diff| compact vs masked: {diff:.2e}")
    print(f"params: dense {p_dense / 1e6:.2f} M, compact {p_small / 1e6:.2f} M ({p_small / p_dense:.3f})")
    print(f"GFLOPs/img: dense {f_dense / 1e9:.3f}, masked (proj kept dense) {f_masked / 1e9:.3f}, "
          f"compact {f_small / 1e9:.3f}; FLOPs saved {1 - f_small / f_dense:.1%}")
    x = torch.randn(args.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(args.seed))
    with torch.inference_mode():
        for model in (dense, small):  # warm-up (allocator, kernels)
            for _ in range(args.warmup):
                model(x)
    ratios, t_dense, t_small = [], [], []
    t0 = time.perf_counter()
    for r in range(args.rounds):
        pair = {}
        order = [("dense", dense), ("compact", small)]
        for name, model in (order if r % 2 == 0 else order[::-1]):  # alternate who goes first
            pair[name] = _time_batch(model, x, args.iters)
        t_dense.append(pair["dense"])
        t_small.append(pair["compact"])
        ratios.append(pair["dense"] / pair["compact"])
        print(f"round {r + 1:2d}: dense {args.batch_size / pair['dense']:6.1f} img/s, compact "
              f"{args.batch_size / pair['compact']:6.1f} img/s, speedup {ratios[-1]:.3f}", flush=True)
    speedup = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [speedup, speedup, speedup]
    print(f"timing took {time.perf_counter() - t0:.0f} s")
    print(f"throughput (median): dense {args.batch_size / statistics.median(t_dense):.1f} img/s, compact "
          f"{args.batch_size / statistics.median(t_small):.1f} img/s")
    print(f"speedup = compact ips / dense ips, median of {len(ratios)} interleaved pairs: {speedup:.3f} "
          f"(IQR {q[0]:.3f}-{q[2]:.3f}; ratio of total times {sum(t_dense) / sum(t_small):.3f}) "
          f"-> time saved {1 - 1 / speedup:.1%}")
    print(f"FLOPs ratio (dense / compact): {flops_ratio:.3f}")
    print(f"speedup / FLOPs ratio: {speedup / flops_ratio:.3f}  (target >= 0.8: "
          f"{'met' if speedup >= 0.8 * flops_ratio else 'MISSED'})")


@torch.inference_mode()
def _time_batch(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    """Seconds per forward pass of ``x`` (mean of ``iters`` back-to-back passes)."""
    t0 = time.perf_counter()
    for _ in range(iters):
        model(x)
    return (time.perf_counter() - t0) / iters


if __name__ == "__main__":
    main()
