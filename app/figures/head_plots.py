"""Figures of the Heads page: one map per head (alive beside pruned, the pruned ones marked), each head's
object IoU beside chance, and the same heads across snapshots.

Each head's map gets its own colour range (its own minimum to its own maximum): heads differ by an order
of magnitude in how peaked they are, and one shared scale would leave most maps flat. The hover gives
the values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .plots import _layout

ALIVE_SCALE = "Viridis"
PRUNED_SCALE = [[0.0, "#d9d9d9"], [1.0, "#d9d9d9"]]
PRUNED_COLOR, OBJECT_COLOR, CHANCE_COLOR = "#c0392b", "#ffd700", "#7f7f7f"
#: Height of one row of maps (normal, talk mode) and the room above the first row for the title and
#: two-line subplot titles (so the figure title never runs into them).
GRID_ROW = {"normal": 185, "talk": 265}
GRID_TOP = {"normal": 100, "talk": 150}


def _outline(mask: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """The border of the object's patches as line segments (x, y lists with None between segments)."""
    xs: list[float | None] = []
    ys: list[float | None] = []
    obj = np.pad(np.asarray(mask, bool), 1)
    for r, c in zip(*np.nonzero(obj), strict=True):
        y, x = r - 1, c - 1
        for dr, dc, seg in ((-1, 0, ((x - .5, y - .5), (x + .5, y - .5))), (1, 0, ((x - .5, y + .5), (x + .5, y + .5))),
                            (0, -1, ((x - .5, y - .5), (x - .5, y + .5))), (0, 1, ((x + .5, y - .5), (x + .5, y + .5)))):
            if not obj[r + dr, c + dc]:
                xs += [seg[0][0], seg[1][0], None]
                ys += [seg[0][1], seg[1][1], None]
    return xs, ys


def grid_height(rows: int, mode: str) -> int:
    return GRID_ROW[mode] * rows + GRID_TOP[mode]


def head_grid(maps: np.ndarray, alive: Sequence[bool], labels: Sequence[str], title: str,
              outline: np.ndarray | None = None, image: np.ndarray | None = None, cols: int = 6) -> go.Figure:
    """One map per head (heads × rows × cols), ``cols`` to a row: alive heads in Viridis, pruned ones grey
    and marked in their subplot title and across the map; ``outline`` frames the object's patches;
    ``image`` (the model's view, RGB) comes first, in a panel of its own."""
    first = 1 if image is not None else 0
    n = len(maps)
    cols = max(1, min(cols + first, n + first))
    rows = math.ceil((n + first) / cols)
    titles = (["model input"] if first else []) + list(labels)
    # room between rows for the next row's two-line subplot titles
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, horizontal_spacing=0.015,
                        vertical_spacing=min(0.3, 60 / grid_height(rows, "normal")))
    if image is not None:
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=1)
    for i, ann in enumerate(fig.layout.annotations):  # the subplot titles
        ann.font = {"size": 13, "color": PRUNED_COLOR if first <= i and not alive[i - first] else "#2a3f5f"}
    ox, oy = _outline(outline) if outline is not None and np.asarray(outline).any() else ([], [])
    for h, grid in enumerate(maps):
        r, c = (h + first) // cols + 1, (h + first) % cols + 1
        live = bool(alive[h])
        lo, hi = (float(np.nanmin(grid)), float(np.nanmax(grid))) if np.isfinite(grid).any() else (0.0, 1.0)
        if not live or hi <= lo:  # uniform: one flat colour
            lo, hi = lo - 1.0, lo + 1.0
        fig.add_trace(go.Heatmap(z=grid, zmin=lo, zmax=hi, showscale=False, xgap=1, ygap=1,
                                 colorscale=ALIVE_SCALE if live else PRUNED_SCALE,
                                 hovertemplate=f"{labels[h].split('<br>')[0]} · patch row %{{y}}, col %{{x}}: "
                                               "%{z:.4f}<extra></extra>"), row=r, col=c)
        if ox:
            fig.add_trace(go.Scatter(x=ox, y=oy, mode="lines", line={"color": OBJECT_COLOR, "width": 2},
                                     hoverinfo="skip", showlegend=False), row=r, col=c)
        if not live:
            fig.add_annotation(text="pruned", showarrow=False, font={"color": PRUNED_COLOR, "size": 13},
                               x=(grid.shape[1] - 1) / 2, y=(grid.shape[0] - 1) / 2, row=r, col=c,
                               bgcolor="rgba(255,255,255,0.8)")
    fig.update_xaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, ticks="", showgrid=False, zeroline=False, autorange="reversed",
                     constrain="domain")
    for i in range(1, n + first + 1):
        fig.update_yaxes(scaleanchor=f"x{'' if i == 1 else i}", row=(i - 1) // cols + 1, col=(i - 1) % cols + 1)
    _layout(fig, title, height=grid_height(rows, "normal"),
            meta={"kind": "grid", "talk_height": grid_height(rows, "talk"), "talk_top": GRID_TOP["talk"]})
    fig.update_layout(margin={"l": 10, "r": 10, "t": GRID_TOP["normal"], "b": 10})
    return fig


def head_iou_bars(frame: pd.DataFrame, title: str) -> go.Figure:
    """Per head: IoU of its top patches with the object on this image and (if given) the mean over demo
    images (error bars: one standard deviation), beside chance; pruned heads marked, with no bar.
    Columns: head, alive, iou, chance and optionally iou_mean, iou_sd, chance_mean."""
    names = [f"head {int(h)}" for h in frame["head"]]
    colors = "#1f77b4"  # a pruned head has no bar (uniform: no top patches), only its label
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=frame["iou"], name="this image", marker_color=colors,
                         hovertemplate="%{x}, this image: %{y:.3f}<extra></extra>"))
    if "iou_mean" in frame and frame["iou_mean"].notna().any():
        fig.add_trace(go.Bar(x=names, y=frame["iou_mean"], name=f"mean of {int(frame['images'].max())} demo images",
                             marker={"color": colors, "pattern": {"shape": "/"}},
                             error_y={"type": "data", "array": frame["iou_sd"].fillna(0), "visible": True},
                             hovertemplate="%{x}, mean: %{y:.3f}<extra></extra>"))
        fig.add_trace(go.Scatter(x=names, y=frame["chance_mean"], mode="lines", name="chance (mean)",
                                 line={"color": CHANCE_COLOR, "dash": "dot"}))
    fig.add_trace(go.Scatter(x=names, y=frame["chance"], mode="lines", name="chance (this image)",
                             line={"color": CHANCE_COLOR, "dash": "dash"}))
    for name, live in zip(names, frame["alive"], strict=True):
        if not live:
            fig.add_annotation(x=name, y=0.05, text="pruned", showarrow=False, font={"color": PRUNED_COLOR})
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.05], title="IoU with the object")
    return _layout(fig, title, height=340)


def probe_iou_lines(frame: pd.DataFrame, title: str) -> go.Figure:
    """Per head, the probe's object IoU (mean over its images) at every snapshot, chance dotted; a head
    that was pruned (uniform) at a snapshot has no point there."""
    fig = go.Figure()
    for h, part in frame.groupby("head"):
        never = bool(part["iou"].isna().all())  # pruned (uniform) at every snapshot
        fig.add_trace(go.Scatter(x=part["step"], y=part["iou"], mode="lines+markers",
                                 name=f"head {int(h)}" + (" (never alive)" if never else ""),
                                 customdata=part["snapshot"],
                                 hovertemplate=f"head {int(h)} · step %{{x}} (snapshot #%{{customdata}}): "
                                               "%{y:.3f}<extra></extra>"))
    chance = frame.groupby("step")["chance"].mean()
    fig.add_trace(go.Scatter(x=chance.index, y=chance.to_numpy(), mode="lines", name="chance",
                             line={"color": CHANCE_COLOR, "dash": "dot"}))
    fig.update_xaxes(title="step")
    fig.update_yaxes(range=[0, 1.05], title="IoU with the object")
    return _layout(fig, title, height=360)
