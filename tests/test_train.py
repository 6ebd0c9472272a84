from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_train_config

from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.errors import SviteError
from sparsity_core.training.loop import train
from sparsity_core.training.runtime import RunLock, run_is_active


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dense_run_writes_everything_and_learns(tmp_path):
    cfg = tiny_train_config(tmp_path / "run", epochs=3, train_size=512)
    ckpt = train(cfg, show_progress=False, echo_metrics=False)
    assert ckpt == tmp_path / "run" / "checkpoint.safetensors"
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "config.json" in files and "metrics.jsonl" in files and ".lock" not in files
    assert [f for f in files if f.startswith("resume-")] == ["resume-000000048.pt"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 3
    steps = [r for r in records if r["kind"] == "step"]
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns something
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    loaded = load_checkpoint(ckpt)
    assert loaded.meta["complete"] is True and loaded.meta["step"] == 48 and loaded.method == "dense"
    assert [s.info["event"] for s in loaded.history] == ["init", "epoch", "epoch", "epoch"]
    assert loaded.meta["train_config"]["lr"] == cfg.lr


@pytest.mark.parametrize("split", ["epoch", "mid_epoch"])
def test_resumed_run_equals_uninterrupted_run(tmp_path, split):
    full = train(tiny_train_config(tmp_path / "full"), show_progress=False, echo_metrics=False)
    if split == "epoch":
        first = tiny_train_config(tmp_path / "part", max_steps=8)  # stop at the end of epoch 1
    else:
        first = tiny_train_config(tmp_path / "part", max_steps=11, checkpoint_every=3)  # saves at 3, 6, 9, 11
    train(first, show_progress=False, echo_metrics=False)
    part = load_checkpoint(tmp_path / "part" / "checkpoint.safetensors")
    assert part.meta["complete"] is False
    assert part.meta["step"] == (8 if split == "epoch" else 11)
    resumed = train(tiny_train_config(tmp_path / "part", resume=str(tmp_path / "part")), show_progress=False,
                    echo_metrics=False)
    _assert_same_weights(_weights(full), _weights(resumed))
    assert load_checkpoint(resumed).meta["complete"] is True


def test_run_directory_is_never_clobbered(tmp_path):
    cfg = tiny_train_config(tmp_path / "run", max_steps=2, epochs=1)
    ckpt = train(cfg, show_progress=False, echo_metrics=False)
    before = ckpt.read_bytes()
    with pytest.raises(SviteError, match="already holds a run"):
        train(cfg, show_progress=False, echo_metrics=False)
    with RunLock(tmp_path / "other"):  # a run in progress holds the directory
        assert run_is_active(tmp_path / "other")
        with pytest.raises(SviteError, match="another run"):
            train(tiny_train_config(tmp_path / "other"), show_progress=False, echo_metrics=False)
    assert not run_is_active(tmp_path / "other")
    assert ckpt.read_bytes() == before


@pytest.mark.parametrize("field,value,message", [
    ("density", 0.0, "--density"), ("density", 1.5, "--density"), ("update_frequency", 0, "--update-frequency"),
    ("keep_ratio", 0.0, "--keep-ratio"), ("epochs", 0, "--epochs"), ("lr", -1.0, "--lr"),
    ("token_number", 0, "--token-number"),
])
def test_absurd_flags_are_rejected_before_anything_is_written(tmp_path, field, value, message):
    with pytest.raises(SviteError, match=message):
        train(tiny_train_config(tmp_path / "run", **{field: value}), show_progress=False, echo_metrics=False)
    assert not (tmp_path / "run").exists()


def test_deit_style_mixup_cutmix_trains(tmp_path):
    ckpt = train(tiny_train_config(tmp_path / "run", epochs=1, mixup=0.8, cutmix=1.0), show_progress=False,
                 echo_metrics=False)
    metrics = load_checkpoint(ckpt).meta["metrics"]
    assert 0 < metrics["train_loss"] < 10 and metrics["val_loss"] == metrics["val_loss"]  # finite, not NaN
    with pytest.raises(SviteError, match="even --batch-size"):
        train(tiny_train_config(tmp_path / "odd", batch_size=31, mixup=0.8), show_progress=False, echo_metrics=False)

