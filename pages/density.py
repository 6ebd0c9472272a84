"""Layer density: per-layer table, bars by block type and depth, one layer's mask as a heatmap."""

from __future__ import annotations

import numpy as np
import streamlit as st

from app.loaders import checkpoint_data
from app.text import story
from app.widgets import ui

path, _ = ui.require_checkpoint()
ui.header("Layer density", "how much of every sparsified weight is kept")
sentence = ui.story_slot()
hist = checkpoint_data.history(path)
masked_snaps = ([int(i) for i in hist.loc[hist["overall_density"].notna(), "snapshot"]]
                if "overall_density" in hist else [])

with ui.controls():
    options = masked_snaps + ["final"]  # in time order: the final checkpoint comes after the last snapshot
    ui.keep_valid("density_snapshot", options, "final")
    snap_choice = st.select_slider(
        "Snapshot", options, key="density_snapshot",
        format_func=lambda s: "final checkpoint" if s == "final" else
        f"#{s} · step {int(hist.loc[s, 'step'])} ({hist.loc[s, 'event']})") if len(options) > 1 else "final"
snapshot = None if snap_choice == "final" else int(snap_choice)
if not masked_snaps:
    st.info(f"None of this checkpoint's {len(hist)} snapshots holds masks (a dense run records snapshots but has "
            "no masks), so this page shows its final weights: a dense model reads as density 1.0.")

table = checkpoint_data.density_table(path, snapshot)
erk = "ERK" in str((checkpoint_data.inspect_doc(path).get("settings") or {}).get("sparse_init", ""))
sentence.markdown(story.density(table, erk))
ui.plot("density_by_stage", table, key="density_stage")
ui.plot("density_by_type", checkpoint_data.density_by_group(table, "block_type"), key="density_type")
with ui.details("Per layer"):
    ui.show_table(table, "layer_density", key="density_table")

st.subheader("One layer's mask")
with ui.controls("Layer"):
    ui.keep_valid("density_layer", list(table["layer"]))
    layer = st.selectbox("Layer", list(table["layer"]), key="density_layer")
    max_size = st.select_slider("Largest side of the heatmap (bigger matrices are averaged over tiles)",
                                [64, 128, 256, 512], value=256, key="density_max")


def _heatmap() -> None:
    img = checkpoint_data.mask_image(path, layer, snapshot, max_size)
    row = table.set_index("layer").loc[layer]
    downsampled = img.size < int(row["numel"])
    title = f"{layer} ({row['shape']}): density {row['density']:.3f}" + (
        f" · shown as {img.shape[0]}×{img.shape[1]} tiles" if downsampled else "")
    ui.plot("mask_heatmap", img, title, downsampled, key="density_heatmap")


ui.guard(_heatmap, "Heatmap")

st.subheader("Heads and neurons")
alive, neurons = checkpoint_data.unit_alive(path)
if alive is None and neurons is None:
    st.info("This checkpoint has no head/neuron masks (they come from structured S²ViTE runs).")
else:
    if alive is not None:
        n_alive, n_all = int(np.nansum(alive)), int((~np.isnan(alive)).sum())
        ui.plot("unit_grid", alive, f"Attention heads alive: {n_alive} of {n_all}", key="density_heads")
    if neurons is not None:
        ui.plot("neuron_bars", neurons, key="density_neurons")
        with ui.details("Neurons alive per block"):
            ui.show_table(neurons, "neurons_alive", key="density_neurons")

ui.next_page_footer("density")
