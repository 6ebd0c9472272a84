from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from sparsity_core.cli import main

TINY = ["--model", "vit_tiny_demo", "--embed-dim", "48", "--depth", "2", "--num-heads", "4", "--train-size", "256",
        "--val-size", "64", "--batch-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out / "checkpoint.safetensors"


def test_inspect_json_contract(trained, capsys):
    assert main(["inspect", str(trained), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("format", "model", "method", "overall_density", "layers", "heads", "neurons", "token_selector",
                "history"):
        assert key in doc, key
    assert doc["format"] == "svite-explorer" and doc["model"] == "vit_tiny_demo" and doc["method"] == "dense"
    assert doc["heads"] is None and doc["neurons"] is None and doc["token_selector"] is None
    assert doc["overall_density"] == 1.0
    names = [row["name"] for row in doc["layers"]]
    assert names[0] == "patch_embed.proj.weight" and "blocks.1.mlp.fc2.weight" in names and names[-1] == "head.weight"
    qkv = next(r for r in doc["layers"] if r["name"] == "blocks.0.attn.qkv.weight")
    assert qkv["shape"] == [144, 48] and qkv["nonzeros"] == 144 * 48 and qkv["density"] == 1.0
    assert [h["step"] for h in doc["history"]] == [0, 8, 16]


def test_eval_json_contract(trained, capsys):
    assert main(["eval", str(trained), "--json", "--throughput-batch", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("top1", "top5", "loss", "params", "nonzeros", "flops", "images_per_s"):
        assert isinstance(doc[key], (int, float)), key
    assert doc["images"] == 64 and 0 <= doc["top1"] <= doc["top5"] <= 100
    assert doc["params"] == doc["nonzeros"] and doc["flops"] == doc["flops_dense"] > 0 and doc["images_per_s"] > 0


def test_inspect_plain_timm_file(tmp_path, tiny_model, capsys):
    torch.save({"model": tiny_model.state_dict()}, tmp_path / "deit.pth")
    assert main(["inspect", str(tmp_path / "deit.pth"), "--json", "--num-heads", "4"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "timm" and doc["architecture"]["num_heads"] == [4, 4]


@pytest.mark.parametrize("argv,fragment", [
    (["inspect", "nope.safetensors"], "nope.safetensors: no such file"),
    (["eval", "nope.pth"], "nope.pth: no such file"),
    (["train", "--out", "{tmp}/r", "--density", "0"], "--density must be in (0, 1]"),
    (["train", "--out", "{tmp}/r", "--keep-ratio", "-1"], "--keep-ratio must be in (0, 1]"),
    (["train", "--out", "{tmp}/r", "--update-frequency", "0"], "--update-frequency must be >= 1"),
    (["train", "--out", "{tmp}/r", "--model", "resnet50"], "unknown model 'resnet50'"),
    (["train", "--out", "{tmp}/r", "--data", "{tmp}/no_such_dir"], "no_such_dir"),
    (["train", "--out", "{tmp}/r", "--method", "magic"], "invalid choice: 'magic'"),
    (["train", "--out", "{tmp}/r", "--epochs", "two"], "invalid int value: 'two'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, fragment):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment.replace("{tmp}", str(tmp_path)) in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_module_entry_point_has_no_traceback(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(512))
    before = garbage.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "sparsity_core", "inspect", str(garbage), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "garbage.pth" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert garbage.read_bytes() == before


def test_an_error_in_a_data_loader_worker_arrives_as_the_users_sentence(tmp_path, capsys):
    """A SviteError raised in a DataLoader worker process (an unreadable image) reaches the CLI with its
    values (file, message, detail), not as a worker traceback to be parsed: one line, exit 2."""
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray((np.random.default_rng(i).random((32, 32, 3)) * 255).astype("uint8")).save(
                    tmp_path / "data" / split / cls / f"{i}.png")
    bad = tmp_path / "data" / "train" / "a" / "9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"torn" * 8)
    argv = ["train", "--data", str(tmp_path / "data"), "--img-size", "32", "--patch-size", "4", "--depth", "1",
            "--embed-dim", "16", "--num-heads", "2", "--batch-size", "7", "--epochs", "1", "--num-workers", "1",
            "--quiet", "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"svite train: error: {bad}: "), err
    assert "Traceback" not in err[0] and "worker" not in err[0]
    assert not (tmp_path / "run").exists()
