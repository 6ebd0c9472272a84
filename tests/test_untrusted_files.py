"""Untrusted files in a running process: a checkpoint rewritten under a loaded one, hostile uploads
to the app (quarantine, a sentence each, nothing listed after a restart), an image bomb uploaded to
the patch maps page, and the unit-level rules behind them (exact mask bits, image refusals)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config
from hostile import png_bomb, tiny_sparse_checkpoint, variant
from PIL import Image
from streamlit.testing.v1 import AppTest

from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.data.imagefiles import read_image_bytes
from sparsity_core.errors import SviteError
from sparsity_core.masks.maskset import check_packed, pack_bool, unpack_bool

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "main.py")
CKPTS = Path(os.environ.get("SVITE_CHECKPOINTS_DIR", ROOT / "checkpoints"))


def test_a_checkpoint_rewritten_in_place_does_not_crash_the_process(tmp_path):
    """The SIGBUS repro of issue 13: load, rewrite the file in place (truncate + shorter bytes, as
    ``cp other.safetensors same.safetensors`` does), then analyse the loaded history. With tensors
    memory-mapped to the file this died with SIGBUS (exit 135); they are now copied out on load."""
    target = tmp_path / "svite.safetensors"
    target.write_bytes((CKPTS / "svite.safetensors").read_bytes())
    script = textwrap.dedent(f"""
        from sparsity_core import analysis
        from sparsity_core.checkpoint import load_checkpoint
        loaded = load_checkpoint({str(target)!r})
        with open({str(target)!r}, "wb") as fh:  # in place: same inode, truncated, then shorter content
            fh.write(open({str(CKPTS / "dense.safetensors")!r}, "rb").read()[:4096])
        evo = analysis.density_evolution(loaded.history)
        dist, steps = analysis.snapshot_distances(loaded.history)
        final = analysis.checkpoint_masks(loaded).overall_density()
        print("alive", len(evo), len(steps), round(final, 3))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-1500:]}"
    shipped = load_checkpoint(CKPTS / "svite.safetensors")  # the demo's sizes, whenever it is remade
    layers, snapshots = len(shipped.masks), len(shipped.history)
    assert proc.stdout.split()[:3] == ["alive", str(layers * snapshots), str(snapshots)]


# ----------------------------------------------------------------------------------------------
# the app: quarantined uploads
@pytest.fixture
def app_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("SVITE_CHECKPOINTS_DIR", str(CKPTS))
    monkeypatch.setenv("SVITE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SVITE_UPLOADS_DIR", str(tmp_path / "uploads"))
    return tmp_path


def _hostile_uploads(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    base = tiny_sparse_checkpoint(tmp_path / "base.safetensors")
    giant = variant(base, tmp_path / "giant.safetensors", lambda t, h: h["model_config"].update(depth=10000))
    qkv = "blocks.0.attn.qkv.weight"
    truncated = variant(base, tmp_path / "trunc.safetensors",
                        lambda t, h: t.__setitem__(f"mask/{qkv}", t[f"mask/{qkv}"][:-1]))
    return {"giant-config.safetensors": (giant.read_bytes(), "model_config.depth 10000: must be in [1, 64]"),
            "truncated-mask.safetensors": (truncated.read_bytes(),
                                           f"mask '{qkv}': packed mask holds 863 bytes, shape [144, 48] needs exactly 864")}


def test_hostile_uploads_get_a_sentence_each_and_never_reach_the_picker(app_dirs):
    uploads = app_dirs / "uploads"
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["ckpt"] = str(CKPTS / "dense.safetensors")
    at.switch_page("../pages/density.py")
    at.run()
    assert not at.exception
    for name, (data, reason) in _hostile_uploads(app_dirs).items():
        at.sidebar.file_uploader(key="upload_ckpt").set_value((name, data, "application/octet-stream"))
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        errors = [e.value for e in at.sidebar.error]
        assert errors == [f"Cannot use this upload: {name}: {reason}"], errors
        assert at.title[0].value == "Layer density"  # the page itself still shows
        assert at.session_state["ckpt"] == str(CKPTS / "dense.safetensors")
    assert [p.name for p in uploads.iterdir()] == [".quarantine"] and not list((uploads / ".quarantine").iterdir())
    restarted = AppTest.from_file(APP, default_timeout=300)
    restarted.switch_page("../pages/density.py")
    restarted.run()
    assert not restarted.exception
    labels = [str(o) for o in restarted.sidebar.selectbox(key="ckpt").options]
    assert labels and not [o for o in labels if str(uploads) in o or "giant" in o or "truncated" in o], labels


def test_a_killed_check_leaves_nothing_behind(app_dirs, tmp_path, monkeypatch):
    """An upload whose check process is killed (as the kernel's OOM killer would) is refused with a
    sentence and deleted from the quarantine; nothing reaches the uploads folder or the picker."""
    from app.loaders import catalog

    killer = tmp_path / "killed-python"
    killer.write_text("#!/bin/sh\nkill -9 $$\n")
    killer.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(killer))
    with pytest.raises(SviteError) as err:
        catalog.save_upload("dense-copy.safetensors", (CKPTS / "dense.safetensors").read_bytes(), limit_mb=50)
    assert str(err.value) == ("dense-copy.safetensors: the check was killed (SIGKILL, probably out of memory); "
                              "not kept")
    assert not [p for p in (app_dirs / "uploads").iterdir() if p.is_file()]
    assert not list((app_dirs / "uploads" / ".quarantine").iterdir())
    assert not [e for e in catalog.find_checkpoints() if e.source == "upload"]


def test_image_bomb_upload_on_patch_maps_is_one_sentence(app_dirs, tmp_path):
    at = AppTest.from_file(APP, default_timeout=300)
    at.session_state["ckpt"] = str(CKPTS / "svite.safetensors")
    at.session_state["patch_source"] = "Upload"
    at.switch_page("../pages/patches.py")
    at.run()
    bomb = png_bomb(tmp_path / "bomb.png").read_bytes()
    at.file_uploader(key="patch_upload").set_value(("bomb.png", bomb, "image/png")).run()
    assert not at.exception, [e.value for e in at.exception]
    warnings = [w.value for w in at.warning]
    assert warnings == ["bomb.png: refused: the image declares 900,000,000 pixels, over the 89,478,485-pixel limit "
                        "(a decompression bomb?)"], warnings


# ----------------------------------------------------------------------------------------------
# the rules underneath
def test_packed_masks_are_read_exactly_or_refused():
    mask = torch.rand(13, 7) < 0.5  # 91 bits: 12 bytes, 5 spare bits
    packed = pack_bool(mask)
    assert torch.equal(unpack_bool(packed, (13, 7)), mask)
    bad = {
        "truncated": (packed[:-1], "holds 11 bytes, shape [13, 7] needs exactly 12"),
        "padded": (torch.cat([packed, packed[:1]]), "holds 13 bytes"),
        "float": (packed.float(), "is a torch.float32 tensor"),
        "2-D": (packed.reshape(3, 4), "of shape [3, 4], expected 1-D uint8"),
        "spare bits": (torch.cat([packed[:-1], packed[-1:] | 1]), "bits set past its end"),
    }
    for what, (data, message) in bad.items():
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            unpack_bool(data, (13, 7))
        assert what
    with pytest.raises(ValueError, match="negative dimension"):
        check_packed(packed, [-13, -7])
    with pytest.raises(ValueError, match="not a list of integers"):
        check_packed(packed, [13.0, 7])


def test_image_bytes_are_decoded_or_refused(tmp_path):
    buf = io.BytesIO()
    Image.new("RGBA", (5, 3), (10, 20, 30, 255)).save(buf, format="PNG")
    assert read_image_bytes(buf.getvalue(), "ok.png").shape == (3, 5, 3)
    with pytest.raises(SviteError, match=r"^x.png: refused: the image declares 900,000,000 pixels"):
        read_image_bytes(png_bomb(tmp_path / "b.png").read_bytes(), "x.png")
    with pytest.raises(SviteError, match=r"^y.jpg: cannot read image \("):
        read_image_bytes(b"\xff\xd8\xff not really a jpeg", "y.jpg")
    with pytest.raises(SviteError, match=r"^z.png: cannot read image \("):
        read_image_bytes(buf.getvalue()[:40], "z.png")  # truncated


def test_loading_never_keeps_a_memory_map(tmp_path):
    """What the SIGBUS fix rests on: no mapping of the checkpoint file survives load_checkpoint."""
    from sparsity_core.checkpoint import load_checkpoint

    path = tiny_sparse_checkpoint(tmp_path / "c.safetensors")
    loaded = load_checkpoint(path)
    maps = Path("/proc/self/maps").read_text()
    assert str(path) not in maps
    assert loaded.history and loaded.model_config == tiny_model_config()


def test_loading_does_not_move_the_random_stream(tmp_path):
    """--init loads a checkpoint between seeding and building the engine: the load must not draw."""
    from sparsity_core.checkpoint import load_checkpoint

    path = tiny_sparse_checkpoint(tmp_path / "c.safetensors")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_checkpoint(path)
    assert torch.equal(torch.rand(3), expected)
