"""The Retrain page's default run, timed: launched exactly as the page launches it (``app.retrain.registry.launch``
with ``app.retrain.run_form.defaults_for`` of a shipped demo checkpoint), one start after the other. Run by
hand:

    python benchmarks/bench_retrain.py                       # from the dense and the SViTE+ demo
    python benchmarks/bench_retrain.py --start dense svite s2vite svite-plus --background-load 2

Prints, per start: wall time from launch to the finished checkpoint, when the first progress line
appeared (the trainer's ``start`` record: Python, torch, data and model ready) and when the first step
line appeared, the validation top-1 after each epoch (chance: 10 %), the starting checkpoint's own
recorded top-1, and the load average seen. Runs go to a temporary folder and are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def time_one(start: str) -> dict:
    import sparsity_core  # noqa: F401
    from app.retrain import registry, run_form
    from sparsity_core.analysis.report import inspect_checkpoint
    from sparsity_core.checkpoint import load_checkpoint

    path = str(ROOT / "checkpoints" / f"{start}.safetensors")
    doc = inspect_checkpoint(load_checkpoint(path))
    form = run_form.defaults_for(doc, path)
    loads = [os.getloadavg()[0]]
    t0 = time.time()
    run_id = registry.launch(form)
    first_start = first_step = None
    while (s := registry.state(run_id)).status == "running":
        now = time.time() - t0
        if first_start is None and s.total_steps:
            first_start = now
        if first_step is None and s.step > 0:
            first_step = now
        loads.append(os.getloadavg()[0])
        time.sleep(0.25)
    wall = time.time() - t0
    epochs = s.metrics[s.metrics["kind"] == "epoch"] if len(s.metrics) else []
    return {"start": start, "status": s.status, "error": s.error, "wall_s": round(wall, 1),
            "first_progress_s": first_start and round(first_start, 1), "first_step_s": first_step and
            round(first_step, 1), "val_top1": [round(float(v), 1) for v in epochs["val_top1"]] if len(epochs) else [],
            "start_top1": (doc.get("metrics") or {}).get("val_top1"), "method": form.method,
            "keep_ratio": form.keep_ratio, "epochs": form.epochs, "train_size": form.train_size,
            "load_min": round(min(loads), 1), "load_max": round(max(loads), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", nargs="+", default=["dense", "svite-plus"],
                        choices=["dense", "svite", "svite-plus", "s2vite"])
    parser.add_argument("--background-load", type=int, default=0, metavar="N",
                        help="run N niced busy processes during the measurement (see bench_app.py)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    from benchmarks.bench_app import _start_load

    load = _start_load(args.background_load, 3600) if args.background_load else []
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="svite-bench-retrain-") as tmp:
            os.environ["SVITE_RUNS_DIR"] = tmp
            for start in args.start:
                results.append(time_one(start))
                print(json.dumps(results[-1]), flush=True)
    finally:
        for p in load:
            p.kill()
    print("\n| start | default run | wall (s) | first progress line (s) | first step (s) | val top-1 per epoch "
          "(%) | start's own top-1 | load average |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        selector = f" + selector {r['keep_ratio']:g}" if r["keep_ratio"] else ""
        run = f"{r['method']}{selector}, {r['epochs']} × {r['train_size']}"
        print(f"| {r['start']} | {run} | {r['wall_s']} | {r['first_progress_s']} | {r['first_step_s']} | "
              f"{' → '.join(str(v) for v in r['val_top1']) or r['status'] + ': ' + r['error']} | "
              f"{r['start_top1']} | {r['load_min']}–{r['load_max']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
