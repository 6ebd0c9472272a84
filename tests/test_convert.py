"""`svite convert OLD NEW`: an older checkpoint of ours rewritten in the current format, losing nothing,
never overwriting anything, and bad input as one line (exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from hostile import format_1, tiny_sparse_checkpoint  # noqa: E402
from test_demo_checkpoints import content_digest  # noqa: E402

from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.cli import main  # noqa: E402
from sparsity_core.models.builder import build_model  # noqa: E402


def _version(path: Path) -> int:
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()["svite_explorer"])["format_version"]


def test_convert_rewrites_a_format_1_file_with_everything_kept(tmp_path, capsys):
    old = format_1(tiny_sparse_checkpoint(tmp_path / "base.safetensors"), tmp_path / "old.safetensors")
    before = old.read_bytes()
    assert _version(old) == 1
    assert main(["convert", str(old), str(tmp_path / "new.safetensors"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    new = tmp_path / "new.safetensors"
    assert _version(new) == 2 and report["format_before"] == 1 and report["snapshots"] == 3
    assert content_digest(new) == content_digest(old)  # weights, masks, metadata, every snapshot
    assert old.read_bytes() == before
    a, b = load_checkpoint(old), load_checkpoint(new)
    assert [e.kind for e in b.history.entries["masks"]] == ["key", "delta", "delta"]  # no longer stored whole
    assert a.masks.equal(b.masks) and a.units.equal(b.units) and a.fired.equal(b.fired)


def test_convert_never_overwrites_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    old = format_1(tiny_sparse_checkpoint(tmp_path / "base.safetensors"), tmp_path / "old.safetensors")
    before = old.read_bytes()
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep me")
    plain = tmp_path / "plain.pth"
    torch.save(build_model(load_checkpoint(old).model_config).state_dict(), plain)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(before[: len(before) // 2])
    cases = {(old, old): "is the input", (old, taken): "already exists",
             (plain, tmp_path / "p.safetensors"): "not an SViTE Explorer checkpoint",
             (broken, tmp_path / "b.safetensors"): "broken.safetensors",
             (old, tmp_path / "no" / "x.safetensors"): "does not exist"}
    for (src, dst), words in cases.items():
        capsys.readouterr()
        assert main(["convert", str(src), str(dst)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
    assert old.read_bytes() == before and taken.read_bytes() == b"keep me"
    assert not (tmp_path / "p.safetensors").exists() and not (tmp_path / "b.safetensors").exists()
