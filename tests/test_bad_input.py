"""The bad-input catalogue: every case is one clear line, exit code 2, and no existing file changes."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config
from PIL import Image

from sparsity_core.checkpoint import save_checkpoint
from sparsity_core.cli import main
from sparsity_core.models import build_model

TINY = ["--model", "vit_tiny_demo", "--embed-dim", "48", "--depth", "2", "--num-heads", "4", "--train-size", "64",
        "--val-size", "32", "--batch-size", "32", "--epochs", "1", "--quiet"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A directory of good and bad inputs, made once."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    good = save_checkpoint(root / "good.safetensors", model, tiny_model_config())
    (root / "empty.safetensors").write_bytes(b"")
    (root / "garbage.pth").write_bytes(b"this is not a checkpoint\n" * 80)
    (root / "truncated.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with open(root / "evil.pth", "wb") as fh:
        pickle.dump({"model": _Evil()}, fh)
    sd = model.state_dict()
    torch.save({**sd, "blocks.0.extra.weight": torch.ones(2)}, root / "unknown_keys.pth")
    wide = build_model(tiny_model_config(embed_dim=64))
    save_checkpoint(root / "wide.safetensors", wide, tiny_model_config(embed_dim=64))
    deep = build_model(tiny_model_config(depth=3))
    save_checkpoint(root / "deep.safetensors", deep, tiny_model_config(depth=3))
    bad_shape = dict(sd)
    bad_shape["head.weight"] = torch.zeros(10, 40)
    torch.save(bad_shape, root / "bad_shape.pth")
    for split in ("train", "val"):
        (root / "no_images" / split / "cat").mkdir(parents=True)
        (root / "no_images" / split / "cat" / "notes.txt").write_text("not an image")
        for cls in ("cat", "dog"):
            d = root / "broken_images" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(d / f"{cls}{i}.png")
    (root / "broken_images" / "train" / "dog" / "dog0.png").write_bytes(b"\x89PNG not really")
    (root / "empty_dir").mkdir()
    # a finished run directory that must never be clobbered
    assert main(["train", *TINY, "--out", str(root / "run")]) == 0
    return root


CASES = [
    # (id, argv, expected fragment)
    ("inspect-missing", ["inspect", "{r}/nope.safetensors"], "nope.safetensors: no such file"),
    ("inspect-empty", ["inspect", "{r}/empty.safetensors"], "empty.safetensors: file is empty"),
    ("inspect-garbage", ["inspect", "{r}/garbage.pth"], "garbage.pth: not a readable"),
    ("inspect-truncated", ["inspect", "{r}/truncated.safetensors"], "truncated.safetensors: not a readable"),
    ("inspect-malicious", ["inspect", "{r}/evil.pth"], "evil.pth: refused"),
    ("inspect-directory", ["inspect", "{r}/empty_dir"], "empty_dir: is a directory"),
    ("inspect-unknown-keys", ["inspect", "{r}/unknown_keys.pth", "--num-heads", "4"], "unknown keys"),
    ("inspect-bad-shape", ["inspect", "{r}/bad_shape.pth", "--num-heads", "4"], "shape mismatch for head.weight"),
    ("eval-truncated", ["eval", "{r}/truncated.safetensors"], "truncated.safetensors"),
    ("eval-no-images", ["eval", "{r}/good.safetensors", "--data", "{r}/no_images"], "no_images"),
    ("train-init-garbage", ["train", *TINY, "--out", "{r}/new1", "--init", "{r}/garbage.pth"], "garbage.pth"),
    ("train-init-malicious", ["train", *TINY, "--out", "{r}/new2", "--init", "{r}/evil.pth"], "evil.pth: refused"),
    ("train-init-wrong-arch", ["train", *TINY, "--out", "{r}/new3", "--init", "{r}/deep.safetensors"],
     "--init"),
    ("train-init-mismatched-shapes", ["train", *TINY, "--out", "{r}/new4", "--init", "{r}/wide.safetensors"],
     "weights do not fit"),
    ("train-resume-missing", ["train", *TINY, "--out", "{r}/new5", "--resume", "{r}/nope"], "nope"),
    ("train-resume-truncated", ["train", *TINY, "--out", "{r}/new6", "--resume", "{r}/truncated.safetensors"],
     "truncated.safetensors"),
    ("train-resume-wrong-arch", ["train", *TINY, "--embed-dim", "64", "--out", "{r}/run", "--resume", "{r}/run"],
     "--resume"),
    ("train-clobber", ["train", *TINY, "--out", "{r}/run"], "already holds a run"),
    ("train-data-missing", ["train", *TINY, "--out", "{r}/new7", "--data", "{r}/no_such_folder"], "no_such_folder"),
    ("train-data-empty-dir", ["train", *TINY, "--out", "{r}/new8", "--data", "{r}/empty_dir"], "empty_dir"),
    ("train-data-no-images", ["train", *TINY, "--out", "{r}/new9", "--data", "{r}/no_images"], "no_images"),
    ("train-data-unreadable-image", ["train", *TINY, "--batch-size", "2", "--out", "{r}/new10", "--data", "{r}/broken_images"],
     "dog0.png"),
    ("density-zero", ["train", *TINY, "--out", "{r}/x", "--density", "0"], "--density must be in (0, 1]"),
    ("density-above-one", ["train", *TINY, "--out", "{r}/x", "--density", "1.5"], "--density must be in (0, 1]"),
    ("keep-ratio-zero", ["train", *TINY, "--out", "{r}/x", "--keep-ratio", "0"], "--keep-ratio must be in (0, 1]"),
    ("keep-ratio-negative", ["train", *TINY, "--out", "{r}/x", "--keep-ratio", "-0.5"], "--keep-ratio"),
    ("token-number-too-big", ["train", *TINY, "--out", "{r}/x", "--token-number", "1000"], "1000"),
    ("update-frequency-zero", ["train", *TINY, "--out", "{r}/x", "--update-frequency", "0"],
     "--update-frequency must be >= 1"),
    ("atten-density", ["train", *TINY, "--out", "{r}/x", "--method", "s2vite", "--atten-density", "0"],
     "--atten-density"),
    ("batch-size-zero", ["train", *TINY, "--out", "{r}/x", "--batch-size", "0"], "--batch-size must be >= 1"),
    ("cuda-absent", ["train", *TINY, "--out", "{r}/x", "--device", "cuda"], "--device cuda"),
    ("unknown-flag", ["train", *TINY, "--out", "{r}/x", "--dnesity", "0.5"], "unrecognized arguments: --dnesity"),
]


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_catalogue(files, capsys, argv, fragment):
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the case is about a machine without it
    before = _tree_digest(files)
    argv = [a.replace("{r}", str(files)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment.replace("{r}", str(files)) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    after = _tree_digest(files)
    assert {k: v for k, v in after.items() if k in before} == before, "an existing file was changed"
    assert not Path("PWNED_BY_PICKLE").exists()
