"""The Retrain page's run registry: training runs launched as subprocesses, tracked on disk.

Each run gets its own directory under the runs dir (``runs/`` or ``$SVITE_RUNS_DIR``) holding
``app_run.json`` (the registry record: command, pid, status), the training outputs (checkpoint,
``metrics.jsonl``, ...) and the subprocess's ``stdout.log``/``stderr.log``. Because the registry is
on disk and the run is in its own process group, a page reload, a new browser session or even a
restarted app server still sees the run; cancelling signals its whole process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparsity_core.checkpoint import atomic_write_bytes
from sparsity_core.errors import SviteError

from .settings import REPO_ROOT, runs_dir

RECORD = "app_run.json"
FINAL = ("finished", "failed", "cancelled")
METHODS = ("svite", "s2vite", "dense", "static", "oneshot")
_PROCS: dict[str, subprocess.Popen] = {}  # runs started by this server process
_LOCK = threading.Lock()


@dataclass
class RunForm:
    """What the Retrain form asks for; ``command`` turns it into ``svite train`` flags."""

    method: str = "svite"
    density: float = 0.5
    atten_density: float = 0.7
    other_density: float = 0.6
    keep_ratio: float = 0.0  # 0: no token selector
    epochs: int = 3
    update_frequency: int = 50
    data: str = "demo"
    train_size: int | None = 2000  # demo data only
    val_size: int | None = 500
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    init: str | None = None  # start from this checkpoint (weights, and masks if it has any)
    model_flags: dict[str, Any] = field(default_factory=lambda: {"model": "vit_tiny_demo"})

    def validate(self) -> None:
        if self.method not in METHODS:
            raise SviteError(f"method '{self.method}': choose one of {', '.join(METHODS)}")
        if not self.data.strip():
            raise SviteError("data: give 'demo' or an ImageFolder directory")
        if self.data != "demo" and not Path(self.data).expanduser().is_dir():
            raise SviteError(f"{self.data}: no such folder (an ImageFolder directory, or 'demo')")

    def command(self, out: Path) -> list[str]:
        cmd = [sys.executable, "-m", "sparsity_core", "train", "--out", str(out), "--quiet",
               "--method", self.method, "--epochs", str(self.epochs), "--batch-size", str(self.batch_size),
               "--lr", str(self.lr), "--seed", str(self.seed), "--data", self.data]
        for key, value in self.model_flags.items():
            if value is not None:
                cmd += [f"--{key.replace('_', '-')}", str(value)]
        if self.data == "demo":
            if self.train_size:
                cmd += ["--train-size", str(self.train_size)]
            if self.val_size:
                cmd += ["--val-size", str(self.val_size)]
        if self.method in ("svite", "static", "oneshot"):
            cmd += ["--density", str(self.density)]
        if self.method in ("svite", "s2vite"):
            cmd += ["--update-frequency", str(self.update_frequency)]
        if self.method == "s2vite":
            cmd += ["--atten-density", str(self.atten_density), "--other-density", str(self.other_density)]
        if self.keep_ratio and self.keep_ratio > 0:
            cmd += ["--keep-ratio", str(self.keep_ratio)]
        if self.init:
            cmd += ["--init", str(self.init)]
        return cmd


@dataclass
class RunState:
    """A run as the page shows it."""

    id: str
    dir: Path
    status: str  # running | finished | failed | cancelled
    started: float
    form: dict[str, Any]
    step: int = 0
    total_steps: int | None = None
    epoch: float = 0.0
    error: str = ""
    checkpoint: Path | None = None
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def progress(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else (1.0 if self.status == "finished" else 0.0)


# ----------------------------------------------------------------------------------------------
def _read_record(run_dir: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((run_dir / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _write_record(run_dir: Path, rec: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / RECORD, json.dumps(rec, indent=2, default=str).encode())


def _new_run_dir(method: str) -> Path:
    root = runs_dir()
    root.mkdir(parents=True, exist_ok=True)
    base = f"app-{time.strftime('%Y%m%d-%H%M%S')}-{method}"
    for i in range(1000):
        d = root / (base if i == 0 else f"{base}-{i}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise SviteError(f"{root}: cannot create a new run directory")


def launch(form: RunForm) -> str:
    """Start ``python -m sparsity_core train`` for ``form`` in a new run directory; returns the run id."""
    form.validate()
    run_dir = _new_run_dir(form.method)
    cmd = form.command(run_dir)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    rec = {"id": run_dir.name, "command": cmd, "form": asdict(form), "started": time.time(), "status": "running",
           "pid": None}
    _write_record(run_dir, rec)
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # own process group: cancel signals all of it
    rec["pid"] = proc.pid
    _write_record(run_dir, rec)
    _PROCS[run_dir.name] = proc
    threading.Thread(target=_wait, args=(proc, run_dir), daemon=True, name=f"wait-{run_dir.name}").start()
    return run_dir.name


def _wait(proc: subprocess.Popen, run_dir: Path) -> None:
    code = proc.wait()
    _finalize(run_dir, code)


def _last_error(run_dir: Path) -> str:
    try:
        lines = [ln.strip() for ln in (run_dir / "stderr.log").read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or [""])[-1][:400]


def _finalize(run_dir: Path, code: int | None) -> dict[str, Any]:
    with _LOCK:
        rec = _read_record(run_dir) or {"id": run_dir.name}
        if rec.get("status") in FINAL:
            return rec
        if rec.get("cancel_requested"):
            rec["status"] = "cancelled"
        elif code == 0 or (code is None and _has_end(run_dir)):
            rec["status"] = "finished"
        else:
            rec["status"] = "failed"
            rec["error"] = _last_error(run_dir) or (f"exited with code {code}" if code is not None else
                                                    "the training process ended without finishing")
        rec["exit_code"] = code
        rec["ended"] = time.time()
        _write_record(run_dir, rec)
        return rec


def _has_end(run_dir: Path) -> bool:
    try:
        return any('"kind": "end"' in ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines()[-3:])
    except OSError:
        return False


def _pid_running(pid: int | None) -> bool:
    """A live (not zombie) training process with this pid."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state != "Z" and b"sparsity_core" in cmdline


def _metrics(run_dir: Path) -> pd.DataFrame:
    from .loaders import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")


def state(run_id: str) -> RunState:
    """The current state of a run (reads its record and metrics; notices a run that ended)."""
    run_dir = runs_dir() / run_id
    rec = _read_record(run_dir)
    if rec is None:
        raise SviteError(f"{run_dir}: not a run launched from the app (no {RECORD})")
    if rec.get("status") not in FINAL:
        proc = _PROCS.get(run_id)
        if proc is not None:
            code = proc.poll()
            if code is not None:
                rec = _finalize(run_dir, code)
        elif not _pid_running(rec.get("pid")):
            rec = _finalize(run_dir, None)  # started by an earlier server, ended while nobody watched
    metrics = _metrics(run_dir)
    s = RunState(id=run_id, dir=run_dir, status=str(rec.get("status")), started=float(rec.get("started", 0)),
                 form=rec.get("form", {}), error=str(rec.get("error", "")), metrics=metrics)
    if len(metrics) and "kind" in metrics:
        starts = metrics[metrics["kind"] == "start"]
        if len(starts) and "total_steps" in starts:
            s.total_steps = int(starts["total_steps"].iloc[-1])
        progress = metrics[metrics["kind"].isin(["step", "epoch", "end"])]
        if len(progress) and "step" in progress:
            s.step = int(progress["step"].max())
        epochs = metrics[metrics["kind"] == "epoch"]
        if len(epochs):
            s.epoch = float(epochs["epoch"].max())
    ckpt = run_dir / "checkpoint.safetensors"
    if ckpt.exists():
        s.checkpoint = ckpt
    return s


def list_runs() -> list[RunState]:
    """Every app-launched run in the runs dir, newest first."""
    root = runs_dir()
    if not root.is_dir():
        return []
    found = [d for d in root.iterdir() if (d / RECORD).is_file()]
    states = []
    for d in found:
        try:
            states.append(state(d.name))
        except SviteError:
            continue
    return sorted(states, key=lambda s: s.started, reverse=True)


def cancel(run_id: str, grace_s: float = 10.0) -> None:
    """SIGTERM the run's process group (the loop ends cleanly), SIGKILL after ``grace_s``."""
    run_dir = runs_dir() / run_id
    with _LOCK:
        rec = _read_record(run_dir)
        if rec is None or rec.get("status") in FINAL:
            return
        rec["cancel_requested"] = True
        _write_record(run_dir, rec)
    pid = rec.get("pid")
    if not _pid_running(pid):
        _finalize(run_dir, None)
        return
    try:
        os.killpg(int(pid), signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        _finalize(run_dir, None)
        return

    def _escalate() -> None:
        deadline = time.time() + grace_s
        while time.time() < deadline:
            if not _pid_running(pid):
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if run_id not in _PROCS:
            _finalize(run_dir, None)

    threading.Thread(target=_escalate, daemon=True, name=f"cancel-{run_id}").start()
