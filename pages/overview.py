"""Overview: what the checkpoint is, how sparse, how costly, and whether its masks were applied."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app.loaders import checkpoint_data
from app.text import story, tables
from app.widgets import runs_view, ui

path, loaded = ui.require_checkpoint()
doc = checkpoint_data.inspect_doc(path)
arch = doc["architecture"]
metrics = doc.get("metrics") or {}
ui.header("Overview", f"{doc['format']} checkpoint")
sentence = ui.story_slot()

sel = doc.get("token_selector")
c1, c2, c3, c4 = st.columns(4)
c1.metric("Method", story.method_name(doc))
c2.metric("Overall density", f"{doc['overall_density']:.3f}")
top1 = metrics.get("val_top1")
c3.metric("Val top-1", f"{top1:.1f}%" if isinstance(top1, (int, float)) else "n/a")
n_snaps = len(doc["history"])
n_masked = sum(1 for h in doc["history"] if h.get("overall_density") is not None)
c4.metric("Mask snapshots", f"{n_masked} of {n_snaps}" if n_masked != n_snaps else n_snaps,
          help=f"{n_snaps} snapshots recorded (init, topology updates, epoch ends); {n_masked} of them hold masks. "
               "A dense run records snapshots but has no masks, so it has no topology to follow.")

hist = checkpoint_data.history(path)
fired = checkpoint_data.fired(path)
sentence.markdown(story.overview(doc, hist, checkpoint_data.flops(path)))
runs_view.checkpoint_curve(path)  # the run's learning curve with its topology updates, near the top
if len(fired):  # how much of the model it held, and how much it tried
    ui.plot("fired_lines", fired, key="overview_fired")
elif loaded.is_vit:
    ui.plot("flops_bars", checkpoint_data.flops(path), key="flops")
ui.require_vit(loaded, "The rest of this page (architecture, integrity check, FLOPs, throughput)")

model_rows = [
    ("model", doc["model"]), ("format", doc["format"]), ("method", doc["method"]),
    ("epoch", doc.get("epoch")), ("step", doc.get("step")), ("complete", doc.get("complete")),
    ("parameters", f"{doc['params']:,}"), ("nonzero parameters", f"{doc['nonzeros']:,}"),
    ("depth", arch["depth"]), ("embed dim", arch["embed_dim"]), ("heads per block", str(arch["num_heads"])),
    ("MLP hidden per block", str(arch["mlp_hidden"])), ("image size", arch["img_size"]),
    ("patch size", arch["patch_size"]), ("patches", arch["num_patches"]), ("classes", arch["num_classes"]),
    ("token selector", f"keeps {sel['keep']} of {sel['of']} patches" if sel else "none"),
]
model_rows += [(f"final metric: {tables.human(k)}", v) for k, v in metrics.items()]
model_rows += [(f"setting: {tables.human(k)}", v) for k, v in sorted((doc.get("settings") or {}).items())]
summary = pd.DataFrame(model_rows, columns=["field", "value"])
summary["value"] = summary["value"].map(tables.number)
with ui.details("Model and settings"):
    ui.show_table(summary, "overview", key="overview")


def _integrity() -> None:
    st.subheader("Integrity check")
    st.caption("Are the stored masks really applied? A known failure of other tools (and of the reference's "
               "own SViTE+ runs): masks saved but never multiplied into the weights.")
    report = checkpoint_data.integrity(path)
    if report.ok:
        st.success("Integrity check passed: the weights agree with the masks.")
    else:
        st.error("Integrity check FAILED: the masks stored in this checkpoint do not describe its weights.")
    checks = pd.DataFrame(report.checks)
    checks["passed"] = checks["passed"].map({True: "✔ yes", False: "✘ no"})
    with ui.details("What was checked"):
        ui.show_table(checks[["check", "passed", "detail"]], "integrity", key="integrity")
        if len(report.layers):
            with st.expander("Per-layer detail"):
                ui.show_table(report.layers, "integrity_layers", key="integrity_layers")


ui.guard(_integrity, "Integrity check")


def _cost() -> None:
    st.subheader("Cost: FLOPs and measured throughput")
    if len(fired):  # else it is the headline chart above
        ui.plot("flops_bars", checkpoint_data.flops(path), key="flops")
    with ui.controls("Throughput"):
        ui.keep_valid("speed_batch", [1, 8, 32, 64], 32)
        batch = st.select_slider("Batch size", [1, 8, 32, 64], key="speed_batch")
        measure = st.button("Measure throughput (dense vs this checkpoint)", key="measure_speed")
    if measure or st.session_state.get("speed_done") == (path, batch):
        speed = checkpoint_data.speed(path, batch)
        st.session_state["speed_done"] = (path, batch)
        ui.plot("speed_bars", speed, key="speed")
        with ui.details("Throughput, measured"):
            ui.show_table(speed, "throughput", key="speed")
        st.caption("Measured here on CPU. Unstructured masks still run as dense matmuls, so only dropped tokens "
                   "(token selector) or removed heads/neurons (compacted S²ViTE) make this checkpoint faster.")


ui.guard(_cost, "Cost")

ui.next_page_footer("overview")
