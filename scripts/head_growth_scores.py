"""Why S²ViTE's heads did not move, and what the alignment rule changes: head growth scores, alive vs dead.

    python scripts/head_growth_scores.py checkpoints/s2vite.safetensors      # one checkpoint
    nice -n 10 python scripts/head_growth_scores.py --along-training --seed 0 # every update of a run

Growth rules compared (``--head-growth``, ``sparsity_core/dst/head_shadow.py``):

* ``gradient-norm`` (the former rule): ``mean_b ||dL/da_h||_1 = ||W_proj[:, h]^T dL/dy||`` per image;
* ``proj gradient``: ``||dL/dy^T A_h||_F``, the gradient a head's ``proj`` columns would get with the head
  opened through shadow q/k/v rows (its own rows while alive; the last rows before pruning, or its initial
  rows, while dead), i.e. RigL's criterion at head level without normalisation;
* ``alignment`` (the default): the same per unit of output, ``||dL/dy^T A_h||_F / ||A_h||_F``.

*Checkpoint mode* scores every head of a checkpoint on 128 demo training images; a checkpoint keeps no
shadow rows, so its dead heads are opened with timm's initial weights (what a never-active head has). It
prints per block the smallest ratio of an alive head's score to the best dead head's: above 1, no dead head
can win against any alive head.

*Along training* trains S²ViTE on the demo recipe with the former rule (the run whose heads never moved),
and before every topology update scores all heads on a fixed batch of 128 training images with the three
rules, with shadow rows kept as the engine keeps them. Per update and block it asks: with the heads the
Taylor score prunes, would a rule grow a dead head instead of re-growing the pruned ones? It changes no
decision of the run (the scoring pass uses its own images, in eval mode, and the engine's captured scores
are put back).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import sparsity_core  # noqa: E402,F401,I001  (before timm and torch's users)
import torch  # noqa: E402,I001

from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.data import DemoShapes  # noqa: E402
from sparsity_core.dst.head_shadow import ShadowHeads, alignment  # noqa: E402
from sparsity_core.dst.structured import StructuredEngine  # noqa: E402
from sparsity_core.masks.maskset import head_unit_name  # noqa: E402

RULES = ("gradient-norm", "proj gradient", "alignment")


def demo_batch(n: int, img_size: int, patch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    demo = DemoShapes("train", size=n, img_size=img_size, patch_size=patch_size, seed=seed)
    images, labels = zip(*[demo[i] for i in range(n)], strict=True)
    return torch.stack(images), torch.tensor(labels)


def score_heads(model: torch.nn.Module, alive: list[torch.Tensor], shadow: ShadowHeads, x: torch.Tensor,
                y: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per block ``{rule: scores per head, "taylor": ...}`` of one forward/backward on ``(x, y)``."""
    seen: dict[tuple[str, int], torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(model.blocks):
        hooks.append(block.attn.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("x", i), a[0].detach())))

        def at_proj(m, a, out, i=i):
            a[0].retain_grad()
            out.retain_grad()
            seen[("a", i)], seen[("y", i)] = a[0], out
        hooks.append(block.attn.proj.register_forward_hook(at_proj))
    was = model.training
    model.eval()
    with torch.enable_grad():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for h in hooks:
        h.remove()
    out = []
    for i, block in enumerate(model.blocks):
        attn = block.attn
        heads, d = attn.num_heads, attn.head_dim
        act, grad_a, grad_y = seen[("a", i)].detach(), seen[("a", i)].grad, seen[("y", i)].grad
        a = act.reshape(*act.shape[:2], heads, d)
        g = grad_a.reshape(*act.shape[:2], heads, d)
        outs = {h: a[:, :, h] for h in alive[i].nonzero().reshape(-1).tolist()}
        outs.update(shadow.outputs(i, seen[("x", i)]))
        aligned = alignment(grad_y, outs, heads)
        norms = torch.tensor([float(outs[h].float().norm()) if h in outs else 0.0 for h in range(heads)])
        out.append({"gradient-norm": g.abs().sum(dim=(1, 3)).mean(dim=0), "proj gradient": aligned * norms,
                    "alignment": aligned, "taylor": (a * g).sum(dim=(1, 3)).abs().mean(dim=0)})
    model.zero_grad(set_to_none=True)
    model.train(was)
    return out


def checkpoint_mode(path: Path, images: int) -> int:
    loaded = load_checkpoint(path)
    if loaded.units is None:
        print(f"{path}: no head masks (not an S²ViTE checkpoint)")
        return 2
    model = loaded.model
    alive = [loaded.units[head_unit_name(i)].bool() for i in range(len(model.blocks))]
    shadow = ShadowHeads([b.attn for b in model.blocks], alive, torch.Generator().manual_seed(0))
    x, y = demo_batch(images, int(model.patch_embed.img_size[0]), int(model.patch_embed.patch_size[0]), 0)
    print("| block | rule | alive heads | dead heads | smallest alive ÷ largest dead |")
    print("| --- | --- | --- | --- | --- |")
    for i, scores in enumerate(score_heads(model, alive, shadow, x, y)):
        if alive[i].all() or not alive[i].any():
            continue
        for rule in RULES:
            s = scores[rule]
            print(f"| {i} | {rule} | {' '.join(f'{float(v):.4g}' for v in s[alive[i]])} | "
                  f"{' '.join(f'{float(v):.4g}' for v in s[~alive[i]])} | "
                  f"{float(s[alive[i]].min() / s[~alive[i]].max()):.2f} |")
    return 0


def would_grow_dead(scores: dict[str, torch.Tensor], alive: torch.Tensor, rate: float) -> dict[str, bool]:
    """Per rule: with the ``ceil(rate * alive)`` lowest-Taylor heads pruned, is a dead head among the best
    ``n`` of the pruned and dead ones (the grow step's candidates)?"""
    live = alive.nonzero().reshape(-1).tolist()
    dead = (~alive).nonzero().reshape(-1).tolist()
    n = math.ceil(rate * len(live))
    pruned = sorted(live, key=lambda h: float(scores["taylor"][h]))[:n]
    out = {}
    for rule in RULES:
        grown = sorted(pruned + dead, key=lambda h: -float(scores[rule][h]))[:n]
        out[rule] = any(h in dead for h in grown)
    return out


def _rows_of(blocks: list[torch.nn.Module], heads: list[torch.Tensor]) -> list[dict]:
    """The current q/k/v rows of ``heads`` per block (a ShadowHeads that stores nothing else)."""
    keep = ShadowHeads([b.attn for b in blocks], [torch.ones_like(h) for h in heads], torch.Generator())
    for i, h in enumerate(heads):
        keep.store(i, h)
    return keep.rows


def along_training(seed: int, epochs: int | None, log: Path | None) -> int:
    from _experiment import RECIPE
    from exp_structured import METHODS

    from sparsity_core.training.config import TrainConfig
    from sparsity_core.training.loop import train

    torch.set_num_threads(1)
    fields = {**RECIPE, **METHODS["s2vite_gradnorm"], **({"epochs": epochs} if epochs else {})}
    x, y = demo_batch(128, 32, 4, seed + 100)
    records: list[dict] = []
    original_init, original_update = StructuredEngine.__init__, StructuredEngine._update

    def init(engine: StructuredEngine, ctx) -> None:
        blocks = list(ctx.model.blocks)
        initial = _rows_of(blocks, [torch.ones(b.attn.num_heads, dtype=torch.bool) for b in blocks])
        original_init(engine, ctx)
        engine.probe = ShadowHeads([b.attn for b in blocks], [torch.ones_like(a) for a in engine._head_units()],
                                   torch.Generator())
        engine.probe.rows = [{h: r for h, r in rows.items() if not bool(alive[h])}  # dead heads: initial rows
                             for rows, alive in zip(initial, engine._head_units(), strict=True)]

    def update(engine: StructuredEngine, steps_done: int) -> None:
        saved = (dict(engine.capture.heads), dict(engine.capture.neurons), dict(engine.capture.alignment))
        alive = [a.clone() for a in engine._head_units()]
        scores = score_heads(engine.model, alive, engine.probe, x, y)
        engine.capture.heads, engine.capture.neurons, engine.capture.alignment = saved  # decisions untouched
        before = _rows_of(engine.blocks, alive)
        rate = float(engine.schedule.rate(steps_done))
        original_update(engine, steps_done)
        for i, now in enumerate(engine._head_units()):
            for h in (alive[i] & ~now).nonzero().reshape(-1).tolist():  # pruned: its last rows
                engine.probe.rows[i][h] = before[i][h]
            for h in (now & ~alive[i]).nonzero().reshape(-1).tolist():  # grown: the model's rows now
                engine.probe.rows[i].pop(h)
            records.append({"step": steps_done, "block": i, "rate": rate, "moved": not torch.equal(alive[i], now),
                            **would_grow_dead(scores[i], alive[i], rate),
                            **{f"{r}: alive min / dead max": float(scores[i][r][alive[i]].min()
                                                                 / scores[i][r][~alive[i]].max()) for r in RULES}})

    StructuredEngine.__init__, StructuredEngine._update = init, update
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train(TrainConfig(out=str(Path(tmp) / "run"), seed=seed, **fields), show_progress=False,
                  echo_metrics=False)
    finally:
        StructuredEngine.__init__, StructuredEngine._update = original_init, original_update
    total, moved = len(records), sum(r["moved"] for r in records)
    print(f"S²ViTE with --head-growth gradient-norm, seed {seed}, {fields['epochs']} epochs: {total} block-updates, "
          f"{moved} moved a head.")
    print("Block-updates where a rule would have grown a dead head instead of re-growing the pruned ones:")
    for rule in RULES:
        ratios = sorted(r[f"{rule}: alive min / dead max"] for r in records)
        print(f"  {rule}: {sum(r[rule] for r in records)} of {total} (smallest alive ÷ largest dead: median "
              f"{ratios[len(ratios) // 2]:.2f})")
    if log is not None:
        log.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, nargs="?")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--along-training", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="along training: override the recipe's epochs")
    parser.add_argument("--log", type=Path, default=None, help="along training: per-update records (JSON lines)")
    args = parser.parse_args()
    if args.along_training:
        return along_training(args.seed, args.epochs, args.log)
    if args.checkpoint is None:
        parser.error("give a checkpoint, or --along-training")
    return checkpoint_mode(args.checkpoint, args.images)


if __name__ == "__main__":
    raise SystemExit(main())
