"""The Patch maps page on a run trained on an image folder (issue 19): its true class and its per-class
keep frequency come from the core's name matching, so they name what the checkpoint calls each class,
and a class folder added since training is left out rather than given another class's number."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from sparsity_core.analysis.report import evaluation_data
from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.cli import main
from sparsity_core.data import DemoShapes, MatchedDataset

APP = str(Path(__file__).resolve().parents[1] / "app" / "main.py")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> Path:
    """A tiny SViTE+ run on a folder of three demo classes; then a fourth class folder appears."""
    root = tmp_path_factory.mktemp("folder-run")
    demo = DemoShapes("val", size=400, seed=0)
    wanted = {"ring": "ring", "vbar": "vbar", "xcross": "xcross"}
    for i in range(len(demo)):
        sample = demo.sample(i)
        name = demo.class_names[sample.label]
        folder = root / "shapes" / wanted.get(name, "zeta")
        if name in wanted or name == "circle":
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sample.image).save(folder / f"{i:04d}.png")
    zeta = root / "zeta"
    (root / "shapes" / "zeta").rename(zeta)  # not there while training
    assert main(["train", "--data", str(root / "shapes"), "--keep-ratio", "0.5", "--embed-dim", "48", "--depth", "2",
                 "--num-heads", "4", "--epochs", "1", "--batch-size", "32", "--max-steps", "2", "--quiet",
                 "--out", str(root / "runs" / "folder")]) == 0
    zeta.rename(root / "shapes" / "zeta")  # a class the checkpoint never saw
    return root / "runs" / "folder" / "checkpoint.safetensors"


def test_patch_maps_on_a_folder_run_names_true_classes_by_the_checkpoint(folder_run, tmp_path, monkeypatch):
    monkeypatch.setenv("SVITE_RUNS_DIR", str(folder_run.parent.parent))  # the picker lists the run
    monkeypatch.setenv("SVITE_UPLOADS_DIR", str(tmp_path / "uploads"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["ckpt"] = str(folder_run)
    at.session_state["patch_method"] = "attention_rollout"
    at.switch_page("../pages/patches.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="patch_source").value == "Its data folder"  # its own data, by default

    loaded = load_checkpoint(folder_run)
    bundle, _, match = evaluation_data(loaded, loaded.meta["data"]["source"])
    assert match.left_out == ("zeta",)
    data = MatchedDataset(bundle.val, match)
    for index in (0, len(data) - 1):
        at.slider(key="patch_folder_index").set_value(index).run()
        assert not at.exception
        shown = [re.search(r"true class: \*\*(\w+)\*\*", c.value) for c in at.caption]
        truth = [m.group(1) for m in shown if m]
        assert truth == [Path(data.filename(index)).parent.name]  # the image's own folder

    heading = [h.value for h in at.subheader if h.value.startswith("Keep frequency over")]
    assert heading == ["Keep frequency over its data folder's validation images"]
    classes = at.selectbox(key="patch_freq_class").options
    assert classes[0] == "all" and set(classes[1:]) == {"ring", "vbar", "xcross"}  # zeta is left out
