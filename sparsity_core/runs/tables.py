"""A sweep as text: the grouped table and the paired differences in markdown (the docs' results
tables and ``svite runs``), and as one JSON document (``svite runs --json``).

The experiment scripts write their results tables with :func:`results_markdown`, so the docs show
exactly what the Runs page shows for the same folder.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .stats import beyond_seed_noise, default_baselines, groups, paired_differences, with_labels

METRIC_NAMES = {"top1": "top-1 %", "top5": "top-5 %"}


def _num(v: Any, digits: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}"


def _density(row: pd.Series) -> str:
    if row["method"] == "s2vite":
        return f"heads {_num(row['heads'], 2)}, neurons {_num(row['neurons'], 2)}"
    return _num(row["density"] if pd.notna(row["density"]) else row["target_density"], 2)


def group_markdown(g: pd.DataFrame, metric: str = "top1", digits: int = 2) -> list[str]:
    name = METRIC_NAMES.get(metric, metric)
    lines = [f"| configuration | method | density | keep | n | seeds | {name} mean ± std | per seed | FLOPs % of dense "
             "| fired |", "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in g.iterrows():
        status = "".join(f", {int(r[s])} {s}" for s in ("running", "failed") if r[s])
        lines.append(f"| {r['label']} | {r['method_label']} | {_density(r)} | {_num(r['keep'], 2)} | {r['n']}{status} | "
                     f"{r['seeds'] or '–'} | {_num(r['mean'], digits)} ± {_num(r['std'], digits)} | "
                     f"{r['per_seed'] or '–'} | {_num(r['flops_pct'], 1)} | {_num(r['fired'], 3)} |")
    return lines


def diff_markdown(d: pd.DataFrame, digits: int = 2) -> list[str]:
    lines = ["| configuration | minus | n | seeds | mean difference (bold: interval excludes 0) | 95% interval | per seed "
             "| ahead on |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in d.iterrows():
        ci = "n = 1: none" if r["n"] < 2 else f"[{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]"
        mean = f"{r['mean_diff']:+.{digits}f}"
        if beyond_seed_noise(r["ci_low"], r["ci_high"]):  # bold
            mean = f"**{mean}**"
        lines.append(f"| {r['label']} | {r['baseline']} | {r['n']} | {r['seeds']} | {mean} | "
                     f"{ci} | {r['per_seed']} | {r['ahead']} |")
    return lines


def results_markdown(runs: pd.DataFrame, metric: str = "top1", baselines: list[str] | None = None,
                     digits: int = 2) -> str:
    """The grouped table and the paired differences of a run table (:func:`index.index_runs`), in
    markdown: the docs' results tables."""
    runs = with_labels(runs)
    g = groups(runs, metric)
    d = paired_differences(runs, baselines, metric)
    name = METRIC_NAMES.get(metric, metric)
    out = [f"Finished runs only; mean ± std over seeds (sample std), {name}."] + [""] + group_markdown(g, metric, digits)
    if len(d):
        out += ["", f"Paired differences in {name} points: the configuration minus the baseline on each seed both "
                "finished, mean with a 95% t-interval over those n seeds (an interval that excludes 0 is a "
                "difference larger than the seed noise)."]
        out += [""] + diff_markdown(d, digits)
    else:
        out += ["", "No paired differences: no two configurations finished a common seed."]
    return "\n".join(out) + "\n"


def runs_document(runs: pd.DataFrame, notes: list[str], root: str, metric: str = "top1",
                  baselines: list[str] | None = None) -> dict[str, Any]:
    """``svite runs --json``: every run, the grouped table, the paired differences and the notes."""
    runs = with_labels(runs)
    return {"root": root, "metric": metric, "runs": runs.drop(columns=["group"]).to_dict("records"),
            "groups": groups(runs, metric).drop(columns=["group"]).to_dict("records"),
            "baselines": baselines if baselines is not None else default_baselines(runs),
            "differences": paired_differences(runs, baselines, metric).to_dict("records"), "notes": notes}


def status_line(runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts()
    return f"{len(runs)} runs: " + ", ".join(f"{int(counts[s])} {s}" for s in ("finished", "running", "failed", "partial")
                                             if s in counts)
