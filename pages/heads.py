"""Heads: what each attention head of a block looks at, alive ones beside pruned ones, with each head's
S²ViTE importance and its overlap with the object beside chance; and the same heads across training."""

from __future__ import annotations

import streamlit as st

from app.figures import plots
from app.loaders import heads_data, patch_data
from app.text import story
from app.widgets import image_picker, ui

KINDS = {"cls": "Class-token attention", "rollout": "Per-head rollout"}
PRUNED_NOTE = ("A pruned head's q, k and v rows are exactly zero, so with its mask lifted it scores every token "
               "the same and attends uniformly: it looks at nothing. What it looked at while alive is only known "
               "where training recorded the head probe (below).")

path, loaded = ui.require_checkpoint(ui.page_checkpoint("heads_ckpt"))
ui.require_vit(loaded, "Heads")
doc = patch_data.inspect_doc(path)
arch = doc["architecture"]
patch, img_size, depth = int(arch["patch_size"]), int(arch["img_size"]), int(arch["depth"])
ui.header("Heads", "what each attention head looks at", path=path)
sentence = ui.story_slot()
trained_on = (loaded.meta.get("data") or {}).get("source")

with ui.controls("Checkpoint, image and block"):
    ui.page_checkpoint_select("heads_ckpt")
    picked = image_picker.pick_image(path, "heads", trained_on)
    ui.keep_valid("heads_block", list(range(depth)), depth - 1)
    block = int(st.select_slider("Block", list(range(depth)), key="heads_block"))
    kind = st.radio("Map", list(KINDS), format_func=KINDS.get, horizontal=True, key="heads_kind",
                    help="Class-token attention: the head's own weights on the patches. Per-head rollout: the same, "
                         "traced back through the blocks below (heads averaged there), so it says which input "
                         "patches the attended tokens came from.")
image = image_picker.fitted(picked, img_size)
if not ui.talk_mode():
    image_picker.describe(picked, img_size, patch, trained_on)
obj = picked.object_mask

maps = heads_data.maps(path, image).of(kind)[block]
n_heads = int(arch["num_heads"][block])
maps, alive = maps[:n_heads], [bool(a) for a in heads_data.alive(path)[block][:n_heads]]
imp, imp_basis = heads_data.importance(path, image)
frame = heads_data.head_table(maps, alive, imp[block][:n_heads], obj)
over = None
if (trained_on == "demo" or picked.source == "Demo dataset") and not heads_data.large(path):
    over = heads_data.over_demo(path, kind)
    frame = heads_data.with_demo_means(frame, over, block)
over_text = (f"over the first {heads_data.IOU_IMAGES} demo images" if over is not None and "iou_mean" in frame
             else "on this image")
summary = frame.rename(columns={"iou_mean": "iou", "iou": "iou_this", "chance": "chance_this",
                                "chance_mean": "chance"}) if over_text != "on this image" else frame
sentence.markdown(story.heads(block, alive, summary if "iou" in summary else None, over_text,
                              heads_data.probe_iou_or_none(path, block)))

labels = [f"head {h}{'' if a else ' · pruned'}<br>" + (f"IoU {r:.2f} · " if r == r else "") + f"Taylor {t:.2g}"
          for h, (a, r, t) in enumerate(zip(alive, frame["iou"], frame["taylor"], strict=True))]
view = plots.overlay_patches(patch_data.model_view(path, image), patch, None, obj)
cols = 6 if ui.talk_mode() else 3  # heads per row beside the model input: wide in talk mode, two rows otherwise
ui.plot("head_grid", maps, alive, labels, f"{KINDS[kind]} of block {block} on this image, one map per head (each "
        "to its own scale)", outline=obj, image=view, cols=cols, key="heads_grid")
if ui.talk_mode():
    image_picker.describe(picked, img_size, patch, trained_on)
st.caption(f"Taylor: the S²ViTE importance the engine prunes heads by (its own scorer), {imp_basis}. "
           + ("IoU: the head's top-k patches against the object's k patches (gold frame). " if obj is not None else
              "Object IoU needs an image with an object mask (the demo images). ") + PRUNED_NOTE)
if obj is not None:
    ui.plot("head_iou_bars", frame, f"Do the heads of block {block} look at the object?", key="heads_iou")
with ui.details("Per head"):
    ui.show_table(frame.dropna(axis=1, how="all"), "heads", key="heads_table")

st.subheader("The same heads over training")


def _from_masks() -> None:
    """No probe: what the masks say about the block's heads at every snapshot, and what was not recorded."""
    timeline = heads_data.mask_history(path, block)
    st.info("This checkpoint recorded no head probe (checkpoints written before the probe existed, dense or "
            "official ones), and its history keeps masks, not weights: what a head attended to at an earlier "
            "snapshot cannot be recomputed. " + ("Below: what the masks say about each head of this block at every "
                                                  "snapshot." if not timeline.empty else "Its history holds no masks."))
    if not timeline.empty:
        structured = set(timeline["kept"].unique()) <= {0.0, 1.0}
        ui.plot("head_timeline", timeline.assign(block=block, alive=timeline["kept"]),
                f"Block {block}: each head alive (dark) or pruned at every snapshot" if structured else
                f"Block {block}: share of each head's q, k and v weights kept at every snapshot", key="heads_timeline")


def _from_probe(snaps: list[int], probe_maps) -> None:
    """The head probe: the block's maps at any snapshot, each head's object IoU over steps, one head followed."""
    hist = heads_data.history(path)
    with ui.controls("Probe image and snapshot"):
        n_img = probe_maps.shape[1]
        ui.keep_valid("heads_probe_image", list(range(n_img)), 0)
        which = int(st.select_slider("Probe image", list(range(n_img)), key="heads_probe_image"))
        ui.keep_valid("heads_snapshot", snaps, snaps[-1])
        snap = int(st.select_slider("Snapshot", snaps, key="heads_snapshot",
                                    format_func=lambda s: f"#{s} · step {int(hist.loc[s, 'step'])}"))
    images, masks = heads_data.probe_images_of(path, n_img)
    alive_then = heads_data.alive_at(path, block, snap, n_heads)
    pview = plots.overlay_patches(patch_data.model_view(path, images[which]), patch, None, masks[which])
    ui.plot("head_grid", probe_maps[snaps.index(snap), which], alive_then,
            [f"head {h}{'' if a else ' · pruned'}" for h, a in enumerate(alive_then)],
            f"Class-token attention of block {block} at snapshot #{snap} (step {int(hist.loc[snap, 'step'])}), "
            f"probe image {which}", outline=masks[which], image=pview, cols=cols, key="heads_probe_grid")
    ious = heads_data.probe_iou(path, block)
    ui.plot("probe_iou_lines", ious, f"Block {block}: object IoU of each head over training "
            f"(mean over the {n_img} probe images)", key="heads_probe_iou")
    st.caption("The probe: each head's class-token attention on the first demo validation images, recorded by the "
               "trainer at every snapshot (every patch present). A head with no point at a snapshot was pruned then.")
    with ui.controls("Head"):
        ui.keep_valid("heads_one", list(range(n_heads)), alive.index(True) if any(alive) else 0)
        one = int(st.selectbox("Head to follow", list(range(n_heads)), key="heads_one",
                               format_func=lambda h: f"head {h}"))
    shown = heads_data.spread(snaps, 12)
    ui.plot("head_grid", probe_maps[[snaps.index(s) for s in shown], which, one],
            [heads_data.alive_at(path, block, s, n_heads)[one] for s in shown],
            [f"#{s} · step {int(hist.loc[s, 'step'])}" for s in shown],
            f"Head {one} of block {block} across training, probe image {which}", outline=masks[which],
            cols=cols, key="heads_strip")
    with ui.details("Probe object IoU per snapshot"):
        ui.show_table(ious.rename(columns={"iou": "object IoU (mean over the probe images)"}), "probe_iou",
                      key="heads_probe_table")



def _over_training() -> None:
    found = heads_data.probe(path, block)
    if found is None:
        _from_masks()
    else:
        _from_probe(*found)


ui.guard(_over_training, "The same heads over training")

ui.next_page_footer("heads")
