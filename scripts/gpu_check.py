"""GPU check: a few hundred dense and SViTE training steps on a DeiT-S-shaped model.

Prints images/s for each and the sparse ÷ dense step-time ratio (target <= 1.05), after checking
that the bf16 sparse steps keep masked weights exactly zero and the budget exact. Dense and sparse
are timed in alternating blocks in one process, so clock or thermal drift hits both alike.

    python scripts/gpu_check.py                      # on a machine with a GPU (defaults: DeiT-S, bs 64)
    python scripts/gpu_check.py --device cpu --model vit_tiny_demo --steps 6 --batch-size 8   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sparsity_core.dst import EngineContext, build_engine  # noqa: E402
from sparsity_core.models.builder import ModelConfig, build_model, input_geometry  # noqa: E402
from sparsity_core.training.config import TrainConfig  # noqa: E402


def make_runner(method: str, args: argparse.Namespace, device: torch.device, total_steps: int):
    # imported here, after sparsity_core (above), whose torchvision shim must come before timm
    from timm.optim import create_optimizer_v2

    cfg = TrainConfig(method=method, density=args.density, update_frequency=args.update_frequency, seed=0,
                      update_start="0")  # fed no loss (plateau would refuse): on schedule from the start
    mcfg = ModelConfig(name=args.model, num_classes=1000 if args.model != "vit_tiny_demo" else 10)
    torch.manual_seed(0)
    model = build_model(mcfg).to(device)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=5e-4, weight_decay=0.05)
    engine = build_engine(EngineContext(model=model, optimizer=optimizer, total_steps=total_steps,
                                        steps_per_epoch=total_steps, config=cfg))
    train_model = torch.compile(model) if args.compile else model
    img, _ = input_geometry(mcfg)
    x = torch.randn(args.batch_size, 3, img, img, device=device)
    y = torch.randint(0, mcfg.num_classes, (args.batch_size,), device=device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else nullcontext
    state = {"step": 0}

    def step() -> float:
        with autocast():
            loss = torch.nn.functional.cross_entropy(train_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        engine.after_optimizer_step(state["step"])
        state["step"] += 1
        return float(loss.detach())

    return model, engine, step


def timed_block(step, n: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="deit_small_patch16_224")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=300, help="timed steps per method")
    p.add_argument("--blocks", type=int, default=6, help="alternating timing blocks per method")
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--update-frequency", type=int, default=100, help="steps between topology updates")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (use --device cpu for a smoke run)")
    total = args.steps * 2 + 20
    dense_model, _, dense_step = make_runner("dense", args, device, total)
    sparse_model, engine, sparse_step = make_runner("svite", args, device, total)
    budget_at_start = engine.masks.nonzeros()
    for _ in range(3):  # warm-up (kernels, allocator, compile)
        dense_step()
        sparse_step()
    per_block = max(1, args.steps // args.blocks)
    dense_t, sparse_t = [], []
    for _ in range(args.blocks):
        dense_t.append(timed_block(dense_step, per_block, device))
        sparse_t.append(timed_block(sparse_step, per_block, device))
    # correctness of the sparse run after all those steps: masks applied, budget exact
    params = dict(sparse_model.named_parameters())
    zero_ok = all(bool((params[n].detach()[~m.to(device)] == 0).all()) for n, m in engine.masks.items())
    budget = engine.masks.nonzeros()
    budget_ok = budget == budget_at_start == dict(engine.budgets)
    dense_s, sparse_s = statistics.median(dense_t), statistics.median(sparse_t)
    result = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "model": args.model, "batch_size": args.batch_size, "compile": args.compile,
        "update_frequency": args.update_frequency, "density": round(engine.masks.overall_density(), 4),
        "dense_images_per_s": args.batch_size / dense_s, "sparse_images_per_s": args.batch_size / sparse_s,
        "dense_ms_per_step": 1000 * dense_s, "sparse_ms_per_step": 1000 * sparse_s,
        "sparse_over_dense_step_time": sparse_s / dense_s, "target": 1.05,
        "steps_per_method": 3 + per_block * args.blocks,
        "topology_updates": engine.updates_done,
        "masked_weights_zero": zero_ok, "budget_exact": budget_ok, "nonzeros_total": sum(budget.values()),
    }
    print(json.dumps(result, indent=2))
    if not zero_ok:
        raise SystemExit("gpu_check: masked weights are not zero after sparse steps")
    if not budget_ok:
        raise SystemExit("gpu_check: the per-layer nonzero budget changed during sparse training")


if __name__ == "__main__":
    main()
