"""The run index and the Runs page at the scale of a big sweep (run by hand):

    nice -n 10 python benchmarks/bench_runs.py            # builds the folder in a temp dir, measures, prints
    python benchmarks/bench_runs.py --keep DIR --json out.json

The folder: 500 runs below one root, nested 1 to 4 levels deep, five methods (dense, static, SViTE,
S²ViTE, SViTE+) over 100 seeds. Their checkpoints are five real tiny runs trained here first (vit_tiny_demo
shrunk to dim 48, depth 2; 2 epochs) and hard-linked into each run folder with a config.json and
metrics.jsonl of that run's seed; 20 runs are *running* (no checkpoint yet, a metrics log without an end
record, their run lock held by this process exactly as a training process holds it) and 20 *failed* (a
log cut short, an error line in stderr.log). Targets (issue 17):

  * indexed cold (a fresh process, imports done before the clock starts): <= 5 s;
  * indexed again after 5 runs changed (a refresh of the same index): <= 1 s;
  * the Runs page drawn from warm caches (a new AppTest session in the same process): <= 2 s;
  * memory: <= 1 GB above the app's idle (the process after drawing the Runs page on an empty folder).

The load average is printed beside the numbers: the machine is shared.
"""

from __future__ import annotations

import argparse
import fcntl
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
METHODS = {"dense": dict(method="dense"), "static": dict(method="static", density=0.5),
           "svite": dict(method="svite", density=0.5, update_frequency=4),
           "s2vite": dict(method="s2vite", update_frequency=4),
           "svite+": dict(method="svite", density=0.5, update_frequency=4, keep_ratio=0.5)}
TINY = dict(model="vit_tiny_demo", embed_dim=48, depth=2, num_heads=4, train_size=256, val_size=64, batch_size=32,
            epochs=2, lr=2e-3, log_every=4, update_start="warmup")
N_RUNS, N_RUNNING, N_FAILED = 500, 20, 20


def _templates(where: Path) -> dict[str, Path]:
    import torch

    import sparsity_core  # noqa: F401
    from sparsity_core.training.config import TrainConfig
    from sparsity_core.training.loop import train

    torch.set_num_threads(1)
    out = {}
    for name, kw in METHODS.items():
        run = where / name
        if not (run / "checkpoint.safetensors").exists():
            train(TrainConfig(out=str(run), seed=0, **TINY, **kw), show_progress=False, echo_metrics=False)
        out[name] = run
    return out


def build(root: Path, templates: dict[str, Path]) -> list[int]:
    """The 500-run folder; returns the file descriptors holding the running runs' locks."""
    names = list(templates)
    locks = []
    for i in range(N_RUNS):
        method = names[i % len(names)]
        seed = i // len(names)
        depth = 1 + i % 4
        parts = [f"exp_{i % 3}", f"group_{i % 5}", f"part_{i % 2}"][: depth - 1]
        run = root.joinpath(*parts, f"{method}_s{seed}")
        run.mkdir(parents=True)
        src = templates[method]
        config = json.loads((src / "config.json").read_text())
        config.update(seed=seed, out=str(run))
        (run / "config.json").write_text(json.dumps(config))
        lines = (src / "metrics.jsonl").read_text().splitlines()
        kind = "running" if i < N_RUNNING else "failed" if i < N_RUNNING + N_FAILED else "finished"
        if kind == "finished":
            os.link(src / "checkpoint.safetensors", run / "checkpoint.safetensors")
            (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            (run / "wall_s.txt").write_text(f"{100 + i}\n")
            continue
        (run / "metrics.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
        if kind == "running":
            fd = os.open(run / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locks.append(fd)
        else:
            (run / "stderr.log").write_text("svite train: error: training diverged: loss is nan at step 9 (epoch 2); "
                                            "no checkpoint had been written yet\n")
    return locks


def _rss_mb() -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def cold_child(root: str) -> None:
    """In a fresh process: imports first, then one index of the folder."""
    import sparsity_core  # noqa: F401
    from sparsity_core import runs

    t0 = time.perf_counter()
    table, notes = runs.index_runs(root)
    print(json.dumps({"cold_s": time.perf_counter() - t0, "runs": len(table), "notes": len(notes),
                      "status": table["status"].value_counts().to_dict()}))


def warm(root: Path) -> dict:
    """A refresh after 5 runs changed, and the Runs page in AppTest (cold, then a new session), with memory."""
    from streamlit.testing.v1 import AppTest

    from sparsity_core import runs

    empty = Path(tempfile.mkdtemp(prefix="svite-empty-"))
    os.environ.update(SVITE_RUNS_DIR=str(empty), SVITE_RUNS_REFRESH_S="0", HF_HUB_OFFLINE="1")
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
    at.switch_page("../pages/runs.py")
    at.run()
    idle_rss, _ = _rss_mb()
    idx = runs.RunIndex(root)
    idx.refresh()
    changed = sorted(root.rglob("metrics.jsonl"))[100:105]
    for path in changed:
        with open(path, "a") as fh:
            fh.write(json.dumps({"kind": "step", "step": 999, "loss": 1.0}) + "\n")
    t0 = time.perf_counter()
    idx.refresh()
    again = time.perf_counter() - t0
    os.environ["SVITE_RUNS_DIR"] = str(root)
    os.environ["SVITE_RUNS_REFRESH_S"] = "2"
    pages = []
    for _ in range(3):  # the first is cold (every run read, figures built); then new sessions, caches warm
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
        at.switch_page("../pages/runs.py")
        t0 = time.perf_counter()
        at.run()
        pages.append({"script_s": at.session_state["_render_s"], "apptest_s": time.perf_counter() - t0,
                      "errors": [e.value for e in at.exception] + [e.value for e in at.error]})
    _, peak = _rss_mb()
    shutil.rmtree(empty, ignore_errors=True)
    return {"again_s": again, "page": pages, "idle_rss_mb": idle_rss, "peak_rss_mb": peak,
            "above_idle_mb": peak - idle_rss, "rows": len(at.dataframe[0].value) if at.dataframe else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="build the folder here and keep it")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        cold_child(args.child)
        return
    base = Path(args.keep or tempfile.mkdtemp(prefix="svite-bench-runs-"))
    root = base / "sweep"
    if root.exists():
        shutil.rmtree(root)
    templates = _templates(base / "templates")
    locks = build(root, templates)
    load = os.getloadavg()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    colds = [json.loads(subprocess.run([sys.executable, __file__, "--child", str(root)], capture_output=True, text=True,
                                       env=env, check=True).stdout.strip().splitlines()[-1]) for _ in range(3)]
    result = {"cold": colds, **warm(root), "load_before": load, "load_after": os.getloadavg()}
    for fd in locks:
        os.close(fd)
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    cold = sorted(c["cold_s"] for c in colds)[1]
    cached = min(p["script_s"] for p in result["page"][1:])
    print(f"500 runs ({colds[0]['status']}): indexed cold {cold:.2f} s (median of 3; target <= 5), "
          f"again after 5 changed {result['again_s']:.3f} s (<= 1), Runs page cold {result['page'][0]['script_s']:.2f} s, "
          f"cached {cached:.2f} s (<= 2), memory {result['above_idle_mb']:.0f} MB above idle "
          f"({result['idle_rss_mb']:.0f} -> {result['peak_rss_mb']:.0f} MB; <= 1024); "
          f"load average {result['load_before'][0]:.1f} -> {result['load_after'][0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
