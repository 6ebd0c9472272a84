"""The demo sweep: every arm of the three demo experiments over seeds 0-4, two runs at a time.

    nice -n 10 python scripts/sweep.py                 # train what is missing (resumes interrupted runs)
    nice -n 10 python scripts/sweep.py --list          # the jobs, in order, and which are finished
    nice -n 10 python scripts/sweep.py --phases 1 2    # only some phases

Each job is one run of ``scripts/exp_*.py`` (``scripts/_experiment.py``: the recipe, the run folders
``runs/<experiment>/<arm>_s<seed>``, skipping finished runs and resuming interrupted ones), trained in a
child process with one torch thread at ``nice 10``, ``--workers`` (default 2) at a time: on the 2-core
machine every arm then runs under the same load, whatever else the machine does. Stopping the sweep
(Ctrl-C, a kill) loses at most the epoch in progress of each running job; run it again to continue.

The phases, in the order they run (each phase's jobs seed-major, so that a partial sweep is paired):

1. dense: the recipe must converge on every seed before anything is compared with it;
2. the methods at their main setting: static and SViTE at density 0.5, SViTE+ (SViTE 0.5 with a token
   selector keeping half the patches), S2ViTE at 0.7 heads / 0.6 neurons;
3. the sparser points, static and SViTE at densities 0.2 and 0.1 (dense shared), and what S2ViTE's head
   exploration costs (S2ViTE with the former head growth rule);
4. the mechanism test when SViTE does not beat static masks (``--phases 4``): weights grown at one update
   are pruned at the next only after every older weight (``--death magnitude-mature``), at density 0.5;
5. the same at density 0.1 (``--phases 5``);
6. the sparse end: static and SViTE at density 0.05 (``--phases 6``), and
7. at 0.02 (``--phases 7``);
8. the alternative start at the sparse end, paired with 6 and 7: updates from the end of the LR warm-up
   instead of the loss plateau's end (``--phases 8``).

``--jobs PHASE:SEEDS`` picks seeds per phase (``--jobs 3:3,4 6:0-4``); the issue-27 batch is
``--jobs 3u:3,4 6:0-4 5:0-4 7:0-4`` (``3u``: phase 3 without the S2ViTE ablation).

A log line per job start and end (with its wall time) goes to stdout and ``runs/sweep.log``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

SEEDS = [0, 1, 2, 3, 4]
PHASES: dict[int, list[tuple[str, str]]] = {
    1: [("exp_unstructured", "dense")],
    2: [("exp_unstructured", "static"), ("exp_unstructured", "svite"),
        ("exp_token_selector", "svite+selector-mlp"), ("exp_structured", "s2vite")],
    3: [("exp_unstructured", "static_d02"), ("exp_unstructured", "svite_d02"),
        ("exp_unstructured", "static_d01"), ("exp_unstructured", "svite_d01"), ("exp_structured", "s2vite_gradnorm")],
    4: [("exp_unstructured", "svite_mature")],
    5: [("exp_unstructured", "svite_mature_d01")],
    6: [("exp_unstructured", "static_d005"), ("exp_unstructured", "svite_d005")],
    7: [("exp_unstructured", "static_d002"), ("exp_unstructured", "svite_d002")],
    8: [("exp_unstructured", "svite_warmup_d005"), ("exp_unstructured", "svite_warmup_d002")],
}
LOG = ROOT / "runs" / "sweep.log"


def _module(experiment: str):
    spec = importlib.util.spec_from_file_location(experiment, ROOT / "scripts" / f"{experiment}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arm(experiment: str, name: str) -> dict:
    """The TrainConfig fields (without out/seed) of one arm of one experiment."""
    module = _module(experiment)
    return module.arm_fields(name)


def train_one(experiment: str, name: str, seed: int) -> None:
    from _experiment import train_run

    train_run(experiment, name, arm(experiment, name), seed)


def jobs(phases: list[int], seeds: list[int]) -> list[tuple[str, str, int]]:
    return [(exp, name, seed) for phase in phases for seed in seeds for exp, name in PHASES[phase]]


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def parse_jobs(specs: list[str]) -> list[tuple[str, str, int]]:
    """``PHASE:SEEDS`` items in order (``3u``: phase 3's unstructured arms only), each phase seed-major."""
    todo = []
    for spec in specs:
        phase, _, seeds = spec.partition(":")
        arms = PHASES[int(phase.rstrip("u"))]
        if phase.endswith("u"):
            arms = [a for a in arms if a[0] == "exp_unstructured"]
        todo += [(exp, name, seed) for seed in _seeds(seeds or "0-4") for exp, name in arms]
    return todo


def _log(line: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} {line}", flush=True)
    LOG.parent.mkdir(parents=True, exist_ok=True)
    with LOG.open("a") as f:
        f.write(f"{stamp} {line}\n")


def _run(job: tuple[str, str, int]) -> int:
    experiment, name, seed = job
    t0 = time.time()
    _log(f"start {experiment}/{name}_s{seed}")
    proc = subprocess.run(["nice", "-n", "10", sys.executable, __file__, "--one", experiment, name, str(seed)],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    _log(f"end   {experiment}/{name}_s{seed} exit {proc.returncode} in {time.time() - t0:.0f} s"
         + (f": {tail}" if proc.returncode else ""))
    return proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, nargs="+", default=[1, 2, 3], choices=sorted(PHASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--jobs", nargs="+", metavar="PHASE:SEEDS",
                        help="phases with their own seeds, in order (e.g. 3u:3,4 6:0-4); overrides --phases/--seeds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--one", nargs=3, metavar=("EXPERIMENT", "ARM", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        train_one(args.one[0], args.one[1], int(args.one[2]))
        return 0
    todo = parse_jobs(args.jobs) if args.jobs else jobs(args.phases, args.seeds)
    if args.list:
        from _experiment import find_run, is_complete

        for exp, name, seed in todo:
            run = find_run(exp, name, arm(exp, name), seed)
            print(f"{'done' if is_complete(run) else 'todo'}  {exp}/{name}_s{seed}  ({run.relative_to(ROOT)})")
        return 0
    t0 = time.time()
    _log(f"sweep: {len(todo)} jobs, {args.workers} at a time (phases {args.phases}, seeds {args.seeds})")
    with ThreadPoolExecutor(args.workers) as pool:  # in order; no job needs another's result
        failed = sum(code != 0 for code in pool.map(_run, todo))
    _log(f"sweep done in {time.time() - t0:.0f} s ({failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
