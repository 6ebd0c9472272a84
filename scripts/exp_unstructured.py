"""Demo-data experiment: dense vs static vs oneshot vs SViTE at density 0.5, tiny ViT, 3 seeds, CPU.

    nice -n 10 python scripts/exp_unstructured.py            # runs what is missing, then writes the table
    nice -n 10 python scripts/exp_unstructured.py --table    # only (re)writes the table from finished runs

Runs go into ``runs/exp_unstructured/<method>_s<seed>`` (``scripts/_experiment.py``: the shared recipe; a
finished run is skipped, an interrupted one resumed, an identical finished run of another demo experiment
reused). The dense baselines come last, since exp_structured.py trains the same ones. Writes
``docs/unstructured_results.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pandas as pd  # noqa: E402
from _experiment import (  # noqa: E402
    RECIPE,
    SVITE,
    finished_runs,
    method_experiment_main,
    sweep_summary,
    train_run,
    write_results,
)

from sparsity_core.analysis import young_pruning  # noqa: E402

EXPERIMENT = "exp_unstructured"
RESULTS = ROOT / "docs" / "unstructured_results.md"
COMMAND = "nice -n 10 python scripts/exp_unstructured.py"

SPARSE = dict(density=0.5, sparse_init="fixed_ERK")
METHODS = {
    "static": dict(method="static", **SPARSE),
    # dense for half the run, per-layer magnitude prune to the ERK budgets, fine-tune the other half
    "oneshot": dict(method="oneshot", oneshot_at=0.5, **SPARSE),
    # SViTE with the defaults (scripts/_experiment.py): moments of grown weights kept, updates from the end
    # of the loss plateau, every 400 steps
    "svite": dict(SVITE),
    "dense": dict(method="dense"),
    # the sparser points of the top-1 vs density curve (dense shared), where the DST literature finds its
    # largest gains over static masks
    "static_d02": dict(method="static", density=0.2, sparse_init="fixed_ERK"),
    "svite_d02": dict(SVITE, density=0.2),
    "static_d01": dict(method="static", density=0.1, sparse_init="fixed_ERK"),
    "svite_d01": dict(SVITE, density=0.1),
    # the sparse end (issue 27): where exploration should pay if it pays anywhere on this data
    "static_d005": dict(method="static", density=0.05, sparse_init="fixed_ERK"),
    "svite_d005": dict(SVITE, density=0.05),
    "static_d002": dict(method="static", density=0.02, sparse_init="fixed_ERK"),
    "svite_d002": dict(SVITE, density=0.02),
    # the alternative start as a paired arm at the sparse end: updates from the end of the LR warm-up
    # instead of the loss plateau's end (the plateau lasts longer the sparser the network)
    "svite_warmup_d005": dict(SVITE, density=0.05, update_start="warmup"),
    "svite_warmup_d002": dict(SVITE, density=0.02, update_start="warmup"),
    # ablations (--methods NAME): the moments of grown weights zeroed (our former default); updates from the
    # end of the LR warm-up instead of the loss plateau's end
    "svite_zero": dict(SVITE, grown_moments="zero"),
    "svite_warmup": dict(SVITE, update_start="warmup"),
    # mechanism test: weights grown at one update are pruned at the next only after every older weight
    # (most of each update's pruned weights had been grown at the update before)
    "svite_mature": dict(SVITE, death="magnitude-mature"),
    "svite_mature_d01": dict(SVITE, density=0.1, death="magnitude-mature"),
    # the opt-in memory mode (--optimizer-state active): AdamW moments for active weights only, grown weights
    # start zero-avg; what it costs in accuracy, paired against svite
    "svite_active": dict(SVITE, optimizer_state="active"),
}
DEFAULT_METHODS = ["static", "oneshot", "svite", "dense"]
ABLATIONS = ["svite_mature", "svite_warmup", "svite_zero", "svite_active"]
# the configurations of each density point, and the baselines each is paired with
POINTS = {0.5: (["dense", "static", "oneshot", "svite", "svite_mature", "svite_warmup", "svite_zero", "svite_active"],
                ["dense", "static"]),
          0.2: (["dense", "static_d02", "svite_d02"], ["dense", "static_d02"]),
          0.1: (["dense", "static_d01", "svite_d01", "svite_mature_d01"], ["dense", "static_d01"]),
          0.05: (["dense", "static_d005", "svite_d005", "svite_warmup_d005"], ["dense", "static_d005"]),
          0.02: (["dense", "static_d002", "svite_d002", "svite_warmup_d002"], ["dense", "static_d002"])}


def arm_fields(name: str) -> dict:
    """TrainConfig fields (without out/seed) of the arm ``name`` (scripts/sweep.py trains arms one by one)."""
    return {**RECIPE, **METHODS[name]}


def run_all(seeds: list[int], methods: list[str]) -> None:
    order = [m for m in methods if m != "dense"] + (["dense"] if "dense" in methods else [])
    for name in order:  # as given, dense last: another experiment may finish it first
        for seed in seeds:
            train_run(EXPERIMENT, name, {**RECIPE, **METHODS[name]}, seed)


def collect(seeds: list[int]) -> pd.DataFrame:
    rows = []
    configs = {name: {**RECIPE, **fields} for name, fields in METHODS.items()}
    for name, seed, run, loaded, metrics, train_s in finished_runs(EXPERIMENT, configs, seeds):
        updates = sum(1 for s in loaded.history if s.info.get("event") == "update")
        young = young_pruning(loaded.history) if updates > 1 and name != "oneshot" else None
        first = next((snap.step for snap in loaded.history if snap.info.get("event") == "update"), None)
        rows.append({"method": name, "seed": seed, "first_update": first,
                     "total_steps": loaded.meta.get("total_steps"), "top1": metrics.get("val_top1"),
                     "top5": metrics.get("val_top5"), "density": metrics.get("density", 1.0),
                     "fired": loaded.fired.overall_density() if loaded.fired is not None else 1.0,
                     "updates": updates, "train_s": train_s,
                     "young_of_pruned": young["young_share_of_pruned"].mean() if young is not None else None,
                     "young_of_active": young["young_share_of_active"].mean() if young is not None else None,
                     "run": str(run.relative_to(ROOT))})
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, seeds: list[int]) -> str:
    svite = ", ".join(f"{k}={v}" for k, v in METHODS["svite"].items() if k not in ("method",) and k not in SPARSE)
    lines = ["# SViTE vs dense, static and one-shot on the demo data", "",
             f"Command: `{COMMAND}` (seeds {', '.join(map(str, seeds))}; finished runs are skipped; "
             "`scripts/sweep.py` trains the same runs two at a time).", "",
             "Recipe (every method): " + ", ".join(f"{k}={v}" for k, v in RECIPE.items()) + ".",
             "Sparse methods: the stated density over the sparsified weights (patch embed, qkv, proj, fc1, fc2, "
             "head), fixed_ERK per-layer budgets, identical for every method at a density.",
             f"SViTE (svite): {svite} (and the TrainConfig defaults: grown_moments=keep, update_start=plateau).",
             "Ablations, where run: svite_mature (--death magnitude-mature: weights grown at one update pruned at "
             "the next only after every older weight), svite_warmup (updates from the end of the LR warm-up), "
             "svite_zero (grown weights' AdamW moments zeroed: our former default), svite_active "
             "(--optimizer-state active: AdamW moments for active weights only).",
             "One-shot: dense for half the run, then per-layer magnitude prune to the same budgets, fine-tune.",
             "A seed fixes the data and the initial weights for every method (the engines draw masks from their "
             "own generator), so differences are paired by seed."]
    for density, (labels, baselines) in POINTS.items():
        lines += ["", f"## Density {density}", ""] + sweep_summary(labels, baselines)
    lines += ["", "## Ablations against SViTE (density 0.5)", ""]
    lines += sweep_summary(["svite", *ABLATIONS], ["svite"])
    lines += ["", "Per seed (first update: the step of the first topology update, of the run's total steps; "
              "train s: time in the training loop on the shared 2-core machine, evaluation excluded):", "",
              "| method | seed | top-1 (%) | top-5 (%) | updates | first update | fired | pruned that were grown at "
              "the update before (their share of the active weights) | train s | run |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        young = "" if pd.isna(r.young_of_pruned) else f"{r.young_of_pruned:.2f} ({r.young_of_active:.2f})"
        first = "" if pd.isna(r.first_update) else f"{int(r.first_update)} of {int(r.total_steps)}"
        lines.append(f"| {r.method} | {r.seed} | {r.top1:.2f} | {r.top5:.2f} | {r.updates} | {first} | {r.fired:.3f} | "
                     f"{young} | {r.train_s:.0f} | `{r.run}` |")
    return write_results(RESULTS, lines)


if __name__ == "__main__":  # train what is missing (unless --table), then write the table
    method_experiment_main(__doc__, METHODS, DEFAULT_METHODS, run_all, collect, write_table)
