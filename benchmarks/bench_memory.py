"""Training memory: what sparse training costs over dense, measured, and where the bytes go (run by hand).

1. The table: peak RSS of 6 training steps through ``svite train`` (a DeiT-S at 32 px with patch 4,
   batch 8, demo data, one thread, an update every 2 steps from step 0, so 3 updates and a checkpoint
   with its resume state are inside the measurement) for dense, static and SViTE at density 0.4,
   S2ViTE 0.7/0.6, SViTE+ (keep 0.5) and dense with the same selector, and both sparse methods under
   ``--optimizer-state active``. Each run is a child process; its peak is the kernel's ``ru_maxrss`` for
   that child (what ``/usr/bin/time -f %M`` prints). Runs are repeated round-robin (``--repeats``) and
   the median is reported with the range: the C allocator's retained heap moves a peak by +-10 MB
   between identical runs. "Over dense" is per masked weight (the masks' numel, from the checkpoint).
2. The breakdown (``--breakdown``): every per-weight buffer the engine, the optimizer and the mask
   history hold after those 6 steps, found by walking the objects (tensors and numpy arrays, storage
   counted once, modules and the model's own parameters excluded), in bytes per masked weight, plus
   the largest transient buffer of an update.

``--before REF`` runs the same children on the code of a git ref (``git archive``), beside this tree's.
``--mmap-threshold BYTES`` fixes glibc's mmap threshold in the children (``MALLOC_MMAP_THRESHOLD_``): by
default glibc raises it as large blocks are freed, so freed activations stay in the heap and a peak
moves by +-10 MB between identical runs; fixed (e.g. 131072), large blocks go back to the system on
free and the peaks are repeatable to the MB, which isolates what the code holds from what the
allocator keeps:

    nice -n 5 python benchmarks/bench_memory.py --before main --breakdown
    nice -n 5 python benchmarks/bench_memory.py --only svite s2vite --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--model", "deit_small_patch16_224", "--img-size", "32", "--patch-size", "4", "--batch-size", "8",
          "--max-steps", "6", "--train-size", "64", "--val-size", "16", "--update-frequency", "2",
          "--update-start", "0", "--quiet"]
RUNS = {
    "dense": ["--method", "dense"],
    "static": ["--method", "static", "--density", "0.4"],
    "svite": ["--method", "svite", "--density", "0.4"],
    "s2vite": ["--method", "s2vite", "--atten-density", "0.7", "--other-density", "0.6"],
    "svite+": ["--method", "svite", "--density", "0.4", "--keep-ratio", "0.5"],
    "dense+selector": ["--method", "dense", "--keep-ratio", "0.5"],
    "svite active": ["--method", "svite", "--density", "0.4", "--optimizer-state", "active"],
    "s2vite active": ["--method", "s2vite", "--atten-density", "0.7", "--other-density", "0.6",
                      "--optimizer-state", "active"],
}


MALLOC: dict[str, str] = {}  # --mmap-threshold


def run_child(code: Path, args: list[str], out: Path) -> int:
    """Peak RSS (bytes) of ``python -m sparsity_core train ...`` run from ``code``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code), **MALLOC}
    proc = subprocess.Popen([sys.executable, "-m", "sparsity_core", "train", *COMMON, *args, "--out", str(out)],
                            cwd=code, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {err.strip().splitlines()[-1:]}")
    return usage.ru_maxrss * 1024


def masked_weights(code: Path, checkpoint: Path) -> int:
    script = ("import sys, math; import sparsity_core; from sparsity_core.checkpoint import load_checkpoint; "
              "c = load_checkpoint(sys.argv[1]); print(sum(c.masks.numels().values()) if c.masks else 0)")
    env = {**os.environ, "PYTHONPATH": str(code)}
    return int(subprocess.run([sys.executable, "-c", script, str(checkpoint)], cwd=code, env=env, check=True,
                              capture_output=True, text=True).stdout.strip())


def table(codes: dict[str, Path], names: list[str], repeats: int, work: Path) -> dict:
    peaks: dict[tuple[str, str], list[int]] = {}
    masked: dict[tuple[str, str], int] = {}
    for r in range(repeats):  # round-robin: machine load drifts alike over every run
        for label, code in codes.items():
            for name in names:
                if name not in RUNS or (label != "this" and "active" in name):
                    continue
                out = work / f"{label}-{name.replace(' ', '_')}-{r}"
                peaks.setdefault((label, name), []).append(run_child(code, RUNS[name], out))
                if r == 0:
                    masked[(label, name)] = masked_weights(code, out / "checkpoint.safetensors")
                print(f"  {label:>6} {name:<15} {peaks[(label, name)][-1] / 2**20:7.0f} MB  "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return {"peaks": peaks, "masked": masked}


def print_table(res: dict, codes: dict[str, Path], names: list[str]) -> None:
    print("\n| run | " + " | ".join(f"peak RSS ({label}) | over dense" for label in codes) + " |")
    print("|---|" + "---|---|" * len(codes))
    for name in names:
        cells = []
        for label in codes:
            got = res["peaks"].get((label, name))
            if not got:
                cells += ["", ""]
                continue
            med = statistics.median(got)
            dense = statistics.median(res["peaks"][(label, "dense")])
            n = res["masked"].get((label, name), 0)
            over = f"{(med - dense) / n:+.2f} B per masked weight ({n / 1e6:.2f} M)" if n else f"{med / dense:.3f}×"
            if name.startswith("svite+") or name == "dense+selector":
                over += f", {med / dense:.3f}× dense"
            cells += [f"{med / 2**20:.0f} MB ({min(got) / 2**20:.0f}–{max(got) / 2**20:.0f})", over]
        print(f"| {name} | " + " | ".join(cells) + " |")


# --- breakdown (in a child process, on either tree) ------------------------------------------------
def _walk(obj, path: str, out: dict, seen: set, depth: int = 0) -> None:
    import numpy as np
    import torch

    if depth > 6 or isinstance(obj, (torch.nn.Module, torch.optim.Optimizer, str, bytes, int, float)):
        return
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.device.type)
        if key not in seen and obj.untyped_storage().nbytes():
            seen.add(key)
            out[path] = out.get(path, 0) + obj.untyped_storage().nbytes()
        return
    if isinstance(obj, np.ndarray):
        base = obj if obj.base is None else obj.base
        if isinstance(base, np.ndarray) and id(base) not in seen:
            seen.add(id(base))
            out[path] = out.get(path, 0) + base.nbytes
        return
    items = (obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple))
             else vars(obj).items() if hasattr(obj, "__dict__") else ())
    for key, value in items:  # attribute names extend the path; list indices and layer names do not
        named = isinstance(key, str) and key.isidentifier()
        _walk(value, f"{path}.{key}" if named else path, out, seen, depth + 1)


def breakdown_child(name: str) -> None:
    """Train the run in-process, then list the per-weight buffers (JSON on stdout)."""
    import torch

    import sparsity_core  # noqa: F401
    from sparsity_core.cli import build_parser, train_config
    from sparsity_core.training import loop as train_mod

    torch.set_num_threads(1)
    captured: dict = {}
    save = train_mod.Run.save

    def keep(self, *args, **kwargs):
        captured["run"] = self
        return save(self, *args, **kwargs)

    train_mod.Run.save = keep
    with tempfile.TemporaryDirectory() as tmp:
        cfg = train_config(build_parser().parse_args(["train", *COMMON, *RUNS[name], "--out", tmp]))
        train_mod.train(cfg, show_progress=False, echo_metrics=False)
    run = captured["run"]
    engine, masks = run.engine, run.engine.masks
    params = {id(p) for p in run.model.parameters()}
    found: dict[str, int] = {}
    seen = {(p.untyped_storage().data_ptr(), p.device.type) for p in run.model.parameters() if id(p) in params}
    _walk({k: v for k, v in vars(engine).items() if k != "ctx"}, "engine", found, seen)
    _walk(vars(run.history), "history", found, seen)
    named = dict(run.model.named_parameters())
    masked_params = [named[n] for n in (masks or {})]
    for p in masked_params:
        for key, value in run.optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                found[f"optimizer.{key} (masked parameters)"] = found.get(f"optimizer.{key} (masked parameters)", 0) \
                    + value.untyped_storage().nbytes()
    print(json.dumps({"masked": sum(p.numel() for p in masked_params), "buffers": found}))


def print_breakdown(codes: dict[str, Path], names: list[str]) -> None:
    for name in names:
        if name not in RUNS or name.startswith("dense"):
            continue
        rows: dict[str, dict[str, float]] = {}
        for label, code in codes.items():
            if label != "this" and "active" in name:
                continue
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(code)}
            got = json.loads(subprocess.run([sys.executable, __file__, "--breakdown-child", name], cwd=code, env=env,
                                            check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            for buf, nbytes in got["buffers"].items():
                rows.setdefault(buf, {})[label] = nbytes / got["masked"]
        print(f"\n{name}: bytes per masked weight held after 6 steps\n\n| buffer | " + " | ".join(codes) + " |")
        print("|---|" + "---|" * len(codes))
        for buf in sorted(rows, key=lambda b: -max(rows[b].values())):
            if max(rows[buf].values()) >= 0.005:
                print(f"| `{buf}` | " + " | ".join(f"{rows[buf].get(label, 0):.3f}" for label in codes) + " |")
        for label in codes:
            total = sum(r.get(label, 0) for b, r in rows.items() if not b.startswith("optimizer."))
            print(f"  {label}: sparsity state (engine + history) {total:.3f} B per masked weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=list(RUNS), help="runs (dense is always measured)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=None, help="git ref to measure beside this tree (e.g. main)")
    parser.add_argument("--breakdown", action="store_true", help="also list the per-weight buffers")
    parser.add_argument("--mmap-threshold", type=int, default=None, help="fix glibc's mmap threshold (bytes)")
    parser.add_argument("--breakdown-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mmap_threshold is not None:
        MALLOC["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    if args.breakdown_child:
        breakdown_child(args.breakdown_child)
        return
    names = ["dense"] + [n for n in args.only if n != "dense"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        codes = {"this": ROOT}
        if args.before:
            (work / "before").mkdir()
            subprocess.run(f"git -C {ROOT} archive {args.before} | tar -x -C {work / 'before'}", shell=True, check=True)
            codes = {"before": work / "before", "this": ROOT}
        print(f"peak RSS of 6 steps of `svite train` {' '.join(COMMON)} {MALLOC or ''}; "
              f"load average {os.getloadavg()[0]:.1f}")
        res = table(codes, names, args.repeats, work)
        print_table(res, codes, names)
        if args.breakdown:
            print_breakdown(codes, names)
        print(f"\nload average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
