"""Retrain: a short training run from a form, launched as `python -m sparsity_core train` in its own
process and run directory; live progress and curves; cancel; the result appears in the picker.

By default the run starts from the checkpoint in the sidebar, with settings that show something in
about a minute (see ``app/retrain/run_form.py``)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app.errors import SviteError
from app.figures import plots
from app.loaders import catalog, checkpoint_data
from app.retrain import registry, run_form
from app.settings import runs_dir
from app.widgets import ui

st.title("Retrain")
st.caption(f"Runs go to `{runs_dir()}` (set SVITE_RUNS_DIR to change it); each one runs as its own process, so "
           "it keeps going if you reload the page, and its checkpoint appears in the sidebar picker.")
entries = catalog.find_checkpoints()
labels = {e.path: e.label for e in entries}
options = [e.path for e in entries] + ["scratch"]
#: form widget key -> RunForm field
FIELDS = {"rt_method": "method", "rt_density": "density", "rt_atten": "atten_density", "rt_other": "other_density",
          "rt_keep": "keep_ratio", "rt_epochs": "epochs", "rt_freq": "update_frequency", "rt_data": "data",
          "rt_train_size": "train_size", "rt_val_size": "val_size", "rt_batch": "batch_size", "rt_lr": "lr",
          "rt_seed": "seed", "rt_scorer": "selector_scorer"}


def _doc(start: str) -> dict | None:
    if start == "scratch":
        return None
    try:
        return checkpoint_data.inspect_doc(start)
    except SviteError:
        return None


def _apply_defaults() -> None:
    """Fill the form with the defaults for the chosen start (called when the start changes)."""
    start = st.session_state.get("rt_init", "scratch")
    form = run_form.defaults_for(_doc(start), None if start == "scratch" else start)
    for key, name in FIELDS.items():
        st.session_state[key] = getattr(form, name)


# Values of sliders hidden for the chosen method: kept as plain state (Streamlit drops the state of a widget
# that a run does not draw), so switching the method back shows them again as they were.
for _key in FIELDS:
    if _key in st.session_state:
        st.session_state[_key] = st.session_state[_key]

# The start follows the sidebar's checkpoint (until the user picks another one here).
sidebar = ui.current_path()
# Widget state is dropped when the user visits another page, so a return also refills the form.
if (st.session_state.get("rt_follows") != sidebar or st.session_state.get("rt_init") not in options
        or any(key not in st.session_state for key in FIELDS)):
    if st.session_state.get("rt_follows") != sidebar or st.session_state.get("rt_init") not in options:
        st.session_state["rt_init"] = sidebar if sidebar in options else "scratch"
    st.session_state["rt_follows"] = sidebar
    _apply_defaults()
start = st.selectbox("Start from", options, key="rt_init", on_change=_apply_defaults,
                     format_func=lambda p: "scratch (vit_tiny_demo, random weights)" if p == "scratch"
                     else labels.get(p, p), help="The sidebar's checkpoint by default. Changing it resets the form "
                     "to the defaults for that checkpoint.")
doc = _doc(start)
defaults = run_form.defaults_for(doc, None if start == "scratch" else start)
st.caption(run_form.describe(defaults, doc))

# outside the form: a widget inside a form does not rerun the page, and the sliders follow the method
method = st.selectbox("Method", run_form.METHODS, key="rt_method",
                      help="svite: unstructured dynamic sparsity · s2vite: heads and neurons · dense · static / "
                           "oneshot baselines")
shown = run_form.SLIDERS[method]
with st.form("retrain_form"):
    c1, c2 = st.columns(2)
    epochs = c1.number_input("Epochs", 1, 500, key="rt_epochs")
    train_size = c2.number_input("Train images (demo)", 32, 50000, key="rt_train_size")
    columns = iter(st.columns(max(1, len(shown))))
    if "rt_density" in shown:
        next(columns).slider("Weight density", 0.05, 1.0, step=0.05, key="rt_density",
                             help="The share of the sparsified weights kept (SViTE, static, one-shot).")
    if "rt_atten" in shown:
        next(columns).slider("Head density", 0.1, 1.0, step=0.05, key="rt_atten",
                             help="S²ViTE: the share of attention heads kept in every block.")
        next(columns).slider("Neuron density", 0.1, 1.0, step=0.05, key="rt_other",
                             help="S²ViTE: the share of MLP neurons kept in every block.")
    keep = st.slider("Token keep ratio (0 = no token selector)", 0.0, 1.0, step=0.05, key="rt_keep",
                     help="Starting from an SViTE+ checkpoint, its selector (scorer, mode, block) is kept and "
                          "fine-tuned; 0 trains its backbone without one.")
    with st.expander("More settings"):
        c1, c2, c3 = st.columns(3)
        val_size = c1.number_input("Validation images (demo)", 16, 10000, key="rt_val_size")
        batch = c2.number_input("Batch size", 1, 1024, key="rt_batch")
        lr = c3.number_input("Learning rate", 1e-6, 1.0, format="%.5f", key="rt_lr")
        c1, c2, c3 = st.columns(3)
        if "rt_freq" in shown:
            c1.number_input("Update frequency (steps)", 1, 100000, key="rt_freq")
        seed = c2.number_input("Seed", 0, 2**31 - 1, key="rt_seed")
        scorer = c3.selectbox("Scorer of a new token selector", ["mlp", "linear"], key="rt_scorer")
        data = st.text_input("Data: 'demo' or an ImageFolder path", key="rt_data")
    submitted = st.form_submit_button("Launch training", type="primary", icon=":material/play_arrow:")

if submitted:
    form = run_form.defaults_for(doc, None if start == "scratch" else start)  # selector details, model flags
    state = st.session_state
    values = {"method": method, "density": float(state["rt_density"]), "atten_density": float(state["rt_atten"]),
              "other_density": float(state["rt_other"]), "keep_ratio": float(keep), "epochs": int(epochs),
              "update_frequency": int(state["rt_freq"]), "data": str(data).strip(), "train_size": int(train_size),
              "val_size": int(val_size), "batch_size": int(batch), "lr": float(lr), "seed": int(seed)}
    for name, value in values.items():
        setattr(form, name, value)
    if not (doc or {}).get("token_selector"):
        form.selector_scorer = scorer
    try:
        run_id = registry.launch(form)
    except SviteError as err:
        st.error(f"Cannot launch: {err}")
    else:
        st.session_state["rt_selected"] = run_id
        st.success(f"Launched {run_id}")


def _open_in_explorer(path: str) -> None:
    st.session_state[ui.CKPT_KEY] = path


def _runs_table(all_runs: list[registry.RunState]) -> pd.DataFrame:
    return pd.DataFrame([{"run": r.id, "status": r.phase, "method": r.form.get("method"),
                          "start": Path(r.form["init"]).stem if r.form.get("init") else "scratch",
                          "steps": f"{r.step}/{r.total_steps}" if r.total_steps else "–",
                          "progress": f"{r.progress:.0%}", "val top-1 (%)": r.val_top1,
                          "time (s)": round(r.elapsed), "started": time.strftime("%H:%M:%S", time.localtime(r.started))}
                         for r in all_runs])


def _live(s: registry.RunState, was_running: bool) -> None:
    """One run: its progress bar (the same number as its row in the table), curves and result."""
    if s.status == "running":
        st.progress(s.progress, text=s.describe())
        if st.button("Cancel this run", key=f"rt_cancel_{s.id}", icon=":material/stop:"):
            registry.cancel(s.id)
            st.warning("Cancelling…")
    elif s.status == "finished":
        st.success(s.describe())
    elif s.status == "cancelled":
        st.warning(s.describe())
    else:
        st.error(f"Run {s.id} failed. {s.error}")
    if len(s.metrics) and "kind" in s.metrics and s.metrics["kind"].isin(["step", "epoch"]).any():
        ui.show_figure(plots.training_curves(s.metrics), key=f"rt_curves_{s.id}")  # live: not cached
    if s.status == "finished" and s.checkpoint is not None:
        if st.button("Open this checkpoint in the explorer", key=f"rt_open_{s.id}", icon=":material/open_in_new:",
                     on_click=_open_in_explorer, args=(str(s.checkpoint),)):
            st.rerun(scope="app")  # the click reran only this fragment: redraw the sidebar picker too
        st.caption(f"Checkpoint: `{s.checkpoint}` (listed in the sidebar as run · {Path(s.dir).name})")
    if s.status != "running" and was_running:
        st.rerun(scope="app")  # it just ended: refresh the sidebar picker and stop polling


any_running = any(r.status == "running" for r in registry.list_runs())


@st.fragment(run_every=1.0 if any_running else None)
def runs_view(was_running: bool) -> None:
    """The runs table and the selected run's progress, redrawn together so that they always agree."""
    all_runs = registry.list_runs()
    if not all_runs:
        st.info("No runs launched from the app yet.")
        return
    st.subheader("Runs")
    ui.show_table(_runs_table(all_runs), "runs", key="rt_runs")
    ids = [r.id for r in all_runs]
    if st.session_state.get("rt_selected") not in ids:
        st.session_state["rt_selected"] = ids[0]
    selected = st.selectbox("Run", ids, key="rt_selected")
    state = next(r for r in all_runs if r.id == selected)
    _live(state, was_running and not any(r.status == "running" for r in all_runs))


runs_view(any_running)
