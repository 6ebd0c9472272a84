"""Patch maps: which patches the token selector keeps, what an attribution computed with every patch
present says matters, how far the two agree next to chance and content-blind baselines, how the keep
map changed over training, and how often each patch is kept."""

from __future__ import annotations

import streamlit as st

from app.figures import plots
from app.loaders import patch_data
from app.text import story
from app.widgets import image_picker, ui

# Rollout first: it needs one forward pass per image, so the page (and its agreement over 32 demo images)
# opens in about a second; the captum methods take 10-40 s for those 32 images the first time (progress
# bar, then cached).
METHODS = {"attention_rollout": "Attention rollout", "integrated_gradients": "Integrated gradients (captum)",
           "occlusion": "Occlusion, patch by patch (captum)", "input_x_gradient": "Input × gradient (captum)"}
DEFINITION = ("Attributions and rollout are computed **with every patch present**: the same backbone with the "
              "selector switched off. On the selector's own forward pass a dropped patch can change nothing, so "
              "it would score zero by construction and the agreement would flatter the selector (rollout gave "
              "IoU 1.000 that way). The class explained is the prediction above (selector on).")

path, loaded = ui.require_checkpoint()
ui.require_vit(loaded, "Patch maps")
doc = patch_data.inspect_doc(path)
arch = doc["architecture"]
sel = doc.get("token_selector")
patch, img_size = int(arch["patch_size"]), int(arch["img_size"])
ui.header("Patch maps", f"selector keeps {sel['keep']} of {sel['of']} patches" if sel else "no token selector")
sentence = ui.story_slot()

trained_on = (loaded.meta.get("data") or {}).get("source")
with ui.controls("Image and attribution"):
    picked = image_picker.pick_image(path, "patch", trained_on)
    method = st.selectbox("Attribution", list(METHODS), format_func=METHODS.get, key="patch_method")
object_mask, truth, demo_index = picked.object_mask, picked.truth, picked.demo_index
image = image_picker.fitted(picked, img_size)
pred = patch_data.predict(path, image)
top = pred.iloc[0]
names_from = patch_data.class_names(path)[1]


def _notes() -> None:
    """How the image was fitted, and the prediction: above the panels, or below them in talk mode."""
    image_picker.describe(picked, img_size, patch, trained_on)
    st.caption(f"Prediction (selector on): **{top['class']}** ({top['probability']:.1%}; class names: {names_from})"
               + (f" · true class: **{truth}**" if truth is not None else "")
               + (" · gold frame: the object's patches" if object_mask is not None else ""))


if not ui.talk_mode():
    _notes()

view = patch_data.model_view(path, image)
attr = patch_data.attribution(path, image, method)
attr_args = dict(colorscale="RdBu" if method != "attention_rollout" else "Viridis",
                 zmid=0.0 if method != "attention_rollout" else None, colorbar="attribution")
attr_title = f"{METHODS[method].split(' (')[0]}, every patch present"
left, right = st.columns(2)
if not sel:
    sentence.markdown(f"No token selector: every patch reaches every block. The {METHODS[method].split(' (')[0].lower()} "
                      f"shows which patches mattered for its prediction, {top['class']}.")
    st.info("This checkpoint has no token selector (SViTE+ runs, trained with --keep-ratio or --token-number, "
            "have one), so there is no keep map and no agreement to score. Attributions work on any ViT.")
    with left:
        ui.plot("image_figure", plots.overlay_patches(view, patch, None, object_mask),
                "Model input with its patch grid", key="patch_keep")
    with right:
        ui.plot("patch_heatmap", attr, attr_title, key="patch_attr", **attr_args)
    if ui.talk_mode():
        _notes()
    ui.next_page_footer("patches")
    st.stop()

km = patch_data.keep_map(path, image)
kept = km.kept
with left:
    ui.plot("image_figure", plots.overlay_patches(view, patch, kept, object_mask),
            f"Kept {km.keep} of {km.of} patches (dropped: hatched)", key="patch_keep")
with right:
    ui.plot("patch_heatmap", km.scores, "Selector scores (top ones kept)", colorbar="score", key="patch_scores")
if ui.talk_mode():
    _notes()

st.subheader("Does the selector keep what matters?")
st.caption(DEFINITION)
left2, right2 = st.columns(2)
with left2:
    ui.plot("patch_heatmap", attr, attr_title, key="patch_attr", **attr_args)

this = patch_data.agreement_this_image(kept, attr)
chance = this["chance"]
over = None
n_demo = patch_data.AGREEMENT_IMAGES
if not patch_data.is_large(path) or st.button(f"Compute the agreement over {n_demo} demo images", key="patch_agree"):
    bar = st.progress(0.0, text=f"Attributions over {n_demo} demo images (once per method; cached)…")
    over, n_fit = patch_data.agreement_over_demo(
        path, method, this, kept, attr, demo_index,
        progress=lambda d, t: bar.progress(d / t, text=f"Attributions: {d} of {t} demo images"))
    bar.empty()
recall = float((kept & object_mask).sum() / object_mask.sum()) if object_mask is not None and object_mask.any() \
    else None
sentence.markdown(story.patches(km.keep, km.of, recall, this["selector"], chance, METHODS[method].split(" (")[0].lower()))
with right2:
    st.metric(f"IoU of the {km.keep} kept and the top-{km.keep} attributed patches", f"{this['selector']:.3f}",
              delta=f"{this['selector'] - chance:+.3f} vs chance", delta_color="off")
    fixed = f" · best fixed mask **{this['best fixed mask']:.3f}**" if "best fixed mask" in this else ""
    st.markdown(f"Chance (a random {km.keep} of {km.of}): **{chance:.3f}**{fixed} · centre mask "
                f"**{this['centre mask']:.3f}**")
    if recall is not None:
        rec = recall
        prior = patch_data.positional_recall(path, km.keep)
        st.metric("Object patches kept (this image)", f"{rec:.0%}",
                  delta=f"{rec - km.keep / km.of:+.0%} vs chance", delta_color="off")
        st.markdown(f"Chance: **{km.keep / km.of:.0%}** · best fixed mask (mean over demo images): **{prior:.0%}**")
ui.plot("agreement_bars", this, over, km.keep, km.of, key="patch_agreement")
if over is not None:
    means = over[["selector", "best_fixed_mask", "centre_mask"]].agg(["mean", "std"])
    st.caption(f"Mean over {len(over)} demo images (± one standard deviation): selector "
               f"{means.loc['mean', 'selector']:.3f} ± {means.loc['std', 'selector']:.3f}, best fixed mask "
               f"{means.loc['mean', 'best_fixed_mask']:.3f} ± {means.loc['std', 'best_fixed_mask']:.3f}, centre mask "
               f"{means.loc['mean', 'centre_mask']:.3f} ± {means.loc['std', 'centre_mask']:.3f}, chance {chance:.3f}.")
    st.caption(f"Best fixed mask: the {km.keep} positions most often among the top-{km.keep} attributed patches of "
               f"other demo images; for this image, fitted on {n_fit} demo images that are not it; for the "
               "mean, cross-fitted (fitted on the odd-numbered images to score the even ones, and vice versa). Centre "
               f"mask: the {km.keep} most central patches. Both ignore the image; a selector that does not beat them "
               "has learned where things usually are, not what is there.")

snaps = patch_data.selector_snapshots(path)
st.subheader("Keep map across training")
if len(snaps) < 2:
    st.info("This checkpoint's history holds fewer than two selector snapshots.")
else:
    kh = patch_data.keep_history(path, image)
    grids = {int(s): part.pivot(index="row", columns="col", values="kept").to_numpy(bool)
             for s, part in kh.groupby("snapshot")}
    steps = kh.groupby("snapshot")["step"].first().to_dict()
    with ui.controls("Snapshot"):
        ui.keep_valid("patch_snapshot", sorted(grids), max(grids))
        s = st.select_slider("Snapshot", sorted(grids), key="patch_snapshot",
                             format_func=lambda i: f"#{i} · step {steps[i]}")
    col, _ = st.columns(2)
    with col:
        ui.plot("image_figure", plots.overlay_patches(view, patch, grids[s], object_mask),
                f"Kept patches at snapshot #{s} (step {steps[s]})", key="patch_history")
    if st.button("Make a GIF of the keep maps", key="patch_make_gif", icon=":material/animated_images:"):
        frames = [plots.overlay_patches(view, patch, grids[i], object_mask, target=640) for i in sorted(grids)]
        key = [("kept", (200, 200, 200)), ("dropped: hatched", (60, 60, 60))]
        if object_mask is not None:
            key.append(("object", (255, 215, 0)))
        gif = patch_data.keep_map_gif(frames, [f"snapshot #{i}  step {steps[i]}" for i in sorted(grids)], key=key)
        st.download_button("Download the GIF", gif, file_name="keep_maps.gif", mime="image/gif",
                           key="patch_gif", icon=":material/download:", on_click="ignore")

st.subheader(f"Keep frequency over {patch_data.keep_frequency_over(path)}")
freq = patch_data.keep_frequency(path)
classes = ["all"] + [c for c in dict.fromkeys(freq["class"]) if c != "all"]
with ui.controls("Class"):
    ui.keep_valid("patch_freq_class", classes)
    cls = st.selectbox("Class", classes, key="patch_freq_class")
grid = patch_data.keep_frequency_grid(freq, cls)
n = int(freq.loc[freq["class"] == cls, "images"].iloc[0])
col, _ = st.columns(2)
with col:
    ui.plot("patch_heatmap", grid, f"How often each patch is kept: {cls} ({n} images)",
            colorscale="Viridis", colorbar="kept", key="patch_freq")
with ui.details("Keep frequency per patch and class"):
    ui.show_table(freq, "keep_frequency", key="patch_freq", height=200, talk_rows=0)
vs = patch_data.keep_vs_object(path)
summary = vs.groupby("class")[["recall", "precision", "iou"]].mean().reset_index()
st.caption(f"Object patches kept, mean over {len(vs)} demo images: **{vs['recall'].mean():.1%}**; chance "
           f"{sel['keep'] / sel['of']:.1%}; best fixed mask {patch_data.positional_recall(path, sel['keep']):.1%} "
           "(the positions where objects fall most often in the demo training images; it never looks at the image).")
with ui.details("Object patches kept, per class"):
    ui.show_table(summary, "keep_vs_object", key="patch_vs_object")

ui.next_page_footer("patches")
