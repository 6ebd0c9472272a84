"""Time to first render of the Layer density and Mask evolution pages for a DeiT-S-sized checkpoint
with 20 snapshots (targets: <= 3 s cold, <= 0.5 s cached). Run by hand:

    nice -n 10 python benchmarks/bench_app.py            # makes the checkpoint in a temp dir, then measures
    python benchmarks/bench_app.py --repeats 5 --json out.json

The checkpoint is made with the core (``save_checkpoint``): deit_small_patch16_224 (22 M parameters),
uniform density-0.5 masks on every sparsified weight, 20 snapshots (init, then topology
updates that swap 5 % of each layer's kept weights). It is not shipped.

How it is measured, with ``streamlit.testing.v1.AppTest`` on the real entry script (``app/main.py``), which
records how long each run of the script took (``st.session_state["_render_s"]``: sidebar + page, every
element sent); AppTest's own wall time per run (it rescans installed packages for components on
every run, seconds on a busy machine) is reported beside it:
  * cold   -- a fresh Python process per page and repeat; imports (streamlit, torch, timm, the app) are
              done before the clock starts, every Streamlit cache is empty: the time covers reading the
              file, building the model, the analysis and rendering the page.
  * cached -- in that same process, a new AppTest session opens the page again (caches warm).
The import time of a fresh process is reported separately (``import_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("density", "evolution")
TARGET_COLD_S, TARGET_CACHED_S = 3.0, 0.5


def make_checkpoint(path: Path, snapshots: int = 20, density: float = 0.5, swap: float = 0.05,
                    model_name: str = "deit_small_patch16_224") -> dict:
    import torch

    import sparsity_core  # noqa: F401
    from sparsity_core.checkpoint import save_checkpoint
    from sparsity_core.masks import MaskSet, Snapshot, default_sparsifiable
    from sparsity_core.models import ModelConfig, build_model

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = ModelConfig(name=model_name)
    model = build_model(cfg)
    names = default_sparsifiable(model)
    params = dict(model.named_parameters())

    def exact(shape: torch.Size) -> torch.Tensor:
        n = shape.numel()
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=gen)[: round(density * n)]] = True
        return flat.reshape(shape)

    def swapped(mask: torch.Tensor) -> torch.Tensor:
        flat = mask.reshape(-1).clone()
        on, off = flat.nonzero().flatten(), (~flat).nonzero().flatten()
        k = int(swap * len(on))
        flat[on[torch.randperm(len(on), generator=gen)[:k]]] = False
        flat[off[torch.randperm(len(off), generator=gen)[:k]]] = True
        return flat.reshape(mask.shape)

    masks = MaskSet({n: exact(params[n].shape) for n in names})
    history = [Snapshot.take(0, 0.0, masks=masks, event="init")]
    for i in range(1, snapshots):
        masks = MaskSet({n: swapped(m) for n, m in masks.items()})
        history.append(Snapshot.take(1000 * i, float(i), masks=masks, event="update", death_rate=0.5 / i))
    masks.apply(model)
    save_checkpoint(path, model, cfg, masks=masks, history=history,
                    meta={"method": "svite", "settings": {"density": density}, "epoch": snapshots - 1,
                          "metrics": {"val_top1": 0.0}})
    return {"params": sum(p.numel() for p in model.parameters()), "snapshots": len(history),
            "file_mb": path.stat().st_size / 2**20}


def child(page: str, ckpt_dir: Path) -> dict:
    """One fresh process: import, then time the first (cold) and a second (cached) render."""
    t0 = time.perf_counter()
    os.environ["SVITE_CHECKPOINTS_DIR"] = str(ckpt_dir)
    os.environ["SVITE_RUNS_DIR"] = str(ckpt_dir / "runs")
    os.environ["SVITE_UPLOADS_DIR"] = str(ckpt_dir / "uploads")
    import torch
    from streamlit.testing.v1 import AppTest

    import app.figures  # noqa: F401
    import app.loaders  # noqa: F401
    import app.ui  # noqa: F401
    import sparsity_core.analysis  # noqa: F401

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    import_s = time.perf_counter() - t0
    ckpt = str(next(ckpt_dir.glob("*.safetensors")))
    times, script = [], []
    for _ in range(2):
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=300)
        at.session_state["ckpt"] = ckpt
        at.switch_page(f"../pages/{page}.py")
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
        script.append(float(at.session_state["_render_s"]))
        if at.exception or at.error:
            raise SystemExit(f"{page}: {[e.value for e in at.exception]} {[e.value for e in at.error]}")
        charts = len(at.get("plotly_chart"))
    return {"page": page, "import_s": import_s, "cold_s": script[0], "cached_s": script[1],
            "cold_apptest_s": times[0], "cached_apptest_s": times[1], "charts": charts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per page")
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--model", default="deit_small_patch16_224", help="a smaller one for a smoke run")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--child", choices=PAGES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.dir)))
        return 0
    with tempfile.TemporaryDirectory(prefix="svite-bench-app-") as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        info = make_checkpoint(d / "sparse.safetensors", snapshots=args.snapshots, model_name=args.model)
        print(f"checkpoint: {args.model}, {info['params'] / 1e6:.1f} M params, {info['snapshots']} "
              f"snapshots, {info['file_mb']:.0f} MB (made in {time.perf_counter() - t:.0f} s)", flush=True)
        results = []
        for page in PAGES:
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, __file__, "--child", page, "--dir", str(d)], cwd=ROOT,
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    raise SystemExit(out.stderr[-2000:])
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = results[-1]
                print(f"  {page:9s} cold {r['cold_s']:.2f} s  cached {r['cached_s']:.3f} s  (AppTest wall: "
                      f"{r['cold_apptest_s']:.2f} / {r['cached_apptest_s']:.2f} s; imports {r['import_s']:.1f} s; "
                      f"{r['charts']} charts)", flush=True)
    summary = {}
    for page in PAGES:
        rs = [r for r in results if r["page"] == page]
        summary[page] = {k: statistics.median(r[k] for r in rs)
                         for k in ("cold_s", "cached_s", "cold_apptest_s", "cached_apptest_s", "import_s")}
    print(f"\nmedian of {args.repeats} fresh processes (load average {os.getloadavg()[0]:.1f}):")
    print("| page | cold (s) | cached (s) | target cold / cached |")
    print("| --- | --- | --- | --- |")
    for page, s in summary.items():
        ok = s["cold_s"] <= TARGET_COLD_S and s["cached_s"] <= TARGET_CACHED_S
        print(f"| {page} | {s['cold_s']:.2f} | {s['cached_s']:.3f} | {TARGET_COLD_S} / {TARGET_CACHED_S} "
              f"{'met' if ok else 'MISSED'} |")
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": info, "runs": results, "median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
