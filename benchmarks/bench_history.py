"""Mask history at scale: storage beside the entropy bound, exact decoding, and the explorer's speed.
Run by hand (never part of the test suite):

    python benchmarks/bench_history.py shipped                      # per-snapshot figures of checkpoints/*
    nice -n 10 python benchmarks/bench_history.py scale             # synthetic DeiT-B history, this code
    nice -n 10 python benchmarks/bench_history.py scale --today     # ... and beside it the code on main
    nice -n 10 python benchmarks/bench_history.py scale --like svite --snapshots 300 --json out.json

``shipped`` re-encodes each shipped checkpoint's history through the real save path, checks every
snapshot against the original (format-1) tensors and prints, per snapshot, the flips f of N masked
weights, the entropy bound log2 C(N, f), the bytes stored and their ratio.

``scale`` writes a DeiT-B-shaped history (deit_base_patch16_224: 86.3 M masked weights in 50
layers, ``--snapshots`` snapshots, density 0.5) whose flips replay a shipped checkpoint's measured
schedule (``--like``: which snapshots change and what fraction of the weights they flip, stretched
to the new length; positions uniformly random, the hardest case for any coder) through
``save_checkpoint``; reads it back through ``load_checkpoint`` and checks every snapshot's every layer
against hashes the generator took of its own arrays; then times, each in a fresh process with
imports done before the clock starts (as ``bench_app.py``): opening the checkpoint and rendering the
Layer density page, the Mask evolution page, interactions after that (snapshot slider, layer change,
distance metric), the Compare page on two snapshots, and ``svite inspect --json``; with peak memory
(``ru_maxrss``). ``--today`` writes the same history with the code of ``main`` (``git archive``) and
runs the same page timings on it; children that exceed ``--today-limit-gb`` of memory or
``--timeout`` seconds are stopped and reported as such.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"density_cold_s": 5.0, "evolution_cold_s": 10.0, "interaction_s": 1.0, "peak_gb": 4.0,
           "later_bits_per_weight": 0.1, "first_bits_per_weight": 1.0, "delta_ratio": 1.25}


def log2_binom(n: int, f: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(f + 1) - math.lgamma(n - f + 1)) / math.log(2)


def _use_code(code: Path) -> None:
    """Import ``sparsity_core`` and ``app`` from ``code`` (this tree, or main's for --today)."""
    sys.path.insert(0, str(code))
    import sparsity_core

    if Path(sparsity_core.__file__).resolve().parent.parent != code.resolve():
        raise SystemExit(f"sparsity_core came from {sparsity_core.__file__}, not {code}")


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ----------------------------------------------------------------------------------------------
# storage figures from a file's index (no decoding)
def storage_rows(path: Path) -> list[dict]:
    """Per snapshot: kind, flips f of N, the bound, bytes of the masks (payload and index entry)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header = json.loads(fh.metadata()["svite_explorer"])
    hist = header["history"]
    n = sum(math.prod(s) for _, s in hist["groups"]["masks"]["layers"])
    packed = 8 * sum(-(-math.prod(s) // 8) for _, s in hist["groups"]["masks"]["layers"])
    rows, prev = [], None
    for i, snap in enumerate(hist["snapshots"]):
        entry = snap.get("masks")
        if entry is None:
            continue
        if entry["kind"] == "same":
            f, ones = 0, prev
        else:
            f, ones = sum(entry["flips"]), sum(entry["ones"])
        units = snap.get("units")
        rows.append({"snapshot": i, "event": snap["info"].get("event", ""), "kind": entry["kind"], "N": n,
                     "flips": f if i else None, "bound_bits": log2_binom(n, f) if i else None,
                     "payload_bytes": sum(entry.get("bytes", [])), "index_bytes": len(json.dumps(entry)),
                     "units_bytes": (sum(units.get("bytes", [])) + len(json.dumps(units))) if units else 0,
                     "density": ones / n if ones is not None else None, "format1_bits": packed})
        prev = ones
    return rows


def storage_summary(rows: list[dict]) -> dict:
    n = rows[0]["N"]
    later = rows[1:]
    deltas = [r for r in later if r["kind"] == "delta"]
    ratios = [8 * r["payload_bytes"] / r["bound_bits"] for r in deltas if r["bound_bits"]]
    ratios_idx = [8 * (r["payload_bytes"] + r["index_bytes"]) / r["bound_bits"] for r in deltas if r["bound_bits"]]
    same = [r["payload_bytes"] + r["index_bytes"] for r in later if r["kind"] == "same"]
    return {
        "masked_weights": n, "snapshots": len(rows),
        "first_bits_per_weight": 8 * rows[0]["payload_bytes"] / n,
        "later_bits_per_weight": sum(8 * r["payload_bytes"] for r in later) / (n * max(len(later), 1)),
        "later_bits_per_weight_with_index": sum(8 * (r["payload_bytes"] + r["index_bytes"]) for r in later)
        / (n * max(len(later), 1)),
        "later_entropy_bits_per_weight": sum(r["bound_bits"] for r in later) / (n * max(len(later), 1)),
        "changing": sum(r["flips"] > 0 for r in later), "keyframes": sum(r["kind"] == "key" for r in rows),
        "delta_ratio_max": max(ratios, default=None), "delta_ratio_median": sorted(ratios)[len(ratios) // 2]
        if ratios else None, "delta_ratio_max_with_index": max(ratios_idx, default=None),
        "same_snapshot_bytes_max": max(same, default=None),
        "format1_bits_per_weight": rows[0]["format1_bits"] / n,  # every snapshot packed in full
    }


def print_rows(rows: list[dict]) -> None:
    print("| # | event | kind | flips f / N | bound log2 C(N,f) bits | stored bits (+ index) | ratio | bits/weight |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        bits = 8 * r["payload_bytes"]
        bound = r["bound_bits"]
        ratio = f"{bits / bound:.3f}" if bound else ("–" if r["snapshot"] == 0 else "no flips")
        flips = "–" if r["flips"] is None else f"{r['flips']:,} ({r['flips'] / r['N']:.2%})"
        print(f"| {r['snapshot']} | {r['event']} | {r['kind']} | {flips} | "
              f"{'–' if bound is None else f'{bound:,.0f}'} | {bits:,} (+{8 * r['index_bytes']:,}) | {ratio} | "
              f"{bits / r['N']:.4f} |")


def print_summary(s: dict, today_bits: float | None = None) -> None:
    print(f"  first snapshot: {s['first_bits_per_weight']:.3f} bits/weight (target <= 1)")
    print(f"  later snapshots ({s['snapshots'] - 1}, {s['changing']} changing, {s['keyframes']} keyframes in all): "
          f"{s['later_bits_per_weight']:.4f} bits/weight ({s['later_bits_per_weight_with_index']:.4f} with the "
          f"index) vs entropy {s['later_entropy_bits_per_weight']:.4f}"
          + (f" vs today's format {today_bits:.4f}" if today_bits is not None else ""))
    if s["delta_ratio_max"] is not None:
        print(f"  delta snapshots: stored / log2 C(N,f): median {s['delta_ratio_median']:.3f}, max "
              f"{s['delta_ratio_max']:.3f} ({s['delta_ratio_max_with_index']:.3f} with the index) (target <= 1.25)")
    if s["same_snapshot_bytes_max"] is not None:
        print(f"  an unchanged snapshot: {s['same_snapshot_bytes_max']} bytes (its index entry; no tensor)")


# ----------------------------------------------------------------------------------------------
# shipped checkpoints
def shipped(args: argparse.Namespace) -> dict:
    import torch

    import sparsity_core  # noqa: F401
    from sparsity_core.checkpoint import load_checkpoint, save_checkpoint
    from sparsity_core.history.fileformat import history_summary
    from sparsity_core.masks.maskset import Snapshot

    out = {}
    for path in sorted((ROOT / "checkpoints").glob("*.safetensors")):
        old = load_checkpoint(path)
        snaps = [Snapshot(s.step, s.epoch, s.masks, s.units, s.state, s.info) for s in old.history]
        with tempfile.TemporaryDirectory() as tmp:
            new_path = Path(tmp) / path.name
            save_checkpoint(new_path, old.model, old.model_config, masks=old.masks, units=old.units, fired=old.fired,
                            history=snaps, meta=old.meta)
            new = load_checkpoint(new_path)
            exact = all(a.masks.unpack().equal(b.masks.unpack()) and a.units.unpack().equal(b.units.unpack())
                        and a.state.keys() == b.state.keys() and all(torch.equal(a.state[k], b.state[k]) for k in a.state)
                        for a, b in zip(snaps, new.history, strict=True))
            sizes = (path.stat().st_size, new_path.stat().st_size)
            rows = storage_rows(new_path) if new.history.layers.get("masks") else []
            state = history_summary(new.history)["groups"].get("state")
        old_hist = sum(s.masks.nbytes() + s.units.nbytes() + sum(v.numel() * v.element_size() for v in s.state.values())
                       for s in snaps)
        print(f"\n## {path.name}: {len(snaps)} snapshots; file {sizes[0] / 1e6:.2f} MB (format 1) -> "
              f"{sizes[1] / 1e6:.2f} MB (format 2); every snapshot decodes exactly: {exact}")
        entry = {"file_bytes_format1": sizes[0], "file_bytes_format2": sizes[1], "exact": exact,
                 "history_bytes_format1": old_hist}
        if rows:
            print_rows(rows)
            summary = storage_summary(rows)
            today = 8 * sum(s.masks.nbytes() for s in snaps[1:]) / (rows[0]["N"] * (len(rows) - 1))
            print_summary(summary, today)
            units = sum(r["units_bytes"] for r in rows)
            if units:
                print(f"  head/neuron masks: {units} bytes in all (payload + index) vs "
                      f"{sum(s.units.nbytes() for s in snaps)} in format 1")
            entry.update(summary=summary, rows=rows, today_later_bits_per_weight=today)
        if state:
            print(f"  selector weights: {state['bytes']:,} bytes ({state['key']} keyframes, {state['delta']} deltas) "
                  f"vs {sum(sum(v.numel() * v.element_size() for v in s.state.values()) for s in snaps):,} in "
                  "format 1")
            entry["state"] = state
        out[path.name] = entry
    return out


# ----------------------------------------------------------------------------------------------
# the synthetic DeiT-B history
def measured_schedule(like: str) -> list[float]:
    """Fraction of the masked weights each later snapshot of a shipped checkpoint flipped."""
    import sparsity_core  # noqa: F401
    from sparsity_core.checkpoint import load_checkpoint

    h = load_checkpoint(ROOT / "checkpoints" / f"{like}.safetensors").history
    st = h.stats("masks")
    return (st.flips[1:].sum(axis=1) / st.numel.sum()).tolist()


def write_child(out: Path, schedule: list[float], snapshots: int, model_name: str, seed: int) -> dict:
    """Generate the history with the code on sys.path and write it through its save_checkpoint."""
    import numpy as np
    import torch

    from sparsity_core.checkpoint import save_checkpoint
    from sparsity_core.masks.maskset import MaskSet, Snapshot, default_sparsifiable
    from sparsity_core.models.builder import ModelConfig, build_model

    try:
        from sparsity_core.history.lazy import MaskHistory
        history = MaskHistory()
    except ImportError:  # today's code: a list of fully packed snapshots
        history = []
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    cfg = ModelConfig(name=model_name)
    model = build_model(cfg)
    params = dict(model.named_parameters())
    names = default_sparsifiable(model)
    rng = np.random.default_rng(seed)
    flat = {n: rng.random(params[n].numel(), dtype=np.float32) < 0.5 for n in names}
    hashes, gen_s, flips_total = [], 0.0, []
    for j in range(snapshots):
        p = schedule[(j - 1) * len(schedule) // max(snapshots - 1, 1)] if j else 0.0
        t = time.perf_counter()
        flips = 0
        if p > 0:
            for m in flat.values():
                gaps = rng.geometric(p, size=int(len(m) * p * 1.1) + 64)
                pos = np.cumsum(gaps) - 1
                while pos[-1] < len(m):
                    pos = np.concatenate([pos, pos[-1] + np.cumsum(rng.geometric(p, size=1024))])
                pos = pos[pos < len(m)]
                m[pos] = ~m[pos]
                flips += len(pos)
        hashes.append([hashlib.blake2b(np.packbits(flat[n]).tobytes(), digest_size=8).hexdigest() for n in names])
        flips_total.append(flips)
        gen_s += time.perf_counter() - t
        masks = MaskSet({n: torch.from_numpy(flat[n]).reshape(params[n].shape) for n in names})
        history.append(Snapshot.take(1000 * j, j / 2, masks=masks, event="update" if p > 0 else "epoch"))
    masks = MaskSet({n: torch.from_numpy(flat[n].copy()).reshape(params[n].shape) for n in names})
    t = time.perf_counter()
    save_checkpoint(out, model, cfg, masks=masks, history=history,
                    meta={"method": "svite", "settings": {"density": 0.5}, "epoch": snapshots / 2,
                          "metrics": {"val_top1": 0.0}})
    save_s = time.perf_counter() - t
    return {"hashes": hashes, "names": names, "flips": flips_total, "total_s": time.perf_counter() - t0,
            "generate_s": gen_s, "save_s": save_s, "file_bytes": out.stat().st_size, "peak_gb": _peak_gb(),
            "masked_weights": int(sum(params[n].numel() for n in names))}


def verify_child(path: Path, truth: dict, samples: int, seed: int) -> dict:
    """Every snapshot's every layer, decoded by walking the history (each delta once), and random
    (snapshot, layer) pairs decoded by random access, against the generator's hashes."""
    import numpy as np

    from sparsity_core.checkpoint import load_checkpoint

    t = time.perf_counter()
    h = load_checkpoint(path).history
    load_s = time.perf_counter() - t
    bad, t = [], time.perf_counter()
    for j, name in enumerate(truth["names"]):
        for i, state in h.walk("masks", name):
            if hashlib.blake2b(np.packbits(state).tobytes(), digest_size=8).hexdigest() != truth["hashes"][i][j]:
                bad.append((i, name))
    walk_s, t = time.perf_counter() - t, time.perf_counter()
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        i, j = int(rng.integers(len(h))), int(rng.integers(len(truth["names"])))
        state = h.layer(i, truth["names"][j]).reshape(-1).numpy()
        if hashlib.blake2b(np.packbits(state).tobytes(), digest_size=8).hexdigest() != truth["hashes"][i][j]:
            bad.append((i, truth["names"][j]))
    return {"snapshots": len(h), "layers": len(truth["names"]), "mismatches": bad[:10], "n_bad": len(bad),
            "load_s": load_s, "walk_all_s": walk_s, "random_access_s": (time.perf_counter() - t) / max(samples, 1),
            "peak_gb": _peak_gb()}


def page_child(page: str, ckpt: Path, code: Path, n: int) -> dict:
    """One fresh process: the page cold, then interactions (each a rerun of the whole script)."""
    os.environ["SVITE_CHECKPOINTS_DIR"] = str(ckpt.parent)
    os.environ["SVITE_RUNS_DIR"] = str(ckpt.parent / "runs")
    os.environ["SVITE_UPLOADS_DIR"] = str(ckpt.parent / "uploads")
    t0 = time.perf_counter()
    import torch
    from streamlit.testing.v1 import AppTest

    import app.loaders.checkpoint_data  # noqa: F401
    import app.widgets.ui  # noqa: F401
    import sparsity_core.analysis  # noqa: F401

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = {"page": page, "import_s": time.perf_counter() - t0}
    at = AppTest.from_file(str(code / "app" / "main.py"), default_timeout=3600)
    at.session_state["ckpt"] = str(ckpt)
    at.switch_page(f"../pages/{page}.py")

    def run(label: str, action=None) -> None:
        (action(at) if action else at).run()
        if at.exception or at.error:
            raise SystemExit(f"{page} {label}: {[e.value for e in at.exception]} {[e.value for e in at.error]}")
        out[label] = float(at.session_state["_render_s"])

    if page == "compare":  # two snapshots a third of the run apart (AppTest cannot rerun this page once
        # its range slider exists: the slider's state comes back as one value, see the README)
        at.session_state["compare_mode"] = "Two snapshots of this checkpoint"
        at.session_state["compare_snaps"] = (n // 3, 2 * n // 3)
    run("cold_s")
    if page == "density":  # widget values are the raw options (ints), not their labels
        layers = at.selectbox(key="density_layer").options
        run("slider_s", lambda a: a.select_slider(key="density_snapshot").set_value(n // 2))
        run("layer_s", lambda a: a.selectbox(key="density_layer").set_value(layers[len(layers) // 2]))
        run("slider_again_s", lambda a: a.select_slider(key="density_snapshot").set_value(n - 1))
    elif page == "evolution":
        layers = at.selectbox(key="evo_layer").options
        run("layer_s", lambda a: a.selectbox(key="evo_layer").set_value(layers[len(layers) // 2]))
        run("slider_s", lambda a: a.select_slider(key="evo_snapshot").set_value(n // 3))
        run("slider_next_s", lambda a: a.select_slider(key="evo_snapshot").set_value(n // 3 + 1))
        run("metric_s", lambda a: a.radio(key="evo_metric").set_value("hamming"))
        out["captions"] = [c.value for c in at.caption if "Distances" in c.value]
    elif page == "compare":  # the cold run above already compared two snapshots (state set below)
        pass
    at2 = AppTest.from_file(str(code / "app" / "main.py"), default_timeout=3600)  # a new session: caches warm
    at2.session_state["ckpt"] = str(ckpt)
    if page == "compare":
        at2.session_state["compare_mode"] = "Two snapshots of this checkpoint"
        at2.session_state["compare_snaps"] = (n // 3, 2 * n // 3)
    at2.switch_page(f"../pages/{page}.py")
    at2.run()
    out["cached_s"] = float(at2.session_state["_render_s"])
    out["peak_gb"] = _peak_gb()
    return out


def inspect_child(ckpt: Path) -> dict:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "sparsity_core", "inspect", str(ckpt), "--json"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(sys.path[0])})
    wall = time.perf_counter() - t
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    doc = json.loads(res.stdout)
    return {"wall_s": wall, "history_entries": len(doc["history"]), "history_summary": doc.get("history_summary")}


# ----------------------------------------------------------------------------------------------
def _child(args: list[str], code: Path, timeout: float, limit_gb: float) -> dict:
    """Run this script as a child with ``code`` first on its path; stop it past the limits."""
    cmd = [sys.executable, __file__, "--code", str(code), *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=code, stdout=out, stderr=err)
        start, peak = time.perf_counter(), 0.0
        while proc.poll() is None:
            time.sleep(0.5)
            try:
                rss = int(next(ln for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                               if ln.startswith("VmRSS")).split()[1]) / 2**20
            except (OSError, StopIteration):
                rss = 0.0
            peak = max(peak, rss)
            if rss > limit_gb or time.perf_counter() - start > timeout:
                proc.kill()
                proc.wait()
                why = f"over {limit_gb} GB" if rss > limit_gb else f"over {timeout:.0f} s"
                return {"stopped": why, "after_s": time.perf_counter() - start, "peak_gb": peak}
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            return {"failed": err.read()[-1500:], "after_s": time.perf_counter() - start}
        return json.loads(out.read().strip().splitlines()[-1])


def scale(args: argparse.Namespace) -> dict:
    schedule = measured_schedule(args.like)
    work = Path(args.keep or tempfile.mkdtemp(prefix="svite-bench-history-"))
    work.mkdir(parents=True, exist_ok=True)
    codes = {"this": ROOT}
    if args.today:
        today = work / "main-code"
        if not today.exists():
            today.mkdir()
            subprocess.run(f"git -C {ROOT} archive {args.today_ref} | tar -x -C {today}", shell=True, check=True)
        codes["today"] = today
    changing = sum(1 for j in range(1, args.snapshots)
                   if schedule[(j - 1) * len(schedule) // max(args.snapshots - 1, 1)] > 0)
    print(f"schedule like checkpoints/{args.like}.safetensors: {sum(p > 0 for p in schedule)} of {len(schedule)} "
          f"later snapshots change, flipping {', '.join(f'{p:.2%}' for p in schedule if p > 0)}; stretched to "
          f"{args.snapshots} snapshots: {changing} change; load average {os.getloadavg()[0]:.1f}", flush=True)
    results: dict = {"like": args.like, "snapshots": args.snapshots, "schedule": schedule, "runs": {}}
    for label, code in codes.items():
        res: dict = {}
        d = work / label
        d.mkdir(exist_ok=True)
        ckpt = d / "deit_b_history.safetensors"
        limit = args.today_limit_gb if label == "today" else 1e9
        sched_file = work / "schedule.json"
        sched_file.write_text(json.dumps(schedule))
        if not ckpt.exists():
            res["write"] = _child(["write", "--out", str(ckpt), "--schedule", str(sched_file), "--snapshots",
                                   str(args.snapshots), "--model", args.model], code, args.timeout, limit)
            if "hashes" in res["write"]:
                (d / "truth.json").write_text(json.dumps({k: res["write"].pop(k) for k in ("hashes", "names")}))
            w = res["write"]
            print(f"[{label}] write: {w}" if "file_bytes" not in w else
                  f"[{label}] wrote {w['file_bytes'] / 1e9:.3f} GB in {w['total_s']:.0f} s (generating flips "
                  f"{w['generate_s']:.0f} s, save_checkpoint {w['save_s']:.1f} s), peak {w['peak_gb']:.2f} GB",
                  flush=True)
        if not ckpt.exists():
            results["runs"][label] = res
            continue
        res["file_bytes"] = ckpt.stat().st_size
        if label == "this":
            rows = storage_rows(ckpt)
            res["storage"] = storage_summary(rows)
            print_summary(res["storage"], res["storage"]["format1_bits_per_weight"])
            res["verify"] = _child(["verify", "--ckpt", str(ckpt), "--truth", str(d / "truth.json")], code,
                                   args.timeout, limit)
            print(f"[{label}] verify: {json.dumps(res['verify'])}", flush=True)
        for page in args.pages:
            res[page] = _child(["page", page, "--ckpt", str(ckpt), "--snapshots", str(args.snapshots)], code,
                               args.timeout, limit)
            print(f"[{label}] {page}: {json.dumps(res[page])}", flush=True)
        res["inspect"] = _child(["inspect", "--ckpt", str(ckpt)], code, args.timeout, limit)
        print(f"[{label}] inspect --json: {json.dumps(res['inspect'])[:600]}", flush=True)
        results["runs"][label] = res
    results["load_average_end"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["shipped", "scale", "write", "verify", "page", "inspect"])
    parser.add_argument("page_name", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--like", default="s2vite", choices=["s2vite", "svite", "svite-plus"],
                        help="replay this shipped checkpoint's flip schedule (default: s2vite, the statistics the "
                             "issue quotes: 9 of 32 later snapshots change, median 2.3%% flipped)")
    parser.add_argument("--snapshots", type=int, default=300)
    parser.add_argument("--model", default="deit_base_patch16_224")
    parser.add_argument("--pages", nargs="*", default=["density", "evolution", "compare"])
    parser.add_argument("--today", action="store_true", help="also run the code of --today-ref (main)")
    parser.add_argument("--today-ref", default="main")
    parser.add_argument("--today-limit-gb", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--keep", default=None, help="work directory to keep (files are reused when present)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--code", type=Path, default=ROOT, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--truth", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--schedule", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.what in ("write", "verify", "page", "inspect"):
        _use_code(args.code)
        if args.what == "write":
            res = write_child(args.out, json.loads(args.schedule.read_text()), args.snapshots, args.model, 0)
        elif args.what == "verify":
            res = verify_child(args.ckpt, json.loads(args.truth.read_text()), 100, 0)
        elif args.what == "page":
            res = page_child(args.page_name, args.ckpt, args.code, args.snapshots)
        else:
            res = inspect_child(args.ckpt)
        print(json.dumps(res))
        return 0
    _use_code(ROOT)
    print(f"load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}, "
          f"{os.cpu_count()} CPUs", flush=True)
    results = shipped(args) if args.what == "shipped" else scale(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
