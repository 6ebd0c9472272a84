"""Runs made elsewhere, read by ``svite runs --json`` like ours: DeiT/SViTE folders (``log.txt`` +
``checkpoint.pth``), timm ``train.py`` folders (``summary.csv`` + ``args.yaml``) and TensorBoard folders, in
other field orders, with extra columns, with files missing, damaged or hostile (one-line notes)."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from foreign_runs import DEIT_LOG_FIELDS, deit_folder, tensorboard_folder, timm_folder  # noqa: E402

from sparsity_core.cli import main  # noqa: E402


def _old(folder: Path) -> None:
    """Files last changed an hour ago (a run that is not being written)."""
    stamp = time.time() - 3600
    for p in [folder, *folder.rglob("*")]:
        os.utime(p, (stamp, stamp))


def runs_json(root: Path, capsys, *extra: str) -> dict:
    assert main(["runs", str(root), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("elsewhere")
    deit_folder(root / "deit" / "svite_s0", seed=0)
    deit_folder(root / "deit" / "svite_s1", seed=1)
    deit_folder(root / "deit" / "dense_s0", density=None, order=tuple(reversed(DEIT_LOG_FIELDS)),
                extra={"train_grad_norm": 1.5, "test_acc1_ema": 33.0})
    deit_folder(root / "deit" / "nolog_s0", log=False)
    deit_folder(root / "deit" / "stopped_s0", epochs=10, done=2)
    with open(root / "deit" / "svite_s1" / "log.txt", "a") as fh:
        fh.write('{"epoch": 3, "test_acc1": 9')  # a line torn by a kill
    timm_folder(root / "timm" / "vit_s0")
    timm_folder(root / "timm" / "reordered_s1", seed=1,
                columns=("lr", "eval_top5", "epoch", "eval_top1", "lr_extra", "train_loss", "eval_loss"))
    timm_folder(root / "timm" / "noargs", args=False)
    tensorboard_folder(root / "tb" / "fraction", fraction=True)
    tensorboard_folder(root / "tb" / "percent", fraction=False)
    hostile = root / "deit" / "hostile"
    hostile.mkdir()
    (hostile / "checkpoint.pth").write_bytes(pickle.dumps(print))  # a GLOBAL: refused unread
    other = root / "notes"  # a log.txt that is not DeiT's: the folder is still searched below
    other.mkdir()
    (other / "log.txt").write_text("started the sweep\n")
    deit_folder(other / "inner_s0")
    _old(root)
    return root


def test_deit_and_svite_folders_read_like_ours(sweep, capsys):
    doc = runs_json(sweep, capsys)
    rows = {r["name"]: r for r in doc["runs"]}
    s0, s1 = rows["deit/svite_s0"], rows["deit/svite_s1"]
    assert s0["source"] == "deit" and s0["method"] == "svite" and s0["method_label"] == "SViTE"
    assert s0["top1"] == 40.0 and s0["top5"] == 70.0 and s0["status"] == "finished" and s0["epoch"] == 3
    assert abs(s0["density"] - 0.5) < 0.02 and s0["target_density"] == 0.5 and s0["model"] == "deit_tiny_patch16_224"
    assert s1["top1"] == 41.0 and s1["seed"] == 1  # the torn last line is skipped
    group = [g for g in doc["groups"] if g["label"] == "SViTE d0.5"]
    assert len(group) == 1 and group[0]["n"] == 2 and group[0]["seeds"] == "0,1"  # seeds group as ours do
    dense = rows["deit/dense_s0"]
    assert dense["method"] == "dense" and dense["top1"] == 40.0 and dense["density"] == 1.0
    assert rows["deit/stopped_s0"]["status"] == "failed" and "after epoch 2 of 10" in rows["deit/stopped_s0"]["error"]
    nolog = rows["deit/nolog_s0"]
    assert nolog["top1"] is None and nolog["method"] == "svite" and nolog["checkpoint"].endswith("checkpoint.pth")
    assert "deit/nolog_s0: no log.txt (no curve, no top-1)" in doc["notes"]
    assert any(n.startswith("deit/hostile: skipped, ") and "checkpoint.pth: refused: the file holds Python objects" in n
               for n in doc["notes"])
    assert "deit/hostile" not in rows
    assert "notes/inner_s0" in rows and "notes" not in rows  # a foreign log.txt does not stop the search


def test_timm_folders_in_any_column_order(sweep, capsys):
    rows = {r["name"]: r for r in runs_json(sweep, capsys)["runs"]}
    a, b = rows["timm/vit_s0"], rows["timm/reordered_s1"]
    assert a["source"] == "timm" and a["model"] == "vit_small_patch16_224" and a["top1"] == 54.0 and a["top5"] == 82.0
    assert b["top1"] == 55.0 and b["seed"] == 1 and a["status"] == b["status"] == "finished"
    assert a["data"] == "torch/cifar10" and a["epochs_total"] == 4
    assert rows["timm/noargs"]["top1"] == 54.0 and rows["timm/noargs"]["status"] == "finished"


def test_tensorboard_folders_give_top1_in_percent(sweep, capsys):
    doc = runs_json(sweep, capsys)
    rows = {r["name"]: r for r in doc["runs"]}
    assert rows["tb/fraction"]["top1"] == pytest.approx(70.0) and rows["tb/percent"]["top1"] == pytest.approx(70.0)
    assert rows["tb/fraction"]["step"] == 4 and rows["tb/fraction"]["source"] == "tensorboard"


def test_curves_come_with_curves(sweep, capsys):
    rows = {r["name"]: r for r in runs_json(sweep, capsys, "--curves")["runs"]}
    deit = rows["deit/dense_s0"]["curves"]
    assert [e["val_top1"] for e in deit["epochs"]] == [20.0, 30.0, 40.0] and deit["source"] == "log.txt"
    assert [e["train_grad_norm"] for e in deit["epochs"]] == [1.5] * 3  # extra fields kept
    timm = rows["timm/reordered_s1"]["curves"]
    assert [e["val_top1"] for e in timm["epochs"]] == [31.0, 39.0, 47.0, 55.0] and [e["epoch"] for e in timm["epochs"]] \
        == [1.0, 2.0, 3.0, 4.0]
    tb = rows["tb/fraction"]["curves"]
    assert [round(e["val_top1"], 3) for e in tb["epochs"]] == [30.0, 40.0, 50.0, 60.0, 70.0]
    assert [s["loss"] for s in tb["steps"]] == pytest.approx([2.0, 1.9, 1.8, 1.7, 1.6])
    assert rows["deit/nolog_s0"]["curves"]["note"].startswith("no curve")
    assert main(["runs", str(sweep), "--curves"]) == 2
    assert "--curves adds each run's curves to the JSON document: pass --json too" in capsys.readouterr().err


def test_damaged_foreign_files_are_notes_not_crashes(tmp_path, capsys):
    deit_folder(tmp_path / "garbled")
    (tmp_path / "garbled" / "checkpoint.pth").write_bytes(b"PK\x03\x04 not a zip at all")
    timm_folder(tmp_path / "badcsv")
    (tmp_path / "badcsv" / "summary.csv").write_text("epoch,eval_top1\n0,30\n1,oops\n2,50\n")
    (tmp_path / "badcsv" / "args.yaml").write_text("model: [unclosed\n")
    tb = tmp_path / "tb"
    tb.mkdir()
    (tb / "events.out.tfevents.1.host").write_bytes(os.urandom(300))
    _old(tmp_path)
    doc = runs_json(tmp_path, capsys)
    rows, notes = {r["name"]: r for r in doc["runs"]}, " | ".join(doc["notes"])
    assert rows["garbled"]["top1"] == 40.0 and "garbled: checkpoint skipped, checkpoint.pth: not a readable" in notes
    assert rows["badcsv"]["top1"] == 50.0 and "badcsv: summary.csv: 1 values are not numbers" in notes
    assert "args.yaml is not a YAML mapping" in notes
    assert "tb" in rows and rows["tb"]["top1"] is None and "Traceback" not in notes
