"""Figures of a sweep (pure: tables in, ``go.Figure`` out): the paper's accuracy-against-cost plots
from the user's own runs, and learning curves with every topology update marked.

Honest by construction: a chance line beside every accuracy axis, seeds as points beside their mean
and its error bar (std over seeds), the Pareto frontier over configuration means only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sparsity_core.runs import pareto_front

from .plots import _layout

#: One colour per method, the same on every figure (the paper's methods first).
METHOD_COLORS = {"dense": "#444444", "static": "#8c564b", "SViTE": "#1f77b4", "SViTE+": "#2ca02c",
                 "S²ViTE": "#d62728", "one-shot": "#9467bd"}
_SPARE = ["#ff7f0e", "#17becf", "#bcbd22", "#e377c2", "#7f7f7f"]
X_TITLES = {"density": "weight density (fraction of sparsified weights kept)",
            "flops_pct": "FLOPs per image (% of the dense model)"}
METRIC_TITLES = {"top1": "validation top-1 (%)", "top5": "validation top-5 (%)"}


def method_color(method: str) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _SPARE[sum(map(ord, method)) % len(_SPARE)]


def _chance(fig: go.Figure, chance: float | None, **where: Any) -> None:
    if chance is not None and np.isfinite(chance):
        fig.add_hline(y=chance, line={"dash": "dot", "color": "#888", "width": 1.5}, annotation_text=f"chance {chance:g}%",
                      annotation_position="bottom right", annotation_font_color="#666", **where)


def accuracy_vs(runs: pd.DataFrame, groups: pd.DataFrame, x: str = "density", metric: str = "top1",
                chance: float | None = None) -> go.Figure:
    """The paper's plot from these runs: ``metric`` against density or FLOPs; each seed a small point,
    each configuration's mean a large one with its std over seeds as error bar, the frontier of the
    means that nothing beats on both axes dashed."""
    fig = go.Figure()
    done = runs[(runs["status"] == "finished") & runs[metric].notna() & runs[x].notna()]
    means = done.groupby("label", sort=False).agg(x=(x, "mean"), y=(metric, "mean"), n=(metric, "size"),
                                                  method=("method_label", "first")).reset_index()
    stds = groups.set_index("label")["std"] if len(groups) else pd.Series(dtype=float)
    means["std"] = means["label"].map(stds)
    methods = sorted(done["method_label"].unique())
    span = float(done[x].max() - done[x].min()) if len(done) else 0.0
    for k, (method, part) in enumerate(done.groupby("method_label", sort=True)):
        color = method_color(method)
        shift = (k - (len(methods) - 1) / 2) * 0.012 * (span or 1.0)  # methods at one density side by side
        fig.add_trace(go.Scatter(x=part[x] + shift, y=part[metric], mode="markers", name=f"{method} (seeds)",
                                 legendgroup=method, showlegend=False,
                                 marker={"color": color, "size": 7, "opacity": 0.5},
                                 customdata=np.stack([part["label"], part["seed"].astype(str), part[x]], axis=1),
                                 hovertemplate="%{customdata[0]}, seed %{customdata[1]}<br>%{customdata[2]:.3f}: "
                                               "%{y:.2f}%<extra></extra>"))
        m = means[means["method"] == method]
        fig.add_trace(go.Scatter(x=m["x"] + shift, y=m["y"], mode="markers", name=method, legendgroup=method,
                                 marker={"color": color, "size": 14, "line": {"color": "black", "width": 1}},
                                 error_y={"type": "data", "array": m["std"].fillna(0), "thickness": 1.5, "width": 6},
                                 customdata=np.stack([m["label"], m["n"], m["std"], m["x"]], axis=1),
                                 hovertemplate="%{customdata[0]}: mean %{y:.2f}% ± %{customdata[2]:.2f} (std) over "
                                               "%{customdata[1]} seeds<br>%{customdata[3]:.3f}<extra></extra>"))
    front = means[pareto_front(means["x"], means["y"])].sort_values("x")
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front["x"], y=front["y"], mode="lines", name="Pareto frontier (means)",
                                 line={"dash": "dash", "color": "#555", "width": 1.5}, hoverinfo="skip"))
    _chance(fig, chance)
    fig.update_xaxes(title=X_TITLES.get(x, x))
    fig.update_yaxes(title=METRIC_TITLES.get(metric, metric))
    what = "density" if x == "density" else "FLOPs"
    _layout(fig, f"Top-1 against {what}: {len(done)} runs, {len(means)} configurations" if metric == "top1" else
            f"{metric} against {what}", height=460)
    fig.update_layout(legend={"orientation": "h", "x": 0.0, "xanchor": "left", "y": -0.24, "yanchor": "top"},
                      margin={"b": 110})  # below the plot: two plots side by side leave no room at the right
    return fig


# ----------------------------------------------------------------------------------------------
# learning curves
PANELS = (("val_top1", "validation top-1 (%)"), ("loss", "training loss"), ("lr", "learning rate"),
          ("fired", "fired (ever-active) rate"))


def _series(curves: Any, what: str, x: str) -> pd.DataFrame:
    """(x, y) of one panel from a run's curves: per-epoch top-1, per-step loss and LR (per-epoch
    values when no step was logged), fired rate at every snapshot."""
    if what == "val_top1":
        src, col = curves.epochs, "val_top1"
    elif what == "fired":
        src, col = curves.snapshots, "fired"
    else:
        src, col = curves.steps, what
        if src.empty or src[col].isna().all():
            src, col = curves.epochs, ("train_loss" if what == "loss" else what)
    if src.empty or col not in src or x not in src:
        return pd.DataFrame(columns=["x", "y"])
    out = pd.DataFrame({"x": pd.to_numeric(src[x], errors="coerce"), "y": pd.to_numeric(src[col], errors="coerce")})
    return out.dropna().drop_duplicates("x", keep="last").sort_values("x")


def _update_hover(ev: pd.DataFrame) -> list[str]:
    out = []
    for r in ev.itertuples():
        moved = f"{int(r.moved):,} weights moved" if pd.notna(r.moved) else "weights moved: not recorded"
        share = f" ({r.moved_share:.1%} of those kept)" if pd.notna(getattr(r, "moved_share", np.nan)) else ""
        rate = f"prune rate {r.rate:.3f}" if pd.notna(r.rate) else "prune rate not recorded"
        out.append(f"topology update at step {int(r.step)} (epoch {r.epoch:.2f})<br>{rate}<br>{moved}{share}")
    return out


def learning_curves(items: list[dict[str, Any]], x: str = "step", chance: float | None = None) -> go.Figure:
    """Validation top-1, training loss, learning rate and fired rate against ``x`` ("step" or
    "epoch") for one run or several: colour by method, one line per seed (thin when its configuration
    has several, their mean bold), every topology update a triangle on the top-1 panel's floor (hover:
    step, prune rate, weights moved) and, for one or two runs, a dotted line through every panel."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in PANELS], vertical_spacing=0.13,
                        horizontal_spacing=0.09, shared_xaxes="all")
    sizes = pd.Series([it["label"] for it in items]).value_counts()
    dash = _dashes(items)
    shown: set[str] = set()
    for k, (what, _) in enumerate(PANELS):
        row, col = k // 2 + 1, k % 2 + 1
        by_label: dict[str, list[pd.DataFrame]] = {}
        for it in items:
            s = _series(it["curves"], what, x)
            if s.empty:
                continue
            many = sizes[it["label"]] > 1
            color = method_color(it["method"])
            legend = it["label"] not in shown and not many
            shown |= {it["label"]} if legend else set()
            fig.add_trace(go.Scatter(x=s["x"], y=s["y"], mode="lines+markers" if len(s) < 40 else "lines",
                                     name=_name(it), legendgroup=it["label"], showlegend=legend,
                                     line={"color": color, "width": 1 if many else 2, "dash": dash[it["label"]]},
                                     opacity=0.4 if many else 1.0,
                                     marker={"size": 4},
                                     hovertemplate=f"{it['name']}<br>{x} %{{x}}: %{{y:.4g}}<extra></extra>"),
                          row=row, col=col)
            if many:
                by_label.setdefault(it["label"], []).append(s.set_index("x")["y"])
        for label, parts in by_label.items():
            first = next(it for it in items if it["label"] == label)
            mean = pd.concat(parts, axis=1).mean(axis=1, skipna=True).sort_index()
            legend = label not in shown
            shown |= {label}
            fig.add_trace(go.Scatter(x=mean.index, y=mean.to_numpy(), mode="lines", name=_name(first),
                                     legendgroup=label, showlegend=legend,
                                     line={"color": method_color(first["method"]), "width": 3.5, "dash": dash[label]},
                                     hovertemplate=f"{label}: mean of {len(parts)} seeds<br>{x} %{{x}}: %{{y:.4g}}"
                                                   "<extra></extra>"), row=row, col=col)
    _mark_updates(fig, items, x)
    _chance(fig, chance, row=1, col=1)
    fig.update_xaxes(title=x, row=2)
    fig.update_xaxes(showticklabels=True)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(exponentformat="e", rangemode="tozero", row=2, col=1)
    n = len(items)
    title = f"Learning curves: {items[0]['name']}" if n == 1 else f"Learning curves of {n} runs (bold: mean over seeds)"
    _layout(fig, title + "; ▲ = topology update", height=660)
    # room for the subplot titles under the figure's title; one run needs no legend (the title names it)
    fig.update_layout(margin={"t": 100}, showlegend=n > 1)
    return fig


def _dashes(items: list[dict[str, Any]]) -> dict[str, str]:
    """Configurations of one method share its colour and differ by dash (solid, dashed, dotted, ...)."""
    styles = ("solid", "dash", "dot", "dashdot", "longdash")
    out: dict[str, str] = {}
    per_method: dict[str, int] = {}
    for it in items:
        if it["label"] not in out:
            k = per_method.get(it["method"], 0)
            out[it["label"]] = styles[k % len(styles)]
            per_method[it["method"]] = k + 1
    return out


def _name(item: dict[str, Any]) -> str:
    """Legend name: the method, and the configuration when it says more (``SViTE · svite_d0.2``)."""
    label, method = str(item["label"]), str(item["method"])
    return method if label.lower() in (method.lower(), method.lower().replace("²", "2")) else f"{method} · {label}"


def _mark_updates(fig: go.Figure, items: list[dict[str, Any]], x: str) -> None:
    lines = len(items) <= 2
    for it in items:
        ev = it["curves"].events
        if ev.empty or x not in ev:
            continue
        color = method_color(it["method"])
        fig.add_trace(go.Scatter(x=ev[x], y=np.zeros(len(ev)), mode="markers", name="topology update",
                                 legendgroup="updates", showlegend=False, cliponaxis=False,
                                 marker={"symbol": "triangle-up", "size": 11, "color": color,
                                         "line": {"color": "white", "width": 1}},
                                 hovertext=[f"{it['name']}<br>{h}" for h in _update_hover(ev)], hoverinfo="text"),
                      row=1, col=1)
        if lines:
            for value in ev[x]:
                for k in range(len(PANELS)):
                    fig.add_vline(x=float(value), line={"dash": "dot", "color": color, "width": 1}, opacity=0.5,
                                  row=k // 2 + 1, col=k % 2 + 1)
