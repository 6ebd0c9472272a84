"""``sparsity_core.Recorder`` in loops of other people's making: the three mask sources, the run folder every
reader of ours reads, bad input as one sentence, and a loop killed at any moment leaving a readable run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import timm
import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from torch.nn.utils import prune

from sparsity_core import MaskSet, Recorder, SviteError, load_checkpoint
from sparsity_core.checkpoint import read_header
from sparsity_core.cli import main
from sparsity_core.record import logical_name


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4, embed_dim=24,
                             depth=2, num_heads=2, num_classes=5)


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, shape: tuple[int, ...]) -> float:
    loss = model(torch.randn(*shape)).logsumexp(-1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def test_ao_sparsifier_masks_are_recorded_and_the_vit_loads_with_masked_weights(tmp_path):
    model = tiny_vit()
    sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 1), zeros_per_block=1)
    sparsifier.prepare(model, [{"tensor_fqn": f"blocks.{i}.mlp.fc1.weight"} for i in range(2)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rec = Recorder(tmp_path / "run", model, config={"seed": 3, "epochs": 2})
    assert rec.kind == "vit" and rec.model_config.embed_dim == 24 and rec.config["method"] == "torch.ao.pruning"
    sparsifier.step()
    rec.snapshot(0, epoch=0)
    expected = []
    for epoch in range(2):
        rec.log(epoch, loss=train_step(model, opt, (2, 3, 32, 32)))
        sparsifier.step()
        rec.snapshot(epoch + 1, epoch=epoch + 1)
        expected.append({n: m.clone() for n, m in ((f"blocks.{i}.mlp.fc1.weight",
                                                     model.blocks[i].mlp.fc1.parametrizations.weight[0].mask)
                                                    for i in range(2))})
        rec.log(epoch + 1, epoch=epoch + 1, top1=40.0 + epoch)
    path = rec.close()
    loaded = load_checkpoint(path)
    assert loaded.is_vit and loaded.method == "torch.ao.pruning" and loaded.meta["complete"] is True
    assert loaded.meta["metrics"]["val_top1"] == 41.0 and [r["val_top1"] for r in loaded.meta["curve"]] == [40.0, 41.0]
    assert [s.info["event"] for s in loaded.history][0] == "init" and len(loaded.history) == 3
    for name, mask in expected[-1].items():  # the last snapshot and the final masks are the sparsifier's
        assert torch.equal(loaded.history.layer(2, name), mask.bool()) and torch.equal(loaded.masks[name], mask.bool())
        weight = loaded.model.state_dict()[name]  # stored as the model computes it: original * mask
        assert torch.equal(weight != 0, mask.bool()) and abs(loaded.masks.density()[name] - 0.5) < 0.01
    assert "blocks.0.mlp.fc1.parametrizations.weight.original" not in loaded.model.state_dict()


def test_prune_buffers_of_any_module_and_a_run_that_starts_dense(tmp_path):
    model = small_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(tmp_path / "run", model, config={"seed": 0}) as rec:
        assert rec.config["method"] == "dense"  # nothing pruned yet
        rec.snapshot(0)
        train_step(model, opt, (8, 12))
        prune.global_unstructured([(model[0], "weight"), (model[2], "weight")], prune.L1Unstructured, amount=0.5)
        rec.snapshot(1, epoch=1)
        prune.global_unstructured([(model[0], "weight"), (model[2], "weight")], prune.L1Unstructured, amount=0.5)
        rec.snapshot(2, epoch=2)
        want = {"0.weight": model[0].weight_mask.bool().clone(), "2.weight": model[2].weight_mask.bool().clone()}
    loaded = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert not loaded.is_vit and loaded.model_config.name == "Sequential" and loaded.method == "torch.nn.utils.prune"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["method"] == "torch.nn.utils.prune"
    assert [s.info["event"] for s in loaded.history] == ["init", "update", "update"]
    assert not loaded.history.has(0, "masks") and loaded.history.has(1, "masks")  # the dense start holds none
    assert MaskSet(want).equal(loaded.masks) and abs(loaded.masks.overall_density() - 0.25) < 0.02
    assert set(loaded.model.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with pytest.raises(SviteError, match="only its own code can rebuild"):
        loaded.model(torch.zeros(1, 12))


def test_a_mask_dict_by_any_of_its_names_float_or_bool(tmp_path):
    model = small_mlp()
    masks = {"0.weight": torch.rand(16, 12) < 0.3, "module.2.parametrizations.weight.original": torch.ones(4, 16)}
    assert logical_name("module.2.parametrizations.weight.original") == "2.weight"
    assert logical_name("blocks.0.attn.qkv.weight_orig") == "blocks.0.attn.qkv.weight"
    rec = Recorder(tmp_path / "run", model, masks=masks, method="rigl")
    rec.snapshot(0)
    rec.snapshot(1)  # nothing changed
    masks["0.weight"][:] = ~masks["0.weight"]  # the caller's dict, read at every snapshot
    rec.snapshot(2)
    rec.close()
    h = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors").history
    assert [s.info["event"] for s in h] == ["init", "snapshot", "update"]
    assert torch.equal(h.layer(2, "0.weight"), masks["0.weight"]) and bool(h.layer(2, "2.weight").all())


@pytest.mark.parametrize("masks, message", [
    ({"0.bias.x": torch.ones(16)}, "'0.bias.x' names no weight of the model"),
    ({"0.weight": torch.ones(3, 3)}, r"'0.weight' is \[3, 3\], the weight is \[16, 12\]"),
])
def test_bad_masks_are_one_sentence_naming_the_key(tmp_path, masks, message):
    rec = Recorder(tmp_path / "run", small_mlp(), masks=masks)
    with pytest.raises(SviteError, match=message):
        rec.snapshot(0)
    rec.close()


def test_bad_calls_are_refused_and_a_folder_holding_a_run_is_left_alone(tmp_path):
    rec = Recorder(tmp_path / "run", small_mlp(), masks={})
    with pytest.raises(SviteError, match="loss='x' is not a number"):
        rec.log(0, loss="x")
    with pytest.raises(SviteError, match="step must be an int"):
        rec.snapshot(-1)
    with pytest.raises(SviteError, match="another run"):
        Recorder(tmp_path / "run", small_mlp())  # the run lock, while the first is open
    rec.snapshot(0)
    rec.close()
    before = (tmp_path / "run" / "checkpoint.safetensors").read_bytes()
    with pytest.raises(SviteError, match="already holds a run"):
        Recorder(tmp_path / "run", small_mlp())
    assert (tmp_path / "run" / "checkpoint.safetensors").read_bytes() == before
    with pytest.raises(SviteError, match="is closed"):
        rec.log(1, loss=1.0)
    with pytest.raises(SviteError, match="log_to tensorflow: unknown tracker"):
        Recorder(tmp_path / "other", small_mlp(), log_to="tensorflow")
    with pytest.raises(SviteError, match="config: bad=.* is not a JSON value"):
        Recorder(tmp_path / "third", small_mlp(), config={"bad": object()})


def test_a_loop_that_raises_leaves_its_run_unfinished(tmp_path, capsys):
    with pytest.raises(RuntimeError):
        with Recorder(tmp_path / "run", small_mlp(), masks={"0.weight": torch.ones(16, 12)}) as rec:
            rec.snapshot(0)
            raise RuntimeError("the loop broke")
    assert read_header(tmp_path / "run" / "checkpoint.safetensors").meta["complete"] is False
    assert main(["runs", str(tmp_path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["runs"][0]
    assert row["status"] == "failed" and "without an end record" in row["error"]


KILLED_LOOP = """
import sys, time, torch
from torch import nn
from sparsity_core import Recorder
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
masks = {"0.weight": torch.rand(64, 64) < 0.5, "2.weight": torch.rand(8, 64) < 0.5}
rec = Recorder(sys.argv[1], model, masks=masks, config={"seed": 0})
step = 0
while True:
    rec.log(step, loss=1.0 / (step + 1))
    flip = torch.randint(0, 64 * 64, (40,))
    masks["0.weight"].view(-1)[flip] = ~masks["0.weight"].view(-1)[flip]
    rec.snapshot(step, epoch=step / 10)
    step += 1
"""


def test_a_recorder_killed_mid_run_leaves_a_readable_run(tmp_path, capsys):
    """SIGKILL at a random moment of a loop that snapshots as fast as it can (mid-write, most likely): the
    checkpoint is always a whole one (atomic rewrite), the run reads as killed, every tool reads it."""
    out = tmp_path / "killed"
    script = tmp_path / "loop.py"
    script.write_text(textwrap.dedent(KILLED_LOOP))
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    snapshots = 0
    while time.time() < deadline and snapshots < 5:
        time.sleep(0.2)
        try:
            snapshots = len(read_header(out / "checkpoint.safetensors").history)
        except (SviteError, FileNotFoundError):
            pass
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    time.sleep(0.05 * (os.getpid() % 7))  # a moment that differs from run to run
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert snapshots >= 5
    loaded = load_checkpoint(out / "checkpoint.safetensors")
    loaded.history.verify()  # every snapshot decodes
    assert len(loaded.history) >= 5 and loaded.meta["complete"] is False
    assert main(["inspect", str(out / "checkpoint.safetensors"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["history"]) == len(loaded.history) and doc["model_kind"] == "module"
    assert main(["runs", str(tmp_path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["runs"][0]
    assert row["name"] == "killed" and row["status"] == "failed" and "killed" in row["error"]
