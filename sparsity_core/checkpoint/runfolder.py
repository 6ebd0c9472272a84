"""A run folder as every writer of one makes it and every reader finds it: the file names, the metrics
log and the run lock.

Two writers make run folders, the training loop (``svite train``) and the :class:`~sparsity_core.Recorder`
in a researcher's own loop; the runs index and the app read them. They share this module, so a folder a
Recorder wrote is one of ours to every reader: ``checkpoint.safetensors`` (the one-file checkpoint, rewritten
atomically), ``metrics.jsonl`` (one JSON line per logged step and per evaluation), ``config.json`` (what the
run was given) and ``.lock`` (held while the run is written, so readers can tell a running run).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..errors import SviteError

CHECKPOINT_NAME = "checkpoint.safetensors"  # the one-file checkpoint
METRICS_NAME = "metrics.jsonl"  # one JSON line per log interval and per epoch
CONFIG_NAME = "config.json"  # what the run was given (a TrainConfig for svite train)
LOCK_NAME = ".lock"


class MetricsLog:
    """Appends one JSON object per line; the app tails this file for live progress. ``sink`` also gets
    every record (the tracker writers: ``trackers.Trackers.write_record``)."""

    def __init__(self, path: Path | None, echo: bool, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path, self.echo, self.sink = path, echo, sink

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=float)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
        if self.echo:
            tqdm.write(line, file=sys.stdout)
        if self.sink is not None:
            self.sink(record)


class RunLock:
    """An exclusive lock on a run directory, so two runs never write into the same one.

    An ``flock`` on ``DIR/.lock`` (which holds the owner's pid, for messages): the kernel drops it
    when the owner dies, so a SIGKILLed run never leaves a lock that blocks its own resume.
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise SviteError(f"another run (pid {pid}) is using this run directory", path=self.path.parent) from None
            try:  # the file we locked may have been unlinked by its previous owner meanwhile: retry
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def run_is_active(out: str | Path) -> bool:
    """True while a process holds ``out``'s run lock (a training run, or a Recorder not yet closed)."""
    path = Path(out) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
