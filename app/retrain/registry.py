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
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sparsity_core.checkpoint.atomic import atomic_write_bytes
from sparsity_core.errors import SviteError

from ..settings import IS_CHECKOUT, REPO_ROOT, runs_dir
from .run_form import METHODS, RunForm

__all__ = ["FINAL", "METHODS", "RECORD", "RunForm", "RunState", "cancel", "launch", "list_runs", "state"]

RECORD = "app_run.json"
FINAL = ("finished", "failed", "cancelled")
_PROCS: dict[str, subprocess.Popen] = {}  # runs started by this server process
_LOCK = threading.Lock()


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
    train_started: float | None = None  # when the loop began (data and model ready): metrics.jsonl 'start'
    ended: float | None = None
    val_top1: float | None = None  # the latest epoch's validation top-1 (%)

    @property
    def progress(self) -> float:
        """Fraction of training steps done; the table and the progress bar both show this one number."""
        if self.status == "finished":
            return 1.0
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def elapsed(self) -> float:
        return max(0.0, (self.ended or time.time()) - self.started)

    @property
    def phase(self) -> str:
        """preparing (Python, torch and the data are loading) | training | a final status."""
        if self.status != "running":
            return self.status
        return "training" if self.total_steps else "preparing"

    @property
    def seconds_left(self) -> float | None:
        """Remaining training time at the pace so far (None until a few steps have run)."""
        if self.status != "running" or not self.total_steps or self.step < 2 or self.train_started is None:
            return None
        pace = (time.time() - self.train_started) / self.step
        return pace * (self.total_steps - self.step)

    def describe(self) -> str:
        """The progress line: the same numbers as the runs table, in words."""
        if self.phase == "preparing":
            return (f"Preparing ({self.elapsed:.0f} s): starting Python, torch and timm, generating the data and "
                    "building the model")
        done = f"step {self.step}/{self.total_steps}" if self.total_steps else "no step"
        if self.phase == "training":
            left = self.seconds_left
            epochs = int(self.form.get("epochs") or 1)
            return (f"Training ({self.elapsed:.0f} s): {done} ({self.progress:.0%}), epoch "
                    f"{min(epochs, int(self.epoch) + 1)} of {epochs}"
                    + (f", about {left:.0f} s left" if left is not None else ""))
        top1 = f", validation top-1 {self.val_top1:.1f} %" if self.val_top1 is not None else ""
        return f"{self.status.capitalize()} after {self.elapsed:.0f} s at {done}{top1}"


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
    raise SviteError("cannot create a new run directory", path=root)


def launch(form: RunForm) -> str:
    """Start ``python -m sparsity_core train`` for ``form`` in a new run directory; returns the run id."""
    form.validate()
    run_dir = _new_run_dir(form.method)
    cmd = form.command(run_dir)
    # One torch thread unless SVITE_TRAIN_THREADS says otherwise: on a 2-core machine that is already busy
    # (load average 2 and up), two intra-op threads wait on each other, and one thread trained the demo ViT
    # 4x faster at load 11 (52 vs 13 images/s). On a quiet machine two threads can be faster: set
    # SVITE_TRAIN_THREADS=2 there.
    threads = os.environ.get("SVITE_TRAIN_THREADS", "1")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}
    rec = {"id": run_dir.name, "command": cmd, "form": asdict(form), "started": time.time(), "status": "running",
           "pid": None}
    _write_record(run_dir, rec)
    with open(run_dir / "stdout.log", "wb") as out, open(run_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT if IS_CHECKOUT else run_dir.parent, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # own process group: cancel signals all of it
    rec["pid"] = proc.pid
    _write_record(run_dir, rec)
    _PROCS[run_dir.name] = proc
    threading.Thread(target=_wait, args=(proc, run_dir), daemon=True, name=f"wait-{run_dir.name}").start()
    return run_dir.name


def _wait(proc: subprocess.Popen, run_dir: Path) -> None:
    code = proc.wait()
    _finalize(run_dir, code)


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def _last_error(run_dir: Path, code: int | None) -> str:
    """Why a run failed, as whole sentences: the trainer's own one-line message (bad input), or what
    kind of crash it was and where the full log is (never a cut-off line of library text)."""
    try:
        lines = [ln.strip() for ln in (run_dir / "stderr.log").read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    own = [ln.split(": error: ", 1)[1] for ln in lines if ": error: " in ln]
    if own:
        return _sentence(own[-1])
    log = run_dir / "stderr.log"
    if any(ln.startswith("Traceback") for ln in lines):
        last = lines[-1]
        kind = last.split(":", 1)[0] if ":" in last and " " not in last.split(":", 1)[0] else "error"
        return f"The training process crashed with an unexpected {kind}; the full traceback is in {log}."
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"The training process was killed by {name} (out of memory, or stopped from outside)."
    if code is not None:
        return f"The training process exited with code {code}; its output is in {log}."
    return "The training process ended without finishing (it was stopped while nobody watched)."


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
            rec["error"] = _last_error(run_dir, code)
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
    from ..loaders.checkpoint_data import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")


def state(run_id: str) -> RunState:
    """The current state of a run (reads its record and metrics; notices a run that ended)."""
    run_dir = runs_dir() / run_id
    rec = _read_record(run_dir)
    if rec is None:
        raise SviteError(f"not a run launched from the app (no {RECORD})", path=run_dir)
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
                 form=rec.get("form", {}), error=str(rec.get("error", "")), metrics=metrics,
                 ended=rec.get("ended"))
    if len(metrics) and "kind" in metrics:
        starts = metrics[metrics["kind"] == "start"]
        if len(starts) and "total_steps" in starts:
            s.total_steps = int(starts["total_steps"].iloc[-1])
            if "time" in starts:
                s.train_started = float(starts["time"].iloc[-1])
        progress = metrics[metrics["kind"].isin(["step", "epoch", "end"])]
        if len(progress) and "step" in progress:
            s.step = int(progress["step"].max())
        if len(progress) and "epoch" in progress:
            s.epoch = float(progress["epoch"].max())  # fractional: 0.5 = half-way through the first epoch
        epochs = metrics[metrics["kind"] == "epoch"]
        if len(epochs):
            if "val_top1" in epochs and epochs["val_top1"].notna().any():
                s.val_top1 = float(epochs["val_top1"].dropna().iloc[-1])
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
