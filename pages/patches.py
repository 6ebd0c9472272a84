"""Patch maps: which patches the token selector keeps, what a captum attribution says matters, how
much the two agree, how the keep map changed over training, and how often each patch is kept."""

from __future__ import annotations

import streamlit as st

from app import figures, loaders, ui
from app.settings import IMAGE_SUFFIXES, IMAGE_UPLOAD_MB
from sparsity_core import analysis
from sparsity_core.data import read_image_bytes
from sparsity_core.errors import SviteError

METHODS = {"integrated_gradients": "Integrated gradients (captum)", "occlusion": "Occlusion, patch by patch (captum)",
           "input_x_gradient": "Input × gradient (captum)", "attention_rollout": "Attention rollout"}

path, loaded = ui.require_checkpoint()
doc = loaders.inspect_doc(path)
arch = doc["architecture"]
sel = doc.get("token_selector")
patch = int(arch["patch_size"])
ui.header("Patch maps", f"selector keeps {sel['keep']} of {sel['of']} patches" if sel else "no token selector")

object_mask = None
truth = None
with ui.controls("Image and attribution"):
    source = st.radio("Image", ["Demo dataset", "Sample photos", "Upload"], horizontal=True, key="patch_source")
    if source == "Demo dataset":
        demo = loaders.demo_for(path)
        ui.keep_valid("patch_demo_index", range(len(demo)), 8)
        index = st.slider("Demo image (validation split)", 0, len(demo) - 1, key="patch_demo_index")
        sample = demo.sample(int(index))
        image, object_mask, truth = sample.image, sample.patch_mask, demo.class_names[sample.label]
    elif source == "Sample photos":
        photos = loaders.photos()
        ui.keep_valid("patch_photo", sorted(photos))
        name = st.selectbox("Photo", sorted(photos), key="patch_photo")
        image = photos[name]
    else:
        up = st.file_uploader(f"An image ({', '.join(IMAGE_SUFFIXES)}; ≤ {IMAGE_UPLOAD_MB} MB)", key="patch_upload")
        if up is None:
            st.info("Upload an image to see its patch maps.")
            st.stop()
        if up.size > IMAGE_UPLOAD_MB * 2**20:
            st.warning(f"{up.name}: {up.size / 2**20:.0f} MB is over the {IMAGE_UPLOAD_MB} MB image limit")
            st.stop()
        try:
            image = read_image_bytes(up.getvalue(), up.name)  # bombs and broken files: one sentence
        except SviteError as err:
            st.warning(str(err))
            st.stop()
    method = st.selectbox("Attribution", list(METHODS), format_func=METHODS.get, key="patch_method")

view = loaders.model_view(path, image)
pred = loaders.predict(path, image)
top = pred.iloc[0]
st.caption(f"Prediction: **{top['class']}** ({top['probability']:.1%})"
           + (f" · true class: **{truth}**" if truth is not None else "")
           + (" · gold outline: the object's patches" if object_mask is not None else ""))

left, right = st.columns(2)
kept = None
if sel:
    km = loaders.keep_map(path, image)
    kept = km.kept
    with left:
        ui.plot("image_figure", figures.overlay_patches(view, patch, kept, object_mask),
                f"Kept {km.keep} of {km.of} patches (dropped greyed)", key="patch_keep")
    with right:
        ui.plot("patch_heatmap", km.scores, "Selector scores", colorbar="score", key="patch_scores")
else:
    st.info("This checkpoint has no token selector (SViTE+ runs, trained with --keep-ratio or --token-number, "
            "have one), so there is no keep map. Attributions work on any ViT.")
    with left:
        ui.plot("image_figure", figures.overlay_patches(view, patch, None, object_mask),
                "Model input with its patch grid", key="patch_keep")

attr = loaders.attribution(path, image, method)
attr_args = dict(colorscale="RdBu" if method != "attention_rollout" else "Viridis",
                 zmid=0.0 if method != "attention_rollout" else None, colorbar="attribution")
attr_title = f"{METHODS[method]}, class '{top['class']}'"
if not sel:
    with right:
        ui.plot("patch_heatmap", attr, attr_title, key="patch_attr", **attr_args)
else:
    left2, right2 = st.columns(2)
    with left2:
        ui.plot("patch_heatmap", attr, attr_title, key="patch_attr", **attr_args)
    with right2:
        iou = analysis.keep_attribution_iou(kept, attr)
        st.metric("Agreement: IoU of kept and top-attributed patches", f"{iou:.3f}",
                  help=f"The {int(kept.sum())} kept patches vs the {int(kept.sum())} patches with the highest "
                       f"{METHODS[method]}. Chance level ≈ {sel['keep'] / (2 * sel['of'] - sel['keep']):.3f}.")
        if object_mask is not None and object_mask.any():
            rec = float((kept & object_mask).sum() / object_mask.sum())
            st.metric("Object patches kept (this image)", f"{rec:.1%}")

if sel:
    snaps = analysis.selector_snapshots(loaded)
    st.subheader("Keep map across training")
    if len(snaps) < 2:
        st.info("This checkpoint's history holds fewer than two selector snapshots.")
    else:
        kh = loaders.keep_history(path, image)
        grids = {int(s): part.pivot(index="row", columns="col", values="kept").to_numpy(bool)
                 for s, part in kh.groupby("snapshot")}
        steps = kh.groupby("snapshot")["step"].first().to_dict()
        with ui.controls("Snapshot"):
            ui.keep_valid("patch_snapshot", sorted(grids), max(grids))
            s = st.select_slider("Snapshot", sorted(grids), key="patch_snapshot",
                                 format_func=lambda i: f"#{i} · step {steps[i]}")
        frame = figures.overlay_patches(view, patch, grids[s], object_mask)
        ui.plot("image_figure", frame, f"Kept patches at snapshot #{s} (step {steps[s]})", key="patch_history")
        if st.button("Make a GIF of the keep maps", key="patch_make_gif", icon=":material/animated_images:"):
            frames = [figures.overlay_patches(view, patch, grids[i], object_mask) for i in sorted(grids)]
            gif = loaders.keep_map_gif(frames, [f"snapshot #{i}  step {steps[i]}" for i in sorted(grids)])
            st.download_button("Download the GIF", gif, file_name="keep_maps.gif", mime="image/gif",
                               key="patch_gif", icon=":material/download:", on_click="ignore")

    st.subheader("Keep frequency over the demo data")
    freq = loaders.keep_frequency(path)
    classes = ["all"] + [c for c in dict.fromkeys(freq["class"]) if c != "all"]
    with ui.controls("Class"):
        ui.keep_valid("patch_freq_class", classes)
        cls = st.selectbox("Class", classes, key="patch_freq_class")
    grid = analysis.keep_frequency_grid(freq, cls).to_numpy()
    n = int(freq.loc[freq["class"] == cls, "images"].iloc[0])
    ui.plot("patch_heatmap", grid, f"How often each patch is kept: {cls} ({n} images)",
            colorscale="Viridis", colorbar="kept", key="patch_freq")
    ui.show_table(freq, "keep_frequency", key="patch_freq", height=200)
    vs = loaders.keep_vs_object(path)
    summary = vs.groupby("class")[["recall", "precision", "iou"]].mean().reset_index()
    st.caption(f"Object patches kept, mean over {len(vs)} demo images: **{vs['recall'].mean():.1%}** "
               f"(chance: {sel['keep'] / sel['of']:.1%}).")
    ui.show_table(summary, "keep_vs_object", key="patch_vs_object")

ui.next_page_footer("patches")
