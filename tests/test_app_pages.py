"""Every page of the app under ``streamlit.testing.v1.AppTest``, on the shipped demo checkpoints.

Each test opens a page through the real entry script (``app/main.py`` and its ``st.navigation``),
checks that it runs without an exception, that the expected charts and tables are there, and that
changing a widget changes what is shown (the chart data, not just the widget).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from sparsity_core.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "main.py")
CKPTS = Path(os.environ.get("SVITE_CHECKPOINTS_DIR", ROOT / "checkpoints"))
DEMOS = ("dense", "svite", "svite-plus", "s2vite")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Shipped checkpoints, but runs and uploads of this test only."""
    missing = [d for d in DEMOS if not (CKPTS / f"{d}.safetensors").is_file()]
    assert not missing, f"demo checkpoints {missing} are missing in {CKPTS}: run scripts/make_demo_checkpoints.py"
    monkeypatch.setenv("SVITE_CHECKPOINTS_DIR", str(CKPTS))
    monkeypatch.setenv("SVITE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SVITE_UPLOADS_DIR", str(tmp_path / "uploads"))


def ckpt(name: str) -> str:
    return str(CKPTS / f"{name}.safetensors")


def open_page(page: str, checkpoint: str | None = "svite", **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    if checkpoint is not None:
        at.session_state["ckpt"] = ckpt(checkpoint)
    for k, v in state.items():
        at.session_state[k] = v
    at.switch_page(f"../pages/{page}.py")
    return ok(at.run())


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures on the page by title (the figure JSON Streamlit sends to the browser)."""
    out = {}
    for el in at.get("plotly_chart"):
        spec = json.loads(el.proto.spec)
        title = spec.get("layout", {}).get("title", {})
        out[title.get("text", "") if isinstance(title, dict) else str(title)] = spec
    return out


def arr(value) -> np.ndarray:
    """Chart data as numpy: plotly sends arrays as lists or as typed base64 ({dtype, bdata, shape})."""
    if isinstance(value, dict) and "bdata" in value:
        out = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return out.reshape([int(v) for v in str(shape).split(",")]) if shape else out
    return np.asarray(value)


def chart(at: AppTest, starts: str) -> dict:
    found = [spec for title, spec in charts(at).items() if title.startswith(starts)]
    assert len(found) == 1, f"no single chart titled {starts!r}: {list(charts(at))}"
    return found[0]


def z(at: AppTest, starts: str) -> np.ndarray:
    return arr(chart(at, starts)["data"][0]["z"])


def test_overview_shows_summary_integrity_cost():
    at = open_page("overview", "svite")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Method"] == "SViTE" and float(metrics["Overall density"]) == pytest.approx(0.5, abs=0.01)
    assert int(metrics["Mask snapshots"]) >= 10  # every snapshot of a SViTE run holds masks
    assert any("Integrity check passed" in s.value for s in at.success)
    dense, sparse = arr(chart(at, "FLOPs per image")["data"][0]["y"])
    assert sparse < dense
    assert len(at.dataframe) >= 2 and len(at.get("download_button")) >= 2  # tables come with CSV buttons
    assert not [t for t in charts(at) if t.startswith("Measured throughput")]
    at.select_slider(key="speed_batch").set_value(8)
    at.button(key="measure_speed").click().run()
    ok(at)
    speed = chart(at, "Measured throughput")
    assert list(speed["data"][0]["x"]) == ["dense", "this checkpoint"] and (arr(speed["data"][0]["y"]) > 0).all()


def test_overview_of_structured_and_selector_checkpoints():
    at = open_page("overview", "s2vite")
    checks = at.dataframe[1].value
    assert "masked heads/neurons have no effect" in list(checks["check"])
    assert (checks["passed"] == "✔ yes").all()
    at = open_page("overview", "svite-plus")
    table = dict(zip(at.dataframe[0].value["field"], at.dataframe[0].value["value"], strict=True))
    assert table["token selector"] == "keeps 32 of 64 patches"


def test_density_page_tables_bars_heatmap_and_widgets():
    at = open_page("density", "svite")
    table = at.dataframe[0].value
    assert set(table["block type"]) == {"patch", "qkv", "proj", "fc1", "fc2", "head"}
    assert chart(at, "Density per layer, by depth")["data"]
    assert set(chart(at, "Density by block type")["data"][0]["x"]) == {"patch", "qkv", "proj", "fc1", "fc2", "head"}
    assert at.selectbox(key="density_layer").value == "patch_embed.proj.weight"
    first = z(at, "patch_embed.proj.weight")
    assert first.shape == (96, 48)  # conv 96×3×4×4 shown as 96 × 48
    at.selectbox(key="density_layer").set_value("head.weight").run()
    ok(at)
    assert z(at, "head.weight").shape == (10, 96)  # 10 classes × dim 96
    at.selectbox(key="density_layer").set_value("blocks.0.attn.qkv.weight").run()
    ok(at)
    qkv = z(at, "blocks.0.attn.qkv.weight")
    density = float(table.set_index("layer").loc["blocks.0.attn.qkv.weight", "density"])
    # 288 rows > 256: averaged over 2-row tiles, so the mean is still the layer's density
    assert qkv.shape == (144, 96) and qkv.mean() == pytest.approx(density)
    assert "shown as 144×96 tiles" in [t for t in charts(at) if t.startswith("blocks.0.attn.qkv.weight")][0]
    assert density < 1
    # the first snapshot has another topology: the heatmap changes
    at.select_slider(key="density_snapshot").set_value(0).run()
    ok(at)
    assert not np.array_equal(z(at, "blocks.0.attn.qkv.weight"), qkv)
    assert any("no head/neuron masks" in i.value for i in at.info)


def test_density_page_of_structured_checkpoint_has_heads_and_neurons():
    at = open_page("density", "s2vite")
    heads = z(at, "Attention heads alive")
    assert heads.shape == (4, 6) and (heads.sum(axis=1) == 4).all()  # 4 of 6 heads in each of 4 blocks
    assert chart(at, "MLP neurons alive per block")


def test_evolution_page_charts_and_widgets():
    at = open_page("evolution", "svite")
    for title in ("Density per block type across snapshots", "Exploration", "Jaccard distance", "Churn",
                  "patch_embed.proj.weight at snapshot"):
        assert chart(at, title)
    fired = chart(at, "Exploration")["data"]
    assert arr(fired[1]["y"])[-1] > arr(fired[0]["y"])[-1]  # fired > density: the topology explored
    jac = z(at, "Jaccard distance")
    assert jac.shape[0] >= 10 and np.allclose(jac, jac.T) and jac.max() > 0
    at.radio(key="evo_metric").set_value("hamming").run()
    ok(at)
    ham = z(at, "Hamming distance")
    assert ham.shape == jac.shape and not np.allclose(ham, jac)
    assert arr(chart(at, "Churn")["data"][0]["y"]).sum() > 0  # weights were grown
    young = chart(at, "Does each update undo the one before?")["data"]  # the demo's own measurement
    pruned_young, age_blind = arr(young[0]["y"]), arr(young[1]["y"])
    assert len(pruned_young) >= 2 and (pruned_young > age_blind).all()
    at.radio(key="evo_group").set_value("layer").run()
    assert len(chart(at, "Density per layer across")["data"]) == 18  # one line per sparsified weight
    at.selectbox(key="evo_layer").set_value("blocks.0.attn.qkv.weight").run()
    last = z(at, "blocks.0.attn.qkv.weight at snapshot")
    at.select_slider(key="evo_snapshot").set_value(0).run()
    ok(at)
    assert not np.array_equal(z(at, "blocks.0.attn.qkv.weight at snapshot #0"), last)
    assert not [b for b in at.get("download_button") if "GIF" in b.proto.label]  # made on request only
    at.button(key="evo_make_gif").click().run()
    ok(at)
    assert [b for b in at.get("download_button") if "GIF" in b.proto.label]
    assert any("no head/neuron masks" in i.value for i in at.info)


def test_evolution_page_structured_and_dense():
    at = open_page("evolution", "s2vite")
    assert len(chart(at, "Head survival")["data"][0]["y"]) == 24  # 4 blocks × 6 heads
    assert not [t for t in charts(at) if t.startswith("Does each update undo")]  # a weight-level question
    assert chart(at, "MLP neuron survival timeline")
    at = open_page("evolution", "dense")
    n = len(load_checkpoint(ckpt("dense")).history)
    assert not at.get("plotly_chart")
    assert any(f"None of this checkpoint's {n} snapshots holds masks" in i.value for i in at.info)
    assert any(f"0 of {n} snapshots hold masks" in c.value for c in at.caption)  # not "{n} snapshots" above it
    at = open_page("overview", "dense")
    assert {m.label: m.value for m in at.metric}["Mask snapshots"] == f"0 of {n}"


def _agreement(at: AppTest) -> dict[str, dict[str, float]]:
    """The agreement chart's bars: {trace name: {bar: IoU}}."""
    return {t["name"]: dict(zip(t["x"], arr(t["y"]).astype(float), strict=True))
            for t in chart(at, "Agreement: kept 32 of 64")["data"]}


def test_patch_maps_with_a_token_selector():
    at = open_page("patches", "svite-plus", patch_method="input_x_gradient")
    assert chart(at, "Kept 32 of 64 patches")["data"][0]["type"] == "image"
    scores = z(at, "Selector scores")
    assert scores.shape == (8, 8)
    ixg = z(at, "Input × gradient, every patch present")
    assert ixg.shape == (8, 8)
    iou = [m for m in at.metric if m.label.startswith("IoU of the 32 kept")]
    assert len(iou) == 1
    bars = _agreement(at)
    assert set(bars) == {"this image", "mean of 32 demo images"}
    assert bars["this image"]["selector"] == pytest.approx(float(iou[0].value), abs=1e-3)
    assert bars["this image"]["chance"] == pytest.approx(0.3357, abs=1e-4)
    assert 0 <= bars["this image"]["best fixed mask"] <= 1 and 0 <= bars["mean of 32 demo images"]["centre mask"] <= 1
    assert chart(at, "Kept patches at snapshot")
    freq = z(at, "How often each patch is kept: all")
    assert freq.shape == (8, 8) and freq.mean() == pytest.approx(0.5)  # 32 of 64 kept on average
    classes = at.selectbox(key="patch_freq_class").options
    at.selectbox(key="patch_freq_class").set_value(classes[1]).run()
    ok(at)
    assert not np.allclose(z(at, f"How often each patch is kept: {classes[1]}"), freq)
    at.slider(key="patch_demo_index").set_value(3).run()
    ok(at)
    assert not np.allclose(z(at, "Selector scores"), scores)
    at.selectbox(key="patch_method").set_value("integrated_gradients").run()
    ok(at)
    assert z(at, "Integrated gradients, every patch present").shape == (8, 8)
    at.radio(key="patch_source").set_value("Sample photos").run()
    ok(at)
    assert chart(at, "Kept 32 of 64 patches")
    assert any("resized to 32×32 (bicubic)" in c.value for c in at.caption)
    at.selectbox(key="patch_photo").set_value("chelsea").run()  # 451×300: cropped to its middle 300×300 first
    ok(at)
    assert any("(451×300 px) was centre-cropped to 300×300 (151 px of its longer side cut off) and resized to "
               "32×32" in c.value for c in at.caption)
    assert any("trained on 32 px synthetic shapes" in w.value for w in at.warning)


def test_rollout_agreement_on_svite_plus_is_below_one_with_chance_and_baseline_shown():
    """Rollout used to be computed on the selector's gathered sequence, where a dropped patch gets zero:
    IoU 1.000 on every image. With every patch present it must fall below 1, beside chance and the
    content-blind baselines, on the page itself."""
    at = open_page("patches", "svite-plus", patch_method="attention_rollout", patch_demo_index=8)
    iou = float([m for m in at.metric if m.label.startswith("IoU of the 32 kept")][0].value)
    assert iou < 1.0
    rollout = z(at, "Attention rollout, every patch present")
    assert (rollout > 0).all()  # dropped patches have rollout too
    bars = _agreement(at)
    mean = bars["mean of 32 demo images"]
    assert mean["selector"] < 1.0 and bars["this image"]["selector"] == pytest.approx(iou, abs=1e-3)
    text = " ".join(m.value for m in at.markdown)
    assert "Chance (a random 32 of 64): **0.336**" in text and "best fixed mask **" in text
    assert "centre mask **" in text
    assert any("with every patch present" in c.value for c in at.caption)


def test_patch_maps_without_a_token_selector():
    at = open_page("patches", "svite", patch_method="attention_rollout")
    assert any("no token selector" in i.value for i in at.info)
    assert chart(at, "Model input with its patch grid")
    rollout = z(at, "Attention rollout, every patch present")
    assert rollout.shape == (8, 8) and rollout.min() >= 0
    assert not [t for t in charts(at) if t.startswith("Selector scores")]


def test_compare_two_checkpoints_and_two_snapshots():
    at = open_page("compare", "svite", compare_b=ckpt("dense"))
    diff = at.dataframe[1].value.set_index("layer")
    assert len(diff) == 18 and (diff["pruned"] == 0).all() and diff["grown"].sum() > 0
    assert (diff["kept"] + diff["grown"] == diff["weights"]).all()  # B (dense) keeps every weight
    assert list(at.dataframe[0].value["method"]) == ["svite", "dense"]
    assert chart(at, "Per-layer density") and chart(at, "Mask diff per layer")
    first = z(at, "patch_embed.proj.weight: green")
    at.selectbox(key="compare_layer").set_value("head.weight").run()
    ok(at)
    assert z(at, "head.weight: green").shape == (10, 96) != first.shape
    at.radio(key="compare_mode").set_value("Two snapshots of this checkpoint").run()
    ok(at)
    snap_diff = at.dataframe[1].value
    assert (snap_diff["grown"] > 0).any() and (snap_diff["grown"] == snap_diff["pruned"]).all()  # budget kept


def test_retrain_form_rejects_a_bad_data_folder_with_one_line():
    at = open_page("retrain", "svite")
    assert any("No runs launched" in i.value for i in at.info)
    at.text_input(key="rt_data").set_value("/no/such/folder")
    launch = [b for b in at.button if b.label == "Launch training"]
    assert len(launch) == 1
    launch[0].click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Cannot launch: /no/such/folder: no such folder (an ImageFolder "
                                           "directory, or 'demo')"]
    assert not Path(os.environ["SVITE_RUNS_DIR"]).exists()  # nothing was started


def test_talk_mode_tucks_controls_away_and_starts_the_seeded_path():
    at = open_page("density", "dense")
    assert not [e for e in at.expander if e.label == "Controls"]
    at.toggle(key="talk_mode").set_value(True).run()
    ok(at)
    assert at.session_state["ckpt"] == ckpt("svite-plus")  # the talk path starts on the richest demo
    assert [e for e in at.expander if e.label == "Controls"]
    assert any("Next: Mask evolution" in link.proto.label for link in at.get("page_link"))


def test_retrain_form_starts_from_the_sidebar_checkpoint_with_its_settings():
    at = open_page("retrain", "svite-plus")
    assert at.selectbox(key="rt_init").value == ckpt("svite-plus")
    assert at.selectbox(key="rt_method").value == "svite" and at.slider(key="rt_keep").value == 0.5
    assert at.number_input(key="rt_epochs").value == 2 and at.number_input(key="rt_lr").value == 2e-4
    assert any("keeping its token selector (keep ratio 0.5)" in c.value for c in at.caption)
    at.selectbox(key="rt_init").set_value(ckpt("dense")).run()  # another start: the form follows it
    ok(at)
    assert at.slider(key="rt_keep").value == 0.0 and at.slider(key="rt_density").value == 0.5
    assert any("sparsifies the dense model with SViTE" in c.value for c in at.caption)
    at.selectbox(key="rt_init").set_value(ckpt("s2vite")).run()
    ok(at)
    assert at.selectbox(key="rt_method").value == "s2vite"
    assert at.slider(key="rt_atten").value == 0.7 and at.slider(key="rt_other").value == 0.6
