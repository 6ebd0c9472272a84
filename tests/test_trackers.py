"""Writing into the trackers people use: ``svite train --log-to tensorboard`` and ``Recorder(log_to=...)``
write the stable tags of docs/api.md, read back here with the runs index's own TensorBoard reader; W&B
offline when its package is installed; an unknown tracker or a missing package is one line."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_train_config  # noqa: E402

from sparsity_core import Recorder, load_checkpoint  # noqa: E402
from sparsity_core.cli import main  # noqa: E402
from sparsity_core.runs.readers.events import read_scalars  # noqa: E402
from sparsity_core.trackers import parse_log_to, tags  # noqa: E402
from sparsity_core.training.loop import train  # noqa: E402


def test_svite_train_log_to_tensorboard_writes_every_documented_tag(tmp_path):
    cfg = tiny_train_config(tmp_path / "run", method="svite", density=0.5, update_frequency=3, warmup_epochs=0.5,
                            log_to="tensorboard")
    ckpt = train(cfg, show_progress=False, echo_metrics=False)
    scalars, note = read_scalars(tmp_path / "run")
    assert note is None
    for tag in (tags.TRAIN_LOSS, tags.TRAIN_LR, tags.TRAIN_EPOCH_LOSS, tags.VAL_TOP1, tags.VAL_TOP5, tags.VAL_LOSS,
                tags.DENSITY, tags.FIRED, tags.JACCARD_PREV, tags.MOVED, tags.MOVED_SHARE,
                tags.LAYER_DENSITY + "blocks.0.attn.qkv.weight"):
        assert tag in scalars, (tag, sorted(scalars))
    loaded = load_checkpoint(ckpt)
    assert scalars[tags.VAL_TOP1]["value"].iloc[-1] == pytest.approx(loaded.meta["metrics"]["val_top1"])
    assert scalars[tags.DENSITY]["value"].between(0.49, 0.51).all()
    updates = [s.step for s in loaded.history if s.info.get("event") == "update"]
    jaccard = scalars[tags.JACCARD_PREV].set_index("step")["value"]
    moved = scalars[tags.MOVED].set_index("step")["value"]
    assert updates and all(jaccard[s] < 1.0 and moved[s] > 0 for s in updates)  # an update moves weights
    layer = scalars[tags.LAYER_DENSITY + "blocks.0.attn.qkv.weight"]["value"].iloc[-1]
    assert layer == pytest.approx(loaded.masks.density()["blocks.0.attn.qkv.weight"])
    steps = scalars[tags.TRAIN_LOSS]["step"].tolist()
    assert steps == list(range(cfg.log_every, 16 + 1, cfg.log_every))  # every logged step, at its step


def test_recorder_log_to_tensorboard_keeps_its_own_names_under_custom(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8))
    masks = {"0.weight": torch.rand(8, 8) < 0.5}
    with Recorder(tmp_path / "rec", model, masks=masks, log_to="tensorboard") as rec:
        for step in range(3):
            rec.log(step, loss=1.0 / (step + 1), grad_norm=0.5)
            masks["0.weight"][0, step] = not masks["0.weight"][0, step]
            rec.snapshot(step)
        rec.log(3, acc1=55.0)
    scalars, _ = read_scalars(tmp_path / "rec")
    assert scalars["custom/grad_norm"]["value"].tolist() == [0.5, 0.5, 0.5]
    assert scalars[tags.VAL_TOP1]["value"].tolist() == [55.0]  # acc1 is top-1
    jaccard = scalars[tags.JACCARD_PREV]["value"].tolist()
    assert len(jaccard) == 2 and all(0 < j < 1 for j in jaccard)  # one entry flipped between snapshots


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="the wandb extra is not installed (pip install 'svite-explorer[wandb]')")
def test_recorder_log_to_wandb_writes_an_offline_run_with_the_tags(tmp_path, monkeypatch):
    """W&B's offline run file, checked for the tags and the values logged (wandb ships no reader for offline
    files; ``wandb sync`` uploads them)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    with Recorder(tmp_path / "rec", nn.Linear(4, 4), masks={"weight": torch.ones(4, 4)}, log_to="wandb") as rec:
        rec.log(0, loss=0.75)
        rec.snapshot(0)
        rec.log(1, val_top1=61.5)
    runs = list((tmp_path / "rec" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    for tag in (tags.TRAIN_LOSS, tags.VAL_TOP1, tags.DENSITY, tags.LAYER_DENSITY + "weight"):
        assert tag.encode() in data, tag
    assert b"61.5" in data and b"0.75" in data


def test_unknown_or_missing_trackers_are_one_line_naming_the_flag(tmp_path, capsys, monkeypatch):
    code = main(["train", "--out", str(tmp_path / "x"), "--log-to", "tensorboard,mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--log-to mlflow: unknown tracker" in err
    assert not (tmp_path / "x").exists()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(Exception, match=r"tensorboard package is not installed; pip install 'svite-explorer\[tensorboard\]'"):
        parse_log_to("tensorboard")
    monkeypatch.undo()
    assert parse_log_to(" ") == [] and parse_log_to(None) == []
    assert parse_log_to("TensorBoard, tensorboard") == ["tensorboard"]


def test_tags_of_a_metrics_record_are_stable():
    from sparsity_core.trackers.tags import record_scalars

    assert record_scalars({"kind": "step", "step": 4, "epoch": 0.5, "loss": 2.0, "lr": 1e-3, "images_per_s": 9.0}) == {
        "train/loss": 2.0, "train/lr": 1e-3, "train/images_per_s": 9.0}
    assert record_scalars({"kind": "epoch", "step": 8, "val_top1": 50.0, "density": 0.5, "time_s": 3.0,
                           "bad": math.nan, "flag": True}) == {"val/top1": 50.0}
    assert record_scalars({"kind": "end", "step": 8, "metrics": {}}) == {}
