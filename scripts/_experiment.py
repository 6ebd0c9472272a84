"""What the demo-data experiments (scripts/exp_*.py) share: one recipe, and finding, training and reusing runs.

Every experiment trains through ``sparsity_core.training.loop.train`` into ``runs/<experiment>/<name>_s<seed>``.
A finished run is skipped, an interrupted one resumed, and a finished run of *another* experiment whose
training config is identical in every field that decides the outcome is reused instead of trained again
(the dense and SViTE baselines are shared that way).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import sparsity_core  # noqa: E402,F401  (before timm)
from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.runs import index_runs, results_markdown, with_labels  # noqa: E402
from sparsity_core.runs.identity import group_key  # noqa: E402
from sparsity_core.training.config import TrainConfig  # noqa: E402
from sparsity_core.training.loop import CHECKPOINT_NAME, train  # noqa: E402

RUNS_ROOT = ROOT / "runs"
EXPERIMENTS = ("exp_unstructured", "exp_structured", "exp_token_selector")

# The recipe of every demo experiment: the 5000 demo training images, 1000 validation images, batch 64
# (78 steps/epoch, T = 3120), AdamW lr 5e-4 with 2 warm-up epochs, cosine to 1e-5 over 40 epochs, one torch
# thread (results do not depend on the core count).
# Why: the tiny ViT first sits at chance on a loss plateau, and how long it sits there grows with the peak
# learning rate (scripts/exp_recipe.py, dense, the first 8 epochs of this 40-epoch schedule, seeds 0-4): at
# lr 1e-3 seeds 3 and 4 were still below 15% top-1 at epoch 6, at 2e-3 seeds 1 and 3 never left chance in 8
# epochs, at 5e-4 every seed was above 15% by epoch 5 (at 2.5e-4, or with 5 warm-up epochs, the climb
# started later again). The former 20-epoch recipe at lr 1e-3 ended while dense was still climbing (82.1% on
# seed 4, 50.9% on seed 3, which sat at chance for 11 epochs), so its sparse-vs-dense gaps measured the
# plateau, not the method; 40 epochs leave every method the time to converge (dense at lr 1e-3 converged
# from about epoch 28 of 40).
RECIPE = dict(model="vit_tiny_demo", data="demo", train_size=5000, val_size=1000, epochs=40, batch_size=64, lr=5e-4,
              min_lr=1e-5, warmup_lr=1e-6, weight_decay=0.05, warmup_epochs=2.0, label_smoothing=0.1, clip_grad=None,
              device="cpu", log_every=50)
# SViTE at density 0.5 as the experiments and the demo checkpoints run it: an update every 400 steps (5.1
# epochs) from the end of the loss plateau until 0.8 T (step 2496): up to 6 updates, prune rate 0.49 -> 0.07
# (cosine). The reference leaves ~6 epochs between its updates; an update every 50 steps (~1.5 per epoch)
# left the network no time to recover from each prune-and-grow.
# Grown weights keep their AdamW moments (the TrainConfig default; sparsity_core/dst/optim_state.py says why).
SVITE = dict(method="svite", density=0.5, sparse_init="fixed_ERK", update_frequency=400, death_rate=0.5,
             decay_schedule="cosine", t_end=0.8, growth="gradient", death="magnitude")

def is_complete(run: Path) -> bool:
    ckpt = run / CHECKPOINT_NAME
    return ckpt.exists() and bool(load_checkpoint(ckpt).meta.get("complete"))


def same_outcome(theirs: dict, mine: dict) -> bool:
    """Do two training configs (TrainConfig dicts) compute the same run? The same seed and the same fields
    that take effect (``sparsity_core.runs.identity``: the Runs page groups runs by the same rule)."""
    return theirs.get("seed") == mine.get("seed") and group_key(theirs) == group_key(mine)


def find_run(experiment: str, name: str, fields: dict, seed: int, shared_name: str | None = None) -> Path:
    """This experiment's run directory for ``name``/``seed``, or a finished identical run of another
    experiment (named ``shared_name`` there, default ``name``) when this one has none."""
    own = RUNS_ROOT / experiment / f"{name}_s{seed}"
    if is_complete(own):
        return own
    mine = TrainConfig(**fields, seed=seed).to_dict()
    for other in EXPERIMENTS:
        run = RUNS_ROOT / other / f"{shared_name or name}_s{seed}"
        if other == experiment or not (run / "config.json").exists() or not is_complete(run):
            continue
        if same_outcome(json.loads((run / "config.json").read_text()), mine):
            return run
    return own


def train_run(experiment: str, name: str, fields: dict, seed: int, shared_name: str | None = None) -> Path:
    """Train (or resume, or skip) one run; returns its directory. Wall time goes to ``wall_s.txt``."""
    torch.set_num_threads(1)
    run = find_run(experiment, name, fields, seed, shared_name)
    if is_complete(run):
        how = "complete" if run.parent.name == experiment else "reusing an identical run"
        print(f"[skip] {name}_s{seed}: {how} ({run.relative_to(ROOT)})", flush=True)
        return run
    resume = str(run) if (run / CHECKPOINT_NAME).exists() else None
    print(f"[run] {run.relative_to(ROOT)} ({'resume' if resume else 'fresh'})", flush=True)
    t0 = time.perf_counter()
    train(TrainConfig(out=str(run), **fields, seed=seed, resume=resume), show_progress=False, echo_metrics=False)
    wall = time.perf_counter() - t0
    (run / "wall_s.txt").write_text(f"{wall:.1f}\n")
    print(f"[done] {run.name}: {wall:.0f} s", flush=True)
    return run


def finished_runs(experiment: str, configs: dict[str, dict], seeds: list[int], *, seed_major: bool = False,
                  shared_names: dict[str, str] | None = None):
    """Every finished run of these configs (name -> TrainConfig fields) and seeds, in method-major order
    (or seed-major): yields (name, seed, run directory, loaded checkpoint, its metrics, :func:`train_seconds`)."""
    order = [(n, s) for s in seeds for n in configs] if seed_major else [(n, s) for n in configs for s in seeds]
    for name, seed in order:
        run = find_run(experiment, name, configs[name], seed, (shared_names or {}).get(name))
        if not (run / CHECKPOINT_NAME).exists():
            continue
        loaded = load_checkpoint(run / CHECKPOINT_NAME)  # once: is_complete() would load it a second time
        if loaded.meta.get("complete"):
            yield name, seed, run, loaded, loaded.meta.get("metrics", {}), train_seconds(run)


def train_seconds(run: Path) -> float:
    """Seconds spent in the training loop, summed over epochs (the last record of each epoch, so a run
    that was interrupted and resumed counts its final attempt at that epoch)."""
    per_epoch: dict[float, float] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "epoch":
            per_epoch[rec["epoch"]] = rec["time_s"]
    return sum(per_epoch.values())


@functools.cache
def _run_table() -> pd.DataFrame:
    """Every run below ``runs/``, labelled; indexed once per process (a script writes several tables from it,
    after its training is done)."""
    table, _ = index_runs(RUNS_ROOT)
    return with_labels(table) if len(table) else table


def sweep_summary(labels: list[str], baselines: list[str]) -> list[str]:
    """The grouped table (mean ± std over seeds) and the paired differences with 95% intervals of these
    configurations (run folder names without ``_s<seed>``), found anywhere below ``runs/``: the function the
    app's Runs page and ``svite runs`` use (``sparsity_core.runs.results_markdown``), so the docs and the
    app cannot disagree."""
    table = _run_table()
    if table.empty:
        return ["No runs yet."]
    picked = table[table["label"].isin(labels)]
    return results_markdown(picked, baselines=[b for b in baselines if b in set(picked["label"])]).splitlines()


def experiment_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every experiment script has: --seeds, --table."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--table", action="store_true", help="only write the table from finished runs")
    return parser


def write_results(path: Path, lines: list[str]) -> str:
    """Write a results table (markdown lines) and return its text."""
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


def method_experiment_main(doc: str, methods: dict, default: list[str], run_all, collect, write_table) -> None:
    """``main`` of an experiment over named methods: train what is missing (unless --table), then
    write and print the table of the finished runs."""
    parser = experiment_parser(doc)
    parser.add_argument("--methods", nargs="+", default=default, choices=list(methods))
    args = parser.parse_args()
    if not args.table:
        run_all(args.seeds, args.methods)
    df = collect(args.seeds)
    print("no finished runs yet" if df.empty else write_table(df, args.seeds))
