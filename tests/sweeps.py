"""Real tiny runs for the run-index, Runs page and browser tests: finished (trained in this process),
running (a real ``svite train`` subprocess holding its run lock) and failed (a real run that diverged,
its error line in ``stderr.log`` as the app's Retrain page keeps it). Nothing here fakes a result."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import tiny_train_config

from sparsity_core.cli import main as svite
from sparsity_core.training.loop import train

ROOT = Path(__file__).resolve().parent.parent
TINY_FLAGS = ["--model", "vit_tiny_demo", "--embed-dim", "48", "--depth", "2", "--num-heads", "4", "--train-size",
              "256", "--val-size", "64", "--batch-size", "32", "--log-every", "2", "--update-start", "warmup", "--quiet"]


def finished(out: Path, **overrides) -> Path:
    """A finished tiny run (2 epochs, 16 steps)."""
    train(tiny_train_config(out, **overrides), show_progress=False, echo_metrics=False)
    return out


def failed(out: Path) -> Path:
    """A run that really fails: lr 1e9 makes the loss NaN within a few steps; the CLI's one-line error
    goes to ``stderr.log`` in the run folder (where the app's Retrain page keeps it)."""
    out.mkdir(parents=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = svite(["train", *TINY_FLAGS, "--method", "static", "--lr", "1e9", "--seed", "1", "--out", str(out)])
    assert code == 2, err.getvalue()
    (out / "stderr.log").write_text(err.getvalue())
    return out


def start_running(out: Path, timeout_s: float = 180) -> subprocess.Popen:
    """A real ``svite train`` of 2000 epochs in a subprocess, returned (paused) once it has logged a
    step, so it holds its run lock and has a metrics line; the caller stops it (:func:`stop`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sparsity_core", "train", *TINY_FLAGS, "--method", "dense",
                             "--seed", "2", "--epochs", "2000", "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
        except OSError:
            lines = []
        if any(json.loads(ln).get("kind") == "step" for ln in lines[:-1] if ln.strip()):
            # paused, not ended: it still holds its run lock (a running run to the index), and leaves the
            # two cores to the tests instead of training 16000 steps beside them
            os.killpg(proc.pid, signal.SIGSTOP)
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"the running run ended early: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.3)
    stop(proc)
    raise AssertionError(f"the running run logged no step within {timeout_s} s")


def stop(proc: subprocess.Popen) -> None:
    """End a :func:`start_running` run as Ctrl-C would (it releases its lock, writes no end record)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    if proc.stderr is not None:
        proc.stderr.close()


@contextlib.contextmanager
def three_runs(root: Path):
    """A folder with a finished run (depth 1), a running one (depth 2) and a failed one (depth 3)."""
    proc = start_running(root / "a" / "dense_s2")
    try:
        finished(root / "svite_s0", method="svite", density=0.5, update_frequency=4)
        failed(root / "a" / "b" / "static_s1")
        yield {"finished": root / "svite_s0", "running": root / "a" / "dense_s2", "failed": root / "a" / "b" / "static_s1",
               "proc": proc}
    finally:
        stop(proc)
