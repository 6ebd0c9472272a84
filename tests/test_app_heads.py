"""The Heads page in AppTest: one map per head with the pruned ones marked (S²ViTE demo), all alive (dense
demo), each head's importance and object IoU beside chance, the same heads across snapshots from the masks
or from the head probe, an official-format DeiT checkpoint, and the talk path's own checkpoint for it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_train_config  # noqa: E402
from test_app_pages import APP, arr, chart, charts, ckpt, isolated, ok, open_page  # noqa: E402,F401
from test_browser import _official_checkpoint  # noqa: E402

from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.training.loop import train  # noqa: E402

GRID = "Class-token attention of block"


def _grid(at) -> dict:
    found = [spec for title, spec in charts(at).items() if title.startswith(GRID) and "on this image" in title]
    assert len(found) == 1, list(charts(at))
    return found[0]


def _maps(spec: dict) -> list[np.ndarray]:
    return [arr(t["z"]) for t in spec["data"] if t["type"] == "heatmap"]


def _titles(spec: dict) -> list[str]:
    return [a["text"] for a in spec["layout"]["annotations"] if a["text"].startswith("head ")]


def _story(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("Block "))


def test_s2vite_demo_six_maps_per_block_with_the_pruned_ones_marked():
    at = open_page("heads", "s2vite")
    units = load_checkpoint(ckpt("s2vite")).units
    for block in (3, 0):
        at.select_slider(key="heads_block").set_value(block).run()
        ok(at)
        alive = units[f"blocks.{block}.attn.heads"].numpy()
        spec = _grid(at)
        maps, titles = _maps(spec), _titles(spec)
        assert len(maps) == 6 and len(titles) == 6 and f"block {block}" in spec["layout"]["title"]["text"]
        assert ["pruned" in t for t in titles] == [not a for a in alive]
        for m, a, t in zip(maps, alive, titles, strict=True):
            assert (np.ptp(m) < 1e-6) == (not a)  # a pruned head attends uniformly
            assert ("Taylor 0<" in t + "<") == (not a) and ("IoU" in t) == bool(a)
        assert f"{int(alive.sum())} of 6 heads alive" in _story(at) and "chance gives" in _story(at)
        bars = chart(at, f"Do the heads of block {block}")
        names = {t["name"] for t in bars["data"]}
        assert {"this image", "chance (this image)", "chance (mean)"} <= names
    first = _maps(_grid(at))
    at.select_slider(key="heads_block").set_value(1).run()
    assert not all(np.array_equal(a, b) for a, b in zip(first, _maps(_grid(ok(at))), strict=True))
    at.radio(key="heads_kind").set_value("rollout").run()
    assert chart(ok(at), "Per-head rollout of block 1 on this image")
    lines = chart(at, "Block 1: object IoU of each head over training")  # the demo's head probe
    alive = units["blocks.1.attn.heads"].numpy()
    named = {t["name"].removesuffix(" (never alive)"): t for t in lines["data"]}
    for h, a in enumerate(alive):  # at the last snapshot a pruned head is uniform (no IoU), an alive one is not
        y = arr(named[f"head {h}"]["y"]).astype(float)
        assert np.isnan(y[-1]) == (not a)
        assert ("never alive" in named[f"head {h}"]["name"]) == bool(np.isnan(y).all())


def _without_probe(name: str, runs: Path) -> str:
    """A copy of a shipped demo with no head probe (as checkpoints made before it are), in the runs folder."""
    from sparsity_core.checkpoint import save_checkpoint
    from sparsity_core.checkpoint.convert import reencoded_history

    loaded = load_checkpoint(ckpt(name))
    history = reencoded_history(loaded)
    history.entries["probe"] = [None] * len(history)
    history.layers.pop("probe", None)
    out = runs / f"{name}-no-probe" / "checkpoint.safetensors"
    out.parent.mkdir(parents=True)
    meta = {k: v for k, v in loaded.meta.items() if k not in ("format", "format_version", "head_probe")}
    save_checkpoint(out, loaded.model, loaded.model_config, masks=loaded.masks, units=loaded.units,
                    fired=loaded.fired, history=history, meta=meta)
    return str(out)


def test_without_a_probe_the_masks_say_what_they_can(tmp_path):
    at = AppTest_for(_without_probe("svite", tmp_path / "runs"))
    assert any("recorded no head probe" in i.value for i in at.info)
    timeline = chart(at, "Block 3: share of each head's q, k and v weights kept")
    shares = arr(timeline["data"][0]["z"]).astype(float)
    assert shares.shape[0] == 6 and 0 < np.nanmin(shares) < np.nanmax(shares) < 1


def test_dense_demo_has_every_head_alive():
    at = open_page("heads", "dense")
    spec = _grid(at)
    assert len(_maps(spec)) == 6 and not any("pruned" in t for t in _titles(spec))
    assert "all 6 heads alive" in _story(at) and "pruned" not in _story(at)


def test_a_dense_model_without_a_probe_says_its_history_holds_no_masks(tmp_path):
    at = AppTest_for(_without_probe("dense", tmp_path / "runs"))
    assert any("Its history holds no masks" in i.value for i in at.info)


def test_the_head_probe_shows_the_same_heads_over_training(tmp_path):
    run = tmp_path / "runs" / "probe"
    train(tiny_train_config(run, method="s2vite", atten_density=0.5, other_density=0.6, update_frequency=3,
                            warmup_epochs=0.5), show_progress=False, echo_metrics=False)
    at = AppTest_for(str(run / "checkpoint.safetensors"))
    n = len(load_checkpoint(run / "checkpoint.safetensors").history)
    assert not any("recorded no head probe" in i.value for i in at.info)
    lines = chart(at, "Block 1: object IoU of each head over training")
    assert {t["name"] for t in lines["data"]} >= {"head 0", "chance"}
    alive = load_checkpoint(run / "checkpoint.safetensors").units["blocks.1.attn.heads"].numpy()
    first_alive = int(np.flatnonzero(alive)[0])  # the head followed by default: an alive one
    strip = chart(at, f"Head {first_alive} of block 1 across training")
    assert len(_maps(strip)) == min(n, 12)
    at.select_slider(key="heads_snapshot").set_value(0).run()
    early = _maps(chart(ok(at), "Class-token attention of block 1 at snapshot #0"))
    at.select_slider(key="heads_snapshot").set_value(n - 1).run()
    late = _maps(chart(ok(at), f"Class-token attention of block 1 at snapshot #{n - 1}"))
    assert len(early) == len(late) == 4 and not np.allclose(early[0], late[0])


def AppTest_for(path: str):  # noqa: N802 (reads as the class it builds)
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=90)
    at.session_state["ckpt"] = path
    at.switch_page("../pages/heads.py")
    return ok(at.run())


def test_an_official_deit_checkpoint_shows_its_heads(tmp_path):
    (tmp_path / "runs" / "official").mkdir(parents=True)
    path = _official_checkpoint(tmp_path / "runs" / "official" / "checkpoint.pth")
    at = AppTest_for(str(path))
    spec = _grid(at)
    assert len(_maps(spec)) == 2 and not any("pruned" in t for t in _titles(spec))
    assert _maps(spec)[0].shape == (14, 14)
    assert any("on this image, with the model's prediction" in c.value for c in at.caption)
    assert not [t for t in charts(at) if t.startswith("Do the heads")]  # a photo has no object mask


@pytest.mark.parametrize("talk", [True, False])
def test_the_talk_path_shows_pruned_heads_and_normal_mode_follows_the_sidebar(talk):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=90)
    if talk:
        at.query_params["talk"] = "1"
    else:
        at.session_state["ckpt"] = ckpt("svite-plus")
    at.switch_page("../pages/heads.py")
    ok(at.run())
    assert at.session_state["ckpt"] == ckpt("svite-plus")
    titles = _titles(_grid(at))
    assert any("pruned" in t for t in titles) == talk  # S²ViTE's pruned heads in a talk; SViTE+ has none


def test_a_probe_that_does_not_fit_the_model_is_one_sentence_and_the_page_stays_up(tmp_path):
    """An untrusted file may claim any probe shape: the section says so in one line, the rest still shows."""
    import torch

    from sparsity_core.checkpoint import save_checkpoint
    from sparsity_core.history.lazy import MaskHistory
    from sparsity_core.masks.maskset import Snapshot

    run = tmp_path / "runs" / "good"
    train(tiny_train_config(run, epochs=1), show_progress=False, echo_metrics=False)
    good = load_checkpoint(run / "checkpoint.safetensors")
    odd = {f"blocks.{b}.attn.cls_attention": torch.full((4, 3, 64), 0.01, dtype=torch.float16) for b in range(2)}
    history = MaskHistory.from_snapshots([Snapshot(s.step, s.epoch, s.masks, s.units, s.state, s.info, odd)
                                          for s in good.history])
    bad = tmp_path / "runs" / "bad" / "checkpoint.safetensors"
    bad.parent.mkdir()
    save_checkpoint(bad, good.model, good.model_config, history=history, meta=good.meta)
    at = AppTest_for(str(bad))
    assert [w.value for w in at.warning if "head probe of block" in w.value]
    assert len(_maps(_grid(at))) == 4  # the maps of the final weights still show
