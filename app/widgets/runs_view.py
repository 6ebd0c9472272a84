"""The Runs page's sections: the runs table (filter, CSV, pick runs to open everywhere), the grouped
table with paired differences, the paper's plots and the learning curves. ``pages/runs.py`` calls
them in order; the numbers all come from ``sparsity_core.runs`` (the same as ``svite runs``)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from sparsity_core import runs as core_runs

from ..figures import plots, run_plots
from ..loaders import runs_data
from ..settings import sweep_roots
from ..text import story
from . import ui

#: Columns of the runs table, in order (what a glance needs first), with their headers.
SHOWN = {"name": "run", "label": "configuration", "method_label": "method", "status": "status", "progress": "progress",
         "seed": "seed", "top1": "top-1 %", "top5": "top-5 %", "density": "density", "heads": "heads alive",
         "neurons": "neurons alive", "keep": "keep ratio", "flops_pct": "FLOPs % of dense", "fired": "fired",
         "updates": "topology updates", "epoch": "epoch", "epochs_total": "of epochs", "step": "step",
         "total_steps": "of steps", "params": "params", "kept_params": "params kept", "wall_s": "wall s",
         "error": "last error"}
FILTER_KEYS = ("runs_method", "runs_status", "runs_query", "runs_col", "runs_col_values")
MAX_OVERLAY = 40  # runs whose curves are drawn when none is picked
FOLLOW_S = 5.0  # how often the page looks for changes while a run is running


def chance(table: pd.DataFrame) -> float | None:
    """Chance top-1 (%) when every run has the same number of classes."""
    classes = pd.to_numeric(table["classes"], errors="coerce").dropna().unique()
    return 100.0 / classes[0] if len(classes) == 1 and classes[0] > 0 else None


def header(table: pd.DataFrame, notes: list[str]) -> None:
    st.set_page_config(layout="wide")  # a table of 20 columns and two plots side by side need the width
    st.title("Runs")
    where = " and ".join(f"`{r}`" for r in sweep_roots())
    st.caption(f"{core_runs.status_line(table)} below {where} (any depth; read from headers and logs, never "
               "weights). Set SVITE_RUNS_DIR or `bash scripts/app.sh --runs DIR` to look elsewhere.")
    if notes:
        with st.expander(f"{len(notes)} {'thing' if len(notes) == 1 else 'things'} skipped", expanded=len(notes) <= 3):
            for note in notes:
                st.text(note)


def filters(table: pd.DataFrame) -> pd.DataFrame:
    """Filter by method, status, name, and by any one other column."""
    with ui.controls("Filters"):
        c1, c2, c3 = st.columns([2, 2, 3])
        methods = sorted(table["method_label"].dropna().unique())
        statuses = sorted(table["status"].dropna().unique())
        pick_m = c1.multiselect("Method", methods, key="runs_method", placeholder="all")
        pick_s = c2.multiselect("Status", statuses, key="runs_status", placeholder="all")
        query = c3.text_input("Name contains", key="runs_query", placeholder="e.g. exp_unstructured/ or _s3")
        col = st.selectbox("Filter by another column", ["(none)", *SHOWN.values()], key="runs_col")
        out = table
        if pick_m:
            out = out[out["method_label"].isin(pick_m)]
        if pick_s:
            out = out[out["status"].isin(pick_s)]
        if query:
            out = out[out["name"].str.contains(query, regex=False) | out["label"].str.contains(query, regex=False)]
        if col != "(none)":
            out = _column_filter(out, {v: k for k, v in SHOWN.items()}[col], col)
    return out


def _column_filter(df: pd.DataFrame, field: str, title: str) -> pd.DataFrame:
    values = pd.to_numeric(df[field], errors="coerce")
    if values.notna().any() and df[field].map(lambda v: isinstance(v, str)).sum() == 0:
        lo, hi = float(values.min()), float(values.max())
        if lo == hi:
            return df
        a, b = st.slider(title, lo, hi, (lo, hi), key=f"runs_range_{field}")
        return df[values.between(a, b)]
    options = sorted(df[field].dropna().astype(str).unique())
    picked = st.multiselect(title, options, key="runs_col_values", placeholder="all")
    return df[df[field].astype(str).isin(picked)] if picked else df


def _open(paths: list[str]) -> None:
    """Button callback (runs before the script, so the sidebar picker can still be set)."""
    st.session_state[ui.CKPT_KEY] = paths[0]
    if len(paths) > 1:
        st.session_state["compare_b"] = paths[1]
        st.session_state["compare_mode"] = "Two checkpoints"


def runs_table(shown: pd.DataFrame) -> pd.DataFrame:
    """The runs, one row each; rows picked here are returned (and can be opened on every page)."""
    cols = [c for c in SHOWN if c in ("name", "status") or shown[c].notna().any() and (shown[c] != "").any()]
    view = shown[cols].rename(columns=SHOWN)  # columns no run fills (heads for a sweep without S²ViTE) left out
    config = {"progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
              "top-1 %": st.column_config.NumberColumn(format="%.2f"), "top-5 %": st.column_config.NumberColumn(format="%.2f"),
              "density": st.column_config.NumberColumn(format="%.3f"), "fired": st.column_config.NumberColumn(format="%.3f"),
              "FLOPs % of dense": st.column_config.NumberColumn(format="%.1f"),
              "epoch": st.column_config.NumberColumn(format="%.2f"), "wall s": st.column_config.NumberColumn(format="%.0f")}
    event = st.dataframe(view, hide_index=True, key="runs_table", on_select="rerun", selection_mode="multi-row",
                         column_config=config, height=min(38 + 35 * len(view), 480))
    st.download_button("Download CSV", shown.drop(columns=["group"]).to_csv(index=False).encode(), file_name="runs.csv",
                       mime="text/csv", key="csv_runs", icon=":material/download:", on_click="ignore")
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    picked = shown.iloc[[r for r in rows if r < len(shown)]]
    openable = [p for p in picked["checkpoint"] if p]
    if len(picked):
        c1, c2 = st.columns([2, 3])
        c1.button("Open on every page", key="runs_open", on_click=_open, args=(openable,), disabled=not openable,
                  icon=":material/open_in_new:", help="The first picked run becomes the sidebar's checkpoint (and "
                  "Compare's A), the second Compare's B.")
        c2.caption("Picked: " + ", ".join(picked["name"]) + ("" if len(openable) == len(picked) else
                   " (runs without a checkpoint, e.g. shipped records, show their curves here only)"))
    return picked


def story_of(shown: pd.DataFrame, metric: str = "top1") -> str:
    """The page's one sentence: the best configuration and its paired differences against the baselines."""
    g = core_runs.groups(shown, metric)
    bases = [b for b in core_runs.default_baselines(shown) if b in set(g["label"])]
    return story.runs(len(shown), g, core_runs.paired_differences(shown, bases, metric))


def grouped(shown: pd.DataFrame, metric: str = "top1") -> None:
    """Mean ± std per configuration and the paired differences against the chosen baselines."""
    st.subheader("Grouped by configuration")
    g = core_runs.groups(shown, metric)
    if g.empty:
        st.info("No finished run to group yet.")
        return
    cols = {"label": "configuration", "method_label": "method", "density": "density", "heads": "heads", "neurons":
            "neurons", "keep": "keep", "n": "n", "seeds": "seeds", "mean": "top-1 % mean", "std": "std",
            "per_seed": "per seed", "flops_pct": "FLOPs %", "fired": "fired", "running": "running", "failed": "failed"}
    _table(g[list(cols)].rename(columns=cols), "runs_grouped")
    labels = list(g["label"])
    default = [b for b in core_runs.default_baselines(shown) if b in labels]
    if "runs_baselines" not in st.session_state or not all(b in labels for b in st.session_state["runs_baselines"]):
        st.session_state["runs_baselines"] = default
    with ui.controls("Baselines"):
        bases = st.multiselect("Paired differences against", labels, key="runs_baselines")
    d = core_runs.paired_differences(shown, bases, metric)
    st.caption("Each configuration minus the baseline on every seed both finished: the mean over those n seeds with "
               "its 95% t-interval. An interval that holds 0 means the difference is within the seed noise.")
    if d.empty:
        st.info("No paired differences: pick a baseline that shares finished seeds with another configuration.")
        return
    dcols = {"label": "configuration", "baseline": "minus", "n": "n", "seeds": "seeds", "mean_diff": "mean difference",
             "ci_low": "95% low", "ci_high": "95% high", "per_seed": "per seed", "ahead": "ahead on"}
    _table(d[list(dcols)].rename(columns=dcols), "runs_differences")


def _table(df: pd.DataFrame, name: str) -> None:
    """A results table: two decimals on screen (rounded in talk mode's HTML table), full precision in its CSV."""
    floats = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
    config = {c: st.column_config.NumberColumn(format="%.3f" if c in ("fired", "density") else "%.2f") for c in floats}
    ui.show_table(df.round(2) if ui.talk_mode() else df, name, key=name, column_config=config)


@st.cache_resource(max_entries=16, show_spinner=False)
def _accuracy_fig(digest: int, _shown: pd.DataFrame, x: str, talk: bool) -> Any:
    """Cached by ``digest`` (the table's content), not by hashing the frame itself."""
    fig = run_plots.accuracy_vs(_shown, core_runs.groups(_shown), x=x, chance=chance(_shown))
    return plots.talk_layout(fig) if talk else fig


def paper_plots(shown: pd.DataFrame) -> None:
    if not ui.talk_mode():  # in talk mode these are the first screen's headline: the figures' titles say it
        st.subheader("Accuracy against density and FLOPs")
    digest = int(pd.util.hash_pandas_object(shown[["name", "status", "top1", "density", "flops_pct"]]).sum())
    for column, x in zip(st.columns(2), ("density", "flops_pct"), strict=True):
        with column:
            fig = _accuracy_fig(digest, shown, x, ui.talk_mode())
            st.plotly_chart(fig, config=plots.PLOTLY_CONFIG, key=f"runs_vs_{x}",
                            theme=None if ui.talk_mode() else "streamlit")


def curves(shown: pd.DataFrame, picked: pd.DataFrame) -> None:
    st.subheader("Learning curves")
    rows = picked if len(picked) else shown
    if not len(picked) and len(shown) > MAX_OVERLAY:
        rows = _overlay_default(shown)
        st.caption(f"{len(shown)} runs: drawn here are {len(rows)}, every seed of the baselines and of the best "
                   f"configurations ({', '.join(dict.fromkeys(rows['label']))}). Pick runs in the table above (or "
                   f"filter) to overlay others, up to {MAX_OVERLAY}.")
    with ui.controls("Curves"):
        x = st.radio("Against", ["step", "epoch"], horizontal=True, key="runs_curve_x")
    items = runs_data.curves_for(rows)
    items = [it for it in items if not it["curves"].empty]
    if not items:
        st.info("None of these runs has logged a curve yet.")
        return
    fig = run_plots.learning_curves(items, x=x, chance=chance(rows))
    ui.show_figure(fig, key="runs_curves")
    st.caption("▲ on the top-1 panel's floor: a topology update (hover for its step, prune rate and the weights it "
               "moved). Fired rate: the fraction of sparsified weights that were ever active up to that step.")


def _overlay_default(shown: pd.DataFrame) -> pd.DataFrame:
    """Too many runs to overlay: the baselines' and then the best configurations' runs (finished ones, by
    mean top-1), whole configurations only, up to MAX_OVERLAY runs."""
    done = shown[shown["status"] == "finished"]
    if done.empty:
        return shown.head(MAX_OVERLAY)
    g = core_runs.groups(done)
    bases = [b for b in core_runs.default_baselines(done) if b in set(g["label"])]
    order = bases + [label for label in g.sort_values("mean", ascending=False)["label"] if label not in bases]
    size, picked, total = done["label"].value_counts(), [], 0
    for label in order:
        if total + size[label] <= MAX_OVERLAY:
            picked.append(label)
            total += size[label]
    return done[done["label"].isin(picked)]


def follow(table: pd.DataFrame) -> None:
    """While a run is running, look again every few seconds and redraw the page when anything moved."""
    if not (table["status"] == "running").any():
        return
    state = tuple(zip(table["name"], table["status"], table["step"], strict=True))

    @st.fragment(run_every=FOLLOW_S)
    def _watch() -> None:
        now, _ = runs_data.all_runs()
        if tuple(zip(now["name"], now["status"], now["step"], strict=True)) != state:
            st.rerun()

    _watch()


def empty_help() -> None:
    st.info("No runs found. Train some (`svite train --out runs/NAME …`, the Retrain page, or the experiment scripts "
            "`python scripts/exp_unstructured.py`), or point the app at a folder of runs: "
            "`bash scripts/app.sh --runs DIR` (SVITE_RUNS_DIR).")


#: Overview's curve in talk mode: below the title, the sentence and the four numbers, it must end on a
#: 1080 px screen (the browser test measures it).
TALK_CURVE_HEIGHT = 540


def checkpoint_curve(path: str) -> None:
    """Overview's learning curve of the picked checkpoint (its own per-epoch metrics, or the
    metrics.jsonl beside it), with its topology updates; while its run is running it redraws itself
    every few seconds, so the curve grows while you watch."""
    running = runs_data.status_of(path) == "running"

    @st.fragment(run_every=FOLLOW_S if running else None)
    def _draw() -> None:
        c = runs_data.checkpoint_curves(path)
        talk = ui.talk_mode()  # the figure is the first screen's headline there: no subheader above it
        if not talk or running or c.empty:
            st.subheader("Learning curve" + (" (running: updates every few seconds)" if running else ""))
        if c.empty:
            st.caption(c.note.capitalize() + ".")
            return
        name = ui.current_label()
        item = {"name": name, "label": name, "method": _method_label(path), "seed": None, "curves": c}
        fig = run_plots.learning_curves([item], chance=_chance_of(path))
        meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
        fig.update_layout(meta={**meta, "talk_height": TALK_CURVE_HEIGHT})
        ui.show_figure(fig, key="overview_curve")
        st.caption(f"From {'the ' + c.source if c.source != 'checkpoint' else 'the checkpoint itself'} "
                   f"(per-epoch validation; training loss and learning rate at every logged step where a log exists). "
                   "▲: a topology update (hover for its step, prune rate and weights moved).")

    _draw()


def _method_label(path: str) -> str:
    doc = runs_data.header_meta(path)
    return core_runs.method_label(str(doc.get("method", "dense")), doc.get("train_config") or {})


def _chance_of(path: str) -> float | None:
    classes = (runs_data.header_meta(path).get("model_config") or {}).get("num_classes")
    return 100.0 / classes if isinstance(classes, int) and classes > 0 else None
