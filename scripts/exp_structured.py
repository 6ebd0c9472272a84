"""Demo-data experiment: S2ViTE at 0.7/0.6 (4 of 6 heads, 60% of MLP neurons) vs dense, 3 seeds, CPU.

    nice -n 10 python scripts/exp_structured.py            # runs what is missing, then writes the table
    nice -n 10 python scripts/exp_structured.py --table    # only (re)writes the table from finished runs

Runs go into ``runs/exp_structured/<method>_s<seed>`` (``scripts/_experiment.py``: the shared recipe; a
finished run is skipped, an interrupted one resumed, an identical finished run of another demo experiment
reused). Each S2ViTE run is also compacted in memory and the
compacted model evaluated on the same validation set (it must score exactly the same).
Writes ``docs/structured_results.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import pandas as pd  # noqa: E402
from _experiment import (  # noqa: E402
    RECIPE,
    finished_runs,
    method_experiment_main,
    sweep_summary,
    train_run,
    write_results,
)

from sparsity_core.data import build_data, make_loader  # noqa: E402
from sparsity_core.models.compact import compact, max_logit_diff  # noqa: E402
from sparsity_core.models.evaluate import count_flops, count_parameters, evaluate_accuracy  # noqa: E402

EXPERIMENT = "exp_structured"
RESULTS = ROOT / "docs" / "structured_results.md"
COMMAND = "nice -n 10 python scripts/exp_structured.py"

S2VITE = dict(method="s2vite", atten_density=0.7, other_density=0.6, update_frequency=200, death_rate=0.5,
              decay_schedule="cosine", t_end=0.8, growth="gradient")
METHODS = {
    "dense": dict(method="dense"),
    # the reference's S2ViTE-Small ratios; ~11 topology updates over the run (t_end 0.8), heads grown by
    # alignment through shadow q/k/v rows (the default, dst/head_shadow.py)
    "s2vite": dict(S2VITE),
    # what exploring heads costs: the former head growth rule (||dL/da_h||, fresh q/k), under which a pruned
    # head was always grown straight back
    "s2vite_gradnorm": dict(S2VITE, head_growth="gradient-norm"),
    # control: the same random initial heads/neurons, never updated (isolates the prune-and-grow part
    # from the capacity cut); an update frequency beyond the run's steps means no update
    "s2vite_static": dict(S2VITE, update_frequency=10**6),
}
DEFAULT_METHODS = ["dense", "s2vite"]  # s2vite_static on request (--methods dense s2vite s2vite_static)


def arm_fields(name: str) -> dict:
    """TrainConfig fields (without out/seed) of the arm ``name`` (scripts/sweep.py trains arms one by one)."""
    return {**RECIPE, **METHODS[name]}


def run_all(seeds: list[int], methods: list[str]) -> None:
    for seed in seeds:
        for name in methods:
            train_run(EXPERIMENT, name, {**RECIPE, **METHODS[name]}, seed)


def collect(seeds: list[int]) -> pd.DataFrame:
    rows = []
    configs = {name: {**RECIPE, **fields} for name, fields in METHODS.items()}
    for name, seed, run, loaded, metrics, train_s in finished_runs(EXPERIMENT, configs, seeds, seed_major=True):
        row = {"method": name, "seed": seed, "top1": metrics.get("val_top1"), "top5": metrics.get("val_top5"),
               "params": count_parameters(loaded.model)["params"],
               "flops": count_flops(loaded.model, loaded.masks, loaded.units)["sparse"],
               "wall_s": train_s, "run": str(run.relative_to(ROOT))}
        if loaded.units is not None:
            small, _ = compact(loaded)
            data = build_data("demo", img_size=32, patch_size=4, seed=seed, train_size=1,
                              val_size=RECIPE["val_size"])
            acc = evaluate_accuracy(small, make_loader(data.val, 256, shuffle=False, seed=0))
            fired = loaded.fired
            row.update(fired_heads=sum(int(m.sum()) for n, m in fired.items() if n.endswith(".heads")),
                       fired_neurons=sum(int(m.sum()) for n, m in fired.items() if n.endswith(".neurons")),
                       alive_heads=sum(int(m.sum()) for n, m in loaded.units.items() if n.endswith(".heads")),
                       alive_neurons=sum(int(m.sum()) for n, m in loaded.units.items()
                                         if n.endswith(".neurons")))
            heads = [(int(loaded.units[f"blocks.{i}.attn.heads"].sum()), int(fired[f"blocks.{i}.attn.heads"].sum()))
                     for i in range(len(loaded.model.blocks))]  # (alive, ever alive) per block
            row.update(heads_per_block=" ".join(f"{alive}/{ever}" for alive, ever in heads),
                       blocks_explored=sum(ever > alive for alive, ever in heads), blocks=len(heads))
            row.update(zero_qk_heads=_alive_heads_without_query_or_key(loaded),
                       min_neuron_gain=min(int(fired[n].sum()) - int(loaded.units[n].sum())
                                           for n in loaded.units if n.endswith(".neurons")))
            row.update(params=count_parameters(small)["params"], flops=count_flops(small)["dense"],
                       compact_top1=acc["top1"],
                       compact_logit_diff=max_logit_diff(loaded.model, small, masks=loaded.masks))
        rows.append(row)
    return pd.DataFrame(rows)


def _alive_heads_without_query_or_key(loaded) -> int:
    """Alive heads whose q rows or k rows are all exactly zero: such a head can never learn to attend."""
    count = 0
    for i, block in enumerate(loaded.model.blocks):
        attn = block.attn
        w = attn.qkv.weight.detach().reshape(3, attn.num_heads, attn.head_dim, -1)
        alive = loaded.units[f"blocks.{i}.attn.heads"]
        dead_q = (w[0] == 0).flatten(1).all(dim=1)
        dead_k = (w[1] == 0).flatten(1).all(dim=1)
        count += int((alive & (dead_q | dead_k)).sum())
    return count


def write_table(df: pd.DataFrame, seeds: list[int]) -> str:
    lines = ["# S2ViTE vs dense on the demo data", "",
             f"Command: `{COMMAND}` (seeds {', '.join(map(str, seeds))}; finished runs are skipped; "
             "`scripts/sweep.py` trains the same runs two at a time).", "",
             "Recipe (every method): " + ", ".join(f"{k}={v}" for k, v in RECIPE.items()) + ".",
             "S2ViTE: " + ", ".join(f"{k}={v}" for k, v in METHODS["s2vite"].items() if k != "method") +
             " (4 of 6 heads and 230 of 384 MLP neurons per block; heads grown by alignment through shadow q/k/v "
             "rows, the default); s2vite_gradnorm: the same with the former head growth rule "
             "(--head-growth gradient-norm).", ""]
    lines += sweep_summary(["dense", "s2vite", "s2vite_gradnorm", "s2vite_static"], ["dense", "s2vite_gradnorm"])
    lines += ["", "Params and FLOPs of the compacted S2ViTE models, and their accuracy (the same as the masked "
              "model's, up to the max logit difference):", "",
              "| method | seed | top-1 (%) | top-5 (%) | params (compacted) | MFLOPs/img (compacted) | compacted top-1 "
              "(%) | max logit diff (compact vs masked) | train s | run |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        ctop, cdiff = r.get("compact_top1"), r.get("compact_logit_diff")
        wall = "" if r.wall_s is None or pd.isna(r.wall_s) else f"{r.wall_s:.0f}"
        lines.append(f"| {r.method} | {r.seed} | {r.top1:.2f} | {r.top5:.2f} | {int(r.params):,} | {r.flops / 1e6:.2f} | "
                     f"{'' if ctop is None or pd.isna(ctop) else f'{ctop:.2f}'} | "
                     f"{'' if cdiff is None or pd.isna(cdiff) else f'{cdiff:.1e}'} | {wall} | `{r.run}` |")
    if "fired_heads" in df:
        sparse = df[df["method"] != "dense"]
        lines += ["", "Exploration: heads alive / ever alive per block (blocks 0-3, of 6 heads), blocks where more heads "
                  "were ever alive than are alive (target for the default: at least half the blocks on every seed), "
                  "neurons summed over the blocks (of 4 x 384), alive heads whose q or k rows are all zero, and the "
                  "smallest per-block excess of ever-alive over alive neurons:", "",
                  "| run | heads alive / ever, per block | blocks that explored heads | neurons alive | neurons ever "
                  "alive | alive heads with q = 0 or k = 0 | min per-block (ever alive − alive) neurons |",
                  "|---|---|---|---|---|---|---|"]
        for _, r in sparse.iterrows():
            lines.append(f"| {r.method} {r.seed} | {r.heads_per_block} | {int(r.blocks_explored)} of {int(r.blocks)} | "
                         f"{int(r.alive_neurons)} | {int(r.fired_neurons)} | {int(r.zero_qk_heads)} | "
                         f"{int(r.min_neuron_gain)} |")
    return write_results(RESULTS, lines)


if __name__ == "__main__":  # train what is missing (unless --table), then write the table
    method_experiment_main(__doc__, METHODS, DEFAULT_METHODS, run_all, collect, write_table)
