"""Compare two checkpoints (or two snapshots of one): densities, mask diff, accuracy and FLOPs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app.loaders import catalog, checkpoint_data
from app.text import story
from app.widgets import ui

path, loaded = ui.require_checkpoint()
ui.header("Compare", "A = the checkpoint in the sidebar")
sentence = ui.story_slot()
entries = catalog.find_checkpoints()
labels = {e.path: e.label for e in entries}

with ui.controls():
    mode = st.radio("Compare", ["Two checkpoints", "Two snapshots of this checkpoint"], horizontal=True,
                    key="compare_mode")
    if mode == "Two checkpoints":
        others = [e.path for e in entries if e.path != path] or [path]
        if st.session_state.get("compare_b") not in others:
            st.session_state["compare_b"] = others[0]
        path_b = st.selectbox("B", others, key="compare_b", format_func=lambda p: labels.get(p, Path(p).name))
        snap_a = snap_b = None
        label_a, label_b = labels.get(path, "A"), labels.get(path_b, "B")
    else:
        path_b = path
        snaps = list(range(len(loaded.history)))
        if len(snaps) < 2:
            st.info("This checkpoint has fewer than two snapshots; compare it with another checkpoint instead.")
            st.stop()
        hist = checkpoint_data.history(path)
        fmt = {i: f"#{i} · step {int(hist.loc[i, 'step'])} ({hist.loc[i, 'event']})" for i in snaps}
        ui.keep_valid("compare_snaps", snaps, (snaps[0], snaps[-1]))
        snap_a, snap_b = st.select_slider("Snapshots A and B", snaps, key="compare_snaps",
                                          format_func=fmt.get)
        label_a, label_b = f"snapshot #{snap_a}", f"snapshot #{snap_b}"

try:
    checkpoint_data.load(path_b)
except Exception as err:  # noqa: BLE001 (an unreadable file is a message, never a traceback)
    st.error(f"Cannot read B: {ui.explain(err, path_b)}")
    st.stop()

doc_a, doc_b = checkpoint_data.inspect_doc(path), checkpoint_data.inspect_doc(path_b)
if mode == "Two checkpoints":
    fa, fb = checkpoint_data.flops(path), checkpoint_data.flops(path_b)
    rows = []
    for label, doc, fl in ((label_a, doc_a, fa), (label_b, doc_b, fb)):
        m = doc.get("metrics") or {}
        rows.append({"checkpoint": label, "method": doc["method"], "model": doc["model"],
                     "val_top1": m.get("val_top1"), "val_top5": m.get("val_top5"),
                     "density": doc["overall_density"], "params": doc["params"], "nonzeros": doc["nonzeros"],
                     "MFLOPs": fl["sparse"] / 1e6 if fl else None, "FLOPs vs dense": fl["ratio"] if fl else None})
    side = pd.DataFrame(rows)
    sentence.markdown(story.compare(rows))
    bars = {"val top-1 (%)": [r["val_top1"] or 0 for r in rows],
            "FLOPs vs dense (%)": [100 * r["FLOPs vs dense"] for r in rows],
            "density (%)": [100 * r["density"] for r in rows]} if fa and fb else {
        "val top-1 (%)": [r["val_top1"] or 0 for r in rows], "density (%)": [100 * r["density"] for r in rows]}
    ui.plot("side_by_side", bars,
                                        [label_a, label_b], "Accuracy, FLOPs and density", "%", key="compare_bars")
    with ui.details("Side by side"):
        ui.show_table(side, "compare_summary", key="compare_summary")
else:
    hist = checkpoint_data.history(path)
    side = hist.loc[[snap_a, snap_b]]
    with ui.details("Side by side"):
        ui.show_table(side, "compare_snapshots", key="compare_summary")

diff = checkpoint_data.mask_diff(path, snap_a, path_b, snap_b)
if diff.empty:
    st.info("These two have no sparsified layer in common (different architectures): only the summary above "
            "can be compared.")
    ui.next_page_footer("compare")
    st.stop()
st.subheader("Per-layer density")
ui.plot("density_compare", diff, label_a, label_b, key="compare_density")
st.subheader("Mask diff")
tot = diff[["kept", "grown", "pruned"]].sum()
if mode != "Two checkpoints":
    sentence.markdown(f"From {label_a} to {label_b}, {int(tot['kept']):,} weights stayed, {int(tot['grown']):,} were "
                      f"grown and {int(tot['pruned']):,} pruned.")
c1, c2, c3 = st.columns(3)
c1.metric("kept in both", f"{int(tot['kept']):,}")
c2.metric("grown (only in B)", f"{int(tot['grown']):,}")
c3.metric("pruned (only in A)", f"{int(tot['pruned']):,}")
ui.plot("diff_counts", diff, key="compare_counts")
with ui.details("Mask diff per layer"):
    ui.show_table(diff, "mask_diff", key="compare_diff")
with ui.controls("Layer"):
    ui.keep_valid("compare_layer", list(diff["layer"]))
    layer = st.selectbox("Layer for the diff heatmap", list(diff["layer"]), key="compare_layer")
img = checkpoint_data.diff_image(path, snap_a, path_b, snap_b, layer)
numel = int(diff.set_index("layer").loc[layer, "numel"])
ui.plot("diff_heatmap", img, f"{layer}: green = grown in B, red = pruned from A", img.size < numel,
        key="compare_heatmap")
ui.next_page_footer("compare")
