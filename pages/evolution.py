"""Mask evolution: density per layer across snapshots, topology distances, churn, fired rate,
head/neuron survival, a slider over snapshots and a GIF of one layer's mask."""

from __future__ import annotations

import streamlit as st

from app.loaders import checkpoint_data
from app.text import story
from app.widgets import ui

path, loaded = ui.require_checkpoint()
hist = checkpoint_data.history(path)
n_masked = int(hist["overall_density"].notna().sum()) if "overall_density" in hist else 0
ui.header("Mask evolution", f"{n_masked} of {len(hist)} snapshots hold masks")
sentence = ui.story_slot()

evo = checkpoint_data.evolution(path)
heads, neurons = checkpoint_data.units(path)
if evo.empty and heads is None and neurons is None:
    st.info(f"None of this checkpoint's {len(hist)} snapshots holds masks (it was trained densely), so there is "
            "no topology to follow. Pick a SViTE / S²ViTE checkpoint in the sidebar.")
    with ui.details("Snapshots"):
        ui.show_table(hist, "history", key="evo_history", height=240)
    ui.next_page_footer("evolution")
    st.stop()

if not evo.empty:
    with ui.controls():
        group = st.radio("Lines per", ["block_type", "layer"], horizontal=True, key="evo_group",
                         format_func=lambda g: "block type" if g == "block_type" else "layer")
        metric = st.radio("Distance", ["jaccard", "hamming"], horizontal=True, key="evo_metric")
    dist, idx = checkpoint_data.distances(path, metric)
    churn = checkpoint_data.churn(path)
    sentence.markdown(story.evolution(churn, dist, idx, metric))
    labels = [f"#{i} s{int(hist.loc[i, 'step'])}" for i in idx]
    ui.plot("distance_heatmap", dist, labels, metric, key="evo_distance")
    basis = checkpoint_data.distance_basis(path)
    st.caption(f"Distances {basis['text']}.")

    st.subheader("Density across snapshots")
    ui.plot("evolution_lines", evo, group, key="evo_lines")
    ui.plot("fired_lines", checkpoint_data.fired(path), key="evo_fired")

    st.subheader("Churn per update")
    updates = churn[churn["event"] == "update"] if (churn["event"] == "update").any() else churn
    ui.plot("churn_bars", updates, key="evo_churn")
    with ui.details("Churn, every snapshot"):
        ui.show_table(churn, "churn", key="evo_churn", height=240)
    if int((churn["event"] == "update").sum()) >= 2 and heads is None and neurons is None:
        if basis["exact"] or st.button("Compare each update with the one before (decodes every update's masks)",
                                       key="evo_young_go"):
            young = checkpoint_data.young_pruning(path)
            ui.plot("young_pruning_lines", young, key="evo_young")
            st.caption("A new connection starts at 0, so a magnitude prune tends to take it first at the next "
                       "update. The dotted line is what pruning blind to age would give.")

if heads is not None or neurons is not None:
    st.subheader("Heads and neurons")
    if heads is not None:
        ui.plot("head_timeline", heads, key="evo_heads")
    if neurons is not None:
        ui.plot("neuron_lines", neurons, key="evo_neurons")
        with ui.details("Neuron survival"):
            ui.show_table(neurons, "neuron_survival", key="evo_neurons", height=240)
else:
    st.info("This checkpoint has no head/neuron masks (structured S²ViTE runs have them).")

if not evo.empty:
    st.subheader("One layer, snapshot by snapshot")
    snaps = sorted(evo["snapshot"].unique().tolist())
    with ui.controls("Layer and snapshot"):
        layers = list(dict.fromkeys(evo["layer"]))
        ui.keep_valid("evo_layer", layers)
        layer = st.selectbox("Layer", layers, key="evo_layer")
        ui.keep_valid("evo_snapshot", snaps, snaps[-1])
        snap = st.select_slider("Snapshot", snaps, key="evo_snapshot",
                                format_func=lambda s: f"#{s} · step {int(hist.loc[s, 'step'])}")
    info = hist.loc[snap]
    row = evo[(evo["snapshot"] == snap) & (evo["layer"] == layer)].iloc[0]
    st.caption(f"Snapshot #{snap}: step {int(info['step'])}, epoch {float(info['epoch']):.2f}, event "
               f"**{info['event']}**, layer density {row['density']:.4f}")
    img = checkpoint_data.mask_image(path, layer, int(snap), 256)
    ui.plot("mask_heatmap", img, f"{layer} at snapshot #{snap}", img.size < int(row["numel"]), key="evo_heatmap")

    def _gif() -> None:
        # rendered on request (not on every page load): one unpacked layer per snapshot, drawn with PIL
        if st.button("Make a GIF of this layer's evolution", key="evo_make_gif", icon=":material/animated_images:"):
            st.session_state["evo_gif_for"] = (path, layer)
        if st.session_state.get("evo_gif_for") == (path, layer):
            st.download_button("Download the GIF", checkpoint_data.evolution_gif(path, layer),
                               file_name=f"mask_evolution_{layer}.gif", mime="image/gif", key="evo_gif",
                               on_click="ignore", icon=":material/download:")

    ui.guard(_gif, "GIF")

with ui.details("Snapshots"):
    ui.show_table(hist, "history", key="evo_history", height=240)

ui.next_page_footer("evolution")
