"""Train the demo checkpoints that ship in checkpoints/ (the app opens on them).

    nice -n 10 python scripts/make_demo_checkpoints.py            # all four, ~12 min each on a quiet core (one thread per run)
    python scripts/make_demo_checkpoints.py --only svite-plus      # just one
    python scripts/make_demo_checkpoints.py --reuse-experiments    # copy identical seed-0 experiment runs
    python scripts/make_demo_checkpoints.py --readme-only          # rewrite checkpoints/README.md

Each is `svite train` on the built-in demo data (vit_tiny_demo: 32 px, patch 4, dim 96, depth 4,
6 heads) with fixed seeds, copied to checkpoints/<name>.safetensors and checked: at least 10 history
snapshots, at most 5 MB. A method this build does not provide yet is skipped with a note. The
recipe and the results are written to checkpoints/README.md.

The recipe is the demo experiments' (scripts/exp_*.py), so their seed-0 runs are these checkpoints'
training configs exactly; ``--reuse-experiments`` copies such a finished run instead of training again
(the comparison covers every field that decides the outcome, and the README names the run copied).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))



import torch  # noqa: E402
from _experiment import EXPERIMENTS, is_complete, same_outcome  # noqa: E402

import sparsity_core  # noqa: E402,F401  (before timm)
from sparsity_core.analysis.report import inspect_checkpoint  # noqa: E402
from sparsity_core.checkpoint import load_checkpoint  # noqa: E402
from sparsity_core.cli import build_parser, train_config  # noqa: E402

MAX_BYTES = 5 * 1024 * 1024
MIN_SNAPSHOTS = 10
# One recipe for all, the one scripts/exp_unstructured.py, exp_structured.py and exp_token_selector.py use
# (scripts/_experiment.py says why): the 5000 demo training images, 1000 validation images, batch 64 (78
# steps/epoch), AdamW lr 5e-4 with 2 warm-up epochs and a cosine schedule, 40 epochs. The tiny ViT sits near
# chance for the first 3-4 epochs, then learns; dense converges by about epoch 30.
COMMON = ["--model", "vit_tiny_demo", "--data", "demo", "--train-size", "5000", "--val-size", "1000",
          "--batch-size", "64", "--lr", "5e-4", "--warmup-epochs", "2", "--seed", "0", "--device", "cpu",
          "--log-every", "50"]
EPOCHS = 40
# name -> (what it is, method flags). Topology updates until 80% of training (t_end): every 400 steps
# (unstructured), every 200 (structured), as in the experiments.
DEMOS: dict[str, tuple[str, list[str]]] = {
    "dense": ("dense baseline", ["--method", "dense"]),
    "svite": ("SViTE, unstructured, density 0.5 (ERK)", ["--method", "svite", "--density", "0.5",
                                                        "--update-frequency", "400"]),
    "svite-plus": ("SViTE+, SViTE 0.5 with a token selector (MLP scorer) keeping 50% of the patches",
                   ["--method", "svite", "--density", "0.5", "--update-frequency", "400", "--keep-ratio", "0.5",
                    "--selector-scorer", "mlp", "--selector-keep-warmup", "0.3"]),
    "s2vite": ("S²ViTE, structured: 70% of heads, 60% of MLP neurons",
               ["--method", "s2vite", "--atten-density", "0.7", "--other-density", "0.6",
                "--update-frequency", "200"]),
}


def demo_config(name: str, epochs: int) -> dict:
    """The TrainConfig (as a dict) that `svite train` builds from this demo's flags."""
    args = build_parser().parse_args(["train", *COMMON, "--epochs", str(epochs), *DEMOS[name][1], "--out", "x"])
    return train_config(args).to_dict()


def find_experiment_run(name: str, epochs: int) -> Path | None:
    """A finished experiment run (runs/exp_*/*_s0) whose training config equals this demo's, if any."""
    mine = demo_config(name, epochs)
    for experiment in EXPERIMENTS:
        for cfg_file in sorted((ROOT / "runs" / experiment).glob("*_s0/config.json")):
            if same_outcome(json.loads(cfg_file.read_text()), mine) and is_complete(cfg_file.parent):
                return cfg_file.parent / "checkpoint.safetensors"
    return None


def train_one(name: str, epochs: int, workdir: Path, threads: int) -> tuple[Path | None, str]:
    """Run `svite train` for one demo; returns (checkpoint, note)."""
    what, flags = DEMOS[name]
    out = workdir / name
    cmd = [sys.executable, "-m", "sparsity_core", "train", *COMMON, "--epochs", str(epochs), *flags,
           "--out", str(out), "--quiet"]
    print(f"[{name}] {what}\n  $ svite train {' '.join(cmd[4:])}", flush=True)
    t0 = time.time()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # one thread: fixed numerics, and fast on a busy machine
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        line = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        if "not available" in line:
            return None, f"skipped: {line}"
        raise SystemExit(f"[{name}] training failed (exit {proc.returncode}): {line}")
    print(f"  trained in {time.time() - t0:.0f} s", flush=True)
    return out / "checkpoint.safetensors", ""


def same_as_experiment(name: str, ckpt: Path, epochs: int) -> str | None:
    """The experiment run this freshly trained demo should equal, when it does bit for bit (weights, masks,
    units, fired masks); None when there is no such run. A mismatch stops the script: the demo and the
    sweep would disagree."""
    found = find_experiment_run(name, epochs)
    if found is None:
        return None
    mine, theirs = load_checkpoint(ckpt), load_checkpoint(found)
    pairs = [(mine.model.state_dict(), theirs.model.state_dict())]
    pairs += [(dict(a or {}), dict(b or {})) for a, b in ((mine.masks, theirs.masks), (mine.units, theirs.units),
                                                          (mine.fired, theirs.fired))]
    for a, b in pairs:
        if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
            raise SystemExit(f"[{name}] the demo differs from the identical experiment run {found.parent}")
    return str(found.parent.relative_to(ROOT))


def check(path: Path) -> dict:
    doc = inspect_checkpoint(load_checkpoint(path))
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path}: {size / 2**20:.2f} MB is over the 5 MB limit")
    if len(doc["history"]) < MIN_SNAPSHOTS:
        raise SystemExit(f"{path}: {len(doc['history'])} snapshots, need at least {MIN_SNAPSHOTS}")
    return {"size_mb": size / 2**20, "snapshots": len(doc["history"]), "method": doc["method"],
            "density": doc["overall_density"], "val_top1": (doc.get("metrics") or {}).get("val_top1"),
            "selector": doc.get("token_selector"), "heads": doc.get("heads") is not None}


def write_readme(out_dir: Path, epochs: int, results: dict[str, dict], notes: dict[str, str],
                 sources: dict[str, str]) -> None:
    lines = [
        "# Demo checkpoints",
        "",
        "Made by `scripts/make_demo_checkpoints.py` on the built-in demo data (10 shape classes on clutter,",
        "32 px, patch 4) with fixed seeds; the app (`bash scripts/app.sh`) opens on them. Rebuild with",
        "",
        "```bash",
        f"nice -n 10 python scripts/make_demo_checkpoints.py --epochs {epochs}   # runs with OMP_NUM_THREADS=1",
        "```",
        "",
        "Every file is one `svite train` run of `vit_tiny_demo` (dim 96, depth 4, 6 heads, 0.46 M parameters):",
        "",
        f"`svite train {' '.join(COMMON)} --epochs {epochs} <method flags>`",
        "",
        "| file | what | method flags | val top-1 | density | snapshots | size |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, (what, flags) in DEMOS.items():
        r = results.get(name)
        if r is None:
            lines.append(f"| – | {what} | `{' '.join(flags)}` | {notes.get(name, 'not built')} | | | |")
            continue
        top1 = f"{r['val_top1']:.1f}%" if isinstance(r["val_top1"], (int, float)) else "n/a"
        lines.append(f"| `{name}.safetensors` | {what} | `{' '.join(flags)}` | {top1} | {r['density']:.3f} | "
                     f"{r['snapshots']} | {r['size_mb']:.2f} MB |")
    lines += [
        "",
        "Snapshots: one at initialisation, one after every topology update (until 80% of training) and one",
        "at every epoch end. The weights, final masks, the mask history and (SViTE+) the token",
        "selector's weights at every snapshot are all in the one file.",
        "",
        "Accuracy is one seed each (seed 0), so this table is not a ranking of the methods: the 5-seed",
        "comparisons, paired by seed with 95% intervals, are the shipped sweep (`checkpoints/runs/`, the app's",
        "Runs page, `svite runs checkpoints/runs`) and the main README's results.",
        "",
        "Reproducibility: seeds are fixed (`--seed 0`, demo data seed 0) and every run uses one torch thread",
        "(`OMP_NUM_THREADS=1`), so on the same torch build the same command gives the same weights and masks.",
        "",
    ]
    if sources:
        lines += ["The demo experiments' seed-0 runs (same training config, checked field by field), copied "
                  "(`--reuse-experiments`) or retrained and checked identical:", ""]
        lines += [f"- `{name}.safetensors` ← `{src}`" for name, src in sorted(sources.items())]
        lines += [""]
    (out_dir / "README.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(DEMOS), help="build only these (repeat)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (OMP_NUM_THREADS)")
    parser.add_argument("--readme-only", action="store_true", help="only rewrite checkpoints/README.md")
    parser.add_argument("--reuse-experiments", action="store_true",
                        help="copy a finished seed-0 experiment run with the identical config instead of training")
    args = parser.parse_args(argv)
    names = [] if args.readme_only else (args.only or list(DEMOS))
    args.out.mkdir(parents=True, exist_ok=True)
    notes: dict[str, str] = {}
    sources_file = args.out / ".sources.json"
    sources: dict[str, str] = json.loads(sources_file.read_text()) if sources_file.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="svite-demo-") as tmp:
        for name in names:
            found = find_experiment_run(name, args.epochs) if args.reuse_experiments else None
            if found is not None:
                print(f"[{name}] copying {found.relative_to(ROOT)} (identical training config)", flush=True)
                ckpt, note = found, ""
                sources[name] = str(found.parent.relative_to(ROOT))
            else:
                ckpt, note = train_one(name, args.epochs, Path(tmp), args.threads)
            if ckpt is None:
                print(f"  {note}", flush=True)
                notes[name] = note
                continue
            dest = args.out / f"{name}.safetensors"
            tmp_dest = dest.with_suffix(".safetensors.tmp")
            shutil.copyfile(ckpt, tmp_dest)
            os.replace(tmp_dest, dest)  # atomic: a failed copy never leaves a broken demo behind
            if found is None:
                sources.pop(name, None)
                twin = same_as_experiment(name, ckpt, args.epochs)
                if twin is not None:
                    print(f"  identical (weights, masks, units, fired) to {twin}", flush=True)
                    sources[name] = f"{twin} (retrained: identical weights and masks, with what its run lacks)"
            r = check(dest)
            print(f"  -> {dest}: {r['size_mb']:.2f} MB, {r['snapshots']} snapshots, density {r['density']:.3f}, "
                  f"val top-1 {r['val_top1']}", flush=True)
    # the table describes every demo file now in the folder (also those an earlier --only run made)
    results = {name: check(args.out / f"{name}.safetensors") for name in DEMOS
               if (args.out / f"{name}.safetensors").is_file()}
    sources_file.write_text(json.dumps(sources, indent=1) + "\n")
    write_readme(args.out, args.epochs, results, notes, sources)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
