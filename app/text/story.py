"""One sentence per page, computed from the data the page draws: what a talk says before anyone reads a
table ("SViTE held 50% of the weights and explored 78% of them over 5 updates"). Pure functions of the
loaders' frames, so a test can check a sentence against the numbers it claims."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sparsity_core import runs as core_runs

METHOD_NAMES = {"svite": "SViTE", "s2vite": "S²ViTE", "static": "Static masks", "oneshot": "One-shot pruning",
                "dense": "The dense model", "s2vite-compact": "The compacted S²ViTE model"}


def method_name(doc: Mapping[str, Any]) -> str:
    name = METHOD_NAMES.get(str(doc.get("method")), str(doc.get("method")))
    return name + ("+" if doc.get("token_selector") and name == "SViTE" else "")


def _pct(x: float) -> str:
    """A share as a percentage: whole percents, one decimal below 10% where it matters (5.1%)."""
    return f"{100 * x:.0f}%" if abs(100 * x - round(100 * x)) < 0.05 or x >= 0.1 else f"{100 * x:.1f}%"


def _range(lo: float, hi: float) -> str:
    a, b = _pct(lo), _pct(hi)
    return a if a == b else f"{a[:-1]}–{b}"


def _top1(doc: Mapping[str, Any]) -> str:
    top1 = (doc.get("metrics") or {}).get("val_top1")
    return f"; validation top-1 {top1:.1f}%" if isinstance(top1, (int, float)) else ""


def overview(doc: Mapping[str, Any], hist: pd.DataFrame, flops: Mapping[str, float] | None) -> str:
    """Density held, share explored and updates for sparse runs; heads and neurons for S²ViTE; cost (None:
    a model this app cannot run, whose FLOPs it does not count)."""
    name, density = method_name(doc), float(doc["overall_density"])
    updates = int((hist["event"] == "update").sum()) if "event" in hist else 0
    last = hist.iloc[-1] if len(hist) else pd.Series(dtype=object)
    cost = (f"{flops['sparse'] / 1e6:,.1f} MFLOPs per image ({_pct(flops['ratio'])} of dense)" if flops else
            f"a {doc['model']}, whose FLOPs only its own code can count")
    sel = doc.get("token_selector")
    keeps = f"; its token selector keeps {sel['keep']} of {sel['of']} patches" if sel else ""
    if doc.get("heads"):
        heads = [h for b in doc["heads"] for h in b["alive"]]
        neurons = doc.get("neurons") or []
        alive_n, total_n = sum(n["alive"] for n in neurons), sum(n["total"] for n in neurons)
        ever = (f"; {int(last['fired_heads'])} heads and {int(last['fired_neurons'])} neurons were alive at some point"
                if "fired_heads" in last and pd.notna(last.get("fired_heads")) else "")
        return (f"{name} kept {sum(heads)} of {len(heads)} attention heads and {alive_n:,} of {total_n:,} MLP neurons "
                f"over {updates} updates{ever}: {cost}{_top1(doc)}.")
    if "fired_density" in last and pd.notna(last.get("fired_density")) and doc.get("method") != "dense":
        return (f"{name} held {_pct(density)} of the weights and explored {_pct(float(last['fired_density']))} of "
                f"them over {updates} updates{keeps}: {cost}{_top1(doc)}.")
    if density >= 0.9999:
        return f"{name} uses all {int(doc['params']):,} of its weights{keeps}: {cost}{_top1(doc)}."
    return f"{name} keeps {_pct(density)} of its weights{keeps}: {cost}{_top1(doc)}."


def density(table: pd.DataFrame, erk: bool = False) -> str:
    """The overall density and the sparsest and densest layers (``erk``: the budgets were ERK's)."""
    kept, total = int(table["nonzeros"].sum()), int(table["numel"].sum())
    lo, hi = table.loc[table["density"].idxmin()], table.loc[table["density"].idxmax()]
    if float(lo["density"]) == float(hi["density"]):
        return f"All {len(table)} sparsifiable layers keep {_pct(float(lo['density']))} of their weights."
    return (f"The {len(table)} sparsifiable layers keep {_pct(kept / total)} of their {total:,} weights, from "
            f"{_pct(float(lo['density']))} ({lo['layer']}) to {_pct(float(hi['density']))} ({hi['layer']})"
            + (": ERK gives small layers more." if erk else "."))


def evolution(churn: pd.DataFrame, dist: np.ndarray, idx: Sequence[int], metric: str) -> str:
    """How many updates, how much each moved, and how far the final topology is from the first."""
    updates = churn[churn["event"] == "update"]
    far = (f"the final topology is at {metric.capitalize()} distance {dist[0, -1]:.2f} from the first" if len(idx) > 1
           else "")
    if updates.empty:
        return f"No topology update changed the masks; {far}." if far else "No topology update changed the masks."
    steps = f"steps {int(updates['step'].min())}–{int(updates['step'].max())}" if len(updates) > 1 else \
        f"step {int(updates['step'].iloc[0])}"
    moved = _range(float(updates["churn"].min()), float(updates["churn"].max()))
    return (f"{len(updates)} updates ({steps}) each moved {moved} of the active weights; {far}.")


def _pruned(alive: Sequence[bool], probe: pd.DataFrame | None) -> str:
    """What the pruned heads of a block do now, and (with the head probe) what they did while alive."""
    dead = [h for h, a in enumerate(alive) if not a]
    if not dead:
        return ""
    many = len(dead) > 1
    text = (f"; the {len(dead)} pruned heads attend uniformly (q = k = 0): they look at nothing" if many else
            f"; the pruned head {dead[0]} attends uniformly (q = k = 0): it looks at nothing")
    if probe is None or probe.empty:
        return text
    was = {int(h): float(part["iou"].max()) for h, part in probe.groupby("head")
           if int(h) in dead and part["iou"].notna().any()}
    if not was:
        return text + (", and the head probe shows they never were alive" if many else
                       ", and the head probe shows it never was alive")
    h, best = max(was.items(), key=lambda kv: kv[1])
    return text + f"; the head probe shows head {h} looked at the object (IoU up to {best:.2f}) while it was alive"


def heads(block: int, alive: Sequence[bool], frame: pd.DataFrame | None, over: str,
          probe: pd.DataFrame | None = None) -> str:
    """Alive and pruned heads of one block and how their top patches overlap the object, beside chance;
    ``probe``: the block's head-probe IoU per snapshot, to say what the pruned heads did while alive."""
    n, live = len(alive), int(sum(alive))
    who = f"Block {block}: {live} of {n} heads alive" if live < n else f"Block {block}: all {n} heads alive"
    dead = _pruned(alive, probe)
    if frame is None or frame.empty or frame["iou"].notna().sum() == 0:
        return f"{who}{dead}."
    live_rows = frame[frame["alive"] & frame["iou"].notna()]
    best = live_rows.loc[live_rows["iou"].idxmax()]
    return (f"{who}. {over.capitalize()}, their top patches overlap the object by IoU {live_rows['iou'].mean():.2f} "
            f"on average (best: head {int(best['head'])}, {best['iou']:.2f}), where chance gives "
            f"{live_rows['chance'].mean():.2f}{dead}.")


def patches(keep: int, of: int, recall: float | None, agreement: float, chance: float, method: str) -> str:
    """What the selector keeps on this image, against chance."""
    obj = (f" and {_pct(recall)} of the object's patches (chance {_pct(keep / of)})" if recall is not None else "")
    return (f"The token selector keeps {keep} of {of} patches{obj}; its kept set agrees with {method} at IoU "
            f"{agreement:.2f}, where chance gives {chance:.2f}.")


def compare(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy, density and FLOPs of the two checkpoints side by side."""
    parts = []
    for r in rows:
        top1 = f"{r['val_top1']:.1f}% top-1" if isinstance(r.get("val_top1"), (int, float)) else "no recorded accuracy"
        cost = (f"{_pct(float(r['FLOPs vs dense']))} of the dense FLOPs" if r.get("FLOPs vs dense") is not None
                else "FLOPs not counted (not a ViT)")
        parts.append(f"{r['checkpoint']} reaches {top1} at {_pct(float(r['density']))} density and {cost}")
    return "; ".join(parts) + "."


def runs(n_runs: int, groups: pd.DataFrame, diffs: pd.DataFrame) -> str:
    """How many runs and configurations, the best configuration over its seeds, and how far it is from each
    baseline against the seed noise (the 95% interval of the paired difference). When the best is itself a
    baseline (dense usually is), the best of the other configurations too: that is the room's question."""
    done = groups[groups["n"] > 0] if "n" in groups else groups.iloc[0:0]
    if done.empty:
        return f"{n_runs} runs, none finished yet."
    best = done.loc[done["mean"].idxmax()]
    text = f"{n_runs} runs of {len(groups)} configurations. Best: {_config_line(best)}"
    parts = _against_baselines(best, diffs)
    text += ("; " + "; ".join(parts) if parts else "") + "."
    baselines = set(diffs["baseline"])
    others = done[~done["label"].isin(baselines)]
    if best["label"] in baselines and len(others):
        other = others.loc[others["mean"].idxmax()]
        parts = _against_baselines(other, diffs)
        text += f" Best of the others: {_config_line(other)}" + (": " + "; ".join(parts) if parts else "") + "."
    return text


def _config_line(g: pd.Series) -> str:
    spread = (f"± {g['std']:.1f} over {int(g['n'])} seeds" if g["n"] > 1 and pd.notna(g["std"]) else
              f"{int(g['n'])} seed{'s' if g['n'] > 1 else ''}")
    return f"{g['label']}, {g['mean']:.1f}% top-1 ({spread})"


def _against_baselines(g: pd.Series, diffs: pd.DataFrame) -> list[str]:
    parts = []
    for _, d in diffs[diffs["label"] == g["label"]].iterrows():
        if pd.isna(d["ci_low"]):
            parts.append(f"{d['mean_diff']:+.1f} points against {d['baseline']} (too few paired seeds for an interval)")
            continue
        noise = not core_runs.beyond_seed_noise(d["ci_low"], d["ci_high"])
        parts.append(f"{d['mean_diff']:+.1f} points against {d['baseline']} (95% interval {d['ci_low']:+.1f} to "
                     f"{d['ci_high']:+.1f}{': within the seed noise' if noise else ''})")
    return parts
