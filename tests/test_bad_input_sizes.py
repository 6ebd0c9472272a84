"""Bad-input catalogue, part 2: inputs that declare huge sizes, and inputs that used to hang.

All cases run in ONE child process (imports once, ~30 s in all), one after the other through
``sparsity_core.cli.main``; after each case the child records its exit code, its stderr and its peak
resident memory so far (``VmHWM`` of ``/proc/self/status``). Peak memory is monotone, so "peak
so far < 1 GB" after a case bounds that case and all before it. Before this, a 2 MB file could drive
memory past 6 GB, and a FIFO or a symlink loop in a data folder hung training.

The child also runs under an address-space limit (``RLIMIT_AS``), only as a guard for the machine:
a case the checks miss then fails with an out-of-memory message instead of swapping. The overall
timeout only guards against a case hanging again; nothing is asserted about time.

Why not ``resource.getrusage(...).ru_maxrss``: Linux carries it across ``execve`` from the process that
forked the child, so the child started at the pytest process's own peak (1.2 GB after the suite's
earlier files in CI) and every case "failed". ``VmHWM`` belongs to the child's fresh address space.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config
from hostile import hostile_folders, official_variants, ours_variants, plain_variants, tiny_sparse_checkpoint

from sparsity_core.checkpoint import save_checkpoint
from sparsity_core.models.builder import build_model

PEAK_RSS_LIMIT_MB = 1024
GUARD_ADDRESS_SPACE_MB = 6144
TINY = ["--model", "vit_tiny_demo", "--embed-dim", "48", "--depth", "2", "--num-heads", "4", "--train-size", "64",
        "--val-size", "32", "--batch-size", "32", "--epochs", "1", "--quiet"]
FOLDER = ["--model", "vit_tiny_demo", "--embed-dim", "48", "--depth", "2", "--num-heads", "4", "--batch-size", "2",
          "--epochs", "1", "--quiet"]
QKV = "'blocks.0.attn.qkv.weight'"

# (id, class, argv, expected fragment of the one stderr line)
CASES = [
    # declared sizes: validated before anything of that size is built
    ("config-depth-10000", "size", ["inspect", "{r}/config-depth-10000.safetensors"],
     "config-depth-10000.safetensors: model_config.depth 10000: must be in [1, 64]"),
    ("config-embed-dim-1e6", "size", ["inspect", "{r}/config-embed-1e6.safetensors"],
     "model_config.embed_dim 1000000: must be in [1, 8192]"),
    ("config-img-size-1e5", "size", ["inspect", "{r}/config-img-1e5.safetensors"],
     "model_config.img_size 100000: must be in [1, 4096]"),
    ("config-vit-gigantic", "size", ["inspect", "{r}/config-gigantic.safetensors"],
     "config-gigantic.safetensors: weights do not match the architecture"),
    ("config-extra-smuggles-depth", "size", ["inspect", "{r}/config-extra-depth.safetensors"],
     "model_config.depth 5000: must be in [1, 64]"),
    ("mask-shape-1e5-squared", "size", ["inspect", "{r}/mask-shape-1e5.safetensors"],
     f"mask {QKV}: packed mask holds 864 bytes, shape [100000, 100000] needs exactly 1250000000"),
    ("history-shape-1e5-squared", "size", ["inspect", "{r}/history-shape-1e5.safetensors"],
     f"history/0/mask {QKV}: packed mask holds 864 bytes"),
    ("history-20000-entries", "size", ["inspect", "{r}/history-20000-entries.safetensors"],
     "mask history of 20000 snapshots, over the 10000 limit"),
    ("plain-key-blocks-99999", "size", ["inspect", "{r}/blocks-99999.safetensors", "--num-heads", "4"],
     "blocks-99999.safetensors: key blocks.99999.… implies 100000 blocks, but the file has weights for 3"),
    ("plain-stride0-40GB", "size", ["inspect", "{r}/stride0.pth", "--num-heads", "4"],
     "stride0.pth: its tensors declare 40.0 GB of data but the file holds"),
    ("official-mask-stride0", "size", ["inspect", "{r}/official-mask-stride0.pth"], "its tensors declare 40.0 GB"),
    ("eval-config-gigantic", "size", ["eval", "{r}/config-gigantic.safetensors"], "config-gigantic.safetensors"),
    ("init-config-depth-10000", "size", ["train", *TINY, "--out", "{r}/new-1", "--init",
                                         "{r}/config-depth-10000.safetensors"], "model_config.depth 10000"),
    # size flags: caps, and a memory estimate refused before allocating
    ("train-size-1e9", "size", ["train", *TINY, "--out", "{r}/new-2", "--train-size", "1000000000"],
     "--train-size 1000000000: must be in [1, 10000000]"),
    ("train-size-1e7-at-512px", "size", ["train", *TINY, "--out", "{r}/new-3", "--train-size", "10000000",
                                         "--img-size", "512", "--patch-size", "16"],
     "training with --train-size 10000000 --val-size 32 at --img-size 512"),
    ("img-size-1024-patch-4", "size", ["train", *TINY, "--out", "{r}/new-4", "--img-size", "1024"],
     "--img-size 1024 with --patch-size 4 makes 65536 patch tokens per image; at most 16384"),
    ("img-size-2048-patch-16", "size", ["train", *TINY, "--out", "{r}/new-5", "--img-size", "2048", "--patch-size",
                                        "16", "--train-size", "5000", "--val-size", "1000"], "of memory, more than"),
    ("batch-size-1e6", "size", ["train", *TINY, "--out", "{r}/new-6", "--batch-size", "1000000"],
     "--batch-size 1000000: must be in [1, 65536]"),
    ("num-workers-1e5", "size", ["train", *TINY, "--out", "{r}/new-7", "--num-workers", "100000"],
     "--num-workers 100000: must be in [0, 256]"),
    ("eval-val-size-1e8", "size", ["eval", "{r}/good.safetensors", "--val-size", "100000000"],
     "--val-size 100000000: must be in [1, 10000000]"),
    ("eval-throughput-batch-1e6", "size", ["eval", "{r}/good.safetensors", "--throughput-batch", "1000000"],
     "--throughput-batch 1000000: must be in [1, 65536]"),
    # things that hung
    ("data-fifo-named-jpg", "hang", ["train", *FOLDER, "--out", "{r}/new-8", "--data", "{r}/fifo"],
     "fifo/train/cat/stuck.jpg: not a regular file (a FIFO)"),
    ("data-symlink-loop-self", "hang", ["train", *FOLDER, "--out", "{r}/new-9", "--data", "{r}/loop-self"],
     "loop-self/train/cat/a: symlink loop (leads back to"),
    ("data-symlink-loop-parent", "hang", ["train", *FOLDER, "--out", "{r}/new-10", "--data", "{r}/loop-parent"],
     "loop-parent/train/dog/b: symlink loop (leads back to"),
    ("data-symlink-loop-root", "hang", ["train", *FOLDER, "--out", "{r}/new-11", "--data", "{r}/loop-root"],
     "loop-root/train/again: symlink loop (leads back to"),
    ("eval-data-fifo", "hang", ["eval", "{r}/good.safetensors", "--data", "{r}/fifo"], "stuck.jpg: not a regular file"),
    ("inspect-fifo-checkpoint", "hang", ["inspect", "{r}/fifo.safetensors"], "fifo.safetensors: not a regular file"),
    # decompression bombs (PIL's error is neither OSError nor ValueError: it escaped as exit 1)
    ("train-decompression-bomb", "image", ["train", *FOLDER, "--out", "{r}/new-12", "--data", "{r}/bomb-train"],
     "bomb-train/train/dog/bomb.png: refused: the image declares 900,000,000 pixels"),
    ("train-bomb-in-a-worker-process", "image", ["train", *FOLDER, "--num-workers", "1", "--out", "{r}/new-13",
                                                 "--data", "{r}/bomb-train"],
     "bomb-train/train/dog/bomb.png: refused: the image declares 900,000,000 pixels"),
    # (a checkpoint that names the folder's classes: since issue 19 good.safetensors, which names none and has
    # 10 outputs, is refused for the 2-class folder before any image is read)
    ("eval-decompression-bomb", "image", ["eval", "{r}/good-cat-dog.safetensors", "--data", "{r}/bomb-val"],
     "bomb-val/val/cat/bomb.png: refused: the image declares 900,000,000 pixels"),
]

RUNNER = f"""
import contextlib, io, json, resource, sys
limit = {GUARD_ADDRESS_SPACE_MB} << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from sparsity_core.cli import main
def peak_rss_mb():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024
results = {{}}
for name, argv in json.load(sys.stdin):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except BaseException as exc:  # recorded, so one bad case does not hide the others
            rc = f"raised {{type(exc).__name__}}: {{exc}}"
    results[name] = {{"rc": rc, "stderr": err.getvalue(),
                      "peak_rss_mb": peak_rss_mb()}}
print(json.dumps(results))
"""


def _tree_digest(root: Path) -> dict[str, str]:
    """Digest of every regular file (os.walk does not follow the symlink loops; FIFOs are not read)."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            p = Path(folder) / name
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("sizes")
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    save_checkpoint(root / "good.safetensors", model, tiny_model_config())
    save_checkpoint(root / "good-cat-dog.safetensors", build_model(tiny_model_config(num_classes=2)),
                    tiny_model_config(num_classes=2), meta={"data": {"class_names": ["cat", "dog"]}})
    ours_variants(tiny_sparse_checkpoint(root / "sparse.safetensors"), root)
    plain_variants(model, root)
    official_variants(model, root)
    hostile_folders(root)
    before = _tree_digest(root)
    cases = [(name, [a.replace("{r}", str(root)) for a in argv]) for name, _, argv, _ in CASES]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(cases), capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_case = json.loads(proc.stdout)
    for name, got in by_case.items():  # the figures for the README (pytest -s shows them)
        print(f"{name}: exit {got['rc']}, peak RSS so far {got['peak_rss_mb']:.0f} MB")
    return {"root": root, "before": before, "after": _tree_digest(root), "by_case": by_case}


@pytest.mark.parametrize("name,kind,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_sizes_and_hangs(results, name, kind, argv, fragment):
    root, got = results["root"], results["by_case"][name]
    assert got["rc"] == 2, got
    err = got["stderr"]
    assert fragment.replace("{r}", str(root)) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert got["peak_rss_mb"] < PEAK_RSS_LIMIT_MB, f"peak RSS {got['peak_rss_mb']:.0f} MB after {name}"
    if "--out" in argv:
        out = Path(argv[argv.index("--out") + 1].replace("{r}", str(root)))
        assert not out.exists(), f"{out} was left behind by a run that never started"


def test_no_input_file_changed(results):
    assert results["after"] == results["before"]
