"""The three loops of ``examples/``, each run at tiny size and its run opened by the app (AppTest) on
Overview and Mask evolution: a torch.ao.pruning sparsifier on a timm ViT, torch.nn.utils.prune on a CNN (a
model that is not a ViT: the model pages say why they do not apply), a hand-written RigL over a mask dict."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from sparsity_core import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "main.py")
EXAMPLES = {"ao_sparsifier_vit": "torch.ao.pruning", "prune_global_magnitude": "torch.nn.utils.prune",
            "rigl_mask_dict": "RigL (mask dict)"}


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"examples.{name}", ROOT / "examples" / f"{name}.py",
                                                  submodule_search_locations=None)
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.path.insert(0, str(ROOT / "examples"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "examples"))
    return module


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    for name in EXAMPLES:
        _example(name).main(str(root / name), epochs=2, tiny=True)
    return root


@pytest.fixture
def app_env(example_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("SVITE_RUNS_DIR", str(example_runs))
    monkeypatch.setenv("SVITE_UPLOADS_DIR", str(tmp_path / "uploads"))
    monkeypatch.setenv("SVITE_RUNS_REFRESH_S", "0")
    return example_runs


def _page(page: str, checkpoint: Path) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["ckpt"] = str(checkpoint)
    at.switch_page(f"../pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_writes_a_run_of_ours(example_runs, name):
    loaded = load_checkpoint(example_runs / name / "checkpoint.safetensors")
    assert loaded.method == EXAMPLES[name] and loaded.meta["complete"] is True
    assert loaded.is_vit == (name != "prune_global_magnitude")
    assert any(s.info.get("event") == "update" for s in loaded.history)  # the masks moved
    assert len(loaded.meta["curve"]) == 2 and all("val_top1" in r for r in loaded.meta["curve"])
    config = json.loads((example_runs / name / "config.json").read_text())
    assert config["seed"] == 0 and config["epochs"] == 2


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_opens_on_overview_and_mask_evolution(app_env, name):
    ckpt = app_env / name / "checkpoint.safetensors"
    overview = _page("overview", ckpt)
    metrics = {m.label: m.value for m in overview.metric}
    assert metrics["Method"] and metrics["Overall density"] != "1.000"
    infos = " ".join(i.value for i in overview.info)
    if name == "prune_global_magnitude":
        assert "recorded a Sequential: not a timm ViT/DeiT" in infos
    else:
        assert "not a timm ViT" not in infos and overview.subheader  # the whole page: integrity, cost
    evolution = _page("evolution", ckpt)
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in evolution.get("plotly_chart")]
    assert any("topology" in t.lower() or "distance" in t.lower() or "jaccard" in t.lower() for t in titles), titles
    assert [s.value for s in evolution.subheader][:1] == ["Density across snapshots"]
