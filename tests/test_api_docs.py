"""docs/api.md's examples run, in order, in one fresh folder (the reading example reads the run the RigL
example wrote); and the package's face: every documented name, and no process-wide setting changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), flags=re.S)
FACE = ("Recorder", "load_checkpoint", "LoadedCheckpoint", "build_model", "ModelConfig", "MaskSet", "MaskHistory",
        "train", "TrainConfig", "SviteError", "__version__")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("api_docs")


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_example_of_the_api_doc_runs(folder, index, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    exec(compile(BLOCKS[index], f"docs/api.md example {index + 1}", "exec"), {"__name__": f"api_example_{index}"})
    out = capsys.readouterr().out
    if "load_checkpoint(" in BLOCKS[index]:
        method, vit, snapshots, density = out.splitlines()[0].split()
        assert (method, vit) == ("RigL", "True") and int(snapshots) == 3 and abs(float(density) - 0.5) < 0.02
    if "train(TrainConfig" in BLOCKS[index]:
        assert (folder / "runs" / "svite_s0" / "checkpoint.safetensors").is_file()


def test_the_doc_has_the_three_loops_and_the_face():
    assert len(BLOCKS) >= 6
    joined = "\n".join(BLOCKS)
    for needle in ("WeightNormSparsifier", "prune.global_unstructured", "masks=masks", "rec.snapshot", "rec.log"):
        assert needle in joined


def test_the_face_exports_what_the_doc_names():
    import sparsity_core

    for name in FACE:
        assert getattr(sparsity_core, name) is not None, name
        assert name in sparsity_core.__all__ and name in dir(sparsity_core)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        sparsity_core.nothing  # noqa: B018


def _python(code: str, env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def test_importing_the_package_leaves_the_hub_setting_alone_and_the_cli_keeps_it_offline():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = ("import os, sparsity_core, timm; from sparsity_core import Recorder, train, load_checkpoint; "
            "import huggingface_hub.constants as c; print(os.environ.get('HF_HUB_OFFLINE'), c.HF_HUB_OFFLINE)")
    assert _python(code, env) == "None False"
    code = ("import os, sys; from sparsity_core.cli import main; "
            "main(['inspect', 'no-such-file']); print(os.environ.get('HF_HUB_OFFLINE'))")
    assert _python(code, env) == "1"
    assert _python(code, {**env, "HF_HUB_OFFLINE": "0"}) == "0"  # an explicit choice wins
