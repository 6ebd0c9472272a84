"""The ``--out`` run directory: its files, its metrics log, and its state before a run is known to start
and after one that never did.

A run must change nothing until it is sure to start: ``--out`` is checked up front (an existing file,
``/dev/null``, a path under a file, a read-only place each get one sentence naming ``--out``), and a
run that fails before it wrote its first checkpoint removes the folders it created, so a typo never
leaves an empty run directory behind that the app's picker or the next ``--out`` would trip over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..checkpoint.atomic import atomic_write_bytes
from ..checkpoint.runfolder import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, MetricsLog  # noqa: F401  (shared)
from ..errors import FlagError, SviteError

#: Files a run writes into its directory before (or beside) its first checkpoint.
_RUN_FILES = (CONFIG_NAME, METRICS_NAME, ".lock")


#: The source tree this package runs from, when it is a checkout (a run written into it, or into a folder
#: holding it, would mix checkpoints with the code); None for an installed package.
_PROJECT = Path(__file__).resolve().parents[2]  # sparsity_core/training/rundir.py -> the project
PROJECT = _PROJECT if (_PROJECT / "pyproject.toml").is_file() else None


def check_out_path(out: str) -> None:
    """Refuse an ``--out`` that is empty, the current folder, the project, or a folder holding either:
    ``--out ''`` used to train straight into the current folder. A run gets a folder of its own."""
    if not str(out).strip():
        raise FlagError("--out", "--out '': empty; name a run directory of its own, e.g. --out runs/x")
    path = Path(out).expanduser().resolve()
    for place, what in ((Path.cwd().resolve(), "the current folder"), (PROJECT, "the project folder")):
        if place is None:
            continue
        if path == place or path in place.parents:
            relation = "is" if path == place else "holds"
            raise FlagError("--out", f"--out {out}: {relation} {what} ({place}); a run gets a folder of its own, "
                            "e.g. --out runs/x")


def check_out_dir(out: Path) -> Path | None:
    """Refuse an ``--out`` that cannot become a run directory; return the first folder of it that does
    not exist yet (what :func:`remove_unstarted` may remove again), or None when ``out`` exists."""
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise SviteError(f"--out {out}: exists and is not a directory")
        if not os.access(out, os.W_OK | os.X_OK):
            raise SviteError(f"--out {out}: the directory is not writable (read-only file system or permissions)")
        return None
    first_missing = out
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SviteError(f"--out {out}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SviteError(f"--out {out}: cannot create it, {parent} is not writable "
                                 "(read-only file system or permissions)")
            return first_missing
        first_missing = parent
    return first_missing


def remove_unstarted(created: Path, out: Path) -> None:
    """After a failed run: if it wrote no checkpoint, remove what it put in ``out`` and the folders
    from ``out`` up to ``created`` (which did not exist before). Never touches anything else."""
    if not out.is_dir() or any(out.glob("checkpoint*")):
        return
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for path in [*out.glob("resume-*.pt"), *out.glob(".*.tmp")]:
        path.unlink(missing_ok=True)
    folder = out
    while True:
        try:
            folder.rmdir()  # only succeeds while empty
        except OSError:
            return
        if folder == created or folder.parent == folder:
            return
        folder = folder.parent


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines a killed attempt wrote after the step we (re)start from, and torn lines.

    A line that is JSON but no metrics record, or a file that is not text, is somebody's edit, not a
    kill: refused (naming the line) before anything is written, rather than silently dropped."""
    if not path.exists():
        return
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SviteError(f"not UTF-8 text (bad byte at offset {err.start}); fix or remove the file "
                         "to continue this run", path=path) from None
    kept = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        except RecursionError:
            record = None
        at = record.get("step", 0) if isinstance(record, dict) else None
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise SviteError(f"line {number} is not a metrics record ({line[:40]!r}); fix or remove it "
                             "to continue this run", path=path)
        if record.get("kind") in ("start", "end") or at <= step:
            kept.append(line)
    atomic_write_bytes(path, ("\n".join(kept) + "\n").encode() if kept else b"")
