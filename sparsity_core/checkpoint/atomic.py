"""Atomic file writes: a temp file beside the target, fsync, then a rename over it, so a crash or a full
disk never leaves a half-written file where a good one was (checkpoints, run records, metrics)."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import SviteError


def atomic_write_bytes(path: str | Path, payload: bytes | Callable[[io.BufferedWriter], None]) -> Path:
    """Write to a temp file beside ``path``, fsync, then rename over it (never a torn file).

    A filesystem failure (no space, read-only, a path under a file) is the environment's, not a bug:
    it raises SviteError naming ``path``, and the previous version of the file stays as it was."""
    path = Path(path)
    try:
        return _atomic_write(path, payload)
    except OSError as err:
        raise SviteError(f"cannot write ({err.strerror or err}); "
                         f"{'the previous version was left as it was' if path.exists() else 'nothing was written'}"
                         , path=path) from None


def _atomic_write(path: Path, payload: bytes | Callable[[io.BufferedWriter], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(payload):
                payload(fh)
            else:
                fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
