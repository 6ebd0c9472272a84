"""The ``--out`` run directory before a run is known to start, and after one that never did.

A run must change nothing until it is sure to start: ``--out`` is checked up front (an existing file,
``/dev/null``, a path under a file, a read-only place each get one sentence naming ``--out``), and a
run that fails before it wrote its first checkpoint removes the folders it created, so a typo never
leaves an empty run directory behind that the app's picker or the next ``--out`` would trip over.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SviteError

#: Files a run writes into its directory before (or beside) its first checkpoint.
_RUN_FILES = ("config.json", "metrics.jsonl", ".lock")


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
