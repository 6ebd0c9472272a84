"""The bad-input catalogue: every case is one clear line, exit code 2, and no existing file changes.

``CASES`` are the original 32; ``FILE_CASES`` (issue 13) add lying checkpoints (masks read exactly or
refused, metadata of the wrong type), hostile flags, filesystem refusals and damaged resume state;
``CLASS_AND_FLAG_CASES`` (issue 19) add folder classes that match no checkpoint class, flags that would
do nothing, and an ``--out`` that is not a run's own folder (plus the project folder, from elsewhere).
The cases that need a memory measurement or could hang are in ``test_bad_input_sizes.py``.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config
from hostile import official_variants, ours_variants, plain_variants, tiny_sparse_checkpoint
from PIL import Image

from sparsity_core.checkpoint import load_checkpoint, save_checkpoint
from sparsity_core.cli import main
from sparsity_core.models.builder import build_model

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
    for cls in ("alpha", "beta"):  # classes no checkpoint here knows
        (root / "alpha_beta" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 60, 90, 0)).save(root / "alpha_beta" / cls / f"{cls}{i}.png")
    # a finished run directory that must never be clobbered
    assert main(["train", *TINY, "--out", str(root / "run")]) == 0
    ours_variants(tiny_sparse_checkpoint(root / "sparse.safetensors"), root)
    plain_variants(model, root)
    official_variants(model, root)
    nan = build_model(tiny_model_config())
    with torch.no_grad():
        nan.head.weight.fill_(float("nan"))
    save_checkpoint(root / "nan-weights.safetensors", nan, tiny_model_config())
    _damaged_runs(root)
    return root


def _damaged_runs(root: Path) -> None:
    """Copies of the finished run whose resume state or metrics log was damaged by hand."""
    sidecar = next((root / "run").glob("resume-*.pt"))
    state = torch.load(sidecar, weights_only=True)
    edits = {
        "run-no-rng": lambda s: s.pop("rng"),
        "run-bad-rng": lambda s: s.__setitem__("rng", {**s["rng"], "torch": torch.zeros(3, dtype=torch.uint8)}),
        "run-bad-optimizer": lambda s: s.__setitem__("optimizer", {"state": {}, "param_groups": []}),
        "run-sidecar-list": None,
    }
    for name, edit in edits.items():
        shutil.copytree(root / "run", root / name)
        if edit is None:
            torch.save([1, 2, 3], root / name / sidecar.name)
            continue
        changed = copy.deepcopy(state)
        edit(changed)
        torch.save(changed, root / name / sidecar.name)
    for name, line in (("run-metrics-list", b"[1, 2]\n"), ("run-metrics-step-abc", b'{"kind": "step", "step": "abc"}\n'),
                       ("run-metrics-utf8", b'{"kind": "step", "step": 1, "note": "\xff\xfe"}\n')):
        shutil.copytree(root / "run", root / name)
        with open(root / name / "metrics.jsonl", "ab") as fh:
            fh.write(line)


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


QKV = "'blocks.0.attn.qkv.weight'"
RESUME = [*TINY, "--epochs", "2"]
FILE_CASES = [
    # masks read exactly or refused (these were silent misreads: zero-padded, or any dtype and shape)
    ("mask-truncated", ["inspect", "{r}/mask-truncated.safetensors"],
     f"mask-truncated.safetensors: mask {QKV}: packed mask holds 863 bytes, shape [144, 48] needs exactly 864"),
    ("mask-padded", ["inspect", "{r}/mask-padded.safetensors"], "packed mask holds 865 bytes"),
    ("mask-float", ["inspect", "{r}/mask-float.safetensors"], "packed mask is a torch.float32 tensor"),
    ("mask-transposed", ["inspect", "{r}/mask-transposed.safetensors"],
     f"mask {QKV} has shape [48, 144], but what it masks has shape [144, 48]"),
    ("mask-unknown-param", ["inspect", "{r}/mask-unknown-param.safetensors"],
     "mask 'blocks.7.attn.qkv.weight' names no parameter of the model"),
    ("unit-spare-bits", ["inspect", "{r}/unit-spare-bits.safetensors"], "has bits set past its end"),
    ("unit-wrong-length", ["inspect", "{r}/unit-wrong-length.safetensors"],
     "unit 'blocks.0.attn.heads' has shape [6], but what it masks has shape [4]"),
    ("fired-truncated", ["inspect", "{r}/fired-truncated.safetensors"], f"fired {QKV}: packed mask holds 10 bytes"),
    ("history-mask-truncated", ["inspect", "{r}/history-mask-truncated.safetensors"],
     f"history/1/mask {QKV}: packed mask holds 863 bytes"),
    ("history-mask-missing", ["inspect", "{r}/history-mask-missing.safetensors"],
     f"history/2/mask {QKV} is declared but its bits are not in the file"),
    # format 2 histories: the index refused at load, damaged bytes by `check` (which decodes it all)
    ("history2-bytes-truncated", ["inspect", "{r}/history2-bytes-truncated.safetensors"],
     "mask history is damaged: snapshot 1 masks: tensor history/1/masks must be uint8 ["),
    ("history2-method-7", ["inspect", "{r}/history2-method-7.safetensors"],
     f"layer {QKV[1:-1]}: unknown method 7 for a bit layer"),
    ("history2-delta-first", ["inspect", "{r}/history2-delta-first.safetensors"],
     "snapshot 0 masks: a delta entry needs a previous snapshot of the group"),
    ("history2-shape-1e5", ["inspect", "{r}/history2-shape-1e5.safetensors"],
     f"layer '{QKV[1:-1]}' declares 10000000000 entries"),
    ("history2-20000-snapshots", ["inspect", "{r}/history2-20000-snapshots.safetensors"],
     "mask history of 20000 snapshots, over the 10000 limit"),
    ("history2-segment-scrambled", ["check", "{r}/history2-segment-scrambled.safetensors"],
     "history2-segment-scrambled.safetensors: tensor history/1/masks (layer"),
    ("eval-mask-truncated", ["eval", "{r}/mask-truncated.safetensors"], "mask-truncated.safetensors: mask"),
    ("train-init-mask-truncated", ["train", *TINY, "--out", "{r}/new-init-mask", "--init",
                                   "{r}/mask-truncated.safetensors"], "mask-truncated.safetensors: mask"),
    ("official-mask-wrong-shape", ["inspect", "{r}/official-mask-wrong-shape.pth"],
     "has shape [48, 144], but blocks.0.attn.qkv.weight has shape [144, 48]"),
    ("official-atten-mask-wrong-shape", ["inspect", "{r}/official-atten-mask-wrong-shape.pth"],
     "atten_mask 'module.blocks.0.attn.qkv.weight_mask' has shape [10, 10]"),
    # metadata of the wrong type or nesting (these were exit 1, "internal error")
    ("config-num-heads-0", ["inspect", "{r}/config-num-heads-0.safetensors"], "model_config.num_heads 0: must be in [1, 256]"),
    ("config-depth-string", ["inspect", "{r}/config-depth-string.safetensors"], "model_config.depth '2': must be an integer"),
    ("history-an-int", ["inspect", "{r}/history-an-int.safetensors"], "metadata field history is integer 5, expected list"),
    ("mask-shapes-a-list", ["inspect", "{r}/mask-shapes-a-list.safetensors"],
     "metadata field mask_shapes is a list of 2 items, expected object"),
    ("format-version-string", ["inspect", "{r}/format-version-string.safetensors"],
     'metadata field format_version is string "x", expected integer'),
    ("history-step-string", ["inspect", "{r}/history-step-string.safetensors"], "metadata field history[0].step is string"),
    ("metadata-nested-1e5", ["inspect", "{r}/metadata-nested-1e5.safetensors"], "checkpoint metadata is not valid JSON"),
    ("metadata-not-object", ["inspect", "{r}/metadata-not-object.safetensors"], "metadata is a JSON list, expected an object"),
    ("official-token-number-abc", ["inspect", "{r}/official-token-number-abc.pth"], "args.token_number is 'abc', not an integer"),
    ("official-atten-head-x", ["inspect", "{r}/official-atten-head-x.pth"], "args.atten_head is 'x', not an integer"),
    ("official-mask-a-tensor", ["inspect", "{r}/official-mask-a-tensor.pth"], "'mask' is a Tensor, expected a dict of tensors"),
    ("plain-block-index-abc", ["inspect", "{r}/blocks-abc.safetensors", "--num-heads", "4"], "has block index 'abc'"),
    ("plain-not-a-vit-names-file", ["inspect", "{r}/not-a-vit.safetensors"],
     "not-a-vit.safetensors: not a ViT/DeiT state dict: no 'patch_embed.proj.weight' key"),
    ("init-nan-weights", ["train", *TINY, "--out", "{r}/new-nan", "--init", "{r}/nan-weights.safetensors"],
     "--init {r}/nan-weights.safetensors: weight head.weight holds NaN or infinite values"),
    # hostile flags (these were exit 1)
    ("min-lr-nan", ["train", *TINY, "--out", "{r}/x", "--min-lr", "nan"], "--min-lr nan: must be a finite number >= 0"),
    ("min-lr-negative", ["train", *TINY, "--out", "{r}/x", "--min-lr", "-1"], "--min-lr -1.0: must be a finite number"),
    ("num-heads-zero", ["train", *TINY, "--out", "{r}/x", "--num-heads", "0"], "--num-heads 0: must be in [1, 256]"),
    ("embed-dim-zero", ["train", *TINY, "--out", "{r}/x", "--embed-dim", "0"], "--embed-dim 0: must be in [1, 8192]"),
    ("depth-zero", ["train", *TINY, "--out", "{r}/x", "--depth", "0"], "--depth 0: must be in [1, 64]"),
    ("seed-2-to-the-70", ["train", *TINY, "--out", "{r}/x", "--seed", str(2**70)],
     f"--seed {2**70}: must be in [0, {2**63 - 1}]"),
    # the filesystem says no (these were exit 1)
    ("out-read-only", ["train", *TINY, "--out", "/proc/sys/svite-run"],
     "--out /proc/sys/svite-run: cannot create it, /proc/sys is not writable"),
    ("out-under-a-file", ["train", *TINY, "--out", "{r}/good.safetensors/run"],
     "--out {r}/good.safetensors/run: {r}/good.safetensors is a file, not a directory"),
    ("out-an-existing-file", ["train", *TINY, "--out", "{r}/garbage.pth"], "--out {r}/garbage.pth: exists and is not a"),
    ("out-dev-null", ["train", *TINY, "--out", "/dev/null"], "--out /dev/null: exists and is not a directory"),
    # damaged resume state: refused before config.json or metrics.jsonl change (these were exit 1)
    ("resume-sidecar-no-rng", ["train", *RESUME, "--out", "{r}/run-no-rng", "--resume", "{r}/run-no-rng"],
     "is damaged or does not fit this run (KeyError: 'rng')"),
    ("resume-sidecar-bad-rng", ["train", *RESUME, "--out", "{r}/run-bad-rng", "--resume", "{r}/run-bad-rng"],
     "resume-000000002.pt is damaged or does not fit this run"),
    ("resume-sidecar-bad-optimizer", ["train", *RESUME, "--out", "{r}/run-bad-optimizer", "--resume",
                                      "{r}/run-bad-optimizer"], "resume-000000002.pt is damaged or does not fit this run"),
    ("resume-sidecar-a-list", ["train", *RESUME, "--out", "{r}/run-sidecar-list", "--resume", "{r}/run-sidecar-list"],
     "resume-000000002.pt: not a resume state (expected a dict, found list)"),
    ("resume-metrics-list-line", ["train", *RESUME, "--out", "{r}/run-metrics-list", "--resume", "{r}/run-metrics-list"],
     "run-metrics-list/metrics.jsonl: line 4 is not a metrics record ('[1, 2]')"),
    ("resume-metrics-step-abc", ["train", *RESUME, "--out", "{r}/run-metrics-step-abc", "--resume",
                                 "{r}/run-metrics-step-abc"], "metrics.jsonl: line 4 is not a metrics record"),
    ("resume-metrics-bad-utf8", ["train", *RESUME, "--out", "{r}/run-metrics-utf8", "--resume", "{r}/run-metrics-utf8"],
     "run-metrics-utf8/metrics.jsonl: not UTF-8 text"),
    ("resume-other-batch-size", ["train", *RESUME, "--batch-size", "16", "--out", "{r}/run", "--resume", "{r}/run"],
     "the run had 2 steps per epoch, these flags give 4"),
]


PROJECT = Path(__file__).resolve().parents[1]
# issue 19: classes that cannot be matched, flags that would do nothing, an --out that is not a run's own folder
CLASS_AND_FLAG_CASES = [
    ("eval-folder-no-known-class", ["eval", "{r}/run/checkpoint.safetensors", "--data", "{r}/alpha_beta"],
     "--data {r}/alpha_beta: none of its classes (alpha, beta) is a class of {r}/run/checkpoint.safetensors "
     "(circle, square, triangle, diamond, cross, ... (10 in all))"),
    ("eval-folder-no-names-other-count", ["eval", "{r}/good.safetensors", "--data", "{r}/alpha_beta"],
     "--data {r}/alpha_beta: its 2 classes (alpha, beta) cannot be matched to {r}/good.safetensors, which records "
     "no class names and has 10 outputs"),
    ("train-init-no-names-other-count", ["train", *TINY, "--batch-size", "2", "--data", "{r}/alpha_beta", "--init",
                                         "{r}/good.safetensors", "--out", "{r}/new-classes"],
     "--data {r}/alpha_beta: its 2 classes (alpha, beta) cannot be matched to --init {r}/good.safetensors"),
    ("out-empty", ["train", *TINY, "--out", ""], "--out '': empty; name a run directory of its own"),
    ("out-current-folder", ["train", *TINY, "--out", "."], f"--out .: is the current folder ({Path.cwd()})"),
    ("out-holds-current-folder", ["train", *TINY, "--out", ".."], f"--out ..: holds the current folder ({Path.cwd()})"),
    ("unused-density-without-method", ["train", *TINY, "--density", "0.3", "--out", "{r}/new-u1"],
     "--density has no effect with --method dense (the default); pass --method static, oneshot or svite to use it"),
    ("unused-mask-path-without-custom", ["train", *TINY, "--method", "svite", "--mask-path", "{r}/garbage.pth",
                                         "--out", "{r}/new-u2"],
     "--mask-path has no effect with --sparse-init fixed_ERK (the default); pass --sparse-init custom to use it"),
    ("unused-selector-flag-without-selector", ["train", *TINY, "--selector-mode", "gather", "--out", "{r}/new-u3"],
     "--selector-mode has no effect without a token selector (neither --keep-ratio nor --token-number was given)"),
    ("unused-aa-on-demo-data", ["train", *TINY, "--aa", "rand-m9-mstd0.5-inc1", "--out", "{r}/new-u4"],
     "--aa has no effect with --data demo (the default)"),
]


def _run_case(files: Path, capsys, argv: list[str], fragment: str) -> str:
    """Run one case in-process: exit 2, the fragment in one stderr line, no traceback, no file changed,
    and no run directory left behind by a train case."""
    before = _tree_digest(files)
    argv = [a.replace("{r}", str(files)) for a in argv]
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    existed = out is not None and out.exists()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment.replace("{r}", str(files)) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    after = _tree_digest(files)
    assert {k: v for k, v in after.items() if k in before} == before, "an existing file was changed"
    if out is not None and not existed:
        assert not out.exists(), f"{out} was left behind by a run that never started"
    return err


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_input_catalogue_files_and_flags(files, capsys, argv, fragment):
    _run_case(files, capsys, argv, fragment)


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CLASS_AND_FLAG_CASES], ids=[c[0] for c in CLASS_AND_FLAG_CASES])
def test_bad_input_catalogue_classes_flags_and_out(files, capsys, argv, fragment):
    _run_case(files, capsys, argv, fragment)


def test_out_the_project_folder_from_elsewhere(files, capsys, monkeypatch):
    monkeypatch.chdir(files / "empty_dir")
    _run_case(files, capsys, ["train", *TINY, "--out", str(PROJECT)],
              f"--out {PROJECT}: is the project folder ({PROJECT}); a run gets a folder of its own")
    assert not (PROJECT / "checkpoint.safetensors").exists()


def _fail_fsync_of(name: str, monkeypatch) -> None:
    """fsync fails with ENOSPC for temp files of ``name`` (what a full disk does to the atomic write)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if f".{name}." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_no_space_left_while_saving_keeps_the_old_checkpoint(files, capsys, monkeypatch):
    run = files / "run-enospc"
    shutil.copytree(files / "run", run)
    old = {p.name: p.read_bytes() for p in run.iterdir() if p.name.startswith(("checkpoint", "resume-"))}
    _fail_fsync_of("checkpoint.safetensors", monkeypatch)
    assert main(["train", *RESUME, "--out", str(run), "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{run}/checkpoint.safetensors: cannot write (No space left on device); the previous version was left" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    # the old checkpoint and the sidecar it names are exactly as they were, nothing half-written is left
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name.startswith(("checkpoint", "resume-"))} == old
    assert not list(run.glob(".*.tmp"))
    assert (run / load_checkpoint(run / "checkpoint.safetensors").meta["resume_file"]).is_file()


def test_no_space_left_in_a_fresh_run_leaves_no_folder(files, capsys, monkeypatch):
    _fail_fsync_of("checkpoint.safetensors", monkeypatch)
    _run_case(files, capsys, ["train", *TINY, "--max-steps", "1", "--out", "{r}/new-enospc/deeper"],
              "new-enospc/deeper/checkpoint.safetensors: cannot write (No space left on device); nothing was written")
    assert not (files / "new-enospc").exists()


def test_eval_json_is_strict_json_with_null_for_nan(files, capsys):
    assert main(["eval", str(files / "nan-weights.safetensors"), "--json", "--val-size", "8", "--throughput-batch",
                 "2"]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    doc = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert doc["loss"] is None and doc["images"] == 8


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
