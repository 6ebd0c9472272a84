"""Demo-data experiment: how long dense training sits on its loss plateau, by peak learning rate.

    nice -n 10 python scripts/exp_recipe.py             # runs what is missing, then writes the table
    nice -n 10 python scripts/exp_recipe.py --table     # only (re)writes the table from finished runs

Every arm is the demo recipe (``scripts/_experiment.py``: 40 epochs, cosine) with another peak learning rate
or warm-up, trained dense for its first 8 epochs only (``max_steps``): the question is when a seed leaves
chance, not where it ends. Runs go into ``runs/exp_recipe/<arm>_s<seed>``; writes ``docs/recipe_results.md``.
This is what chose the recipe's lr 5e-4 with 2 warm-up epochs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from _experiment import RECIPE, RUNS_ROOT, experiment_parser, write_results  # noqa: E402

from sparsity_core.training.config import TrainConfig  # noqa: E402
from sparsity_core.training.loop import train  # noqa: E402

EXPERIMENT = "exp_recipe"
RESULTS = ROOT / "docs" / "recipe_results.md"
COMMAND = "nice -n 10 python scripts/exp_recipe.py"
PROBE_EPOCHS = 8
CHANCE = 10.0  # 10 balanced classes
LEFT = 15.0  # "left chance": top-1 above this (chance 10%; a 1000-image estimate at chance has a std of ~1 point)
ARMS = {
    "lr2e-3": dict(lr=2e-3),
    "lr1e-3": dict(lr=1e-3),  # the former recipe's peak (it ran 20 epochs)
    "lr5e-4": dict(lr=5e-4),  # the recipe
    "lr2.5e-4": dict(lr=2.5e-4),
    "lr5e-4_warmup5": dict(lr=5e-4, warmup_epochs=5.0),
}


def run_dir(arm: str, seed: int) -> Path:
    return RUNS_ROOT / EXPERIMENT / f"{arm}_s{seed}"


def curve(run: Path) -> list[float]:
    """Validation top-1 at each epoch end (the last record of each epoch)."""
    if not (run / "metrics.jsonl").is_file():
        return []
    per_epoch = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "epoch":
            per_epoch[round(rec["epoch"])] = rec["val_top1"]
    return [per_epoch[e] for e in sorted(per_epoch)]


def run_arm(arm: str, seed: int) -> None:
    run = run_dir(arm, seed)
    if len(curve(run)) >= PROBE_EPOCHS:
        print(f"[skip] {arm}_s{seed}", flush=True)
        return
    torch.set_num_threads(1)
    resume = str(run) if (run / "checkpoint.safetensors").exists() else None
    steps = PROBE_EPOCHS * (RECIPE["train_size"] // RECIPE["batch_size"])
    print(f"[run] {arm}_s{seed}", flush=True)
    train(TrainConfig(out=str(run), **{**RECIPE, **ARMS[arm]}, method="dense", seed=seed, max_steps=steps,
                      resume=resume), show_progress=False, echo_metrics=False)


def write_table(seeds: list[int]) -> str:
    lines = ["# How long dense training sits at chance, by peak learning rate", "",
             f"Command: `{COMMAND}`. Dense `vit_tiny_demo`, the demo recipe (40-epoch cosine schedule, "
             f"{RECIPE['warmup_epochs']:g} warm-up epochs unless the arm says otherwise), stopped after "
             f"{PROBE_EPOCHS} epochs. Chance is {CHANCE:g}%; an epoch counts as *left chance* above {LEFT:g}%.", "",
             "| arm | seed | top-1 at epochs 1-8 (%) | first epoch above 15% |", "|---|---|---|---|"]
    for arm in ARMS:
        for seed in seeds:
            top1 = curve(run_dir(arm, seed))[:PROBE_EPOCHS]
            if not top1:
                continue
            first = next((i + 1 for i, v in enumerate(top1) if v > LEFT), None)
            lines.append(f"| {arm} | {seed} | {' '.join(f'{v:.1f}' for v in top1)} | "
                         f"{first if first else f'> {len(top1)}'} |")
    return write_results(RESULTS, lines)


def main() -> None:
    parser = experiment_parser(__doc__)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args()
    if not args.table:
        for seed in args.seeds:
            for arm in args.arms:
                run_arm(arm, seed)
    print(write_table(sorted(set(args.seeds) | {0, 1, 2, 3, 4})))


if __name__ == "__main__":
    main()
