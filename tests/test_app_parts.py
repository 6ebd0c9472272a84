"""The app's non-page parts against real files: the checkpoint catalog and upload check, GIF export,
and the run registry (real `python -m sparsity_core train` subprocesses: fail, cancel, reload)."""

from __future__ import annotations

import io
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_analysis_masks import build_checkpoint

from app.figures import gif
from app.loaders import catalog, images
from app.retrain import registry, run_form
from sparsity_core.analysis.report import inspect_checkpoint
from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.cli import build_parser, train_config
from sparsity_core.errors import CheckpointError, SviteError
from sparsity_core.training.loop import train


@pytest.fixture(autouse=True)
def dirs(tmp_path, monkeypatch):
    d = {k: tmp_path / k for k in ("checkpoints", "runs", "uploads")}
    for k, v in d.items():
        v.mkdir()
        monkeypatch.setenv(f"SVITE_{k.upper()}_DIR", str(v))
    return d


def test_catalog_lists_demos_runs_and_uploads_in_order(dirs):
    for name in ("dense", "svite", "svite-plus"):
        build_checkpoint(dirs["checkpoints"] / f"{name}.safetensors", method="dense", updates=0)
    (dirs["checkpoints"] / "README.md").write_text("not a checkpoint")
    run = dirs["runs"] / "r1"
    run.mkdir()
    build_checkpoint(run / "checkpoint.safetensors", method="dense", updates=0)
    (run / "resume-000000010.pt").write_bytes(b"x")  # resume sidecars are not checkpoints to pick
    entries = catalog.find_checkpoints()
    assert [e.label for e in entries] == ["demo · svite-plus", "demo · svite", "demo · dense", "run · r1"]
    assert [e.source for e in entries] == ["demo", "demo", "demo", "run"]


def test_upload_check_keeps_good_files_and_explains_bad_ones(dirs, tmp_path):
    good = build_checkpoint(tmp_path / "good.safetensors", method="svite", updates=1)["path"].read_bytes()
    path = catalog.save_upload("my model.safetensors", good, limit_mb=10)
    assert path.parent == dirs["uploads"] and path.read_bytes() == good
    assert [e.label for e in catalog.find_checkpoints()] == ["upload · my_model.safetensors"]
    with pytest.raises(CheckpointError) as err:
        catalog.save_upload("broken.safetensors", good[: len(good) // 2], limit_mb=10)
    msg = str(err.value)
    assert msg.startswith("broken.safetensors: ") and "\n" not in msg and str(dirs["uploads"]) not in msg
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        catalog.save_upload("evil.pth", b"garbage that is no zip and no pickle", limit_mb=10)
    with pytest.raises(SviteError, match="not a checkpoint file; the loader accepts .safetensors"):
        catalog.save_upload("notes.txt", b"hello", limit_mb=10)
    with pytest.raises(SviteError, match="over the 1 MB upload limit"):
        catalog.save_upload("big.pt", b"\0" * (2 * 2**20), limit_mb=1)
    with pytest.raises(SviteError, match="empty"):
        catalog.save_upload("empty.pt", b"", limit_mb=1)
    # bad uploads are not kept, neither where the picker looks nor in the quarantine they waited in
    assert [p.name for p in dirs["uploads"].iterdir() if p.is_file()] == [path.name]
    assert not list((dirs["uploads"] / catalog.QUARANTINE).iterdir())


def test_gif_has_one_frame_per_snapshot_with_the_mask_drawn():
    frames = [np.zeros((4, 6)), np.ones((4, 6)), np.eye(4, 6)]
    data = gif.frames_to_gif(frames, ["a", "b", "c"], size=60)
    im = Image.open(io.BytesIO(data))
    assert im.format == "GIF" and im.n_frames == 3
    sizes, means = set(), []
    for i in range(3):
        im.seek(i)
        rgb = np.asarray(im.convert("RGB"), dtype=float)
        sizes.add(rgb.shape)
        means.append(rgb[gif.CAPTION_HEIGHT:, :60].mean())  # the mask area, below the caption
    assert len(sizes) == 1
    assert means[1] > means[2] > means[0]  # all kept (bright) > diagonal > all pruned (dark)
    with pytest.raises(ValueError):
        gif.frames_to_gif([], [])
    np.testing.assert_array_equal(gif.colorize(np.array([[0.0, 1.0]]))[0], [[68, 1, 84], [253, 231, 37]])


def _wait(run_id: str, until, timeout: float = 90.0) -> registry.RunState:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = registry.state(run_id)
        if until(s):
            return s
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} stuck at {registry.state(run_id).status}")


def test_run_form_builds_the_train_command():
    form = registry.RunForm(method="s2vite", keep_ratio=0.5, epochs=2, init="/x/ck.safetensors",
                        model_flags={"model": "vit_tiny_demo", "embed_dim": 48})
    cmd = form.command(Path("/tmp/out"))
    joined = " ".join(cmd[1:])
    assert joined.startswith("-m sparsity_core train --out /tmp/out --quiet --method s2vite --epochs 2")
    for part in ("--atten-density 0.7", "--other-density 0.6", "--keep-ratio 0.5", "--init /x/ck.safetensors",
                 "--embed-dim 48", "--train-size 2000", "--update-frequency 25", "--log-every 2",
                 "--selector-scorer mlp", "--selector-keep-warmup 0.3"):
        assert part in joined
    assert "--density" not in cmd  # S2ViTE ignores the weight density
    with pytest.raises(SviteError, match="no such folder"):
        registry.RunForm(data="/definitely/not/here").validate()
    with pytest.raises(SviteError, match="choose one of"):
        registry.RunForm(method="magic").validate()


TINY = {"model": "vit_tiny_demo", "embed_dim": 48, "depth": 2, "num_heads": 4}


def test_runs_fail_with_one_line_survive_a_reload_and_cancel(dirs):
    # both start at once (the Python start-up dominates their cost)
    bad = registry.launch(registry.RunForm(method="dense", epochs=1, batch_size=4096, train_size=64, val_size=16))
    long = registry.launch(registry.RunForm(method="dense", epochs=50, train_size=256, val_size=32, batch_size=32,
                                    model_flags=TINY))
    s = _wait(bad, lambda s: s.status != "running")
    assert s.status == "failed"
    assert "--batch-size 4096 is larger than the training set" in s.error and "\n" not in s.error
    rec = json.loads((dirs["runs"] / bad / registry.RECORD).read_text())
    assert rec["exit_code"] == 2 and rec["status"] == "failed"

    s = _wait(long, lambda s: s.total_steps is not None)  # the loop has started (metrics.jsonl 'start')
    assert s.status == "running" and s.total_steps == 400 and s.progress < 1
    registry._PROCS.pop(long)  # a page reload / a restarted server: only the on-disk registry is left
    assert [r.id for r in registry.list_runs()] == [long, bad]  # newest first
    assert registry.state(long).status == "running"
    registry.cancel(long)
    s = _wait(long, lambda s: s.status != "running", timeout=30)
    assert s.status == "cancelled" and registry.state(long).status == "cancelled"


# ----------------------------------------------------------------------------------------------
# the Retrain form's defaults: from every shipped checkpoint, the default run really trains
SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints"


def _train_like_the_form(form, out: Path, **quick):
    """Run the form's exact ``svite train`` command in this process, shortened to a couple of steps."""
    argv = form.command(out)[3:]  # drop "python -m sparsity_core"
    args = build_parser().parse_args(argv)
    cfg = train_config(args)
    for key, value in {"epochs": 1, "max_steps": 2, "train_size": 128, "val_size": 32, "batch_size": 32,
                       **quick}.items():
        setattr(cfg, key, value)
    return train(cfg, show_progress=False, echo_metrics=False)


@pytest.mark.parametrize("name", ["dense", "svite", "svite-plus", "s2vite"])
def test_default_retrain_from_every_shipped_checkpoint_trains(name, tmp_path):
    path = str(SHIPPED / f"{name}.safetensors")
    init = load_checkpoint(path)
    doc = inspect_checkpoint(init)
    form = run_form.defaults_for(doc, path)
    assert form.init == path
    assert form.lr == (run_form.SPARSIFY_LR if name == "dense" else run_form.FINE_TUNE_LR)
    assert "--log-every" in form.command(tmp_path) and "--init" in form.command(tmp_path)
    out = _train_like_the_form(form, tmp_path / "run")
    run = load_checkpoint(out)
    if name == "dense":  # sparsified with SViTE at 0.5
        assert run.method == "svite" and run.meta["settings"]["density"] == 0.5
    elif name == "s2vite":  # its heads and neurons carried over
        assert run.method == "s2vite"
        for unit, mask in init.units.items():
            assert torch.equal(run.units[unit], mask), unit
    else:  # same density, its masks carried over (no topology update in two steps)
        assert run.method == "svite"
        for layer, mask in init.masks.items():
            assert torch.equal(run.masks[layer], mask), layer
    if name == "svite-plus":  # its trained selector (MLP scorer) is kept, with no keep warm-up
        assert run.model_config.selector.scorer == "mlp" and run.model.token_selector.keep == 32
        assert form.selector_keep_warmup == 0.0 and form.keep_ratio == 0.5
        sel = {k: v for k, v in run.history[0].state.items() if k.startswith("token_selector.")}
        start = {f"token_selector.{k}": v for k, v in init.model.token_selector.state_dict().items()}
        assert sel.keys() == start.keys() and all(torch.equal(sel[k], start[k]) for k in sel)


def test_retrain_from_svite_plus_without_a_selector_and_a_clear_misfit(tmp_path):
    path = str(SHIPPED / "svite-plus.safetensors")
    form = run_form.defaults_for(inspect_checkpoint(load_checkpoint(path)), path)
    form.keep_ratio = 0.0  # fine-tune the backbone alone
    run = load_checkpoint(_train_like_the_form(form, tmp_path / "no-selector"))
    assert not run.has_selector
    form.keep_ratio, form.selector_scorer = 0.5, "linear"  # a selector that cannot take the MLP's weights
    with pytest.raises(SviteError) as err:
        _train_like_the_form(form, tmp_path / "linear")
    msg = str(err.value)
    assert "has an MLP scorer: pass --selector-scorer mlp." in msg and "Error(s)" not in msg and "\n" not in msg
    form.selector_scorer, form.model_flags = "mlp", {"model": "vit_tiny_demo", "embed_dim": 48}
    with pytest.raises(SviteError) as err:
        _train_like_the_form(form, tmp_path / "narrow")
    msg = str(err.value)
    assert "differ in shape (first: cls_token is 1×1×96 in the checkpoint, 1×1×48 here)" in msg
    assert msg.endswith("(svite inspect shows them).") and "Error(s)" not in msg


# ----------------------------------------------------------------------------------------------
# images a user brings: every mode decoded the way the file means it, each conversion stated
def _png(img: Image.Image, **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=save.pop("format", "PNG"), **save)
    return buf.getvalue()


def test_16bit_grey_png_is_scaled_not_clipped_to_white():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    decoded = images.decode_image(_png(Image.fromarray(ramp)), "ramp16.png")
    assert decoded.mode.startswith("I") and decoded.rgb.shape == (64, 64, 3) and decoded.rgb.dtype == np.uint8
    grey = decoded.rgb[..., 0].astype(float)
    assert (decoded.rgb[..., 0] == decoded.rgb[..., 2]).all()
    assert grey.min() == 0 and grey.max() == 255 and abs(grey.mean() - 127.5) < 1.5  # not 99.6 % white
    assert any("16-bit grey values were scaled from 0-65535" in n for n in decoded.notes)
    # the numpy path (sparsity_core.data.images) agrees: uint16 is scaled, not clipped
    from sparsity_core.data.images import to_rgb_uint8

    np.testing.assert_allclose(to_rgb_uint8(ramp)[..., 0], decoded.rgb[..., 0], atol=1)


def test_rgba_palette_grey_and_cmyk_are_normalised_and_said_so():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200  # red where opaque
    rgba[:4, :, 3] = 255  # top half opaque, bottom half fully transparent
    decoded = images.decode_image(_png(Image.fromarray(rgba, "RGBA")), "a.png")
    assert (decoded.rgb[:4] == (200, 0, 0)).all() and (decoded.rgb[4:] == images.BACKGROUND).all()
    assert any("composited on white" in n and "50%" in n for n in decoded.notes)
    pal = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L").convert("P")
    pal.info["transparency"] = 0
    decoded = images.decode_image(_png(pal, transparency=0), "p.png")
    assert decoded.rgb[0, 0].tolist() == list(images.BACKGROUND) and any("palette" in n for n in decoded.notes)
    grey = images.decode_image(_png(Image.fromarray(np.full((5, 7), 77, np.uint8), "L")), "g.png")
    assert grey.rgb.shape == (5, 7, 3) and (grey.rgb == 77).all() and grey.notes == []
    cmyk = Image.new("CMYK", (6, 6), (0, 255, 255, 0))  # pure red in CMYK
    decoded = images.decode_image(_png(cmyk, format="JPEG", quality=95), "c.jpg")
    r, g, b = decoded.rgb.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60 and any("CMYK" in n for n in decoded.notes)
    with pytest.raises(SviteError, match=r"^x\.png: not a readable image \(the file is not an image"):
        images.decode_image(b"not an image at all", "x.png")


def test_fit_description_states_input_size_crop_and_resize():
    text = images.fit_description((300, 451, 3), 224, 16)
    assert text == ("Model input: 224×224 px, 14×14 patches of 16 px. This image (451×300 px) was centre-cropped to "
                    "300×300 (151 px of its longer side cut off) and resized to 224×224 (bicubic).")
    assert images.fit_description((32, 32, 3), 32, 4).endswith("(32×32 px) was used at its own size.")


@pytest.mark.parametrize("level", [0, 128, 255])
def test_kept_and_dropped_patches_differ_on_black_grey_and_white_images(level):
    from app.figures import plots

    rgb = np.full((32, 32, 3), level, np.uint8)
    kept = np.zeros((8, 8), bool)
    kept[:, :4] = True  # left half kept
    out = plots.overlay_patches(rgb, 4, kept).astype(float)
    f = out.shape[0] // 32
    inner = lambda r, c: out[r * 4 * f + 3:(r + 1) * 4 * f - 2, c * 4 * f + 3:(c + 1) * 4 * f - 2]  # noqa: E731
    k, d = inner(2, 1), inner(2, 6)
    assert k.std() == 0 and (k == level).all()  # a kept patch shows its own pixels
    assert d.std() > 40  # a dropped one is hatched: light and dark strokes whatever the image
    assert (d < 30).any() and (d > 220).any()


def test_gif_is_large_enough_to_project_and_carries_its_colour_key():
    data = gif.frames_to_gif([np.eye(8), np.ones((8, 8))], ["a", "b"])
    im = Image.open(io.BytesIO(data))
    assert im.width >= 640 and im.height >= 640 + gif.CAPTION_HEIGHT
    rgb = np.asarray(im.convert("RGB"))
    key_row = rgb[-gif.KEY_HEIGHT:]
    # the key's two swatches (kept, pruned) are drawn in the ramp's end colours
    for color in (c for _, c in gif.MASK_KEY):
        assert (np.abs(key_row.astype(int) - color).sum(axis=2) < 30).any(), color


def test_loader_errors_are_shown_as_sentences_without_library_text(tmp_path):
    from app.widgets.ui import explain

    cases = {"list.pth": pickle.dumps([1, 2, 3]),  # torch: "Unsupported operand 149"
             "torn.safetensors": (SHIPPED / "dense.safetensors").read_bytes()[:5000],
             "noise.pth": bytes(range(256)) * 20}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(SviteError) as err:
            load_checkpoint(path)
        text = explain(err.value, str(path))
        assert text.startswith(f"{name}: ") and text.endswith(".") and str(tmp_path) not in text, text
        for internal in ("Unsupported operand", "Error while", "Weights only", "PyTorch 2.6", "("):
            assert internal not in text, text
    # anything but our SviteError is a bug of ours, said to be one (never "your file is damaged")
    text = explain(IndexError("list index out of range"), "/x/y.pth")
    assert "internal error (IndexError)" in text and "not a problem with your file" in text and "y.pth" in text


def test_run_metrics_can_be_hashed_for_the_cache(tmp_path):
    """The end line repeats the final metrics as a dict; a DataFrame holding it made Streamlit warn that
    pandas could not hash it (and fall back to pickling) on every Overview of a run."""
    import pandas as pd

    from app.loaders.checkpoint_data import read_metrics

    lines = [{"kind": "start", "step": 0, "total_steps": 4}, {"kind": "epoch", "step": 4, "val_top1": 50.0},
             {"kind": "end", "step": 4, "metrics": {"val_top1": 50.0}}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n{torn")
    frame = read_metrics(tmp_path / "metrics.jsonl")
    assert list(frame["kind"]) == ["start", "epoch", "end"] and "metrics" not in frame
    assert len(pd.util.hash_pandas_object(frame)) == 3


def test_an_image_bomb_is_refused_before_decoding(tmp_path):
    from hostile import png_bomb

    data = png_bomb(tmp_path / "bomb.png").read_bytes()
    with pytest.raises(SviteError, match=r"^bomb\.png: refused: the image declares 900,000,000 pixels"):
        images.decode_image(data, "bomb.png")
