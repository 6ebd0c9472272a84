"""Retrain: a short training run from a form, launched as `python -m sparsity_core train` in its own
process and run directory; live progress and curves; cancel; the result appears in the picker."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import streamlit as st

from app import catalog, figures, loaders, runs, ui
from app.settings import runs_dir
from sparsity_core.errors import SviteError

st.title("Retrain")
st.caption(f"Runs go to `{runs_dir()}` (set SVITE_RUNS_DIR to change it); each one runs as its own process, so "
           "it keeps going if you reload the page, and its checkpoint appears in the sidebar picker.")
entries = catalog.find_checkpoints()
labels = {e.path: e.label for e in entries}
MODEL_KEYS = ("name", "img_size", "patch_size", "embed_dim", "depth", "num_heads")


def _model_flags(init: str | None) -> dict:
    """Model flags that rebuild the --init checkpoint's architecture (--init needs them to match)."""
    if not init:
        return {"model": "vit_tiny_demo"}
    cfg = loaders.inspect_doc(init)["model_config"]
    flags = {("model" if k == "name" else k): cfg.get(k) for k in MODEL_KEYS}
    return {k: v for k, v in flags.items() if v is not None}


with st.form("retrain_form"):
    c1, c2 = st.columns(2)
    method = c1.selectbox("Method", runs.METHODS, key="rt_method",
                          help="svite: unstructured dynamic sparsity · s2vite: heads and neurons · dense · static / "
                               "oneshot baselines")
    ui.keep_valid("rt_init", ["scratch"] + [e.path for e in entries], "scratch")
    start = c2.selectbox("Start from", ["scratch"] + [e.path for e in entries], key="rt_init",
                         format_func=lambda p: "scratch (vit_tiny_demo)" if p == "scratch" else labels.get(p, p))
    c1, c2, c3 = st.columns(3)
    density = c1.slider("Density (SViTE)", 0.05, 1.0, 0.5, 0.05, key="rt_density")
    atten = c2.slider("Head density (S²ViTE)", 0.1, 1.0, 0.7, 0.05, key="rt_atten")
    other = c3.slider("Neuron density (S²ViTE)", 0.1, 1.0, 0.6, 0.05, key="rt_other")
    c1, c2, c3 = st.columns(3)
    keep = c1.slider("Token keep ratio (0 = no selector)", 0.0, 1.0, 0.0, 0.05, key="rt_keep")
    epochs = c2.number_input("Epochs", 1, 500, 3, key="rt_epochs")
    freq = c3.number_input("Update frequency (steps)", 1, 100000, 50, key="rt_freq")
    c1, c2, c3 = st.columns(3)
    data = c1.text_input("Data: 'demo' or an ImageFolder path", "demo", key="rt_data")
    train_size = c2.number_input("Train images (demo)", 32, 50000, 2000, key="rt_train_size")
    val_size = c3.number_input("Validation images (demo)", 16, 10000, 500, key="rt_val_size")
    c1, c2, c3 = st.columns(3)
    batch = c1.number_input("Batch size", 1, 1024, 64, key="rt_batch")
    lr = c2.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="rt_lr")
    seed = c3.number_input("Seed", 0, 2**31 - 1, 0, key="rt_seed")
    submitted = st.form_submit_button("Launch training", type="primary", icon=":material/play_arrow:")

if submitted:
    init = None if start == "scratch" else start
    try:
        form = runs.RunForm(method=method, density=float(density), atten_density=float(atten),
                            other_density=float(other), keep_ratio=float(keep), epochs=int(epochs),
                            update_frequency=int(freq), data=data.strip(), train_size=int(train_size),
                            val_size=int(val_size), batch_size=int(batch), lr=float(lr), seed=int(seed), init=init,
                            model_flags=_model_flags(init))
        run_id = runs.launch(form)
    except SviteError as err:
        st.error(f"Cannot launch: {err}")
    else:
        st.session_state["rt_selected"] = run_id
        st.success(f"Launched {run_id}")

all_runs = runs.list_runs()
if not all_runs:
    st.info("No runs launched from the app yet.")
    st.stop()

st.subheader("Runs")
table = pd.DataFrame([{"run": r.id, "status": r.status, "method": r.form.get("method"),
                       "epochs": r.form.get("epochs"), "progress": f"{r.progress:.0%}",
                       "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.started))} for r in all_runs])
ui.show_table(table, "runs", key="rt_runs")
ids = [r.id for r in all_runs]
if st.session_state.get("rt_selected") not in ids:
    st.session_state["rt_selected"] = ids[0]
selected = st.selectbox("Run", ids, key="rt_selected")
running = runs.state(selected).status == "running"


def _open_in_explorer(path: str) -> None:
    st.session_state[ui.CKPT_KEY] = path


@st.fragment(run_every=1.5 if running else None)
def live(run_id: str) -> None:
    s = runs.state(run_id)
    done = f"step {s.step}/{s.total_steps}" if s.total_steps else "starting…"
    if s.status == "running":
        st.progress(s.progress, text=f"Running: {done}, epoch {s.epoch:.0f}/{s.form.get('epochs')}")
        if st.button("Cancel this run", key=f"rt_cancel_{run_id}", icon=":material/stop:"):
            runs.cancel(run_id)
            st.warning("Cancelling…")
    elif s.status == "finished":
        st.success(f"Run {run_id} finished: {done}")
    elif s.status == "cancelled":
        st.warning(f"Run {run_id} was cancelled at {done}")
    else:
        st.error(f"Run {run_id} failed: {s.error}")
    if len(s.metrics) and "kind" in s.metrics and s.metrics["kind"].isin(["step", "epoch"]).any():
        ui.show_figure(figures.training_curves(s.metrics), key=f"rt_curves_{run_id}")  # live: not cached
    if s.status == "finished" and s.checkpoint is not None:
        if st.button("Open this checkpoint in the explorer", key=f"rt_open_{run_id}", icon=":material/open_in_new:",
                     on_click=_open_in_explorer, args=(str(s.checkpoint),)):
            st.rerun(scope="app")  # the click reran only this fragment: redraw the sidebar picker too
        st.caption(f"Checkpoint: `{s.checkpoint}` (listed in the sidebar as run · {Path(s.dir).name})")
    seen = st.session_state.setdefault("rt_seen_final", set())
    if s.status != "running" and running and run_id not in seen:
        seen.add(run_id)
        st.rerun(scope="app")  # refresh the sidebar picker and stop polling


live(selected)
