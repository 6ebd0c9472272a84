"""A sweep's numbers: runs that differ only by seed grouped (mean ± std, n), differences between
configurations paired by seed with a 95% t-interval, and the Pareto frontier of accuracy against
cost. The Runs page, ``svite runs`` and the docs' results tables all call these, so they cannot
disagree.

Only finished runs count (a running or failed run has no final accuracy). A seed fixes the data and the
initial weights for every method, so the difference of two configurations on the same seed removes
the seed's own luck; its mean over the n shared seeds gets the interval
mean ± t(0.975, n−1) · sd / √n (no interval for n = 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .identity import stem

GROUP_COLUMNS = ["label", "method_label", "method", "target_density", "density", "heads", "neurons", "keep",
                 "model", "n", "seeds", "mean", "std", "per_seed", "flops_pct", "fired", "kept_params",
                 "wall_s", "running", "failed", "group"]
#: The order of tables: baselines first, then the paper's methods.
METHOD_ORDER = ("dense", "static", "one-shot", "SViTE", "SViTE+", "S²ViTE", "S²ViTE + selector")
DIFF_COLUMNS = ["label", "baseline", "n", "seeds", "mean_diff", "ci_low", "ci_high", "sd", "per_seed", "ahead"]


def labels(runs: pd.DataFrame) -> dict[str, str]:
    """A short unique name per configuration (group key): the runs' folder name without its seed
    suffix when they share one (``svite`` for ``exp/svite_s0..s4``), else the method and density;
    clashes get the parent folder, then a number."""
    out: dict[str, str] = {}
    for key, g in runs.groupby("group", sort=False):
        stems = {stem(n) for n in g["name"]}
        if len(stems) == 1:
            out[key] = stems.pop()
        else:
            first = g.iloc[0]
            dens = first["target_density"]
            out[key] = f"{first['method_label']}" + (f" d{dens:g}" if pd.notna(dens) and dens != 1.0 else "")
    taken: dict[str, int] = {}
    for label in out.values():
        taken[label] = taken.get(label, 0) + 1
    for key, label in list(out.items()):
        if taken[label] > 1:
            parent = str(runs.loc[runs["group"] == key, "name"].iloc[0]).rsplit("/", 2)
            out[key] = f"{label} ({parent[-2]})" if len(parent) > 1 else label
    seen: dict[str, int] = {}
    for key, label in out.items():
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            out[key] = f"{label} #{seen[label]}"
    return out


def with_labels(runs: pd.DataFrame) -> pd.DataFrame:
    """The run table with a ``label`` column (its configuration's name)."""
    out = runs.copy()
    out["label"] = out["group"].map(labels(runs)) if len(runs) else pd.Series(dtype=str)
    return out


def _per_seed(g: pd.DataFrame, metric: str) -> pd.Series:
    """One value per seed (the mean where a seed was run twice), finished runs with the metric only."""
    done = g[(g["status"] == "finished") & g[metric].notna() & g["seed"].notna()]
    return done.groupby(done["seed"].astype(int))[metric].mean().sort_index()


def _fmt_seeds(values: pd.Series, digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values.to_numpy())


def groups(runs: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """One row per configuration: mean ± std of ``metric`` over its finished seeds, n, the seeds, the
    value per seed, and the means of density, FLOPs, fired rate, kept parameters and wall time."""
    runs = runs if "label" in runs else with_labels(runs)
    rows = []
    for key, g in runs.groupby("group", sort=False):
        per_seed = _per_seed(g, metric)
        done = g[g["status"] == "finished"]
        first = g.iloc[0]
        rows.append({
            "label": first["label"], "method_label": first["method_label"], "method": first["method"],
            "target_density": first["target_density"], "density": done["density"].mean(),
            "heads": done["heads"].mean(), "neurons": done["neurons"].mean(), "keep": first["keep"],
            "model": first["model"], "n": len(per_seed), "seeds": ",".join(str(s) for s in per_seed.index),
            "mean": per_seed.mean() if len(per_seed) else np.nan,
            "std": per_seed.std(ddof=1) if len(per_seed) > 1 else np.nan, "per_seed": _fmt_seeds(per_seed),
            "flops_pct": done["flops_pct"].mean(), "fired": done["fired"].mean(),
            "kept_params": pd.to_numeric(done["kept_params"], errors="coerce").mean(),
            "wall_s": done["wall_s"].mean(), "running": int((g["status"] == "running").sum()),
            "failed": int((g["status"] == "failed").sum()), "group": key})
    out = pd.DataFrame(rows, columns=GROUP_COLUMNS)
    order = out["method_label"].map(lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))
    out = out.assign(_order=order, _density=-out["target_density"].fillna(-1.0))
    return out.sort_values(["_order", "_density", "label"]).drop(columns=["_order", "_density"]).reset_index(drop=True)


def t_interval(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean of paired differences; NaN bounds for fewer than two."""
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * float(np.std(diffs, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def beyond_seed_noise(ci_low: float, ci_high: float) -> bool:
    """Does a paired difference's interval exclude 0? (False without an interval: NaN bounds.)"""
    return bool(ci_low > 0 or ci_high < 0)


def paired_differences(runs: pd.DataFrame, baselines: list[str] | None = None, metric: str = "top1") -> pd.DataFrame:
    """Each configuration minus each baseline configuration, over the seeds both finished: n, mean,
    95% t-interval, sd, the per-seed differences and on how many seeds it was ahead. Baselines
    default to :func:`default_baselines`. Where several baselines share a method (static masks at
    densities 0.5, 0.2 and 0.1), a configuration is compared with the one nearest its own density only:
    SViTE at 0.1 minus static at 0.5 says nothing about either."""
    runs = runs if "label" in runs else with_labels(runs)
    order = list(groups(runs, metric)["label"])
    by_label = {label: _per_seed(g, metric) for label, g in runs.groupby("label", sort=False)}
    by_label = {label: by_label[label] for label in order}
    rows = []
    bases = [b for b in (baselines if baselines is not None else default_baselines(runs)) if b in by_label]
    compared_with = _baselines_of(runs, list(by_label), bases)
    for base in bases:
        b = by_label[base]
        for label, a in by_label.items():
            if label in bases or base not in compared_with[label]:  # baselines are not compared with each other
                continue
            shared = a.index.intersection(b.index)
            if not len(shared):
                continue
            d = (a[shared] - b[shared]).to_numpy(dtype=float)
            mean, low, high = t_interval(d)
            rows.append({"label": label, "baseline": base, "n": len(d), "seeds": ",".join(map(str, shared)),
                         "mean_diff": mean, "ci_low": low, "ci_high": high,
                         "sd": float(np.std(d, ddof=1)) if len(d) > 1 else math.nan,
                         "per_seed": " / ".join(f"{v:+.2f}" for v in d), "ahead": f"{int((d > 0).sum())} of {len(d)}"})
    return pd.DataFrame(rows, columns=DIFF_COLUMNS)


def _baselines_of(runs: pd.DataFrame, labels: list[str], bases: list[str]) -> dict[str, set[str]]:
    """``label -> the baselines it is compared with``: every baseline whose method no other baseline has,
    and of those sharing a method, the one nearest the label's density (the first of equals)."""
    density = runs.groupby("label", sort=False)["density"].median()
    method = runs.groupby("label", sort=False)["method_label"].first()
    shared: dict[str, list[str]] = {}
    for b in bases:
        shared.setdefault(str(method[b]), []).append(b)
    out: dict[str, set[str]] = {}
    for label in labels:
        out[label] = set()
        for same in shared.values():
            if len(same) == 1 or pd.isna(density.get(label)):
                out[label] |= set(same)
                continue
            gaps = [abs(float(density[b]) - float(density[label])) if pd.notna(density[b]) else math.inf
                    for b in same]
            out[label].add(same[int(np.argmin(gaps))])
    return out


def default_baselines(runs: pd.DataFrame) -> list[str]:
    """The configurations every other one is compared with by default: dense and static runs
    (without a token selector), in that order."""
    runs = runs if "label" in runs else with_labels(runs)
    out: list[str] = []
    for method in ("dense", "static"):
        picked = runs[(runs["method_label"] == method) & (runs["status"] == "finished")]
        out += [str(label) for label in picked["label"].drop_duplicates()]
    return out


def pareto_front(x: Any, y: Any) -> np.ndarray:
    """Which points no other point beats: no one with cost ``x`` at most as high and accuracy ``y`` at
    least as high, one of them strictly. NaN points are never on the front."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    front = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (x <= x[i]) & (y >= y[i]) & ((x < x[i]) | (y > y[i]))
        front[i] = not others.any()
    return front
