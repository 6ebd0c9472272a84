"""Plotly figure builders (pure: tables/arrays in, ``go.Figure`` out) and image overlays.

Every figure keeps plotly's toolbar, whose camera button downloads it as PNG (``PLOTLY_CONFIG``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

PLOTLY_CONFIG = {
    "displaylogo": False,
    "displayModeBar": True,
    "toImageButtonOptions": {"format": "png", "scale": 2},
}
BLOCK_COLORS = {"patch": "#8c564b", "qkv": "#1f77b4", "proj": "#17becf", "fc1": "#ff7f0e", "fc2": "#d62728",
                "head": "#9467bd", "other": "#7f7f7f"}
KEPT_SCALE = [[0.0, "#f2f2f2"], [1.0, "#1f3b73"]]  # pruned light, kept dark


#: Square image-like panels (the model's view, per-patch heatmaps): figure height and margins, normal and
#: talk mode. The panel's side is height - top - bottom (310 px normally, 540 px in talk mode), and the
#: horizontal colour bar sits right under it, as long as the panel. Talk mode: a panel row fits the first
#: screen at 1920×1080 under the header and the page's sentence.
PANEL = {"normal": {"height": 440, "t": 60, "b": 70}, "talk": {"height": 700, "t": 76, "b": 84}}
TALK_FONT, TALK_TITLE_FONT = 20, 26


def _layout(fig: go.Figure, title: str, height: int = 380, **kw) -> go.Figure:
    # The title sits below the toolbar row (top 30 px), so the two never overlap in narrow columns; legends
    # go to the right of the plot (outside the data, clear of the axis titles; plotly widens the margin).
    fig.update_layout(title={"text": title, "x": 0.0, "xanchor": "left", "y": 1 - 45 / height, "yanchor": "middle",
                             "yref": "container"},
                      height=height, margin={"l": 50, "r": 20, "t": 70, "b": 40},
                      legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"}, **kw)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _panel(fig: go.Figure, title: str, mode: str = "normal") -> go.Figure:
    """Lay out a square image-like panel; its colour bar (if any) horizontal, under it, as long as it."""
    spec = PANEL[mode]
    side = spec["height"] - spec["t"] - spec["b"]
    _layout(fig, title, height=spec["height"], meta={"kind": "panel"})
    fig.update_layout(margin={"l": 10, "r": 10, "t": spec["t"], "b": spec["b"]},
                      title={"y": 1 - (spec["t"] * 0.55) / spec["height"]})
    fig.update_traces(selector={"type": "heatmap"},
                      colorbar={"orientation": "h", "x": 0.5, "xanchor": "center", "y": -0.03, "yanchor": "top",
                                "lenmode": "pixels", "len": int(0.8 * side), "thickness": 14 if mode == "normal" else 22,
                                "title": {"side": "top"}})
    return fig


def talk_layout(fig: go.Figure) -> go.Figure:
    """Talk mode: larger fonts, taller figures, margins that keep axis titles whole, panels >= 500 px."""
    fig.update_layout(font={"size": TALK_FONT}, title_font={"size": TALK_TITLE_FONT}, template="plotly_white")
    meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
    if meta.get("kind") == "panel":
        return _panel(fig, fig.layout.title.text, "talk")
    height = int(meta.get("talk_height") or round((fig.layout.height or 380) * 1.35))
    top = int(meta.get("talk_top") or 100)
    if meta.get("kind") == "grid":  # subplot titles and labels: annotations, which keep their own font size
        fig.update_annotations(font_size=TALK_FONT - 2)
    fig.update_layout(height=height, margin={"l": 80, "r": 30, "t": top, "b": 70} if top == 100 else
                      {"l": 10, "r": 10, "t": top, "b": 10}, title={"y": 1 - 55 / height})
    fig.update_xaxes(automargin=True, title_standoff=14)
    fig.update_yaxes(automargin=True, title_standoff=14)
    return fig


# ----------------------------------------------------------------------------------------------
# layer density
def density_by_stage(table: pd.DataFrame) -> go.Figure:
    """Density of every sparsified weight, grouped by depth (x) and coloured by block type."""
    fig = go.Figure()
    stages = list(dict.fromkeys(table["stage"]))
    for kind, part in table.groupby("block_type", sort=False):
        fig.add_trace(go.Bar(x=part["stage"], y=part["density"], name=kind, marker_color=BLOCK_COLORS.get(kind),
                             customdata=np.stack([part["layer"], part["shape"], part["nonzeros"]], axis=1),
                             hovertemplate="%{customdata[0]} (%{customdata[1]}): %{y:.4f}, "
                                           "%{customdata[2]:,} kept<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(categoryorder="array", categoryarray=stages, title="depth")
    fig.update_yaxes(range=[0, 1.05], title="density (kept fraction)")
    return _layout(fig, "Density per layer, by depth and block type")


def density_by_type(grouped: pd.DataFrame) -> go.Figure:
    """Weighted density per block type (qkv/proj/fc1/fc2/patch/head)."""
    fig = go.Figure(go.Bar(x=grouped["block_type"], y=grouped["density"],
                           marker_color=[BLOCK_COLORS.get(t, "#7f7f7f") for t in grouped["block_type"]],
                           text=[f"{d:.3f}" for d in grouped["density"]], textposition="outside",
                           customdata=np.stack([grouped["nonzeros"], grouped["numel"]], axis=1),
                           hovertemplate="%{x}: %{y:.4f}<br>%{customdata[0]:,} of %{customdata[1]:,}<extra></extra>"))
    fig.update_yaxes(range=[0, 1.15], title="density")
    return _layout(fig, "Density by block type (all blocks together)", height=320)


def mask_heatmap(matrix: np.ndarray, title: str, downsampled: bool = False) -> go.Figure:
    """A mask (1 kept, 0 pruned), or tile densities when downsampled."""
    fig = go.Figure(go.Heatmap(z=matrix, zmin=0, zmax=1, colorscale=KEPT_SCALE,
                               colorbar={"title": "tile density" if downsampled else "kept"},
                               hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title="output (row)" + (" tiles" if downsampled else ""))
    fig.update_xaxes(title="input (column)" + (" tiles" if downsampled else ""))
    return _layout(fig, title, height=420)


def unit_grid(alive: np.ndarray, title: str, x_title: str = "head", y_title: str = "block") -> go.Figure:
    """Blocks × heads alive grid (1 alive, 0 pruned)."""
    fig = go.Figure(go.Heatmap(z=alive.astype(float), zmin=0, zmax=1, colorscale=KEPT_SCALE, xgap=2, ygap=2,
                               showscale=False, hovertemplate=f"{y_title} %{{y}}, {x_title} %{{x}}: %{{z}}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title=y_title, dtick=1)
    fig.update_xaxes(title=x_title, dtick=1)
    return _layout(fig, title, height=max(220, 40 * alive.shape[0] + 100))


def neuron_bars(neurons: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Bar(x=[f"block {b}" for b in neurons["block"]], y=neurons["alive"] / neurons["total"],
                           text=[f"{a}/{t}" for a, t in zip(neurons["alive"], neurons["total"], strict=True)],
                           textposition="outside", marker_color=BLOCK_COLORS["fc1"]))
    fig.update_yaxes(range=[0, 1.15], title="MLP neurons alive")
    return _layout(fig, "MLP neurons alive per block", height=320)


# ----------------------------------------------------------------------------------------------
# mask evolution
def evolution_lines(evo: pd.DataFrame, by: str = "layer") -> go.Figure:
    """Density per layer (or per block type, weighted) across the snapshots."""
    if by == "block_type":
        evo = evo.groupby(["snapshot", "step", "block_type"], sort=False)[["nonzeros", "numel"]].sum().reset_index()
        evo["density"] = evo["nonzeros"] / evo["numel"]
    fig = go.Figure()
    for name, part in evo.groupby(by, sort=False):
        fig.add_trace(go.Scatter(x=part["step"], y=part["density"], name=str(name), mode="lines+markers",
                                 line={"color": BLOCK_COLORS.get(str(name))} if by == "block_type" else None,
                                 customdata=part["snapshot"],
                                 hovertemplate=f"{name}<br>step %{{x}} (snapshot #%{{customdata}}): %{{y:.4f}}"
                                               "<extra></extra>"))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="density", range=[0, 1.05])
    return _layout(fig, f"Density per {'block type' if by == 'block_type' else 'layer'} across snapshots", height=420)


def fired_lines(fired: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=fired["step"], y=fired["density"], name="density (active now)", mode="lines+markers"))
    fig.add_trace(go.Scatter(x=fired["step"], y=fired["fired"], name="fired (ever active)", mode="lines+markers"))
    fig.update_yaxes(title="fraction of sparsified weights", rangemode="tozero")
    fig.update_xaxes(title="step")
    return _layout(fig, "Exploration: ever-active (fired) weights vs active weights", height=340)


def distance_heatmap(dist: np.ndarray, labels: Sequence[str], metric: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=dist, x=list(labels), y=list(labels), colorscale="Viridis", zmin=0,
                               colorbar={"title": metric},
                               hovertemplate="%{y} vs %{x}: %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"{metric.capitalize()} distance between snapshots", height=460)


def churn_bars(churn: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    fig.add_trace(go.Bar(x=churn["step"], y=churn["grown"], name="grown", marker_color="#2ca02c"))
    fig.add_trace(go.Bar(x=churn["step"], y=-churn["pruned"], name="pruned", marker_color="#d62728",
                         customdata=churn["pruned"], hovertemplate="step %{x}: %{customdata} pruned<extra></extra>"))
    fig.update_layout(barmode="relative")
    fig.update_yaxes(title="weights: grown ↑ pruned ↓")
    fig.update_xaxes(title="step of the update")
    return _layout(fig, "Churn: weights grown and pruned at each update", height=340)


def young_pruning_lines(young: pd.DataFrame) -> go.Figure:
    """The share of each update's pruned weights grown at the update before, beside what a prune blind to
    a weight's age would give (the young weights' share of the active ones)."""
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=young["step"], y=young["young_share_of_pruned"], mode="lines+markers",
                             name="pruned that were grown at the update before"))
    fig.add_trace(go.Scatter(x=young["step"], y=young["young_share_of_active"], mode="lines+markers",
                             name="if age did not matter (their share of active)", line={"dash": "dot"}))
    fig.update_yaxes(title="share of pruned weights", range=[0, 1.05])
    fig.update_xaxes(title="step of the update")
    return _layout(fig, "Does each update undo the one before?", height=340)


def head_timeline(heads: pd.DataFrame, title: str = "Head survival: block × head across snapshots") -> go.Figure:
    """Every head (rows: block·head) alive or pruned at every snapshot (columns); ``alive`` may also be the
    share of a head's weights kept (unstructured runs)."""
    heads = heads.sort_values(["block", "head", "snapshot"])
    rows = [f"block {b} · head {h}" for b, h in heads[["block", "head"]].drop_duplicates().itertuples(index=False)]
    snaps = sorted(heads["snapshot"].unique())
    z = heads.pivot_table(index=["block", "head"], columns="snapshot", values="alive", aggfunc="first").astype(float)
    fig = go.Figure(go.Heatmap(z=z.values, x=[f"#{s}" for s in snaps], y=rows, zmin=0, zmax=1, colorscale=KEPT_SCALE,
                               showscale=False, xgap=1, ygap=1,
                               hovertemplate="%{y} at snapshot %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title="snapshot")
    return _layout(fig, title, height=max(300, 14 * len(rows) + 120))


def neuron_lines(neurons: pd.DataFrame) -> go.Figure:
    # axis titles, not subplot titles: those sit where the figure's title is and ran into it
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12)
    for b, part in neurons.groupby("block"):
        fig.add_trace(go.Scatter(x=part["step"], y=part["fraction_alive"], name=f"block {b}", legendgroup=str(b),
                                 mode="lines+markers"), row=1, col=1)
        fig.add_trace(go.Scatter(x=part["step"], y=part["survived"], name=f"block {b}", legendgroup=str(b),
                                 showlegend=False, mode="lines+markers"), row=1, col=2)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_yaxes(title="neurons alive (share)", row=1, col=1)
    fig.update_yaxes(title="initial neurons still alive", row=1, col=2)
    fig.update_xaxes(title="step")
    return _layout(fig, "MLP neuron survival timeline", height=340)


# ----------------------------------------------------------------------------------------------
# compare
def density_compare(diff: pd.DataFrame, label_a: str, label_b: str) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.6, 0.4], vertical_spacing=0.08)
    fig.add_trace(go.Bar(x=diff["layer"], y=diff["density_a"], name=label_a), row=1, col=1)
    fig.add_trace(go.Bar(x=diff["layer"], y=diff["density_b"], name=label_b), row=1, col=1)
    fig.add_trace(go.Bar(x=diff["layer"], y=diff["density_diff"], name="B − A", showlegend=False,
                         marker_color=["#2ca02c" if v >= 0 else "#d62728" for v in diff["density_diff"]]), row=2, col=1)
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="density", row=1, col=1)
    fig.update_yaxes(title="B − A", row=2, col=1)
    return _layout(fig, f"Per-layer density, and the difference {label_b} − {label_a}", height=520)


def diff_counts(diff: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for col, color in (("kept", "#1f3b73"), ("grown", "#2ca02c"), ("pruned", "#d62728")):
        fig.add_trace(go.Bar(x=diff["layer"], y=diff[col], name=col, marker_color=color))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="weights")
    return _layout(fig, "Mask diff per layer: kept in both, grown (B only), pruned (A only)", height=380)


def diff_heatmap(matrix: np.ndarray, title: str, downsampled: bool = False) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=matrix, zmin=-1, zmax=1, zmid=0, colorscale=[[0, "#d62728"], [0.5, "#f7f7f7"],
                                                                             [1, "#2ca02c"]],
                               colorbar={"title": "net grown" if downsampled else "+1 grown / −1 pruned"},
                               hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title, height=420)


def side_by_side(values: dict[str, Sequence[float]], labels: Sequence[str], title: str, y_title: str) -> go.Figure:
    """Grouped bars: one group per metric name, one bar per checkpoint label."""
    fig = go.Figure()
    for i, label in enumerate(labels):
        fig.add_trace(go.Bar(x=list(values), y=[v[i] for v in values.values()], name=label))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title=y_title)
    return _layout(fig, title, height=340)


# ----------------------------------------------------------------------------------------------
# overview and retrain
def flops_bars(flops: dict[str, float]) -> go.Figure:
    x = ["dense architecture", "this checkpoint"]
    y = [flops["dense"] / 1e6, flops["sparse"] / 1e6]
    fig = go.Figure(go.Bar(x=x, y=y, text=[f"{v:,.1f} M" for v in y], textposition="outside",
                           marker_color=["#7f7f7f", "#1f77b4"]))
    fig.update_yaxes(title="MFLOPs per image", rangemode="tozero")
    return _layout(fig, f"FLOPs per image: {flops['ratio']:.1%} of dense", height=320)


def speed_bars(speed: pd.DataFrame) -> go.Figure:
    fig = go.Figure(go.Bar(x=speed["model"], y=speed["images_per_s"], text=[f"{v:,.0f}/s" for v in speed["images_per_s"]],
                           textposition="outside", marker_color=["#7f7f7f", "#1f77b4", "#2ca02c"][:len(speed)]))
    fig.update_yaxes(title="images / s (measured, CPU)", rangemode="tozero")
    return _layout(fig, f"Measured throughput, batch {int(speed['batch_size'].iloc[0])}", height=320)


def training_curves(metrics: pd.DataFrame) -> go.Figure:
    """Loss by step and validation top-1 by epoch from a run's metrics.jsonl records."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12)  # axis titles: subplot titles hit the title
    steps = metrics[metrics.get("kind") == "step"] if "kind" in metrics else metrics.iloc[0:0]
    epochs = metrics[metrics.get("kind") == "epoch"] if "kind" in metrics else metrics.iloc[0:0]
    if len(steps) and "loss" in steps:
        fig.add_trace(go.Scatter(x=steps["step"], y=steps["loss"], mode="lines", name="loss (step)"), row=1, col=1)
    if len(epochs) and "train_loss" in epochs:
        fig.add_trace(go.Scatter(x=epochs["step"], y=epochs["train_loss"], mode="markers+lines",
                                 name="loss (epoch mean)"), row=1, col=1)
    if len(epochs) and "val_top1" in epochs:
        fig.add_trace(go.Scatter(x=epochs["epoch"], y=epochs["val_top1"], mode="markers+lines", name="val top-1"),
                      row=1, col=2)
    fig.update_xaxes(title="step", row=1, col=1)
    fig.update_xaxes(title="epoch", row=1, col=2)
    fig.update_yaxes(title="training loss", row=1, col=1)
    fig.update_yaxes(title="validation top-1 (%)", row=1, col=2)
    return _layout(fig, "Training curves", height=340)


# ----------------------------------------------------------------------------------------------
# images and patch maps
def upscale_factor(size: int, target: int = 320) -> int:
    return max(1, target // max(1, size))


def _hatch(h: int, w: int, period: int) -> np.ndarray:
    """A diagonal hatch, H×W in {-1, 0, +1}: +1 white strokes, -1 black strokes beside them, 0 elsewhere.
    Pairs of a light and a dark stroke stay visible on any image, black, white or grey."""
    d = (np.arange(h)[:, None] + np.arange(w)[None, :]) % period
    width = max(1, period // 6)
    return np.where(d < width, 1, np.where(d < 2 * width, -1, 0)).astype(np.int8)


def overlay_patches(rgb: np.ndarray, patch: int, kept: np.ndarray | None = None, outline: np.ndarray | None = None,
                    target: int = 320) -> np.ndarray:
    """The model's view of an image, upscaled, with the patch grid drawn. Dropped patches are faded to a
    dark grey *and hatched* with paired white/black diagonal strokes, so kept and dropped stay apart on any
    image (a dark photo, the grey demo clutter, a white page); kept patches show their own pixels.
    ``outline`` draws a gold frame around the object's patches (demo data)."""
    f = upscale_factor(rgb.shape[0], target)
    img = np.repeat(np.repeat(rgb.astype(np.float32), f, axis=0), f, axis=1)
    p = patch * f
    h, w = img.shape[:2]
    if kept is not None:
        drop = ~np.repeat(np.repeat(np.asarray(kept, bool), p, axis=0), p, axis=1)
        grey = img.mean(axis=2, keepdims=True)
        faded = 40.0 + 0.35 * grey
        hatch = _hatch(h, w, max(6, p // 2))[..., None]
        faded = np.where(hatch > 0, 235.0, np.where(hatch < 0, 0.0, faded))
        img = np.where(drop[..., None], faded, img)
    lw = 2 if f >= 4 else 1
    for k in range(0, h, p):
        img[k:k + lw, :, :] = 255.0
    for k in range(0, w, p):
        img[:, k:k + lw, :] = 255.0
    if outline is not None:
        obj = np.asarray(outline, bool)
        for r, c in zip(*np.nonzero(obj), strict=True):
            y0, x0 = r * p, c * p
            img[y0:y0 + p, x0:x0 + 2] = img[y0:y0 + p, x0 + p - 2:x0 + p] = (255, 215, 0)
            img[y0:y0 + 2, x0:x0 + p] = img[y0 + p - 2:y0 + p, x0:x0 + p] = (255, 215, 0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def image_figure(rgb: np.ndarray, title: str) -> go.Figure:
    fig = go.Figure(go.Image(z=rgb, hoverinfo="skip"))
    fig.update_xaxes(visible=False, constrain="domain")
    fig.update_yaxes(visible=False, constrain="domain")
    return _panel(fig, title)


def patch_heatmap(grid: np.ndarray, title: str, colorscale: str = "Viridis", zmid: float | None = None,
                  colorbar: str = "") -> go.Figure:
    """A per-patch value (score, attribution, keep frequency) over the patch grid, in image layout, as a
    square panel the size of the image panel beside it (row/column in the hover)."""
    fig = go.Figure(go.Heatmap(z=np.asarray(grid, dtype=float), colorscale=colorscale, zmid=zmid,
                               colorbar={"title": {"text": colorbar}}, xgap=1, ygap=1,
                               hovertemplate="patch row %{y}, col %{x}: %{z:.4g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", showticklabels=False,
                     showgrid=False, zeroline=False)
    fig.update_xaxes(constrain="domain", showticklabels=False, showgrid=False, zeroline=False)
    return _panel(fig, title)


AGREEMENT_COLORS = {"selector": "#1f77b4", "best fixed mask": "#8c564b", "centre mask": "#bcbd22",
                    "chance": "#b0b0b0"}


def agreement_bars(this_image: dict[str, float], over_images: pd.DataFrame | None, k: int, n: int) -> go.Figure:
    """IoU of the kept set with the top-k attributed patches, beside the numbers it must beat: the best
    fixed mask, the centre mask and chance, for this image and (if given) averaged over demo images
    (``over_images``: ``agreement_over_images`` columns; error bars = one standard deviation)."""
    names = list(AGREEMENT_COLORS)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[this_image.get(m, np.nan) for m in names], name="this image",
                         marker_color=[AGREEMENT_COLORS[m] for m in names],
                         text=[f"{this_image[m]:.2f}" if m in this_image else "" for m in names],
                         textposition="outside", hovertemplate="this image · %{x}: %{y:.3f}<extra></extra>"))
    if over_images is not None and len(over_images):
        cols = {"selector": "selector", "best fixed mask": "best_fixed_mask", "centre mask": "centre_mask",
                "chance": "chance"}
        mean = [float(over_images[cols[m]].mean()) for m in names]
        std = [float(over_images[cols[m]].std()) if m != "chance" else 0.0 for m in names]
        fig.add_trace(go.Bar(x=names, y=mean, name=f"mean of {len(over_images)} demo images",
                             marker={"color": [AGREEMENT_COLORS[m] for m in names], "pattern": {"shape": "/"}},
                             error_y={"type": "data", "array": std, "visible": True},
                             hovertemplate="mean · %{x}: %{y:.3f}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.12], title=f"IoU with top-{k} attributed")
    return _layout(fig, f"Agreement: kept {k} of {n} vs top-{k} attributed", height=400)
